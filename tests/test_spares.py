"""Spare schemas: creation renames a pre-built schema, isolation is intact, stock is managed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from uuid import uuid4

import psycopg
import pytest

from hr_example import HR_SCHEMA
from tenantry import Platform, SchemaStep, Settings, TenantSchema
from tenantry.catalog import TenantExistsError
from tenantry.provisioning.spares import CLAIM_SQL, RELAXED_CLAIM_SQL
from tenantry.settings import ProvisioningSettings
from tests.conftest import unique_slug


@pytest.fixture
async def spare_platform(make_database, settings: Settings):
    """A platform on a fresh database that keeps 4 spare schemas in stock."""
    tuned = replace(
        settings.with_database_url(make_database("tenantry_spares")),
        provisioning=ProvisioningSettings(spare_schemas=4),
    )
    platform = Platform(tuned, HR_SCHEMA)
    await platform.start(listen=False)
    yield platform
    await platform.stop()


async def _schema_source(platform: Platform, tenant_id) -> str:
    async with platform.db.transaction(readonly=True) as conn:
        cur = await conn.execute(
            "SELECT detail->>'schema_source' FROM tenantry.lifecycle_log "
            "WHERE tenant_id = %s AND action = 'create'",
            (tenant_id,),
        )
        row = await cur.fetchone()
    assert row is not None
    return str(row[0])


async def test_create_renames_a_spare_and_falls_back_to_building_when_none_is_left(
    spare_platform: Platform,
) -> None:
    """With spares in stock a tenant gets one; with the stock used up it is built."""
    assert spare_platform.spares is not None
    assert await spare_platform.spares.fill() == 4
    assert await spare_platform.spares.count() == 4
    first = await spare_platform.tenants.create(unique_slug())
    assert await _schema_source(spare_platform, first.id) == "spare"
    assert await spare_platform.spares.count() == 3
    for _ in range(3):
        await spare_platform.tenants.create(unique_slug())
    built = await spare_platform.tenants.create(unique_slug())
    assert await _schema_source(spare_platform, built.id) == "built"


async def test_a_tenant_on_a_spare_schema_is_isolated_like_any_other(
    spare_platform: Platform,
) -> None:
    """Rows written through a renamed spare carry its tenant's id and stay invisible to others."""
    assert spare_platform.spares is not None
    await spare_platform.spares.fill(2)
    one = await spare_platform.tenants.create(unique_slug())
    two = await spare_platform.tenants.create(unique_slug())
    for tenant in (one, two):
        async with spare_platform.db.tenant_transaction(tenant.context()) as conn:
            await conn.execute("INSERT INTO departments (name) VALUES (%s)", (tenant.slug,))
    async with spare_platform.db.tenant_transaction(one.context()) as conn:
        cur = await conn.execute(
            "SELECT name, tenant_id, current_schema() FROM departments ORDER BY id"
        )
        assert await cur.fetchall() == [(one.slug, one.id, one.schema_name)]
        # Pointing the search_path at the other tenant's schema shows none of its rows.
        await conn.execute("SELECT set_config('search_path', %s, true)", (f'"{two.schema_name}"',))
        cur = await conn.execute("SELECT count(*) FROM departments")
        assert await cur.fetchone() == (0,)


async def test_concurrent_creates_never_share_a_spare(spare_platform: Platform) -> None:
    """SKIP LOCKED hands each concurrent creation a different spare (or builds one)."""
    assert spare_platform.spares is not None
    await spare_platform.spares.fill(3)
    tenants = await asyncio.gather(
        *(spare_platform.tenants.create(unique_slug()) for _ in range(6))
    )
    schemas = {t.schema_name for t in tenants}
    assert len(schemas) == 6
    async with spare_platform.db.transaction(readonly=True) as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM pg_namespace WHERE nspname = ANY(%s)", (list(schemas),)
        )
        assert await cur.fetchone() == (6,)
    assert await spare_platform.spares.count() == 0


