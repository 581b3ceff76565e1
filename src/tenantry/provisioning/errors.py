"""Provisioning and lifecycle errors."""

from __future__ import annotations

from tenantry.errors import TenantryError


class ProvisioningError(TenantryError):
    """A lifecycle operation could not complete; the tenant is left as it was."""


class ExportError(ProvisioningError):
    """An export archive could not be written or does not match its manifest."""
