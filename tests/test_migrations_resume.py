"""``tenantry migrate`` as a subprocess: SIGKILLed mid-fleet it resumes with nothing
applied twice; a tenant that fails is reported, the rest reach head, the exit code says
so, and a re-run after the fix completes it. Plus: the HR API keeps serving every tenant
while its fleet is migrated."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from asyncio.subprocess import DEVNULL, PIPE
from collections.abc import Callable
from pathlib import Path

import httpx
import psycopg

from hr_example import create_app
from tenantry import Platform, Settings
from tenantry.migrations import MigrationSettings
from tenantry.migrations import command as commands
from tests.conftest import JWT_SECRET
from tests.migration_chains import BASE, HEAD, SLOW_HEAD, create_fleet, fleet_settings

TENANTRY = Path(sys.executable).with_name("tenantry")
REPO = Path(__file__).resolve().parent.parent


def cli_env(url: str, schema: str) -> dict[str, str]:
    """A minimal environment for the CLI: the database and the chain to deploy."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(REPO),
        "DATABASE_URL": url,
        "TENANTRY_SCHEMA": f"tests.migration_chains:{schema}",
        "TENANTRY_DATA_DIR": str(REPO / ".no-such-state"),
        "COLUMNS": "200",
    }


async def tenantry(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    """Run ``tenantry ARGS`` to completion: exit code, stdout, stderr."""
    proc = await asyncio.create_subprocess_exec(
        str(TENANTRY), *args, env=env, stdout=PIPE, stderr=PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def versions(url: str) -> dict[str | None, int]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT schema_version, count(*) FROM tenantry.tenants GROUP BY 1"
        ).fetchall()
    return {version: int(n) for version, n in rows}


async def test_sigkill_mid_fleet_then_rerun_finishes_with_nothing_applied_twice(
    make_database: Callable[[str], str],
) -> None:
    """Kill -9 the runner while tenants are being migrated; the next run brings the rest to
    head. The migration adds a column without IF NOT EXISTS, so applying it twice anywhere
    would fail that tenant — and each tenant's ledger moved exactly once."""
    url = make_database("tenantry_mig_kill")
    fleet = await create_fleet(url, 60, prefix="k")
    proc = await asyncio.create_subprocess_exec(
        str(TENANTRY),
        "migrate",
        "--concurrency",
        "2",
        "--json",
        env=cli_env(url, "SLOW_HEAD"),
        stdout=DEVNULL,
        stderr=DEVNULL,
    )
    try:
        for _ in range(3000):  # up to a minute
            if versions(url).get(SLOW_HEAD.head, 0) >= 10:
                break
            assert proc.returncode is None, "the runner exited before it was killed"
            await asyncio.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        await asyncio.wait_for(proc.wait(), timeout=30)
    assert proc.returncode == -signal.SIGKILL
    # A message the server had fully received still runs to COMMIT or ROLLBACK after the
    # client died: read the ledger once the killed runner's sessions are gone.
    with psycopg.connect(url, autocommit=True) as conn:
        for _ in range(1500):
            left = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'tenantry-migrate'"
            ).fetchone()
            if left == (0,):
                break
            await asyncio.sleep(0.02)
    midway = versions(url)
    assert 10 <= midway.get(SLOW_HEAD.head, 0) < len(fleet), midway

    code, out, err = await tenantry("migrate", "--json", env=cli_env(url, "SLOW_HEAD"))
    assert code == 0, err
    report = json.loads(out)
    assert report["failed"] == []
    assert report["ok"]
    assert report["migrated"] == len(fleet) - midway[SLOW_HEAD.head]
    assert versions(url) == {SLOW_HEAD.head: len(fleet)}
    with psycopg.connect(url) as conn:
        per_tenant = conn.execute(
            "SELECT t.slug, count(l.id) FROM tenantry.tenants t LEFT JOIN tenantry.lifecycle_log l "
            "ON l.tenant_id = t.id AND l.action = 'migrate' GROUP BY t.slug"
        ).fetchall()
        columns = conn.execute(
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 'employees' "
            "AND column_name = 'badge_code' AND table_schema LIKE 't\\_k%'"
        ).fetchone()
    assert {n for _, n in per_tenant} == {1}, per_tenant
    assert columns == (len(fleet),)


