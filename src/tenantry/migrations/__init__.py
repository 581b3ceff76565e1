"""Schema evolution across the fleet: versioned chains, a ledger, waves and resume.

Two targets, each an ordered chain of revisions: the control plane and the tenant schema
(see :mod:`tenantry.migrations.scripts` for authoring, :mod:`tenantry.migrations.runner`
for how a fleet is brought to head).
"""

from tenantry.migrations.errors import (
    ControlPlaneMigrationError,
    MigrationError,
    MigrationScriptError,
)
from tenantry.migrations.runner import (
    FleetMigrator,
    FleetReport,
    MigrationSettings,
    PendingTenant,
    Progress,
    TenantFailure,
)
from tenantry.migrations.scripts import (
    Revision,
    load_revisions,
    load_schema,
    new_revision,
    render_operations,
)
from tenantry.migrations.status import MigrationStatus, migration_status

__all__ = [
    "ControlPlaneMigrationError",
    "FleetMigrator",
    "FleetReport",
    "MigrationError",
    "MigrationScriptError",
    "MigrationSettings",
    "MigrationStatus",
    "PendingTenant",
    "Progress",
    "Revision",
    "TenantFailure",
    "load_revisions",
    "load_schema",
    "migration_status",
    "new_revision",
    "render_operations",
]
