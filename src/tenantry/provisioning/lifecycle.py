"""Tenant lifecycle: create, suspend, resume, export, offboard.

These are plain, typed coroutines that the CLI, the admin API and the tests all call.

Creation is one transaction sent as one message: catalog row, schema, every tenant table,
row-level security and grants either all exist or none does, whatever dies mid-way
(client, connection or server). A retry of a failed create simply runs again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.pq import TransactionStatus

from tenantry.catalog.directory import TenantDirectory
from tenantry.catalog.errors import TenantExistsError, TenantStateError
from tenantry.catalog.identifiers import schema_name_for, validate_slug
from tenantry.catalog.models import Isolation, Tenant, TenantStatus, Tier
from tenantry.catalog.repository import TenantCatalog
from tenantry.catalog.schema import NOTIFY_CHANNEL
from tenantry.db import CompiledTenantSchema, Database
from tenantry.db.binding import begin_statement
from tenantry.provisioning.errors import ProvisioningError
from tenantry.provisioning.export import ExportResult, ProgressCallback, export_tenant
from tenantry.provisioning.spares import SparePool

logger = logging.getLogger("tenantry.lifecycle")

TenantListener = Callable[[Tenant], Awaitable[None]]
"""Called with the tenant's new catalog entry after a committed status or attribute change."""


def _lit(value: Any) -> str:
    return sql.Literal(value).as_string(None)