async def test_spares_of_an_older_schema_version_are_pruned_at_start(
    make_database, settings: Settings
) -> None:
    """A new head version drops stale spares instead of handing them out."""
    url = make_database("tenantry_spares_prune")
    tuned = replace(
        settings.with_database_url(url), provisioning=ProvisioningSettings(spare_schemas=2)
    )
    old = Platform(tuned, HR_SCHEMA)
    await old.start(listen=False)
    assert old.spares is not None
    await old.spares.fill()
    await old.stop()

    version = f"{len(HR_SCHEMA.steps) + 1:04d}"  # the step after the example's head
    newer = TenantSchema((*HR_SCHEMA.steps, SchemaStep(version, "CREATE TABLE notes (body text)")))
    new = Platform(tuned, newer)
    await new.start(listen=False)
    try:
        assert new.spares is not None
        assert await new.spares.count() == 0
        async with new.db.transaction(readonly=True) as conn:
            cur = await conn.execute(
                "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'ts\\_%'"
            )
            assert await cur.fetchone() == (0,)
        tenant = await new.tenants.create(unique_slug())
        assert tenant.schema_version == version
    finally:
        await new.stop()


async def test_background_refill_tops_the_stock_up_after_a_claim(
    make_database, settings: Settings
) -> None:
    """A long-running platform rebuilds the spare it handed out, off the request path."""
    tuned = replace(
        settings.with_database_url(make_database("tenantry_spares_bg")),
        provisioning=ProvisioningSettings(spare_schemas=2),
    )
    platform = Platform(tuned, HR_SCHEMA)
    await platform.start(listen=True)
    try:
        assert platform.spares is not None
        for _ in range(100):
            if await platform.spares.count() == 2:
                break
            await asyncio.sleep(0.1)
        assert await platform.spares.count() == 2
        await platform.tenants.create(unique_slug())
        for _ in range(100):
            if await platform.spares.count() == 2:
                break
            await asyncio.sleep(0.1)
        assert await platform.spares.count() == 2
    finally:
        await platform.stop()


async def _stock(platform: Platform) -> set[str]:
    async with platform.db.transaction(readonly=True) as conn:
        cur = await conn.execute("SELECT schema_name FROM tenantry.spare_schemas")
        return {name for (name,) in await cur.fetchall()}


async def test_n_concurrent_sign_ups_claim_n_distinct_spares(spare_platform: Platform) -> None:
    """12 sign-ups at once with 12 spares in stock: every one gets a spare, each spare goes
    to exactly one tenant, and the tenant's schema is that spare, unrenamed."""
    assert spare_platform.spares is not None
    await spare_platform.spares.fill(12)
    stock = await _stock(spare_platform)
    assert len(stock) == 12
    tenants = await asyncio.gather(
        *(spare_platform.tenants.create(unique_slug()) for _ in range(12))
    )
    assert sorted(t.schema_name for t in tenants) == sorted(stock)
    assert [await _schema_source(spare_platform, t.id) for t in tenants] == ["spare"] * 12
    assert await _stock(spare_platform) == set()
    async with spare_platform.db.transaction(readonly=True) as conn:
        cur = await conn.execute(
            "SELECT t.slug, t.schema_name FROM tenantry.tenants t "
            "JOIN pg_namespace n ON n.nspname = t.schema_name WHERE t.id = ANY(%s)",
            ([t.id for t in tenants],),
        )
        assert sorted(await cur.fetchall()) == sorted((t.slug, t.schema_name) for t in tenants)
    for tenant in tenants:  # each one serves its own rows through the catalog's mapping
        async with spare_platform.db.tenant_transaction(tenant.context()) as conn:
            await conn.execute("INSERT INTO departments (name) VALUES (%s)", (tenant.slug,))
            cur = await conn.execute("SELECT name FROM departments")
            assert await cur.fetchall() == [(tenant.slug,)]


async def test_a_failed_claim_leaves_the_spare_in_stock(spare_platform: Platform) -> None:
    """A sign-up whose catalog row cannot be written (its slug is taken) claims nothing:
    the claim and the catalog row are one statement."""
    assert spare_platform.spares is not None
    await spare_platform.spares.fill(2)
    taken = await spare_platform.tenants.create(unique_slug())
    stock = await _stock(spare_platform)
    assert len(stock) == 1
    with pytest.raises(TenantExistsError):
        await spare_platform.tenants.create(taken.slug)
    assert await _stock(spare_platform) == stock


