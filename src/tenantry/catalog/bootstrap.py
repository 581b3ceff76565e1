"""Create (idempotently) the control plane and the application role."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection, sql

from tenantry.catalog.schema import BOOTSTRAP_LOCK, CONTROL_PLANE_DDL, app_role_ddl


async def bootstrap_control_plane(
    conn: AsyncConnection[Any], *, app_role: str, app_password: str | None = None
) -> None:
    """Create schema ``tenantry``, its tables and the application role, if missing.

    ``conn`` is an owner connection in autocommit mode; concurrent callers are serialised by
    an advisory lock so several processes may start at once.
    """
    await run_bootstrap_script(
        conn,
        sql.SQL(CONTROL_PLANE_DDL)  # a constant: no input in it
        + app_role_ddl(app_role, app_password),
    )


async def run_bootstrap_script(conn: AsyncConnection[Any], body: sql.Composable) -> None:
    """Run idempotent DDL in one transaction, sent as one message, under the bootstrap
    advisory lock (so concurrent starts take turns); roll back on any error."""
    script = (
        sql.SQL("BEGIN; SELECT pg_advisory_xact_lock({lock});\n").format(
            lock=sql.Literal(BOOTSTRAP_LOCK)
        )
        + body
        + sql.SQL("\nCOMMIT;")
    )
    try:
        await conn.execute(script.as_string(conn).encode())
    except BaseException:
        if not conn.closed:
            await conn.execute("ROLLBACK")
        raise
