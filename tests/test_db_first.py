"""A statement that rides in the message opening a transaction (``first=``): it runs after
``BEGIN`` and the tenant binding, in the transaction, and costs no round trip of its own.
What the consumers' inbox claim uses. Real PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import psycopg
import pytest

from tenantry import Platform
from tenantry.catalog import Tenant
from tenantry.db.transaction import Prepared, first_rows
from tenantry.events import inbox
from tests.db_helpers import count_rows, scratch_table


@pytest.fixture
async def table(platform: Platform) -> AsyncIterator[str]:
    async with scratch_table(
        platform, "first_probe", "x int PRIMARY KEY", grant="SELECT, INSERT, DELETE"
    ) as name:
        yield name


async def test_the_first_statement_runs_bound_to_the_tenant_inside_the_transaction(
    platform: Platform, make_tenant: Callable[..., Awaitable[Tenant]]
) -> None:
    tenant = await make_tenant()
    first = (
        "SELECT current_setting('app.tenant_id'), current_schema(), "
        "pg_current_xact_id()::text, pg_backend_pid()"
    )
    async with platform.db.tenant_transaction(tenant.context(), first=first) as conn:
        [(tenant_id, schema, xid, pid)] = first_rows(conn)
        cur = await conn.execute("SELECT pg_current_xact_id()::text, pg_backend_pid()")
        later = await cur.fetchone()
    assert (tenant_id, schema) == (str(tenant.id), tenant.schema_name)
    assert later == (xid, pid)  # the same transaction on the same connection


async def test_its_writes_commit_and_roll_back_with_the_transaction(
    platform: Platform, make_tenant: Callable[..., Awaitable[Tenant]], table: str
) -> None:
    tenant = await make_tenant()
    async with platform.db.tenant_transaction(
        tenant.context(), first=f"INSERT INTO {table} VALUES (1) RETURNING x"
    ) as conn:
        assert first_rows(conn) == [(1,)]
    assert await count_rows(platform, table) == 1

    seen: list[list[tuple[object, ...]]] = []

    async def change_mind() -> None:
        async with platform.db.tenant_transaction(
            tenant.context(), first=f"INSERT INTO {table} VALUES (2)"
        ) as conn:
            seen.append(first_rows(conn))
            raise RuntimeError("changed my mind")

    with pytest.raises(RuntimeError, match="changed my mind"):
        await change_mind()
    assert seen == [[]]  # a statement without rows
    assert await count_rows(platform, table) == 1


@pytest.mark.parametrize("prepared", [False, True], ids=["text", "prepared"])
async def test_a_failing_first_statement_raises_and_the_connection_is_reused_clean(
    platform: Platform, make_tenant: Callable[..., Awaitable[Tenant]], table: str, prepared: bool
) -> None:
    tenant = await make_tenant()
    failing: str | Prepared = f"INSERT INTO {table} VALUES (7), (7)"
    if prepared:
        failing = Prepared("test_first_insert_twice", f"INSERT INTO {table} VALUES ($1), ($1)")
        failing = failing.bind(7)
    for _ in range(platform.settings.database.pool_max + 1):  # every pooled connection
        with pytest.raises(psycopg.errors.UniqueViolation):
            async with platform.db.tenant_transaction(tenant.context(), first=failing):
                pytest.fail("the block must not run when its first statement fails")
    for _ in range(platform.settings.database.pool_max + 1):
        async with platform.db.tenant_transaction(
            tenant.context(), first=f"INSERT INTO {table} VALUES (8) RETURNING x"
        ) as conn:
            assert first_rows(conn) == [(8,)]
            await conn.execute(f"DELETE FROM {table}")
    assert await count_rows(platform, table) == 0


async def test_first_rows_needs_a_transaction_opened_with_one(
    platform: Platform, make_tenant: Callable[..., Awaitable[Tenant]]
) -> None:
    tenant = await make_tenant()
    async with platform.db.tenant_transaction(tenant.context()) as conn:
        with pytest.raises(LookupError):
            first_rows(conn)
    async with platform.db.tenant_transaction(tenant.context(), first="SELECT 1") as outer:
        async with platform.db.transaction() as other:
            with pytest.raises(LookupError):
                first_rows(other)
        assert first_rows(outer) == [(1,)]


async def test_the_inbox_claim_quotes_its_values_and_reports_only_new_rows(
    platform: Platform, make_tenant: Callable[..., Awaitable[Tenant]]
) -> None:
    tenant = await make_tenant()
    consumer = "o'brien\\ -- group"
    seen, fresh = uuid.uuid4(), uuid.uuid4()
    async with platform.db.tenant_transaction(
        tenant.context(), first=inbox.claim_statement(consumer, [seen])
    ) as conn:
        assert first_rows(conn) == [(seen,)]
    claim = inbox.claim_statement(consumer, [seen, fresh, fresh])
    async with platform.db.tenant_transaction(tenant.context(), first=claim) as conn:
        assert first_rows(conn) == [(fresh,)]  # handled before, or twice in the batch
        assert await inbox.handled(conn, consumer, seen)
    with pytest.raises(ValueError, match="no event ids"):
        inbox.claim_statement(consumer, [])
    with pytest.raises(TypeError, match="UUIDs"):
        inbox.claim_statement(consumer, ["00000000-0000-0000-0000-000000000000'); --"])  # type: ignore[list-item]


async def test_a_prepared_first_statement_is_prepared_once_per_connection(
    platform: Platform, make_tenant: Callable[..., Awaitable[Tenant]], table: str
) -> None:
    """A :class:`Prepared` first statement is prepared on a connection the first time it
    opens a transaction there and then run by name, its arguments quoted in; a connection
    whose statements were deallocated behind tenantry's back prepares it again."""
    tenant = await make_tenant()
    insert = Prepared("test_first_insert", f"INSERT INTO {table} VALUES ($1) RETURNING x, $2")
    hostile = "it's -- $1 \\"
    for x in range(1, 6):
        async with platform.db.tenant_transaction(
            tenant.context(), first=insert.bind(x, hostile)
        ) as conn:
            assert first_rows(conn) == [(x, hostile)]
            cur = await conn.execute(
                "SELECT count(*) FROM pg_prepared_statements WHERE name = %s", (insert.name,)
            )
            assert await cur.fetchone() == (1,)
            await conn.execute(f"DEALLOCATE {insert.name}")  # so the next one prepares again
    assert await count_rows(platform, table) == 5
    with pytest.raises(ValueError, match="statement name"):
        Prepared("", "SELECT 1")


async def test_a_statement_already_prepared_on_the_connection_is_used(
    platform: Platform, make_tenant: Callable[..., Awaitable[Tenant]]
) -> None:
    """A connection that has the name prepared already (by someone else, or before tenantry
    kept track of it) is not an error: the statement is used as it is."""
    tenant = await make_tenant()
    probe = Prepared("test_first_known", "SELECT $1::int + 1")
    async with platform.db.cell().app_pool.connection() as conn:
        await conn.execute(probe.prepare_sql())
        pid = conn.info.backend_pid
    async with platform.db.tenant_transaction(tenant.context(), first=probe.bind(41)) as conn:
        assert conn.info.backend_pid == pid  # the pool lends its most recent connection first
        assert first_rows(conn) == [(42,)]