async def test_a_claim_killed_mid_statement_leaves_the_spare_in_stock(
    spare_platform: Platform,
) -> None:
    """The claiming backend is terminated after it took the spare but while its catalog
    row waits on a lock: nothing of the claim survives; the next sign-up gets that spare."""
    assert spare_platform.spares is not None
    await spare_platform.spares.fill(1)
    [spare] = await _stock(spare_platform)
    slug = unique_slug()
    pool = spare_platform.db.cell().owner_pool
    async with pool.connection() as blocker:
        # An uncommitted row with the same slug: the claim's INSERT waits on it.
        await blocker.execute("BEGIN")
        await blocker.execute(
            "INSERT INTO tenantry.tenants (id, slug, name, tier, status, schema_name) "
            "VALUES (gen_random_uuid(), %s, 'blocker', 'free', 'active', 'blocker_schema')",
            (slug,),
        )
        claim = asyncio.create_task(spare_platform.tenants.create(slug))
        async with pool.connection() as watcher:
            for _ in range(200):
                cur = await watcher.execute(
                    "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND query LIKE '%%spare_schemas%%'"
                )
                row = await cur.fetchone()
                if row:
                    break
                await asyncio.sleep(0.05)
            assert row, "the claim never waited on the blocker"
            await watcher.execute("SELECT pg_terminate_backend(%s)", (row[0],))
        with pytest.raises(psycopg.OperationalError):  # its connection died under it
            await claim
        await blocker.execute("ROLLBACK")
    assert await _stock(spare_platform) == {spare}
    async with spare_platform.db.transaction(readonly=True) as conn:
        cur = await conn.execute("SELECT count(*) FROM tenantry.tenants WHERE slug = %s", (slug,))
        assert await cur.fetchone() == (0,)
    tenant = await spare_platform.tenants.create(slug)
    assert tenant.schema_name == spare


@asynccontextmanager
async def _relaxed_platform(
    make_database: Callable[[str], str], settings: Settings, *, spares: int
) -> AsyncIterator[Platform]:
    """A started platform on a fresh database whose claims do not wait for the WAL flush
    (``synchronous_claims`` off), keeping ``spares`` in stock."""
    tuned = replace(
        settings.with_database_url(make_database("tenantry_spares_relaxed")),
        provisioning=ProvisioningSettings(spare_schemas=spares, synchronous_claims=False),
    )
    platform = Platform(tuned, HR_SCHEMA)
    await platform.start(listen=False)
    try:
        yield platform
    finally:
        await platform.stop()


async def test_claims_without_waiting_for_the_wal_flush_are_still_atomic(
    make_database, settings: Settings
) -> None:
    """With ``synchronous_claims`` off a claim runs in its own transaction with
    ``synchronous_commit = off``: concurrent sign-ups still get distinct spares, a failed
    one still leaves its spare in stock, and the setting does not leak to the connection."""
    async with _relaxed_platform(make_database, settings, spares=6) as platform:
        assert platform.spares is not None
        assert not platform.spares.synchronous
        await platform.spares.fill()
        stock = await _stock(platform)
        tenants = await asyncio.gather(*(platform.tenants.create(unique_slug()) for _ in range(5)))
        assert {t.schema_name for t in tenants} < stock
        left = await _stock(platform)
        assert left == stock - {t.schema_name for t in tenants}
        assert len(left) == 1
        with pytest.raises(TenantExistsError):
            await platform.tenants.create(tenants[0].slug)
        assert await _stock(platform) == left
        async with platform.db.cell().owner_pool.connection() as conn:
            cur = await conn.execute("SHOW synchronous_commit")
            assert await cur.fetchone() == ("on",)


