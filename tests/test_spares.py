"""Spare schemas: creation renames a pre-built schema, isolation is intact, stock is managed."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from hr_example import HR_SCHEMA
from tenantry import Platform, SchemaStep, Settings, TenantSchema
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

    newer = TenantSchema((*HR_SCHEMA.steps, SchemaStep("0002", "CREATE TABLE notes (body text)")))
    new = Platform(tuned, newer)
    await new.start(listen=False)
    try:
        assert new.spares is not None
        assert await new.spares.count() == 0
        async with new.db.transaction(readonly=True) as conn:
            cur = await conn.execute(
                "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'tenantry\\_spare\\_%'"
            )
            assert await cur.fetchone() == (0,)
        tenant = await new.tenants.create(unique_slug())
        assert tenant.schema_version == "0002"
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
