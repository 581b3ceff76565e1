"""The control-plane bootstrap: idempotent, safe to run from many processes at once, and it
keeps the application role unprivileged."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import psycopg
from psycopg import sql

from tenantry.catalog import bootstrap_control_plane

ROLE = "tenantry_bootstrap_probe"


async def _bootstrap(url: str, password: str | None = None) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await bootstrap_control_plane(conn, app_role=ROLE, app_password=password)


def _role_flags(url: str) -> tuple[bool, ...] | None:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT rolsuper, rolbypassrls, rolcreaterole, rolcreatedb, rolcanlogin "
            "FROM pg_roles WHERE rolname = %s",
            (ROLE,),
        ).fetchone()
    return tuple(row) if row else None


async def test_databases_of_one_cluster_bootstrap_concurrently(
    make_database: Callable[[str], str],
) -> None:
    """Roles are cluster-wide but the bootstrap lock is per database: eight databases
    bootstrapped at once (each setting the role's password) must all succeed."""
    urls = [make_database("tenantry_boot") for _ in range(8)]
    for _ in range(3):
        await asyncio.gather(*(_bootstrap(url, password="probe-pw") for url in urls))
    assert _role_flags(urls[0]) == (False, False, False, False, True)


async def test_bootstrap_tightens_a_loosened_app_role(
    make_database: Callable[[str], str],
) -> None:
    url = make_database("tenantry_boot")
    await _bootstrap(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER ROLE {} CREATEDB BYPASSRLS NOLOGIN").format(sql.Identifier(ROLE))
        )
    assert _role_flags(url) == (False, True, False, True, False)
    await _bootstrap(url)
    assert _role_flags(url) == (False, False, False, False, True)