async def _setting_at_commit(platform: Platform) -> list[str]:
    """Sign up one tenant from a spare; the ``synchronous_commit`` its claim's transaction
    had when it committed, as a deferred trigger (run by the COMMIT itself) saw it."""
    assert platform.spares is not None
    async with platform.db.cell().owner_pool.connection() as conn:
        await conn.execute(
            """
            CREATE TABLE public.seen_at_commit (setting text);
            CREATE FUNCTION public.record_setting() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO public.seen_at_commit VALUES (current_setting('synchronous_commit'));
                RETURN NULL;
            END $$;
            CREATE CONSTRAINT TRIGGER record_setting AFTER INSERT ON tenantry.tenants
                DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
                EXECUTE FUNCTION public.record_setting();
            """
        )
    await platform.spares.fill(1)
    tenant = await platform.tenants.create(unique_slug())
    assert tenant.schema_name.startswith("ts_")  # a claim, not a build
    async with platform.db.cell().owner_pool.connection() as conn:
        cur = await conn.execute("SELECT setting FROM public.seen_at_commit")
        return [str(row[0]) for row in await cur.fetchall()]


async def test_a_claim_commits_without_waiting_for_the_wal_flush_only_when_told(
    make_database, settings: Settings, spare_platform: Platform
) -> None:
    """With ``synchronous_claims`` off the claim is still one prepared statement, and its
    transaction commits with ``synchronous_commit = off`` (what decides whether a COMMIT
    waits for its WAL flush); by default it commits with the server's setting, ``on``."""
    assert RELAXED_CLAIM_SQL != CLAIM_SQL
    assert "set_config" in RELAXED_CLAIM_SQL
    assert await _setting_at_commit(spare_platform) == ["on"]
    async with _relaxed_platform(make_database, settings, spares=1) as platform:
        assert await _setting_at_commit(platform) == ["off"]


@pytest.mark.parametrize("earlier_commits", range(6))
async def test_a_failed_claim_without_the_wal_flush_leaves_its_connection_usable(
    make_database, settings: Settings, earlier_commits: int
) -> None:
    """A claim with ``synchronous_claims`` off that fails (the slug is taken) leaves its
    connection usable, whichever use of ``COMMIT`` on that connection came before it
    (psycopg prepares a statement on its fifth use; an earlier form of this claim, a
    ``BEGIN`` ... ``COMMIT`` pipeline, once left a connection believing it had prepared a
    ``COMMIT`` PostgreSQL had skipped). Afterwards the connection still commits and
    claims."""
    async with _relaxed_platform(make_database, settings, spares=2) as platform:
        assert platform.spares is not None
        await platform.spares.fill()
        taken = await platform.tenants.create(unique_slug())
        pool = platform.db.cell().owner_pool
        async with pool.connection() as conn:
            for _ in range(earlier_commits):
                await conn.execute("BEGIN")
                await conn.execute("COMMIT")
            clash = replace(taken, id=uuid4())  # same slug: the catalog refuses it
            with pytest.raises(psycopg.errors.UniqueViolation):
                await platform.spares.claim(conn, clash, "test")
            await conn.execute("ROLLBACK")
            for _ in range(6):
                await conn.execute("BEGIN")
                await conn.execute("COMMIT")
            fresh = replace(taken, id=uuid4(), slug=unique_slug())
            assert await platform.spares.claim(conn, fresh, "test") is not None
            await conn.execute("BEGIN")
            await conn.execute("COMMIT")


async def test_a_sign_up_from_a_spare_is_announced_after_it_commits(
    spare_platform: Platform,
) -> None:
    """The claim itself sends no NOTIFY (that would hold a database-wide lock through its
    commit); the claiming process announces the tenant right after. Another process that
    had cached the slug as unknown serves it at once, well within the negative TTL."""
    assert "pg_notify" not in CLAIM_SQL
    other = Platform(spare_platform.settings, HR_SCHEMA)
    await other.start(listen=False)
    await other.directory.start()
    try:
        other.directory.negative_ttl = 300.0  # only the announcement can clear the entry
        slug = unique_slug("announced")
        assert await other.directory.get(slug) is None  # cached as unknown
        await spare_platform.spares.fill()
        tenant = await spare_platform.tenants.create(slug)
        assert tenant.schema_name.startswith("ts_")  # a claim, not a build
        await spare_platform.spares.announced()  # sent (the NOTIFY committed) ...
        for _ in range(200):  # ... and heard by the other process's listener
            found = await other.directory.get(slug)
            if found is not None:
                break
            await asyncio.sleep(0.01)
        assert found is not None
        assert found.id == tenant.id
    finally:
        await other.stop()
