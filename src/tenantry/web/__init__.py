"""HTTP edge: tenant middleware, resolution, auth, FastAPI integration, admin API."""

from tenantry.web.app import create_app
from tenantry.web.auth import Principal, TokenService
from tenantry.web.dependencies import (
    CurrentPrincipal,
    CurrentTenant,
    PlatformAdmin,
    PlatformDep,
    TenantConnection,
    get_platform,
    get_tenant_connection,
)
from tenantry.web.errors import HTTPProblem, problem_response
from tenantry.web.middleware import TenantMiddleware
from tenantry.web.resolver import ChainResolver, Resolution, TenantResolver
from tenantry.web.validation import PgText, RowId

__all__ = [
    "ChainResolver",
    "CurrentPrincipal",
    "CurrentTenant",
    "HTTPProblem",
    "PgText",
    "PlatformAdmin",
    "PlatformDep",
    "Principal",
    "Resolution",
    "RowId",
    "TenantConnection",
    "TenantMiddleware",
    "TenantResolver",
    "TokenService",
    "create_app",
    "get_platform",
    "get_tenant_connection",
    "problem_response",
]
