"""The row-level security safety net, against real PostgreSQL.

Schema-per-tenant isolates by ``search_path``; RLS on ``tenant_id`` is the net under it.
These tests break the first layer on purpose and check that the second one holds.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from uuid import uuid4

import psycopg
import pytest
from psycopg import errors as pg_errors
from psycopg import sql

from tenantry import NoTenantContextError, Platform, Settings, tenant_scope
from tenantry.catalog import Tenant, TenantStatus
from tenantry.db import Database, DatabaseError, begin_statement
from tenantry.db.tenant_schema import POLICY_NAME
from tenantry.settings import DatabaseSettings

MakeTenant = Callable[..., Awaitable[Tenant]]


@pytest.fixture
async def owner(database_url: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """A superuser connection for looking behind RLS and at the system catalogs."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
async def pair(platform: Platform, make_tenant: MakeTenant) -> tuple[Tenant, Tenant]:
    """Tenants A and B; B owns a department and an employee, A owns one department."""
    a = await make_tenant("rlsa")
    b = await make_tenant("rlsb")
    async with platform.db.tenant_transaction(b.context()) as conn:
        await conn.execute("INSERT INTO departments (name) VALUES ('b-secret')")
        await conn.execute(
            "INSERT INTO employees (first_name, last_name, email, department_id, hired_on) "
            "SELECT 'Bea', 'Bee', 'bea@b.example', id, DATE '2024-01-01' FROM departments"
        )
    async with platform.db.tenant_transaction(a.context()) as conn:
        await conn.execute("INSERT INTO departments (name) VALUES ('a-own')")
    return a, b


def _path_to(schema: str) -> str:
    return sql.Identifier(schema).as_string(None)


async def _owner_count(conn: psycopg.AsyncConnection[Any], schema: str, table: str) -> int:
    cur = await conn.execute(
        sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(table))
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def test_tenant_transactions_run_as_the_unprivileged_app_role(
    platform: Platform, settings: Settings, pair: tuple[Tenant, Tenant]
) -> None:
    """Tenant traffic really connects as the app role, with the tenant's id and schema set."""
    a, _ = pair
    async with platform.db.tenant_transaction(a.context()) as conn:
        cur = await conn.execute(
            "SELECT current_user, current_schema(), current_setting('app.tenant_id'), "
            "(SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user)"
        )
        row = await cur.fetchone()
    assert row == (settings.database.app_role, a.schema_name, str(a.id), False)


async def test_wrong_search_path_shows_zero_rows_of_the_other_tenant(
    platform: Platform, owner: psycopg.AsyncConnection[Any], pair: tuple[Tenant, Tenant]
) -> None:
    """With search_path pointed at B's schema while app.tenant_id is A, none of B's rows show."""
    a, b = pair
    assert await _owner_count(owner, b.schema_name, "departments") == 1  # B's data is there
    async with platform.db.tenant_transaction(a.context()) as conn:
        await conn.execute("SELECT set_config('search_path', %s, true)", (_path_to(b.schema_name),))
        cur = await conn.execute("SELECT current_schema(), current_setting('app.tenant_id')")
        assert await cur.fetchone() == (b.schema_name, str(a.id))  # the bypass really happened
        cur = await conn.execute("SELECT name FROM departments")
        assert await cur.fetchall() == []
        cur = await conn.execute("SELECT count(*) FROM employees")
        assert await cur.fetchone() == (0,)
        # Schema-qualified access to B's tables is filtered the same way.
        cur = await conn.execute(
            sql.SQL("SELECT count(*) FROM {}.departments").format(sql.Identifier(b.schema_name))
        )
        assert await cur.fetchone() == (0,)


async def test_wrong_search_path_cannot_change_or_delete_the_other_tenants_rows(
    platform: Platform, owner: psycopg.AsyncConnection[Any], pair: tuple[Tenant, Tenant]
) -> None:
    """UPDATE and DELETE through a wrong search_path touch none of B's rows."""
    a, b = pair
    async with platform.db.tenant_transaction(a.context()) as conn:
        await conn.execute("SELECT set_config('search_path', %s, true)", (_path_to(b.schema_name),))
        updated = await conn.execute("UPDATE departments SET name = 'pwned'")
        assert updated.rowcount == 0
        deleted = await conn.execute("DELETE FROM employees")
        assert deleted.rowcount == 0
    cur = await owner.execute(
        sql.SQL("SELECT name FROM {}.departments").format(sql.Identifier(b.schema_name))
    )
    assert await cur.fetchall() == [("b-secret",)]
    assert await _owner_count(owner, b.schema_name, "employees") == 1


