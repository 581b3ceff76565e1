"""Reads and writes of the tenant catalog.

Every method takes the connection to use, so callers decide the transaction: provisioning
writes the catalog row in the same transaction as the tenant's schema.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection, sql
from psycopg.rows import dict_row

from tenantry.catalog.errors import TenantNotFoundError
from tenantry.catalog.identifiers import parse_tenant_key
from tenantry.catalog.models import Isolation, Tenant, TenantStatus, Tier
from tenantry.catalog.schema import NOTIFY_CHANNEL

_COLUMNS = sql.SQL(
    "t.id, t.slug, t.name, t.tier, t.status, t.schema_name, t.ring, t.isolation, t.cell, "
    "t.schema_version, t.attributes, t.created_at, t.updated_at, "
    "coalesce((SELECT array_agg(d.host ORDER BY d.host) FROM tenantry.domains d "
    "WHERE d.tenant_id = t.id), '{}') AS domains"
)


def _tenant(row: dict[str, Any]) -> Tenant:
    return Tenant(
        id=row["id"],
        slug=row["slug"],
        name=row["name"],
        tier=Tier(row["tier"]),
        status=TenantStatus(row["status"]),
        schema_name=row["schema_name"],
        ring=row["ring"],
        isolation=Isolation(row["isolation"]),
        cell=row["cell"],
        schema_version=row["schema_version"],
        attributes=row["attributes"] or {},
        domains=tuple(row["domains"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


class TenantCatalog:
    """The ``tenantry.tenants`` / ``tenantry.domains`` tables."""

    async def find(self, conn: AsyncConnection[Any], key: str | UUID) -> Tenant | None:
        """The tenant with this slug or id (``key`` may be either, as text), or ``None``."""
        parsed = key if isinstance(key, UUID) else parse_tenant_key(key)
        column = sql.SQL("t.id") if isinstance(parsed, UUID) else sql.SQL("t.slug")
        query = sql.SQL("SELECT {} FROM tenantry.tenants t WHERE {} = %s").format(_COLUMNS, column)
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(query, (parsed,))
            row = await cur.fetchone()
        return _tenant(row) if row else None

    async def get(self, conn: AsyncConnection[Any], key: str | UUID) -> Tenant:
        """Like :meth:`find` but raises :class:`TenantNotFoundError`."""
        tenant = await self.find(conn, key)
        if tenant is None:
            raise TenantNotFoundError(
                f"no tenant {str(key)!r}; list them with 'tenantry tenants list'"
            )
        return tenant

    async def find_by_domain(self, conn: AsyncConnection[Any], host: str) -> Tenant | None:
        """The tenant that owns the custom domain ``host``, or ``None``."""
        query = sql.SQL(
            "SELECT {} FROM tenantry.tenants t JOIN tenantry.domains dd ON dd.tenant_id = t.id "
            "WHERE dd.host = %s"
        ).format(_COLUMNS)
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(query, (host.lower(),))
            row = await cur.fetchone()
        return _tenant(row) if row else None

    async def list(
        self,
        conn: AsyncConnection[Any],
        *,
        status: TenantStatus | None = None,
        include_deleted: bool = False,
        limit: int | None = None,
        after_slug: str | None = None,
    ) -> list[Tenant]:
        """Tenants ordered by slug, filtered by status; keyset-paginated by ``after_slug``."""
        where = [sql.SQL("true")]
        params: list[Any] = []
        if status is not None:
            where.append(sql.SQL("t.status = %s"))
            params.append(status.value)
        elif not include_deleted:
            where.append(sql.SQL("t.status <> 'deleted'"))
        if after_slug is not None:
            where.append(sql.SQL("t.slug > %s"))
            params.append(after_slug)
        query = sql.SQL("SELECT {} FROM tenantry.tenants t WHERE {} ORDER BY t.slug").format(
            _COLUMNS, sql.SQL(" AND ").join(where)
        )
        if limit is not None:
            query += sql.SQL(" LIMIT {}").format(sql.Literal(int(limit)))
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(query, params)
            return [_tenant(row) for row in await cur.fetchall()]

    async def set_status(
        self, conn: AsyncConnection[Any], tenant_id: UUID, status: TenantStatus
    ) -> None:
        """Change a tenant's status and tell every process to drop its cached copy."""
        await conn.execute(
            "UPDATE tenantry.tenants SET status = %s, updated_at = now(), "
            "deleted_at = CASE WHEN %s = 'deleted' THEN now() END WHERE id = %s",
            (status.value, status.value, tenant_id),
        )
        await self.notify_changed(conn, tenant_id)

    async def update_attributes(
        self, conn: AsyncConnection[Any], tenant_id: UUID, changes: Mapping[str, Any]
    ) -> None:
        """Merge ``changes`` into the tenant's attributes (``None`` values remove keys)."""
        removed = [name for name, value in changes.items() if value is None]
        kept = {name: value for name, value in changes.items() if value is not None}
        await conn.execute(
            "UPDATE tenantry.tenants SET attributes = (attributes || %s::jsonb) - %s::text[], "
            "updated_at = now() WHERE id = %s",
            (json.dumps(kept), removed, tenant_id),
        )
        await self.notify_changed(conn, tenant_id)

    async def add_domain(self, conn: AsyncConnection[Any], tenant_id: UUID, host: str) -> None:
        """Map a custom domain to a tenant."""
        await conn.execute(
            "INSERT INTO tenantry.domains (host, tenant_id) VALUES (%s, %s)",
            (host.lower(), tenant_id),
        )
        await self.notify_changed(conn, tenant_id)

    async def log(
        self,
        conn: AsyncConnection[Any],
        tenant_id: UUID,
        action: str,
        actor: str,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Append to the tenant's lifecycle log."""
        await conn.execute(
            "INSERT INTO tenantry.lifecycle_log (tenant_id, action, actor, detail) "
            "VALUES (%s, %s, %s, %s::jsonb)",
            (tenant_id, action, actor, json.dumps(detail or {})),
        )

    async def notify_changed(self, conn: AsyncConnection[Any], tenant_id: UUID) -> None:
        """Signal (at commit) that a tenant's catalog entry changed, for cache invalidation."""
        await conn.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, str(tenant_id)))