class TenantLifecycle:
    """Lifecycle operations over one catalog and one compiled tenant schema."""

    def __init__(
        self,
        db: Database,
        schema: CompiledTenantSchema,
        *,
        directory: TenantDirectory | None = None,
        catalog: TenantCatalog | None = None,
        spares: SparePool | None = None,
    ) -> None:
        self.db = db
        self.schema = schema
        self.directory = directory
        self.catalog = catalog or TenantCatalog()
        self.spares = spares
        # After-commit hooks (end a suspended tenant's sessions, say). A failing listener
        # is logged; the change it reacts to is already committed and stands.
        self.listeners: list[TenantListener] = []

    def creation_script(self, tenant: Tenant, actor: str) -> str:
        """The single message that builds ``tenant`` from scratch (exposed for ``--dry-run``
        and tests); a sign-up from the warm pool is :data:`~.spares.CLAIM_SQL` instead."""
        ctx = tenant.context()
        values = ", ".join(
            _lit(v)
            for v in (
                tenant.id,
                tenant.slug,
                tenant.name,
                tenant.tier.value,
                tenant.ring,
                TenantStatus.ACTIVE.value,
                tenant.isolation.value,
                tenant.cell,
                tenant.schema_name,
                tenant.schema_version,
            )
        )
        # A Tenant built without timestamps (e.g. for --dry-run) gets the server's clock.
        stamps = ", ".join(
            f"coalesce({_lit(v)}::timestamptz, now())"
            for v in (tenant.created_at, tenant.updated_at)
        )
        detail = json.dumps(
            {
                "tier": tenant.tier.value,
                "schema_version": tenant.schema_version,
                "schema_source": "built",
            }
        )
        ddl = self.schema.provision_sql(tenant.schema_name, self.db.settings.app_role)
        return (
            f"{begin_statement(ctx)};\n{ddl}\n"
            "INSERT INTO tenantry.tenants (id, slug, name, tier, ring, status, isolation, cell, "
            f"schema_name, schema_version, created_at, updated_at) VALUES ({values}, {stamps});\n"
            "INSERT INTO tenantry.lifecycle_log (tenant_id, action, actor, detail) VALUES "
            f"({_lit(tenant.id)}, 'create', {_lit(actor)}, {_lit(detail)}::jsonb);\n"
            f"SELECT pg_notify({_lit(NOTIFY_CHANNEL)}, {_lit(str(tenant.id))});\n"
            "COMMIT;"
        )

    async def create(
        self,
        slug: str,
        *,
        tier: Tier | str = Tier.FREE,
        name: str | None = None,
        ring: int = 0,
        actor: str = "system",
        exist_ok: bool = False,
    ) -> Tenant:
        """Provision a tenant: catalog row, schema, tables, RLS and grants, atomically.

        With a warm pool (``spares``) in stock this claims a spare schema in one statement
        (the tenant's schema is then the spare's opaque name, see
        :mod:`~tenantry.provisioning.spares`); otherwise it builds ``t_<slug>`` in one
        transaction. With ``exist_ok``, an existing tenant with this slug and tier is
        returned instead of raising :class:`TenantExistsError` (so a retried create is
        idempotent).
        """
        validate_slug(slug)
        tier = Tier(tier)
        if ring < 0:
            raise ProvisioningError(f"ring must be 0 or more, got {ring}")
        now = datetime.now(UTC)
        tenant = Tenant(
            id=uuid4(),
            slug=slug,
            name=name or slug,
            tier=tier,
            status=TenantStatus.ACTIVE,
            schema_name=schema_name_for(slug),
            ring=ring,
            isolation=Isolation.SCHEMA,
            cell=self.db.default_cell,
            schema_version=self.schema.head,
            created_at=now,
            updated_at=now,
        )
        async with self.db.cell(tenant.cell).owner_pool.connection() as conn:
            try:
                spare = await self.spares.claim(conn, tenant, actor) if self.spares else None
                if spare is not None:
                    tenant = replace(tenant, schema_name=spare)
                else:
                    await conn.execute(self.creation_script(tenant, actor).encode())
            except (pg_errors.UniqueViolation, pg_errors.DuplicateSchema):
                if conn.info.transaction_status != TransactionStatus.IDLE:
                    await conn.execute("ROLLBACK")
                existing = await self.catalog.find(conn, slug)
                if existing is None:
                    raise ProvisioningError(
                        f"schema {tenant.schema_name!r} already exists but no tenant owns it; "
                        "drop or rename that schema, then retry"
                    ) from None
                if exist_ok and existing.tier == tier and existing.status != TenantStatus.DELETED:
                    return existing
                raise TenantExistsError(
                    f"tenant {slug!r} already exists ({existing.status.value}); slugs are "
                    "never reused"
                ) from None
            except BaseException:
                if not conn.closed and conn.info.transaction_status != TransactionStatus.IDLE:
                    await conn.execute("ROLLBACK")
                raise
        self._forget(tenant.id)
        if self.spares is not None:
            self.spares.kick()
        return tenant

    async def get(self, key: str | UUID) -> Tenant:
        """The catalog entry for a slug or id (uncached)."""
        async with self.db.transaction(readonly=True) as conn:
            return await self.catalog.get(conn, key)

    async def list(
        self, *, status: TenantStatus | None = None, include_deleted: bool = False
    ) -> list[Tenant]:
        """All tenants, ordered by slug."""
        async with self.db.transaction(readonly=True) as conn:
            return await self.catalog.list(conn, status=status, include_deleted=include_deleted)

    async def suspend(self, key: str | UUID, *, actor: str = "system", reason: str = "") -> Tenant:
        """Stop serving a tenant (403 on every request); data untouched. Idempotent."""
        return await self._transition(
            key,
            TenantStatus.SUSPENDED,
            allowed={TenantStatus.ACTIVE},
            action="suspend",
            actor=actor,
            detail={"reason": reason},
        )

    async def resume(self, key: str | UUID, *, actor: str = "system") -> Tenant:
        """Serve a suspended tenant again. Idempotent."""
        return await self._transition(
            key,
            TenantStatus.ACTIVE,
            allowed={TenantStatus.SUSPENDED},
            action="resume",
            actor=actor,
        )

    async def export(
        self, key: str | UUID, out_dir: Path, *, on_table: ProgressCallback | None = None
    ) -> ExportResult:
        """Write the tenant's archive (see :mod:`tenantry.provisioning.export`)."""
        tenant = await self.get(key)
        if tenant.status == TenantStatus.DELETED:
            raise TenantStateError(f"tenant {tenant.slug!r} was offboarded; its data is gone")
        return await export_tenant(self.db, tenant, self.schema.tables, out_dir, on_table=on_table)

    async def offboard(
        self,
        key: str | UUID,
        out_dir: Path,
        *,
        actor: str = "system",
        on_table: ProgressCallback | None = None,
    ) -> ExportResult:
        """Export, then drop the tenant's schema; the catalog keeps a tombstone.

        Resumable: a tenant left in ``offboarding`` by an interrupted run is exported again
        and finished by the next call.
        """
        await self._transition(
            key,
            TenantStatus.OFFBOARDING,
            allowed={TenantStatus.ACTIVE, TenantStatus.SUSPENDED},
            action="offboard-start",
            actor=actor,
        )
        tenant = await self.get(key)
        result = await export_tenant(
            self.db, tenant, self.schema.tables, out_dir, on_table=on_table
        )
        async with self.db.transaction() as conn:
            locked = await self.catalog.get(conn, tenant.id)
            if locked.status != TenantStatus.OFFBOARDING:
                raise TenantStateError(
                    f"tenant {tenant.slug!r} changed to {locked.status.value} during offboarding"
                )
            await conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                    sql.Identifier(tenant.schema_name)
                )
            )
            await conn.execute("DELETE FROM tenantry.domains WHERE tenant_id = %s", (tenant.id,))
            await self.catalog.set_status(conn, tenant.id, TenantStatus.DELETED)
            await self.catalog.log(
                conn,
                tenant.id,
                "offboard",
                actor,
                {"archive": str(result.path), "rows": result.total_rows},
            )
        self._forget(tenant.id)
        await self._notify(await self.get(tenant.id))
        return result

    async def _transition(
        self,
        key: str | UUID,
        target: TenantStatus,
        *,
        allowed: set[TenantStatus],
        action: str,
        actor: str,
        detail: dict[str, Any] | None = None,
    ) -> Tenant:
        async with self.db.transaction() as conn:
            tenant = await self.catalog.get(conn, key)
            await conn.execute(
                "SELECT 1 FROM tenantry.tenants WHERE id = %s FOR UPDATE", (tenant.id,)
            )
            tenant = await self.catalog.get(conn, tenant.id)
            if tenant.status == target:
                return tenant
            if tenant.status not in allowed:
                raise TenantStateError(
                    f"cannot {action.split('-')[0]} tenant {tenant.slug!r}: it is "
                    f"{tenant.status.value} (allowed from: "
                    f"{', '.join(sorted(s.value for s in allowed))})"
                )
            await self.catalog.set_status(conn, tenant.id, target)
            await self.catalog.log(conn, tenant.id, action, actor, detail)
        self._forget(tenant.id)
        changed = await self.get(tenant.id)
        await self._notify(changed)
        return changed

    async def update_attributes(
        self, key: str | UUID, changes: Mapping[str, Any], *, actor: str = "system"
    ) -> Tenant:
        """Merge ``changes`` into the tenant's ``attributes`` (a ``None`` value removes that
        attribute), e.g. ``{"rate_limit": {"rate": 500, "burst": 1000}}``."""
        async with self.db.transaction() as conn:
            tenant = await self.catalog.get(conn, key)
            await self.catalog.update_attributes(conn, tenant.id, changes)
            await self.catalog.log(conn, tenant.id, "attributes", actor, dict(changes))
        self._forget(tenant.id)
        changed = await self.get(tenant.id)
        await self._notify(changed)
        return changed

    async def _notify(self, tenant: Tenant) -> None:
        for listener in self.listeners:
            try:
                await listener(tenant)
            except Exception:
                logger.exception("a lifecycle listener failed for tenant %s", tenant.slug)

    def _forget(self, tenant_id: UUID) -> None:
        # Other processes hear the NOTIFY; this one drops its entry at once.
        if self.directory is not None:
            self.directory.invalidate(tenant_id)