async def test_each_tenant_sees_only_its_own_rows(
    platform: Platform, pair: tuple[Tenant, Tenant]
) -> None:
    """In their own transactions A and B each read exactly their rows."""
    a, b = pair
    for tenant, expected in ((a, ["a-own"]), (b, ["b-secret"])):
        async with platform.db.tenant_transaction(tenant.context()) as conn:
            cur = await conn.execute("SELECT name FROM departments ORDER BY id")
            assert [r[0] for r in await cur.fetchall()] == expected


async def _rows_or_error(platform: Platform, query: sql.Composable | str) -> list[Any] | Exception:
    try:
        async with platform.db.transaction(owner=False) as conn:
            cur = await conn.execute(query)
            return await cur.fetchall()
    except psycopg.Error as exc:
        return exc


async def test_no_tenant_context_gets_an_error_or_no_rows_never_data(
    platform: Platform, pair: tuple[Tenant, Tenant]
) -> None:
    """As the app role with no tenant bound, tenant tables answer with an error or nothing."""
    _, b = pair
    unqualified = await _rows_or_error(platform, "SELECT * FROM departments")
    # The default search_path has no tenant schema in it: the table does not even resolve.
    assert isinstance(unqualified, pg_errors.UndefinedTable)
    for table in ("departments", "employees"):
        qualified = await _rows_or_error(
            platform,
            sql.SQL("SELECT * FROM {}.{}").format(
                sql.Identifier(b.schema_name), sql.Identifier(table)
            ),
        )
        assert isinstance(qualified, Exception) or qualified == [], qualified


async def test_no_tenant_context_on_fresh_and_reused_connections(
    settings: Settings, pair: tuple[Tenant, Tenant]
) -> None:
    """app.tenant_id never set (NULL) gives zero rows; set to '' gives an error; never data."""
    _, b = pair
    query = sql.SQL("SELECT name FROM {}.departments").format(sql.Identifier(b.schema_name))
    app_url = settings.database.resolved_app_url()
    async with await psycopg.AsyncConnection.connect(app_url, autocommit=True) as conn:
        cur = await conn.execute(query)
        assert await cur.fetchall() == []
        # What a pooled connection looks like after a tenant transaction ended.
        await conn.execute("SELECT set_config('app.tenant_id', '', false)")
        with pytest.raises(pg_errors.InvalidTextRepresentation):
            await conn.execute(query)


async def test_tenant_setting_does_not_outlive_its_transaction(
    platform: Platform, pair: tuple[Tenant, Tenant]
) -> None:
    """After a tenant-bound transaction, the same pooled connection carries no tenant/schema."""
    a, _ = pair
    async with platform.db.cell().app_pool.connection() as conn:
        await conn.execute(begin_statement(a.context()))
        cur = await conn.execute("SELECT current_setting('app.tenant_id'), current_schema()")
        assert await cur.fetchone() == (str(a.id), a.schema_name)
        await conn.execute("COMMIT")
        cur = await conn.execute(
            "SELECT coalesce(current_setting('app.tenant_id', true), ''), current_schema()"
        )
        row = await cur.fetchone()
    assert row is not None
    assert row[0] == ""
    assert row[1] != a.schema_name


async def test_insert_with_another_tenants_id_is_rejected(
    platform: Platform, owner: psycopg.AsyncConnection[Any], pair: tuple[Tenant, Tenant]
) -> None:
    """RLS WITH CHECK refuses a row whose tenant_id is not the bound tenant's."""
    a, b = pair
    with pytest.raises(pg_errors.InsufficientPrivilege, match="row-level security"):
        async with platform.db.tenant_transaction(a.context()) as conn:
            await conn.execute(
                "INSERT INTO departments (name, tenant_id) VALUES ('smuggled', %s)", (b.id,)
            )

    async def smuggle_into_b_schema() -> None:
        async with platform.db.tenant_transaction(a.context()) as conn:
            await conn.execute(
                "SELECT set_config('search_path', %s, true)", (_path_to(b.schema_name),)
            )
            await conn.execute(
                "INSERT INTO departments (name, tenant_id) VALUES ('smuggled', %s)", (b.id,)
            )

    # Even aimed at B's own schema, A cannot write rows labelled as B.
    with pytest.raises(pg_errors.InsufficientPrivilege, match="row-level security"):
        await smuggle_into_b_schema()
    for tenant in (a, b):
        cur = await owner.execute(
            sql.SQL("SELECT count(*) FROM {}.departments WHERE name = 'smuggled'").format(
                sql.Identifier(tenant.schema_name)
            )
        )
        assert await cur.fetchone() == (0,)


