"""``tenantry up`` end to end, as a user runs it: from an empty data folder to a served,
seeded HR API; Ctrl-C stops everything it started; the next ``up`` finds the same data."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tenantry.devstack import PostgresService, ValkeyService

TENANTRY = Path(sys.executable).with_name("tenantry")
STARTUP_TIMEOUT = 90.0
SHUTDOWN_TIMEOUT = 30.0

pytestmark = pytest.mark.slow


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Up:
    """One ``tenantry up`` process and the ports it was told to use."""

    def __init__(self, data_dir: Path, log: Path, ports: dict[str, int]) -> None:
        self.data_dir = data_dir
        self.ports = ports
        self.log = log
        env = {
            # No DATABASE_URL / REDIS_URL / TENANTRY_JWT_SECRET: everything embedded.
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(data_dir.parent),
            "COLUMNS": "200",
        }
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    str(TENANTRY),
                    "up",
                    "--data-dir",
                    str(data_dir),
                    "--port",
                    str(ports["http"]),
                    "--pg-port",
                    str(ports["pg"]),
                    "--valkey-port",
                    str(ports["valkey"]),
                ],
                env=env,
                cwd=data_dir.parent,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # our Ctrl-C goes to it alone, on purpose
            )
        self.base = f"http://127.0.0.1:{ports['http']}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"tenantry up exited early:\n{self.output()}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base}/health", timeout=2).status_code == 200:
                    return
            time.sleep(0.25)
        pytest.fail(f"/health not 200 within {STARTUP_TIMEOUT:.0f}s:\n{self.output()}")

    def get(self, path: str, **headers: str) -> httpx.Response:
        return httpx.get(f"{self.base}{path}", headers=headers, timeout=10)

    def interrupt(self) -> float:
        """Ctrl-C; return how long the process took to exit."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=SHUTDOWN_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"tenantry up still running {SHUTDOWN_TIMEOUT:.0f}s after SIGINT:\n{self.output()}"
            )
        return time.monotonic() - started

    def kill(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[Path, dict[str, int], list[Up]]]:
    """A data folder, free ports, and cleanup of whatever ``up`` left running."""
    data_dir = tmp_path / "data"
    ports = {"http": free_port(), "pg": free_port(), "valkey": free_port()}
    started: list[Up] = []
    yield data_dir, ports, started
    for up in started:
        up.kill()
    # Safety net: stop the embedded services if a failed test left them behind.
    with contextlib.suppress(Exception):
        ValkeyService(data_dir / "valkey", port=ports["valkey"]).stop()
    pgdata = data_dir / "postgres" / "pgdata"
    with contextlib.suppress(Exception):
        PostgresService(data_dir / "postgres", port=ports["pg"]).stop()
    if pgdata.is_symlink():  # placed under /var/lib/tenantry because tmp_path is private
        home = Path(os.readlink(pgdata)).parent
        if home.parent == Path("/var/lib/tenantry"):
            shutil.rmtree(home, ignore_errors=True)


def _acme_employees(up: Up) -> list[dict[str, Any]]:
    response = up.get("/api/employees", **{"X-Tenant-ID": "acme"})
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def test_up_serves_seeded_tenants_stops_cleanly_and_keeps_data(
    stack: tuple[Path, dict[str, int], list[Up]], tmp_path: Path
) -> None:
    """From an empty folder: healthy within 90 s, acme/globex/initech provisioned and
    seeded; SIGINT exits within 30 s and stops the embedded PostgreSQL and Valkey; a
    second ``up`` on the same folder serves the very same rows."""
    data_dir, ports, started = stack
    assert not data_dir.exists()
    first = Up(data_dir, tmp_path / "up-1.log", ports)
    started.append(first)
    first.wait_healthy()
    assert first.get("/health").json()["redis"] == "ok"

    employees = _acme_employees(first)
    assert len(employees) == 4
    assert all(e["email"].endswith("@acme.example") for e in employees)
    for slug in ("globex", "initech"):
        departments = first.get("/api/departments", Host=f"{slug}.localhost:{ports['http']}")
        assert departments.status_code == 200, departments.text
        assert {d["name"] for d in departments.json()["items"]} == {
            "Engineering",
            "Sales",
            "People",
        }
        people = first.get("/api/employees", **{"X-Tenant-ID": slug})
        assert all(e["email"].endswith(f"@{slug}.example") for e in people.json()["items"])
    leave = first.get("/api/leave-requests", **{"X-Tenant-ID": "acme"})
    assert len(leave.json()["items"]) == 1
    # /metrics is served, and the access log is JSON lines naming the tenant.
    scraped = first.get("/metrics")
    assert scraped.status_code == 200
    assert 'tenant="acme"' in scraped.text or 'tenant="_other"' in scraped.text
    access = [
        json.loads(line)
        for line in first.log.read_text(errors="replace").splitlines()
        if line.startswith("{") and '"event": "request"' in line
    ]
    assert any(line.get("tenant_slug") == "acme" and line["status"] == 200 for line in access)

    # The CLI finds the running stack through the state that up left in the folder.
    listed = subprocess.run(
        [str(TENANTRY), "tenants", "list", "--json", "--data-dir", str(data_dir)],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    assert {"acme", "globex", "initech"} <= {t["slug"] for t in json.loads(listed.stdout)}

    assert first.interrupt() < SHUTDOWN_TIMEOUT
    assert first.process.returncode == 0, first.output()
    assert "embedded services stopped" in first.output()
    for name, port in ports.items():
        assert not port_open(port), f"{name} port {port} still open after Ctrl-C"

    second = Up(data_dir, tmp_path / "up-2.log", ports)
    started.append(second)
    second.wait_healthy()
    assert _acme_employees(second) == employees
    assert second.interrupt() < SHUTDOWN_TIMEOUT
    assert second.process.returncode == 0, second.output()
    for name, port in ports.items():
        assert not port_open(port), f"{name} port {port} still open after the second Ctrl-C"
