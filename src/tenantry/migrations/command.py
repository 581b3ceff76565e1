"""Migration commands as plain, typed functions: the CLI, the admin API and the tests call
these (the model is Alembic's ``command.py``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tenantry.db import TenantSchema
from tenantry.migrations.errors import MigrationScriptError
from tenantry.migrations.runner import FleetMigrator, FleetReport, MigrationSettings, Progress
from tenantry.migrations.scripts import new_revision
from tenantry.migrations.status import MigrationStatus, migration_status
from tenantry.platform import Platform


async def upgrade(
    platform: Platform,
    *,
    control: TenantSchema | None = None,
    settings: MigrationSettings | None = None,
    dry_run: bool = False,
    on_progress: Callable[[Progress], None] | None = None,
) -> FleetReport:
    """Bring the control plane, then every tenant, to head (``tenantry migrate``)."""
    migrator = FleetMigrator(
        platform.db,
        platform.compiled_schema,
        control=control.steps if control is not None else (),
        settings=settings,
    )
    return await migrator.run(dry_run=dry_run, on_progress=on_progress)


async def status(platform: Platform, *, control: TenantSchema | None = None) -> MigrationStatus:
    """The ledger in one query (``tenantry migrate status``)."""
    async with platform.db.cell().owner_pool.connection() as conn:
        return await migration_status(
            conn,
            head=platform.tenant_schema.head,
            control_head=control.head if control is not None else None,
        )


def revision(
    schema: TenantSchema, message: str, *, folder: Path | None = None, transactional: bool = True
) -> Path:
    """Scaffold the next revision of ``schema``'s chain (``tenantry migrations new``)."""
    target = folder or schema.source
    if target is None:
        raise MigrationScriptError(
            "this schema was not loaded from a migration folder; pass --dir, or load it with "
            "tenantry.migrations.load_schema(folder)"
        )
    return new_revision(target, message, transactional=transactional)
