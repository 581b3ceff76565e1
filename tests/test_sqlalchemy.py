"""SQLAlchemy 2 integration: every transaction of a tenant_session is bound to one tenant,
with row-level security as the net under the ORM."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from uuid import UUID

import pytest
from psycopg import errors as pg_errors
from sqlalchemy import FetchedValue, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from tenantry import NoTenantContextError, Platform, Settings, tenant_scope
from tenantry.catalog import Tenant
from tenantry.db.sqlalchemy import create_tenant_engine, tenant_session

MakeTenant = Callable[..., Awaitable[Tenant]]


class Base(DeclarativeBase):
    pass


class Department(Base):
    """The HR departments table, unqualified: search_path picks the tenant's schema."""

    __tablename__ = "departments"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    tenant_id: Mapped[UUID] = mapped_column(server_default=FetchedValue())


@pytest.fixture
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    """A tenant engine on the app role, one pooled connection (so reuse is observable)."""
    eng = create_tenant_engine(settings.database.resolved_app_url(), pool_size=1, max_overflow=0)
    yield eng
    await eng.dispose()


@pytest.fixture
async def pair(make_tenant: MakeTenant) -> tuple[Tenant, Tenant]:
    """Two fresh tenants."""
    return await make_tenant("saa"), await make_tenant("sab")


async def _names(engine: AsyncEngine, tenant: Tenant) -> list[str]:
    async with tenant_session(engine, tenant.context()) as session:
        return list((await session.scalars(select(Department.name).order_by(Department.id))).all())


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_create_tenant_engine_switches_to_the_psycopg_dialect(scheme: str) -> None:
    """A plain postgresql:// (or postgres://) URL gets the psycopg (v3) async driver."""
    eng = create_tenant_engine(f"{scheme}://app@db.invalid:5432/x")
    try:
        assert eng.url.drivername == "postgresql+psycopg"
        assert (eng.url.username, eng.url.host, eng.url.database) == ("app", "db.invalid", "x")
    finally:
        eng.sync_engine.dispose()


async def test_engine_connections_are_autocommit_at_the_driver(engine: AsyncEngine) -> None:
    """tenantry opens transactions itself, so the driver connection is in autocommit mode."""
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        assert raw.driver_connection is not None
        assert raw.driver_connection.autocommit is True


async def test_orm_and_text_queries_see_only_the_bound_tenants_rows(
    engine: AsyncEngine, pair: tuple[Tenant, Tenant], platform: Platform
) -> None:
    """Rows written through the ORM as A are invisible to B, and vice versa."""
    a, b = pair
    async with tenant_session(engine, a.context()) as session:
        session.add_all([Department(name="a-one"), Department(name="a-two")])
    async with tenant_session(engine, b.context()) as session:
        session.add(Department(name="b-one"))
    assert await _names(engine, a) == ["a-one", "a-two"]
    assert await _names(engine, b) == ["b-one"]
    async with tenant_session(engine, b.context()) as session:
        row = (
            await session.execute(
                text(
                    "SELECT current_user, current_schema(), current_setting('app.tenant_id'), "
                    "(SELECT count(*) FROM departments), "
                    "(SELECT count(DISTINCT tenant_id) FROM departments)"
                )
            )
        ).one()
    assert tuple(row) == (platform.settings.database.app_role, b.schema_name, str(b.id), 1, 1)
    # The ORM stamped tenant_id from the binding, not from anything the code passed.
    async with tenant_session(engine, a.context()) as session:
        ids = set((await session.scalars(select(Department.tenant_id))).all())
    assert ids == {a.id}


async def test_the_tenant_comes_from_the_current_context(
    engine: AsyncEngine, pair: tuple[Tenant, Tenant]
) -> None:
    """Without ctx, tenant_session binds the tenant of the current scope."""
    a, _ = pair
    with tenant_scope(a.context()):
        async with tenant_session(engine) as session:
            session.add(Department(name="scoped"))
    assert await _names(engine, a) == ["scoped"]


