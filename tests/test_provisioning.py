"""Tenant lifecycle against real PostgreSQL: create is atomic and crash-safe, suspend and
resume are idempotent, export is verifiable, offboarding leaves a tombstone."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import os
import secrets
import signal
import sys
import tarfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import psycopg
import pytest
from psycopg import errors as pg_errors
from psycopg import sql

from hr_example.schema import HR_SCHEMA
from hr_example.seed import seed_tenant
from tenantry import Platform, SchemaStep, Settings, TenantSchema
from tenantry.catalog import (
    InvalidTenantIdentifierError,
    Tenant,
    TenantExistsError,
    TenantNotFoundError,
    TenantStateError,
    TenantStatus,
    Tier,
)
from tenantry.db import SchemaDefinitionError
from tenantry.provisioning import ExportError, ProvisioningError, verify_export
from tenantry.settings import RedisSettings

MakeTenant = Callable[..., Awaitable[Tenant]]
FreshPlatform = Callable[..., Awaitable[Platform]]
HR_TABLES = {"departments", "employees", "leave_requests", "department_headcounts", "activity"}
# The step after the HR example's head (its chain grows).
NOTES_VERSION = f"{int(HR_SCHEMA.head or '0') + 1:04d}"
NOTES_STEP = SchemaStep(
    NOTES_VERSION, "CREATE TABLE notes (id bigint PRIMARY KEY, body text NOT NULL);"
)
# Sleeps only in a real tenant's schema (t_...), not in the compile dry-run at start().
SLEEP_SQL = r"SELECT pg_sleep(CASE WHEN current_schema() LIKE 't\_%' THEN {seconds} ELSE 0 END);"


def slug_for(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(5)}"


def sleepy_schema(seconds: float) -> TenantSchema:
    """HR tables, then a long sleep, then one more table: a create that is slow mid-way."""
    return TenantSchema.of(
        *HR_SCHEMA.steps,
        SchemaStep("0001s", SLEEP_SQL.format(seconds=seconds), "sleep mid-provisioning"),
        NOTES_STEP,
    )


GOOD_SCHEMA = TenantSchema.of(*HR_SCHEMA.steps, NOTES_STEP)
ALL_TABLES = {*HR_TABLES, "notes"}


@pytest.fixture
async def owner(database_url: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """A superuser connection to the session database, for looking at what exists."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
async def fresh_platform(
    make_database: Callable[[str], str], settings: Settings
) -> AsyncIterator[FreshPlatform]:
    """Factory: a started Platform with the given tenant schema, on a fresh database (or on
    ``url``); all stopped at the end of the test."""
    started: list[Platform] = []

    async def make(schema: TenantSchema, url: str | None = None) -> Platform:
        url = url or make_database("tenantry_prov")
        fresh = dataclasses.replace(
            settings,
            database=dataclasses.replace(settings.database, url=url),
            redis=RedisSettings(),
        )
        platform = Platform(fresh, schema)
        started.append(platform)
        await platform.start(listen=False)
        return platform

    yield make
    for platform in reversed(started):
        await platform.stop()


