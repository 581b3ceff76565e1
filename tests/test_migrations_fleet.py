"""The fleet migrator against real PostgreSQL: a fleet built by one release is brought to
the next release's head; the ledger agrees with the schemas; fresh and migrated tenants
are identical; status is one query; lock timeouts are retried; the canary guards the rest."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from tenantry import Platform
from tenantry.migrations import FleetMigrator, MigrationSettings, migration_status
from tenantry.migrations import command as commands
from tests.migration_chains import (
    BASE,
    CONTROL,
    HEAD,
    create_fleet,
    fleet_settings,
)

SNAPSHOT_QUERIES = {
    "relations": """
        SELECT c.relname, c.relkind, c.relrowsecurity, c.relforcerowsecurity,
               coalesce(c.relacl::text, '')
        FROM pg_class c WHERE c.relnamespace = %(s)s::regnamespace ORDER BY 1""",
    "columns": """
        SELECT c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod),
               a.attnotnull, a.attidentity, coalesce(pg_get_expr(d.adbin, d.adrelid), '')
        FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE c.relnamespace = %(s)s::regnamespace AND c.relkind IN ('r', 'p')
          AND a.attnum > 0 AND NOT a.attisdropped ORDER BY 1, 2""",
    "indexes": """
        SELECT c.relname, replace(pg_get_indexdef(i.indexrelid), %(s)s || '.', ''),
               i.indisvalid, i.indisunique
        FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
        WHERE c.relnamespace = %(s)s::regnamespace ORDER BY 1""",
    "constraints": """
        SELECT t.relname, k.conname, k.contype,
               replace(pg_get_constraintdef(k.oid), %(s)s || '.', '')
        FROM pg_constraint k JOIN pg_class t ON t.oid = k.conrelid
        WHERE k.connamespace = %(s)s::regnamespace ORDER BY 1, 2""",
    "policies": """
        SELECT tablename, policyname, permissive, roles::text, cmd, qual, with_check
        FROM pg_policies WHERE schemaname = %(s)s ORDER BY 1, 2""",
}


def snapshot(url: str, schema: str) -> dict[str, list[tuple[Any, ...]]]:
    """Everything about a tenant schema that a migration could get wrong."""
    with psycopg.connect(url) as conn:
        return {
            name: conn.execute(query, {"s": schema}).fetchall()
            for name, query in SNAPSHOT_QUERIES.items()
        }


def start_head(url: str, schema: Any = HEAD) -> Platform:
    return Platform(fleet_settings(url), schema)


async def test_fleet_of_200_migrates_from_base_to_head_and_ledger_matches_schemas(
    make_database: Callable[[str], str],
) -> None:
    """200 tenants built at the old head reach the new head: catalog, ledger and the actual
    schemas (new column, new table with its safety net, online index) all agree."""
    url = make_database("tenantry_mig_fleet")
    fleet = await create_fleet(url, 200)
    assert {t.schema_version for t in fleet} == {BASE.head}
    platform = start_head(url)
    await platform.start(listen=False)
    try:
        before = await commands.status(platform, control=CONTROL)
        assert before.behind == 200
        assert not before.up_to_date
        assert before.versions == {BASE.head: 200}

        report = await commands.upgrade(platform, control=CONTROL)
        assert report.ok, report.failed
        assert (report.planned, report.migrated, report.skipped) == (200, 200, 0)
        assert report.control_to == CONTROL.head
        assert report.waves[0] == ("canary", 2)

        after = await commands.status(platform, control=CONTROL)
        assert after.up_to_date
        assert after.versions == {HEAD.head: 200}
        again = await commands.upgrade(platform, control=CONTROL)
        assert (again.planned, again.migrated) == (0, 0)
    finally:
        await platform.stop()

    with psycopg.connect(url) as conn:
        ledger = dict(
            conn.execute("SELECT schema_name, schema_version FROM tenantry.tenants").fetchall()
        )
        actual = conn.execute(
            """
            SELECT n.nspname,
                   EXISTS (SELECT FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
                           WHERE c.relnamespace = n.oid AND c.relname = 'employees'
                             AND a.attname = 'badge_code'),
                   EXISTS (SELECT FROM pg_class c WHERE c.relnamespace = n.oid
                             AND c.relname = 'badges' AND c.relforcerowsecurity),
                   EXISTS (SELECT FROM pg_policies p WHERE p.schemaname = n.nspname
                             AND p.tablename = 'badges' AND p.policyname = 'tenant_isolation'),
                   EXISTS (SELECT FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                           WHERE c.relnamespace = n.oid
                             AND c.relname = 'leave_requests_status_idx' AND i.indisvalid)
            FROM pg_namespace n WHERE n.nspname LIKE 't\\_%'
            """
        ).fetchall()
        migrations_logged = conn.execute(
            "SELECT count(*), count(DISTINCT tenant_id) FROM tenantry.lifecycle_log "
            "WHERE action = 'migrate'"
        ).fetchone()
        control = conn.execute("SELECT version FROM tenantry.control_plane_version").fetchone()
        holidays = conn.execute("SELECT to_regclass('hr_shared.public_holidays')").fetchone()
    assert set(ledger.values()) == {HEAD.head}
    assert len(actual) == 200
    assert {name for name, *_ in actual} == set(ledger)
    assert all(all(flags) for _, *flags in actual), [row for row in actual if not all(row[1:])]
    # Two transactions per tenant: 0001 -> 0003 (in one), then the online step 0003 -> 0004.
    assert migrations_logged == (400, 200)
    assert control == (CONTROL.head,)
    assert holidays == ("hr_shared.public_holidays",)


async def test_fresh_tenant_and_migrated_tenant_have_identical_schemas(
    make_database: Callable[[str], str],
) -> None:
    """Provisioning at head and migrating to head produce the same tables, columns (in the
    same order), indexes, constraints, RLS flags, grants and policies."""
    url = make_database("tenantry_mig_same")
    (old,) = await create_fleet(url, 1, prefix="old")
    platform = start_head(url)
    await platform.start(listen=False)
    try:
        report = await FleetMigrator(platform.db, platform.compiled_schema).run()
        assert report.ok
        assert report.migrated == 1
        fresh = await platform.tenants.create("fresh")
    finally:
        await platform.stop()
    migrated_shape = snapshot(url, old.schema_name)
    fresh_shape = snapshot(url, fresh.schema_name)
    assert {name for name, *_ in fresh_shape["relations"]} >= {
        "badges",
        "employees",
        "leave_requests_status_idx",
    }
    for part in SNAPSHOT_QUERIES:
        assert migrated_shape[part] == fresh_shape[part], part


class CountingConnection:
    """Forwards to a connection and counts the statements sent."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn
        self.statements = 0

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        self.statements += 1
        return await self.conn.execute(*args, **kwargs)