async def test_explicit_ctx_wins_over_the_current_scope(
    engine: AsyncEngine, pair: tuple[Tenant, Tenant]
) -> None:
    """Passing ctx binds that tenant even inside another tenant's scope."""
    a, b = pair
    with tenant_scope(a.context()):
        async with tenant_session(engine, b.context()) as session:
            session.add(Department(name="for-b"))
    assert await _names(engine, a) == []
    assert await _names(engine, b) == ["for-b"]


async def test_commit_inside_the_block_keeps_the_tenant_binding(
    engine: AsyncEngine, pair: tuple[Tenant, Tenant]
) -> None:
    """After session.commit(), the next transaction is bound to the same tenant."""
    a, _ = pair
    async with tenant_session(engine, a.context()) as session:
        session.add(Department(name="first"))
        await session.commit()
        bound = (
            await session.execute(
                text("SELECT current_setting('app.tenant_id', true), current_schema()")
            )
        ).one()
        assert tuple(bound) == (str(a.id), a.schema_name)
        # A write after the commit relies on the binding for tenant_id and search_path.
        session.add(Department(name="second"))
        await session.commit()
        session.add(Department(name="third"))
        names = (await session.scalars(select(Department.name).order_by(Department.id))).all()
        assert list(names) == ["first", "second", "third"]
    assert await _names(engine, a) == ["first", "second", "third"]


async def test_an_exception_rolls_the_block_back(
    engine: AsyncEngine, pair: tuple[Tenant, Tenant]
) -> None:
    """Work flushed inside a block that raises is not committed."""
    a, _ = pair

    async def change_mind() -> None:
        async with tenant_session(engine, a.context()) as session:
            session.add(Department(name="doomed"))
            await session.flush()
            await session.execute(text("INSERT INTO departments (name) VALUES ('doomed-too')"))
            raise RuntimeError("changed my mind")

    with pytest.raises(RuntimeError, match="changed my mind"):
        await change_mind()
    assert await _names(engine, a) == []


async def test_only_the_uncommitted_part_is_rolled_back(
    engine: AsyncEngine, pair: tuple[Tenant, Tenant]
) -> None:
    """A commit inside the block stands; work after it is rolled back on error."""
    a, _ = pair

    async def fail_after_a_commit() -> None:
        async with tenant_session(engine, a.context()) as session:
            session.add(Department(name="kept"))
            await session.commit()
            session.add(Department(name="lost"))
            await session.flush()
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await fail_after_a_commit()
    assert await _names(engine, a) == ["kept"]


async def test_no_bound_tenant_raises(engine: AsyncEngine) -> None:
    """With no tenant bound and none given, tenant_session fails closed before any query."""
    with pytest.raises(NoTenantContextError):
        async with tenant_session(engine):
            pytest.fail("the block must not run")
    with tenant_scope(None), pytest.raises(NoTenantContextError):
        async with tenant_session(engine):
            pytest.fail("the block must not run")
    assert engine.sync_engine.pool.checkedout() == 0


async def test_orm_cannot_write_rows_for_another_tenant(
    engine: AsyncEngine, pair: tuple[Tenant, Tenant]
) -> None:
    """Setting tenant_id to another tenant through the ORM is refused by RLS."""
    a, b = pair
    with pytest.raises(DBAPIError) as info:
        async with tenant_session(engine, a.context()) as session:
            session.add(Department(name="smuggled", tenant_id=b.id))
    assert isinstance(info.value.orig, pg_errors.InsufficientPrivilege)
    assert await _names(engine, a) == []
    assert await _names(engine, b) == []


async def test_pooled_connection_carries_no_tenant_after_the_session(
    engine: AsyncEngine, pair: tuple[Tenant, Tenant]
) -> None:
    """The binding is transaction-local: the engine's one connection is clean afterwards."""
    a, _ = pair
    async with tenant_session(engine, a.context()) as session:
        await session.execute(text("SELECT 1 FROM departments"))
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT coalesce(current_setting('app.tenant_id', true), ''), current_schema()"
                )
            )
        ).one()
    assert row[0] == ""
    assert row[1] != a.schema_name
