"""tenantry: multi-tenant SaaS backends on PostgreSQL schema-per-tenant with RLS.

The public API most code needs is re-exported here; capabilities live in subpackages
(``tenantry.catalog``, ``tenantry.db``, ``tenantry.provisioning``, ``tenantry.web``).
"""

from tenantry.context import (
    TenantContext,
    current_tenant,
    current_tenant_or_none,
    run_in_executor,
    tenant_scope,
    wrap,
)
from tenantry.db import SchemaStep, TenantSchema
from tenantry.errors import ConfigurationError, NoTenantContextError, TenantryError
from tenantry.platform import Platform
from tenantry.settings import Settings

__all__ = [
    "ConfigurationError",
    "NoTenantContextError",
    "Platform",
    "SchemaStep",
    "Settings",
    "TenantContext",
    "TenantSchema",
    "TenantryError",
    "current_tenant",
    "current_tenant_or_none",
    "run_in_executor",
    "tenant_scope",
    "wrap",
]

__version__ = "0.1.0"