async def test_status_reads_the_version_distribution_in_one_query(
    make_database: Callable[[str], str],
) -> None:
    """``migrate status`` sends exactly one statement and shows how many tenants are at
    each version; --tenant migrates just the one."""
    url = make_database("tenantry_mig_status")
    fleet = await create_fleet(url, 5, prefix="s")
    platform = start_head(url)
    await platform.start(listen=False)
    try:
        one = await commands.upgrade(platform, settings=MigrationSettings(tenant=fleet[2].slug))
        assert (one.planned, one.migrated) == (1, 1)
        async with platform.db.cell().owner_pool.connection() as conn:
            counting = CountingConnection(conn)
            status = await migration_status(
                counting,  # type: ignore[arg-type]
                head=HEAD.head,
                control_head=CONTROL.head,
            )
        assert counting.statements == 1
        assert status.versions == {BASE.head: 4, HEAD.head: 1}
        assert (status.behind, status.tenants, status.up_to_date) == (4, 5, False)
        assert status.control_version is None
        assert status.as_dict()["versions"][0] == {
            "version": BASE.head,
            "tenants": 4,
            "at_head": False,
        }
    finally:
        await platform.stop()


async def test_dry_run_prints_the_sql_and_changes_nothing(
    make_database: Callable[[str], str],
) -> None:
    """--dry-run shows the control-plane and per-tenant SQL and leaves every ledger alone."""
    url = make_database("tenantry_mig_dry")
    await create_fleet(url, 3, prefix="d")
    platform = start_head(url)
    await platform.start(listen=False)
    try:
        report = await commands.upgrade(platform, control=CONTROL, dry_run=True)
        status = await commands.status(platform, control=CONTROL)
    finally:
        await platform.stop()
    text = report.dry_run_sql or ""
    assert "CREATE TABLE hr_shared.public_holidays" in text
    assert f"3 tenant(s) at {BASE.head} -> {HEAD.head}" in text
    assert "ALTER TABLE employees ADD COLUMN badge_code" in text
    assert "tenantry.advance_schema_version(" in text
    assert "CREATE INDEX CONCURRENTLY leave_requests_status_idx" in text
    assert report.migrated == 0
    assert status.versions == {BASE.head: 3}
    assert status.control_version is None