async def _state(url: str, slug: str, schema: str) -> dict[str, Any]:
    """What exists for ``slug``: catalog row status, schema, its tables, its log actions."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute("SELECT id, status FROM tenantry.tenants WHERE slug = %s", (slug,))
        row = await cur.fetchone()
        cur = await conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = %s", (schema,))
        has_schema = (await cur.fetchone()) == (1,)
        cur = await conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relkind = 'r'",
            (schema,),
        )
        tables = {r[0] for r in await cur.fetchall()}
        actions: list[str] = []
        if row is not None:
            cur = await conn.execute(
                "SELECT action FROM tenantry.lifecycle_log WHERE tenant_id = %s ORDER BY id",
                (row[0],),
            )
            actions = [r[0] for r in await cur.fetchall()]
    return {
        "status": row[1] if row else None,
        "schema": has_schema,
        "tables": tables,
        "actions": actions,
    }


def _dbname(url: str) -> str:
    return url.rsplit("/", 1)[1]


async def _sleeping_backend(admin_url: str, dbname: str, within: float = 30.0) -> int:
    """The pid of the provisioning backend of ``dbname`` once it sits in pg_sleep.

    Matched on wait_event rather than the query text: pg_stat_activity truncates the text
    (track_activity_query_size), and a one-message creation script is long.
    """
    deadline = time.monotonic() + within
    async with await psycopg.AsyncConnection.connect(admin_url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            cur = await conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s "
                "AND application_name LIKE 'tenantry-owner%%' AND wait_event = 'PgSleep' "
                "AND query LIKE '%%CREATE SCHEMA%%'",
                (dbname,),
            )
            row = await cur.fetchone()
            if row is not None:
                return int(row[0])
            await asyncio.sleep(0.05)
    pytest.fail(f"no provisioning backend started sleeping in {dbname} within {within}s")


async def _wait_backend_gone(admin_url: str, pid: int, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    async with await psycopg.AsyncConnection.connect(admin_url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            cur = await conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,))
            if await cur.fetchone() is None:
                return
            await asyncio.sleep(0.05)
    pytest.fail(f"backend {pid} still alive after {within}s")


# -- create -----------------------------------------------------------------------------
async def test_create_builds_catalog_row_schema_and_all_tables(
    platform: Platform, database_url: str
) -> None:
    """One create gives an active catalog row, the schema, every HR table and a log entry."""
    slug = slug_for("new")
    tenant = await platform.tenants.create(slug, tier="pro", name="New Co", ring=2, actor="ops")
    assert (tenant.slug, tenant.tier, tenant.status) == (slug, Tier.PRO, TenantStatus.ACTIVE)
    assert tenant.schema_name == "t_" + slug
    assert tenant.schema_version == HR_SCHEMA.head
    stored = await platform.tenants.get(slug)
    assert (stored.id, stored.name, stored.ring, stored.tier) == (tenant.id, "New Co", 2, Tier.PRO)
    assert await platform.tenants.get(tenant.id) == stored
    state = await _state(database_url, slug, tenant.schema_name)
    assert state == {"status": "active", "schema": True, "tables": HR_TABLES, "actions": ["create"]}


async def test_a_created_tenant_is_immediately_usable(platform: Platform) -> None:
    """Right after create, the tenant can write and read through the app role."""
    tenant = await platform.tenants.create(slug_for("use"))
    await seed_tenant(platform, tenant.context())
    async with platform.db.tenant_transaction(tenant.context(), readonly=True) as conn:
        cur = await conn.execute(
            "SELECT (SELECT count(*) FROM departments), (SELECT count(*) FROM employees), "
            "(SELECT count(*) FROM leave_requests)"
        )
        assert await cur.fetchone() == (3, 4, 1)


def test_creation_is_one_transaction_in_one_message(platform: Platform) -> None:
    """The creation script opens with BEGIN (binding the tenant), ends with COMMIT, and holds
    schema, tables, RLS, grants, catalog row and log entry in between."""
    slug = slug_for("script")
    tenant = Tenant(
        id=uuid4(),
        slug=slug,
        name=slug,
        tier=Tier.FREE,
        status=TenantStatus.ACTIVE,
        schema_name="t_" + slug,
        schema_version=HR_SCHEMA.head,
    )
    script = platform.tenants.creation_script(tenant, "tester")
    assert script.startswith("BEGIN; SET LOCAL search_path = ")
    assert str(tenant.id) in script.splitlines()[0]
    assert script.rstrip().endswith("COMMIT;")
    assert script.count("COMMIT") == 1
    assert "ROLLBACK" not in script
    body = script[: script.rindex("COMMIT;")]
    assert f'CREATE SCHEMA "{tenant.schema_name}"' in body
    for table in HR_TABLES:
        assert f"CREATE TABLE {table}" in body
        assert f'CREATE POLICY tenant_isolation ON "{table}"' in body
    assert body.count("FORCE ROW LEVEL SECURITY") == len(HR_TABLES)
    assert body.index("CREATE SCHEMA") < body.index("INSERT INTO tenantry.tenants")
    assert "INSERT INTO tenantry.lifecycle_log" in body
    assert "'tester'" in body


@pytest.mark.parametrize("stamped", [True, False], ids=["with-timestamps", "without"])
async def test_the_creation_script_alone_provisions_a_tenant(
    platform: Platform, database_url: str, stamped: bool
) -> None:
    """Sent as a single execute on a bare connection, the script yields a complete tenant;
    a Tenant without timestamps (as a dry run builds it) gets the server's clock."""
    slug = slug_for("onemsg")
    now = datetime.now(UTC).replace(microsecond=0) if stamped else None
    tenant = Tenant(
        id=uuid4(),
        slug=slug,
        name=slug,
        tier=Tier.FREE,
        status=TenantStatus.ACTIVE,
        schema_name="t_" + slug,
        schema_version=HR_SCHEMA.head,
        created_at=now,
        updated_at=now,
    )
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute(platform.tenants.creation_script(tenant, "tester").encode())
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    state = await _state(database_url, slug, tenant.schema_name)
    assert state == {"status": "active", "schema": True, "tables": HR_TABLES, "actions": ["create"]}
    stored = await platform.tenants.get(slug)
    assert stored.id == tenant.id
    assert stored.created_at is not None
    assert stored.updated_at == stored.created_at
    if now is not None:
        assert stored.created_at == now


