"""The statement that binds a transaction to a tenant.

A tenant-bound transaction opens with one simple-query message::

    BEGIN; SELECT set_config('search_path', '"t_acme"', true),
                  set_config('app.tenant_id', '<uuid>', true)

``BEGIN`` has to be sent anyway, so the tenant context rides in the same round trip and
costs a few bytes, not a round trip. Both settings are transaction-local (``is_local``):
they vanish at COMMIT/ROLLBACK, so a pooled connection, or PgBouncer in transaction mode,
never carries one tenant's context into another's transaction.

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
    path = sql.Identifier(schema).as_string(None) + ", pg_temp"
    return (
        f"{begin}; SELECT set_config('search_path', {sql.Literal(path).as_string(None)}, true), "
        f"set_config('app.tenant_id', {sql.Literal(str(tenant_id)).as_string(None)}, true)"
    )


def begin_statement(ctx: TenantContext, begin: str = PLAIN_BEGIN) -> str:
    """``BEGIN`` plus the tenant's transaction-local ``search_path`` and ``app.tenant_id``."""
    return _bind(ctx.schema, ctx.id, begin)