async def test_lock_timeouts_are_retried_with_backoff(
    make_database: Callable[[str], str],
) -> None:
    """A tenant whose table is locked by a long app transaction is retried after each lock
    timeout and migrated once the lock is gone."""
    url = make_database("tenantry_mig_lock")
    (busy,) = await create_fleet(url, 1, prefix="busy")
    platform = start_head(url)
    await platform.start(listen=False)
    holder = await psycopg.AsyncConnection.connect(url, autocommit=True)
    try:
        await holder.execute(
            f"BEGIN; SET LOCAL app.tenant_id = '{busy.id}'; "
            f"SELECT count(*) FROM {busy.schema_name}.employees"
        )

        async def release() -> None:
            await asyncio.sleep(0.8)
            await holder.execute("COMMIT")

        settings = MigrationSettings(lock_timeout_ms=100, retries=8, backoff_s=0.1)
        report, _ = await asyncio.gather(commands.upgrade(platform, settings=settings), release())
        assert report.ok, report.failed
        assert report.migrated == 1
        assert report.retried >= 1
    finally:
        await holder.close()
        await platform.stop()


async def test_a_failing_canary_stops_the_run_before_the_fleet(
    make_database: Callable[[str], str],
) -> None:
    """When a canary tenant fails, no other tenant is touched and the report says why."""
    url = make_database("tenantry_mig_canary")
    fleet = await create_fleet(url, 6, prefix="c", rings=2)
    canary = [t for t in fleet if t.ring == 0]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"ALTER TABLE {canary[0].schema_name}.employees ADD COLUMN badge_code int")
    platform = start_head(url)
    await platform.start(listen=False)
    try:
        report = await commands.upgrade(platform)
        status = await commands.status(platform)
    finally:
        await platform.stop()
    assert report.waves == [("canary", 3), ("ring 1", 3)]
    assert not report.ok
    assert report.stopped
    assert "canary" in report.stopped
    assert [f.slug for f in report.failed] == [canary[0].slug]
    assert "badge_code" in report.failed[0].error
    assert report.migrated == 2
    assert status.versions == {HEAD.head: 2, BASE.head: 4}
    assert status.failures == 1


async def test_stale_spares_are_pruned_once_tenants_moved_to_the_new_head(
    make_database: Callable[[str], str],
) -> None:
    """Spare schemas built at the old head are dropped by the run, so a sign-up can never
    claim a schema the fleet has moved past."""
    url = make_database("tenantry_mig_spares")
    old = Platform(fleet_settings(url, TENANTRY_SPARE_SCHEMAS="2"), BASE)
    await old.start(listen=False)
    try:
        assert old.spares is not None
        await old.tenants.create("sp1")
        assert await old.spares.fill() == 2
    finally:
        await old.stop()
    platform = start_head(url)
    await platform.start(listen=False)
    try:
        report = await commands.upgrade(platform)
    finally:
        await platform.stop()
    assert report.migrated == 1
    assert report.pruned_spares == 2
    with psycopg.connect(url) as conn:
        left = conn.execute("SELECT count(*) FROM tenantry.spare_schemas").fetchone()
        schemas = conn.execute(
            "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'tenantry\\_spare\\_%'"
        ).fetchone()
    assert left == (0,)
    assert schemas == (0,)


@pytest.mark.parametrize("version", ["9999"])
async def test_tenant_at_an_unknown_version_is_reported_not_touched(
    make_database: Callable[[str], str], version: str
) -> None:
    """A tenant whose ledger names a version this release does not know (built by a newer
    release, say) fails alone with a message saying so."""
    url = make_database("tenantry_mig_unknown")
    fleet = await create_fleet(url, 3, prefix="u")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "UPDATE tenantry.tenants SET schema_version = %s WHERE slug = %s",
            (version, fleet[-1].slug),
        )
    platform = start_head(url)
    await platform.start(listen=False)
    try:
        report = await commands.upgrade(platform)
    finally:
        await platform.stop()
    assert report.migrated == 2
    assert [f.slug for f in report.failed] == [fleet[-1].slug]
    assert "another release" in report.failed[0].error