async def test_one_failing_tenant_is_isolated_reported_and_completed_after_the_fix(
    make_database: Callable[[str], str],
) -> None:
    """A conflicting object put in one tenant by hand fails that tenant alone: the error is
    reported, every other tenant reaches head, the exit code is 1; once the object is
    removed, the next run migrates it and clears the failure."""
    url = make_database("tenantry_mig_fail")
    fleet = await create_fleet(url, 30, prefix="p")
    broken = fleet[-1]  # last in slug order: not in the canary wave
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {broken.schema_name}.badges (id int)")
    env = cli_env(url, "HEAD")
    code, out, err = await tenantry("migrate", "--json", env=env)
    assert code == 1, err
    report = json.loads(out)
    assert [f["slug"] for f in report["failed"]] == [broken.slug]
    assert 'relation "badges" already exists' in report["failed"][0]["error"]
    assert report["migrated"] == len(fleet) - 1
    assert versions(url) == {HEAD.head: len(fleet) - 1, BASE.head: 1}

    code, out, err = await tenantry("migrate", "status", "--json", env=env)
    assert code == 0, err
    assert json.loads(out)["failures"] == 1
    assert json.loads(out)["behind"] == 1

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP TABLE {broken.schema_name}.badges")
    code, out, err = await tenantry("migrate", env=env)
    assert code == 0, out + err
    assert "1 tenant(s) migrated" in out
    assert versions(url) == {HEAD.head: len(fleet)}
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM tenantry.migration_failures").fetchone() == (0,)


async def test_api_serves_every_tenant_during_a_fleet_migration(
    make_database: Callable[[str], str],
) -> None:
    """While the fleet migrates (each tenant's employees table briefly locked), reads and
    writes through the HR API keep succeeding for every tenant."""
    url = make_database("tenantry_mig_live")
    fleet = await create_fleet(url, 24, prefix="live")
    settings = Settings.from_env(
        {"DATABASE_URL": url, "TENANTRY_JWT_SECRET": JWT_SECRET, "TENANTRY_DB_POOL_MAX": "12"}
    )
    application = create_app(settings)
    migrator = Platform(fleet_settings(url), SLOW_HEAD)
    async with application.router.lifespan_context(application):
        await migrator.start(listen=False)
        try:
            transport = httpx.ASGITransport(app=application)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
                for tenant in fleet:  # seed: one department per tenant
                    created = await http.post(
                        "/api/departments",
                        json={"name": "Ops"},
                        headers={"X-Tenant-ID": tenant.slug},
                    )
                    assert created.status_code == 201, created.text
                # One tenant at a time (>= 24 x 50 ms): long enough for the traffic below to
                # reach every tenant while the fleet migrates, even on a loaded machine.
                run = asyncio.create_task(
                    commands.upgrade(migrator, settings=MigrationSettings(concurrency=1))
                )
                codes: list[int] = []
                i = 0
                while not run.done():
                    tenant = fleet[i % len(fleet)]
                    headers = {"X-Tenant-ID": tenant.slug}
                    read = await http.get("/api/employees", headers=headers)
                    write = await http.post(
                        "/api/departments", json={"name": f"Team {i}"}, headers=headers
                    )
                    codes += [read.status_code, write.status_code]
                    i += 1
                report = await run
        finally:
            await migrator.stop()
    assert report.ok
    assert report.migrated == len(fleet)
    assert len(codes) >= 2 * len(fleet), "the migration finished before traffic covered the fleet"
    assert set(codes) <= {200, 201}, sorted(set(codes))
    assert versions(url) == {SLOW_HEAD.head: len(fleet)}
