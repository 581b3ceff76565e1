"""Errors raised while running the embedded services."""

from __future__ import annotations

from tenantry.errors import TenantryError


class ServiceError(TenantryError):
    """An embedded service could not be installed, started or stopped."""
