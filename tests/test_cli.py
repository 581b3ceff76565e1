"""The ``tenantry`` command, run as a subprocess against a database of its own: tenant
lifecycle, ``--json`` output, documented exit codes, and tokens the server accepts."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tenantry.provisioning import verify_export
from tenantry.settings import AuthSettings
from tenantry.web import TokenService

TENANTRY = Path(sys.executable).with_name("tenantry")
CLI_SECRET = "cli-secret-" + "s" * 40
EXIT_USAGE, EXIT_EXISTS, EXIT_NOT_FOUND, EXIT_STATE = 2, 3, 4, 5

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CLI's working directory (no ``tenantry up`` state in it)."""
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def cli_env(make_database: Callable[[str], str], workdir: Path) -> dict[str, str]:
    """A minimal environment: a fresh control database and a JWT secret, nothing else."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(workdir),
        "DATABASE_URL": make_database("tenantry_cli"),
        "TENANTRY_JWT_SECRET": CLI_SECRET,
        "TENANTRY_DATA_DIR": str(workdir / "no-up-state"),
        "COLUMNS": "200",  # a wide terminal, so tables print whole values
    }


@pytest.fixture(scope="module")
def run(cli_env: dict[str, str], workdir: Path) -> Run:
    """Run ``tenantry ARGS...`` and return the finished process."""

    def invoke(
        *args: str, env: dict[str, str] | None = None, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(TENANTRY), *args],
            env=env if env is not None else cli_env,
            cwd=workdir,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    return invoke


def run_all(run: Run, *commands: tuple[str, ...]) -> list[subprocess.CompletedProcess[str]]:
    """Run independent commands side by side (each is a separate process)."""
    with ThreadPoolExecutor(max_workers=len(commands)) as pool:
        return list(pool.map(lambda args: run(*args), commands))


def as_json(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def new_slug() -> str:
    return f"cli{secrets.token_hex(4)}"


@pytest.fixture(scope="module")
def existing(run: Run) -> dict[str, Any]:
    """A tenant created through the CLI (``--json`` output)."""
    return as_json(
        run("tenants", "create", new_slug(), "--tier", "pro", "--name", "Existing", "--json")
    )  # type: ignore[no-any-return]


@pytest.fixture
def fresh(run: Run) -> str:
    """The slug of a newly created tenant."""
    slug = new_slug()
    as_json(run("tenants", "create", slug, "--json"))
    return slug


def test_create_prints_the_tenant_as_json(existing: dict[str, Any]) -> None:
    """``tenants create --json`` prints one JSON object describing the new tenant."""
    assert existing["slug"].startswith("cli")
    assert (existing["tier"], existing["name"], existing["status"]) == ("pro", "Existing", "active")
    assert existing["schema"] == "t_" + existing["slug"]
    assert existing["schema_version"]


def test_show_and_list_find_the_tenant(run: Run, existing: dict[str, Any]) -> None:
    """``show`` by id and ``list`` print the same tenant; plain output too."""
    by_id, listed, plain = run_all(
        run,
        ("tenants", "show", existing["id"], "--json"),
        ("tenants", "list", "--json"),
        ("tenants", "list"),
    )
    assert as_json(by_id) == {**existing, "updated_at": as_json(by_id)["updated_at"]}
    rows = {row["slug"]: row for row in as_json(listed)}
    assert rows[existing["slug"]]["id"] == existing["id"]
    assert plain.returncode == 0, plain.stderr
    assert existing["slug"] in plain.stdout
    assert f"{len(rows)} tenant(s)" in plain.stdout


def test_duplicate_slug_exits_3(run: Run, existing: dict[str, Any]) -> None:
    """Creating an existing slug exits 3 with a message that says so."""
    duplicate = run("tenants", "create", existing["slug"], "--tier", "pro")
    assert duplicate.returncode == EXIT_EXISTS, duplicate.stderr
    assert "already exists" in duplicate.stderr


def test_bad_slug_exits_2(run: Run) -> None:
    """An invalid, reserved or look-alike slug exits 2 and creates nothing."""
    slugs = ("Bad;slug'", "admin", "\u0430cme")  # the last starts with a Cyrillic a
    for done in run_all(run, *(("tenants", "create", slug) for slug in slugs)):
        assert done.returncode == EXIT_USAGE, (done.args, done.stdout, done.stderr)
        assert "slug" in done.stderr
    listed = as_json(run("tenants", "list", "--all", "--json"))
    assert not {row["slug"] for row in listed} & set(slugs)


def test_unknown_tenant_exits_4(run: Run, workdir: Path) -> None:
    """Every command that names a tenant exits 4 when there is none."""
    results = run_all(
        run,
        ("tenants", "show", "00000000-0000-4000-8000-000000000000"),
        ("tenants", "suspend", "nosuchtenant"),
        ("tenants", "offboard", "nosuchtenant", "--yes", "--out", str(workdir / "x")),
    )
    for done in results:
        assert done.returncode == EXIT_NOT_FOUND, (done.args, done.stderr)
        assert "no tenant" in done.stderr


def test_suspend_and_resume(run: Run, fresh: str) -> None:
    """suspend → suspended, and list filters by status; resume → active."""
    assert (
        as_json(run("tenants", "suspend", fresh, "--reason", "audit", "--json"))["status"]
        == "suspended"
    )
    suspended = as_json(run("tenants", "list", "--status", "suspended", "--json"))
    assert fresh in {row["slug"] for row in suspended}
    assert as_json(run("tenants", "resume", fresh, "--json"))["status"] == "active"


def test_export_writes_a_verifiable_archive(run: Run, fresh: str, tmp_path: Path) -> None:
    """``export --json`` reports an archive whose checksums and row counts verify."""
    report = as_json(run("tenants", "export", fresh, "--out", str(tmp_path), "--json"))
    archive = Path(report["archive"])
    assert archive.is_file()
    assert archive.parent == tmp_path
    manifest = verify_export(archive)
    assert report["rows"] == sum(t["rows"] for t in manifest["tables"]) == 0
    assert set(report["tables"]) == {
        "departments",
        "employees",
        "leave_requests",
        "department_headcounts",
        "activity",
    }


def test_offboard_leaves_a_tombstone_and_bad_states_exit_5(
    run: Run, fresh: str, tmp_path: Path
) -> None:
    """offboard --yes exports and tombstones the tenant: hidden from list, shown by
    list --all, its slug never reused (3), and later lifecycle commands exit 5."""
    report = as_json(run("tenants", "offboard", fresh, "--yes", "--out", str(tmp_path), "--json"))
    verify_export(Path(report["archive"]))
    listed, everything, recreate, suspend, export = run_all(
        run,
        ("tenants", "list", "--json"),
        ("tenants", "list", "--all", "--json"),
        ("tenants", "create", fresh),
        ("tenants", "suspend", fresh),
        ("tenants", "export", fresh, "--out", str(tmp_path)),
    )
    assert fresh not in {row["slug"] for row in as_json(listed)}
    assert {row["slug"]: row["status"] for row in as_json(everything)}[fresh] == "deleted"
    assert recreate.returncode == EXIT_EXISTS, recreate.stderr
    for done in (suspend, export):
        assert done.returncode == EXIT_STATE, (done.args, done.stderr)


def test_token_commands_sign_tokens_the_server_accepts(run: Run, existing: dict[str, Any]) -> None:
    """``token SLUG`` and ``token --platform-admin`` print JWTs that the server's
    TokenService verifies; a token signed with another secret is not accepted."""
    admin, platform = run_all(
        run,
        ("token", existing["slug"], "--role", "admin", "--subject", "ops@cli", "--ttl", "120"),
        ("token", "--platform-admin"),
    )
    tokens = TokenService(AuthSettings(jwt_secret=CLI_SECRET))
    for done in (admin, platform):
        assert done.returncode == 0, done.stderr
    principal = tokens.verify(admin.stdout.strip())
    assert (principal.tenant, principal.role, principal.subject) == (
        existing["slug"],
        "admin",
        "ops@cli",
    )
    assert not principal.platform_admin
    assert principal.claims["exp"] - principal.claims["iat"] == 120
    principal = tokens.verify(platform.stdout.strip())
    assert principal.platform_admin
    assert principal.tenant is None

    stranger = TokenService(AuthSettings(jwt_secret="another-" + "k" * 40))
    with pytest.raises(Exception, match="rejected"):
        stranger.verify(admin.stdout.strip())


def test_token_usage_errors_exit_2(run: Run) -> None:
    """``token`` needs exactly one of SLUG and --platform-admin, and a valid slug."""
    for done in run_all(run, ("token",), ("token", "Not-A-Slug!")):
        assert done.returncode == EXIT_USAGE, (done.args, done.stdout, done.stderr)


def test_missing_database_url_exits_2(run: Run, cli_env: dict[str, str]) -> None:
    """Without DATABASE_URL (and no ``tenantry up`` state) commands say what to set."""
    env = {k: v for k, v in cli_env.items() if k != "DATABASE_URL"}
    done = run("tenants", "list", env=env)
    assert done.returncode == EXIT_USAGE, done.stderr
    assert "DATABASE_URL" in done.stderr
