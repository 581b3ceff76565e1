"""Errors about tenants and the catalog that names them."""

from __future__ import annotations

from tenantry.errors import TenantryError


class CatalogError(TenantryError):
    """Base class for tenant catalog errors."""


class InvalidTenantIdentifierError(CatalogError):
    """A slug, uuid, host or other tenant identifier is malformed or reserved."""


class TenantNotFoundError(CatalogError):
    """No tenant has the given slug, id or domain."""


class TenantExistsError(CatalogError):
    """A tenant with this slug already exists (slugs of offboarded tenants stay taken)."""


class TenantStateError(CatalogError):
    """The tenant's status does not allow the requested operation."""