async def test_insert_with_a_random_tenant_id_is_rejected(
    platform: Platform, pair: tuple[Tenant, Tenant]
) -> None:
    """A made-up tenant_id is refused just like another tenant's."""
    a, _ = pair
    with pytest.raises(pg_errors.InsufficientPrivilege):
        async with platform.db.tenant_transaction(a.context()) as conn:
            await conn.execute(
                "INSERT INTO departments (name, tenant_id) VALUES ('x', %s)", (uuid4(),)
            )


async def test_updating_tenant_id_to_another_tenant_is_rejected(
    platform: Platform, owner: psycopg.AsyncConnection[Any], pair: tuple[Tenant, Tenant]
) -> None:
    """A row cannot be handed over to another tenant by rewriting tenant_id."""
    a, b = pair
    with pytest.raises(pg_errors.InsufficientPrivilege, match="row-level security"):
        async with platform.db.tenant_transaction(a.context()) as conn:
            await conn.execute("UPDATE departments SET tenant_id = %s", (b.id,))
    cur = await owner.execute(
        sql.SQL("SELECT name, tenant_id FROM {}.departments").format(sql.Identifier(a.schema_name))
    )
    assert await cur.fetchall() == [("a-own", a.id)]


async def test_tenant_id_defaults_to_the_bound_tenant(
    platform: Platform, owner: psycopg.AsyncConnection[Any], pair: tuple[Tenant, Tenant]
) -> None:
    """Rows written without tenant_id are stamped with the bound tenant's id."""
    a, b = pair
    for tenant in (a, b):
        cur = await owner.execute(
            sql.SQL("SELECT DISTINCT tenant_id FROM {}.departments").format(
                sql.Identifier(tenant.schema_name)
            )
        )
        assert await cur.fetchall() == [(tenant.id,)]


async def test_app_role_is_unprivileged(
    owner: psycopg.AsyncConnection[Any], settings: Settings
) -> None:
    """The app role is not superuser, cannot bypass RLS, create roles or databases."""
    cur = await owner.execute(
        "SELECT rolsuper, rolbypassrls, rolcreaterole, rolcreatedb, rolreplication, rolcanlogin "
        "FROM pg_roles WHERE rolname = %s",
        (settings.database.app_role,),
    )
    assert await cur.fetchone() == (False, False, False, False, False, True)


async def test_app_role_owns_no_tenant_tables_or_schemas(
    owner: psycopg.AsyncConnection[Any], settings: Settings, pair: tuple[Tenant, Tenant]
) -> None:
    """FORCE RLS aside, owners may alter policies: the app role must own nothing."""
    role = settings.database.app_role
    cur = await owner.execute(
        "SELECT n.nspname, c.relname FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relowner = (SELECT oid FROM pg_roles WHERE rolname = %s)",
        (role,),
    )
    assert await cur.fetchall() == []
    cur = await owner.execute(
        "SELECT nspname FROM pg_namespace "
        "WHERE nspowner = (SELECT oid FROM pg_roles WHERE rolname = %s)",
        (role,),
    )
    assert await cur.fetchall() == []
    # ...while the tenant tables do exist and are owned by someone else.
    cur = await owner.execute(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = ANY(%s) AND c.relkind = 'r'",
        ([t.schema_name for t in pair],),
    )
    assert await cur.fetchone() == (10,)  # five tables in each of the two schemas


async def test_app_role_cannot_create_objects_in_tenant_schemas(
    platform: Platform, pair: tuple[Tenant, Tenant]
) -> None:
    """The app role has USAGE only: it cannot add tables (which it would then own)."""
    a, _ = pair
    with pytest.raises(pg_errors.InsufficientPrivilege):
        async with platform.db.tenant_transaction(a.context()) as conn:
            await conn.execute("CREATE TABLE sneaky (id int)")


async def test_app_role_cannot_switch_off_row_level_security(
    platform: Platform, pair: tuple[Tenant, Tenant]
) -> None:
    """Not being the owner, the app role can neither disable RLS nor drop the policy."""
    a, _ = pair
    for statement in (
        "ALTER TABLE departments DISABLE ROW LEVEL SECURITY",
        f"DROP POLICY {POLICY_NAME} ON departments",
        "SET LOCAL row_security = off; SELECT * FROM departments",
    ):
        with pytest.raises(pg_errors.InsufficientPrivilege):
            async with platform.db.tenant_transaction(a.context()) as conn:
                await conn.execute(statement)


