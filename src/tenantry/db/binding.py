"""The statement that binds a transaction to a tenant.

A tenant-bound transaction opens with one simple-query message::

    BEGIN; SET LOCAL search_path = "t_acme", pg_temp; SET LOCAL app.tenant_id = '<uuid>'

``BEGIN`` has to be sent anyway, so the tenant context rides in the same round trip and
costs a few bytes, not a round trip. ``SET LOCAL`` is ``set_config(name, value, true)``:
both settings are transaction-local and vanish at COMMIT/ROLLBACK, so a pooled
connection, or PgBouncer in transaction mode, never carries one tenant's context into
another's transaction. ``SET LOCAL`` rather than ``SELECT set_config(...)`` because a
utility statement needs no planning and returns no row: measured on loopback it costs
about a quarter of the ``SELECT`` form (``bench/tenant_overhead.py``).

The values are quoted as SQL literals (schema name as a quoted identifier inside the
literal) and come from the catalog, never from request input.
"""

from __future__ import annotations

from functools import lru_cache
from uuid import UUID

from psycopg import sql

from tenantry.context import TenantContext

PLAIN_BEGIN = "BEGIN"
READONLY_BEGIN = "BEGIN READ ONLY"
SNAPSHOT_BEGIN = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"


@lru_cache(maxsize=65_536)
def _bind(schema: str, tenant_id: UUID, begin: str) -> str:
    path = sql.Identifier(schema).as_string(None)
    return (
        f"{begin}; SET LOCAL search_path = {path}, pg_temp; "
        f"SET LOCAL app.tenant_id = {sql.Literal(str(tenant_id)).as_string(None)}"
    )


def begin_statement(ctx: TenantContext, begin: str = PLAIN_BEGIN) -> str:
    """``BEGIN`` plus the tenant's transaction-local ``search_path`` and ``app.tenant_id``."""
    return _bind(ctx.schema, ctx.id, begin)