async def test_duplicate_slug_raises_and_exist_ok_returns_the_existing_tenant(
    make_tenant: MakeTenant, platform: Platform
) -> None:
    """A second create of a slug fails; with exist_ok it returns the first tenant."""
    first = await make_tenant("dup")
    with pytest.raises(TenantExistsError, match=first.slug):
        await platform.tenants.create(first.slug)
    again = await platform.tenants.create(first.slug, exist_ok=True)
    assert again.id == first.id
    assert again.status == TenantStatus.ACTIVE
    # exist_ok does not paper over a different request.
    with pytest.raises(TenantExistsError):
        await platform.tenants.create(first.slug, tier="enterprise", exist_ok=True)


async def test_concurrent_creates_of_one_slug_make_one_tenant(
    platform: Platform, database_url: str
) -> None:
    """Two racing creates: exactly one wins, the other gets TenantExistsError."""
    slug = slug_for("race")
    results = await asyncio.gather(
        platform.tenants.create(slug), platform.tenants.create(slug), return_exceptions=True
    )
    winners = [r for r in results if isinstance(r, Tenant)]
    losers = [r for r in results if isinstance(r, BaseException)]
    assert len(winners) == 1, results
    assert len(losers) == 1, results
    assert isinstance(losers[0], TenantExistsError), results
    assert (await platform.tenants.get(slug)).id == winners[0].id
    state = await _state(database_url, slug, "t_" + slug)
    assert state["actions"] == ["create"]


@pytest.mark.parametrize(
    "slug", ["Bad", "admin", "a", "x;drop", "deadbeef-dead-beef-dead-beefdeadbeef"]
)
async def test_create_rejects_invalid_slugs_before_touching_the_database(
    platform: Platform, owner: psycopg.AsyncConnection[Any], slug: str
) -> None:
    """Invalid and reserved slugs raise InvalidTenantIdentifierError; nothing is written."""
    with pytest.raises(InvalidTenantIdentifierError):
        await platform.tenants.create(slug)
    cur = await owner.execute("SELECT count(*) FROM tenantry.tenants WHERE slug = %s", (slug,))
    assert await cur.fetchone() == (0,)


async def test_create_rejects_a_negative_ring_and_unknown_tier(platform: Platform) -> None:
    """Bad ring or tier values are refused up front."""
    with pytest.raises(ProvisioningError, match="ring"):
        await platform.tenants.create(slug_for("ring"), ring=-1)
    with pytest.raises(ValueError, match="platinum"):
        await platform.tenants.create(slug_for("tier"), tier="platinum")


async def test_create_refuses_to_adopt_an_orphan_schema(
    platform: Platform, owner: psycopg.AsyncConnection[Any], database_url: str
) -> None:
    """A schema of that name owned by no tenant is reported, not silently reused."""
    slug = slug_for("orphan")
    schema = sql.Identifier("t_" + slug)
    await owner.execute(sql.SQL("CREATE SCHEMA {}").format(schema))
    try:
        with pytest.raises(ProvisioningError, match="no tenant owns it"):
            await platform.tenants.create(slug)
        assert (await _state(database_url, slug, "t_" + slug))["status"] is None
    finally:
        await owner.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(schema))