async def test_every_tenant_table_has_forced_rls_and_the_isolation_policy(
    platform: Platform, owner: psycopg.AsyncConnection[Any], pair: tuple[Tenant, Tenant]
) -> None:
    """For every live tenant, every table has ENABLE + FORCE RLS and the tenant_isolation
    policy on app.tenant_id, for reads and writes."""
    tenants = [
        t
        for t in await platform.tenants.list()
        if t.status in (TenantStatus.ACTIVE, TenantStatus.SUSPENDED)
    ]
    assert {t.id for t in pair} <= {t.id for t in tenants}
    expected = set(platform.compiled_schema.tables)
    assert expected == {
        "departments",
        "employees",
        "leave_requests",
        "department_headcounts",
        "activity",
    }
    for tenant in tenants:
        cur = await owner.execute(
            "SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity, "
            "array(SELECT polname FROM pg_policy p WHERE p.polrelid = c.oid ORDER BY polname) "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relkind IN ('r', 'p') ORDER BY c.relname",
            (tenant.schema_name,),
        )
        rows = await cur.fetchall()
        assert {r[0] for r in rows} == expected, tenant.slug
        for name, enabled, forced, policies in rows:
            assert (name, enabled, forced, policies) == (name, True, True, [POLICY_NAME])
        cur = await owner.execute(
            "SELECT tablename, cmd, permissive, qual, with_check FROM pg_policies "
            "WHERE schemaname = %s",
            (tenant.schema_name,),
        )
        for table, cmd, permissive, qual, with_check in await cur.fetchall():
            assert (cmd, permissive) == ("ALL", "PERMISSIVE"), table
            assert "current_setting('app.tenant_id'::text, true)" in qual, table
            assert "current_setting('app.tenant_id'::text, true)" in with_check, table


async def test_tenant_transaction_without_a_tenant_fails_before_touching_the_database(
    platform: Platform,
) -> None:
    """No bound tenant: NoTenantContextError, and no connection is even borrowed."""
    pool = platform.db.cell().app_pool
    before = pool.get_stats().get("requests_num", 0)
    with pytest.raises(NoTenantContextError):
        async with platform.db.tenant_transaction():
            pytest.fail("the block must not run")
    with tenant_scope(None), pytest.raises(NoTenantContextError):
        async with platform.db.tenant_transaction(readonly=True):
            pytest.fail("the block must not run")
    assert pool.get_stats().get("requests_num", 0) == before


async def test_tenant_transaction_without_a_tenant_needs_no_database_at_all() -> None:
    """Even a Database whose server does not exist answers NoTenantContextError first."""
    db = Database(DatabaseSettings(url="postgresql://nobody@127.0.0.1:1/nowhere"))
    with pytest.raises(NoTenantContextError):
        async with db.tenant_transaction():
            pytest.fail("the block must not run")
    await db.close()


async def test_tenant_transaction_uses_the_bound_tenant(
    platform: Platform, pair: tuple[Tenant, Tenant]
) -> None:
    """With a tenant bound by tenant_scope, tenant_transaction() needs no argument."""
    _, b = pair
    with tenant_scope(b.context()):
        async with platform.db.tenant_transaction(readonly=True) as conn:
            cur = await conn.execute("SELECT name FROM departments")
            assert await cur.fetchall() == [("b-secret",)]


async def test_caught_error_inside_a_tenant_transaction_aborts_it(
    platform: Platform, pair: tuple[Tenant, Tenant]
) -> None:
    """A database error swallowed inside the block is not silently committed past."""
    a, _ = pair

    async def swallow_an_error() -> None:
        async with platform.db.tenant_transaction(a.context()) as conn:
            await conn.execute("INSERT INTO departments (name) VALUES ('lost')")
            with contextlib.suppress(pg_errors.DivisionByZero):
                await conn.execute("SELECT 1/0")

    with pytest.raises(DatabaseError, match="aborted"):
        await swallow_an_error()
    async with platform.db.tenant_transaction(a.context()) as conn:
        cur = await conn.execute("SELECT count(*) FROM departments WHERE name = 'lost'")
        assert await cur.fetchone() == (0,)
