"""The control plane's tenant catalog: records, identifiers, repository, cached directory."""

from tenantry.catalog.bootstrap import bootstrap_control_plane
from tenantry.catalog.directory import TenantDirectory
from tenantry.catalog.errors import (
    CatalogError,
    InvalidTenantIdentifierError,
    TenantExistsError,
    TenantNotFoundError,
    TenantStateError,
)
from tenantry.catalog.identifiers import parse_tenant_key, schema_name_for, validate_slug
from tenantry.catalog.models import Isolation, Tenant, TenantStatus, Tier
from tenantry.catalog.repository import TenantCatalog

__all__ = [
    "CatalogError",
    "InvalidTenantIdentifierError",
    "Isolation",
    "Tenant",
    "TenantCatalog",
    "TenantDirectory",
    "TenantExistsError",
    "TenantNotFoundError",
    "TenantStateError",
    "TenantStatus",
    "Tier",
    "bootstrap_control_plane",
    "parse_tenant_key",
    "schema_name_for",
    "validate_slug",
]