async def test_a_failing_step_leaves_nothing_behind(fresh_platform: FreshPlatform) -> None:
    """A SQL error in the 2nd step aborts the whole create: no schema, no tables, no row."""
    failing = TenantSchema.of(
        SchemaStep("0001", "CREATE TABLE notes (id bigint PRIMARY KEY);"),
        # Division by zero in real tenants only: the compile dry-run at start() passes.
        SchemaStep("0002", r"SELECT 1 / CASE WHEN current_schema() LIKE 't\_%' THEN 0 ELSE 1 END;"),
        SchemaStep("0003", "CREATE TABLE tags (id bigint PRIMARY KEY);"),
    )
    platform = await fresh_platform(failing)
    assert platform.compiled_schema.tables == ("notes", "tags")
    slug = slug_for("fail")
    with pytest.raises(pg_errors.DivisionByZero):
        await platform.tenants.create(slug)
    url = platform.settings.database.url
    assert await _state(url, slug, "t_" + slug) == {
        "status": None,
        "schema": False,
        "tables": set(),
        "actions": [],
    }
    with pytest.raises(TenantNotFoundError):
        await platform.tenants.get(slug)
    # The owner connection went back to the pool clean: control-plane work still runs.
    assert await platform.tenants.list(include_deleted=True) == []


async def test_a_step_that_always_fails_is_caught_at_start(
    make_database: Callable[[str], str], settings: Settings
) -> None:
    """A broken tenant schema fails Platform.start (dry run), leaving no scratch schema."""
    url = make_database("tenantry_badschema")
    broken = TenantSchema.of(
        SchemaStep("0001", "CREATE TABLE notes (id bigint PRIMARY KEY);"),
        SchemaStep("0002", "CREATE TABLE oops (id bigint REFERENCES nowhere (id));"),
    )
    platform = Platform(
        dataclasses.replace(
            settings,
            database=dataclasses.replace(settings.database, url=url),
            redis=RedisSettings(),
        ),
        broken,
    )
    try:
        with pytest.raises(SchemaDefinitionError, match="'0002'"):
            await platform.start(listen=False)
    finally:
        await platform.stop()
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'tenantry\\_compile%%'"
        )
        assert await cur.fetchall() == []


# -- crash safety -----------------------------------------------------------------------
async def test_backend_killed_mid_create_leaves_nothing_and_a_retry_succeeds(
    fresh_platform: FreshPlatform, make_database: Callable[[str], str], pg_admin_url: str
) -> None:
    """pg_terminate_backend while the create sleeps mid-script: create raises, neither schema
    nor catalog row exists, and a retry on the same database builds the whole tenant."""
    url = make_database("tenantry_crash")
    sleepy = await fresh_platform(sleepy_schema(5), url)
    slug = slug_for("crash")
    started = time.monotonic()
    task = asyncio.create_task(sleepy.tenants.create(slug))
    try:
        pid = await _sleeping_backend(pg_admin_url, _dbname(url))
        async with await psycopg.AsyncConnection.connect(pg_admin_url, autocommit=True) as admin:
            cur = await admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            assert await cur.fetchone() == (True,)
        with pytest.raises(psycopg.OperationalError):
            await task
    finally:
        if not task.done():
            task.cancel()
    assert time.monotonic() - started < 5, "the create was not interrupted mid-sleep"
    assert await _state(url, slug, "t_" + slug) == {
        "status": None,
        "schema": False,
        "tables": set(),
        "actions": [],
    }
    retry = await fresh_platform(GOOD_SCHEMA, url)
    tenant = await retry.tenants.create(slug)
    assert await _state(url, slug, tenant.schema_name) == {
        "status": "active",
        "schema": True,
        "tables": ALL_TABLES,
        "actions": ["create"],
    }


