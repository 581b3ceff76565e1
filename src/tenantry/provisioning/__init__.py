"""Tenant lifecycle: create, suspend, resume, export, offboard."""

from tenantry.provisioning.errors import ExportError, ProvisioningError
from tenantry.provisioning.export import ExportResult, export_tenant, verify_export
from tenantry.provisioning.lifecycle import TenantLifecycle
from tenantry.provisioning.spares import SparePool

__all__ = [
    "ExportError",
    "ExportResult",
    "ProvisioningError",
    "SparePool",
    "TenantLifecycle",
    "export_tenant",
    "verify_export",
]