_PROVISION_SCRIPT = """
import asyncio, sys
from hr_example.schema import HR_SCHEMA
from tenantry import Platform, SchemaStep, Settings, TenantSchema

async def main(url, slug):
    schema = TenantSchema.of(
        *HR_SCHEMA.steps, SchemaStep("0001s", {sleep!r}), SchemaStep({version!r}, {notes!r})
    )
    platform = Platform(Settings.from_env({{"DATABASE_URL": url}}), schema)
    await platform.start(listen=False)
    print("started", flush=True)
    await platform.tenants.create(slug)
    print("created", flush=True)
    await platform.stop()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


@pytest.mark.slow
async def test_provisioning_process_killed_mid_create_leaves_no_half_tenant(
    fresh_platform: FreshPlatform, make_database: Callable[[str], str], pg_admin_url: str
) -> None:
    """SIGKILL the provisioning process mid-create: the tenant is either absent or complete,
    never a schema without a row or a row without a schema; create(exist_ok=True) finishes."""
    url = make_database("tenantry_sigkill")
    slug = slug_for("killed")
    script = _PROVISION_SCRIPT.format(
        sleep=SLEEP_SQL.format(seconds=2), version=NOTES_VERSION, notes=NOTES_STEP.sql
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        url,
        slug,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    try:
        pid = await _sleeping_backend(pg_admin_url, _dbname(url))
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.returncode is None:
            proc.kill()
        out, _ = await proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert b"created" not in out
    # The orphaned backend may still run the rest of the message; let it finish either way.
    await _wait_backend_gone(pg_admin_url, pid)
    state = await _state(url, slug, "t_" + slug)
    assert state["status"] in (None, "active"), state
    assert state["schema"] == (state["status"] is not None), state
    if state["schema"]:
        assert state["tables"] == ALL_TABLES, state
        assert state["actions"] == ["create"], state
    else:
        assert state == {"status": None, "schema": False, "tables": set(), "actions": []}
    retry = await fresh_platform(GOOD_SCHEMA, url)
    tenant = await retry.tenants.create(slug, exist_ok=True)
    assert tenant.slug == slug
    assert await _state(url, slug, "t_" + slug) == {
        "status": "active",
        "schema": True,
        "tables": ALL_TABLES,
        "actions": ["create"],
    }


# -- suspend / resume -------------------------------------------------------------------
async def test_suspend_and_resume_change_status_and_are_idempotent(
    make_tenant: MakeTenant, platform: Platform, database_url: str
) -> None:
    """suspend -> suspended (again: no-op), resume -> active (again: no-op), logged once each."""
    tenant = await make_tenant("susp")
    suspended = await platform.tenants.suspend(tenant.slug, reason="unpaid")
    assert suspended.status == TenantStatus.SUSPENDED
    again = await platform.tenants.suspend(tenant.id)
    assert again.status == TenantStatus.SUSPENDED
    assert again.updated_at == suspended.updated_at
    resumed = await platform.tenants.resume(tenant.slug)
    assert resumed.status == TenantStatus.ACTIVE
    assert (await platform.tenants.resume(tenant.slug)).status == TenantStatus.ACTIVE
    state = await _state(database_url, tenant.slug, tenant.schema_name)
    assert state["actions"] == ["create", "suspend", "resume"]


async def test_resume_of_an_active_tenant_is_a_no_op(
    make_tenant: MakeTenant, platform: Platform, database_url: str
) -> None:
    """Resuming an active tenant changes nothing and logs nothing."""
    tenant = await make_tenant("noop")
    before = await platform.tenants.get(tenant.slug)
    after = await platform.tenants.resume(tenant.slug)
    assert after == before
    assert (await _state(database_url, tenant.slug, tenant.schema_name))["actions"] == ["create"]


async def test_suspend_records_the_reason_and_actor(
    make_tenant: MakeTenant, platform: Platform, owner: psycopg.AsyncConnection[Any]
) -> None:
    """The lifecycle log keeps who suspended the tenant and why."""
    tenant = await make_tenant("why")
    await platform.tenants.suspend(tenant.slug, actor="billing-bot", reason="unpaid invoice")
    cur = await owner.execute(
        "SELECT actor, detail FROM tenantry.lifecycle_log WHERE tenant_id = %s "
        "AND action = 'suspend'",
        (tenant.id,),
    )
    assert await cur.fetchall() == [("billing-bot", {"reason": "unpaid invoice"})]


async def test_suspended_tenant_data_is_untouched_after_resume(
    make_tenant: MakeTenant, platform: Platform
) -> None:
    """Suspension only changes status: every row is there after resume."""
    tenant = await make_tenant("keep")
    await seed_tenant(platform, tenant.context())

    async def snapshot() -> list[tuple[Any, ...]]:
        async with platform.db.tenant_transaction(tenant.context(), readonly=True) as conn:
            cur = await conn.execute(
                "SELECT 'd', id, name FROM departments UNION ALL "
                "SELECT 'e', id, email FROM employees UNION ALL "
                "SELECT 'l', id, status FROM leave_requests ORDER BY 1, 2"
            )
            return await cur.fetchall()

    before = await snapshot()
    assert len(before) == 8
    await platform.tenants.suspend(tenant.slug)
    await platform.tenants.resume(tenant.slug)
    assert await snapshot() == before


async def test_lifecycle_operations_on_unknown_tenants_raise_not_found(platform: Platform) -> None:
    """suspend/resume/get of a slug nobody has raise TenantNotFoundError."""
    for operation in (platform.tenants.suspend, platform.tenants.resume, platform.tenants.get):
        with pytest.raises(TenantNotFoundError):
            await operation(slug_for("ghost"))


# -- export / offboard ------------------------------------------------------------------
async def test_export_writes_a_verifiable_archive_with_one_jsonl_per_table(
    make_tenant: MakeTenant, platform: Platform, tmp_path: Path
) -> None:
    """The tar.gz holds a manifest and one jsonl per HR table; counts and sha256 match."""
    tenant = await make_tenant("exp")
    other = await make_tenant("expother")
    await seed_tenant(platform, tenant.context())
    await seed_tenant(platform, other.context())
    seen: list[tuple[str, int]] = []
    result = await platform.tenants.export(
        tenant.slug, tmp_path, on_table=lambda t, n: seen.append((t, n))
    )
    assert result.path.parent == tmp_path
    assert result.path.name.startswith(tenant.slug)
    assert result.path.name.endswith(".tar.gz")
    manifest = verify_export(result.path)
    assert manifest == result.manifest
    assert manifest["format"] == "tenantry-export/1"
    assert manifest["tenant"]["id"] == str(tenant.id)
    counts = {t["name"]: t["rows"] for t in manifest["tables"]}
    assert counts == {
        "departments": 3,
        "employees": 4,
        "leave_requests": 1,
        "department_headcounts": 0,  # kept by the events consumer; the seed publishes none
        "activity": 0,
    }
    assert dict(seen) == counts
    assert result.total_rows == 8
    with tarfile.open(result.path, "r:gz") as tar:
        names = sorted(tar.getnames())
        assert names == ["manifest.json", *sorted(f"tables/{t}.jsonl" for t in HR_TABLES)]
        member = tar.extractfile("tables/employees.jsonl")
        assert member is not None
        rows = [json.loads(line) for line in member.read().splitlines()]
    # Only this tenant's rows, even though the other tenant has the same shape of data.
    assert {r["tenant_id"] for r in rows} == {str(tenant.id)}
    assert all(r["email"].endswith(f"@{tenant.slug}.example") for r in rows)
    # The archive is renamed into place: no .partial is left over.
    assert await asyncio.to_thread(os.listdir, tmp_path) == [result.path.name]


async def test_verify_export_detects_tampering(
    make_tenant: MakeTenant, platform: Platform, tmp_path: Path
) -> None:
    """A jsonl whose bytes differ from the manifest fails verification."""
    tenant = await make_tenant("tamper")
    await seed_tenant(platform, tenant.context())
    result = await platform.tenants.export(tenant.slug, tmp_path / "out")
    tampered = tmp_path / "tampered.tar.gz"
    with tarfile.open(result.path, "r:gz") as src, tarfile.open(tampered, "w:gz") as dst:
        for member in src.getmembers():
            data = src.extractfile(member)
            assert data is not None
            content = data.read()
            if member.name == "tables/departments.jsonl":
                content = content.replace(b"Sales", b"Sa1es")
            member.size = len(content)
            dst.addfile(member, io.BytesIO(content))
    with pytest.raises(ExportError, match="departments"):
        verify_export(tampered)


async def test_offboard_exports_drops_the_schema_and_leaves_a_tombstone(
    make_tenant: MakeTenant, platform: Platform, database_url: str, tmp_path: Path
) -> None:
    """Offboarding archives the data, drops the schema, keeps a deleted row; the slug stays
    taken."""
    tenant = await make_tenant("off")
    await seed_tenant(platform, tenant.context())
    result = await platform.tenants.offboard(tenant.slug, tmp_path, actor="ops")
    assert verify_export(result.path)["tenant"]["slug"] == tenant.slug
    assert result.total_rows == 8
    state = await _state(database_url, tenant.slug, tenant.schema_name)
    assert state["status"] == "deleted"
    assert state["schema"] is False
    tombstone = await platform.tenants.get(tenant.slug)
    assert tombstone.status == TenantStatus.DELETED
    assert tenant.slug not in {t.slug for t in await platform.tenants.list()}
    assert tenant.slug in {t.slug for t in await platform.tenants.list(include_deleted=True)}
    with pytest.raises(TenantExistsError, match="never reused"):
        await platform.tenants.create(tenant.slug)
    with pytest.raises(TenantExistsError):
        await platform.tenants.create(tenant.slug, exist_ok=True)


async def test_offboard_of_a_suspended_tenant_works(
    make_tenant: MakeTenant, platform: Platform, database_url: str, tmp_path: Path
) -> None:
    """A suspended tenant can be offboarded directly."""
    tenant = await make_tenant("suspoff")
    await platform.tenants.suspend(tenant.slug)
    await platform.tenants.offboard(tenant.id, tmp_path)
    assert (await _state(database_url, tenant.slug, tenant.schema_name))["status"] == "deleted"


async def test_operations_on_a_deleted_tenant_raise_tenant_state_error(
    make_tenant: MakeTenant, platform: Platform, tmp_path: Path
) -> None:
    """Offboard, export, suspend and resume of an offboarded tenant are refused."""
    tenant = await make_tenant("gone")
    await platform.tenants.offboard(tenant.slug, tmp_path)
    with pytest.raises(TenantStateError, match="deleted"):
        await platform.tenants.offboard(tenant.slug, tmp_path)
    with pytest.raises(TenantStateError):
        await platform.tenants.export(tenant.slug, tmp_path)
    with pytest.raises(TenantStateError):
        await platform.tenants.suspend(tenant.slug)
    with pytest.raises(TenantStateError):
        await platform.tenants.resume(tenant.slug)


async def test_lifecycle_log_records_every_transition(
    make_tenant: MakeTenant, platform: Platform, owner: psycopg.AsyncConnection[Any], tmp_path: Path
) -> None:
    """create, suspend, resume and offboard each leave one entry, in order."""
    tenant = await make_tenant("log", tier="enterprise")
    await platform.tenants.suspend(tenant.slug, actor="a1")
    await platform.tenants.resume(tenant.slug, actor="a2")
    await platform.tenants.offboard(tenant.slug, tmp_path, actor="a3")
    cur = await owner.execute(
        "SELECT action, actor, detail FROM tenantry.lifecycle_log WHERE tenant_id = %s ORDER BY id",
        (tenant.id,),
    )
    rows = await cur.fetchall()
    assert [(action, actor) for action, actor, _ in rows] == [
        ("create", "system"),
        ("suspend", "a1"),
        ("resume", "a2"),
        ("offboard-start", "a3"),
        ("offboard", "a3"),
    ]
    assert rows[0][2] == {
        "tier": "enterprise",
        "schema_version": HR_SCHEMA.head,
        "schema_source": "built",
    }
    assert rows[-1][2]["rows"] == 0
    assert rows[-1][2]["archive"].startswith(str(tmp_path))
