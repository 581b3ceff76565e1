"""HTTP edge: tenant middleware, resolution, auth, rate limits, sessions, FastAPI integration,
admin API."""

from tenantry.web.app import create_app
from tenantry.web.auth import Principal, TokenService
from tenantry.web.dependencies import (
    CurrentPrincipal,
    CurrentTenant,
    PlatformAdmin,
    PlatformDep,
    TenantCacheDep,
    TenantConnection,
    get_cache,
    get_platform,
    get_tenant_connection,
)
from tenantry.web.errors import HTTPProblem, problem_response
from tenantry.web.flags import CurrentFlags, get_tenant_flags
from tenantry.web.middleware import TenantMiddleware
from tenantry.web.ratelimit import RateLimitMiddleware
from tenantry.web.resolver import ChainResolver, Resolution, TenantResolver
from tenantry.web.sessions import (
    CurrentSession,
    OptionalSession,
    Sessions,
    clear_session_cookie,
    set_session_cookie,
)
from tenantry.web.validation import PgText, RowId

__all__ = [
    "ChainResolver",
    "CurrentFlags",
    "CurrentPrincipal",
    "CurrentSession",
    "CurrentTenant",
    "HTTPProblem",
    "OptionalSession",
    "PgText",
    "PlatformAdmin",
    "PlatformDep",
    "Principal",
    "RateLimitMiddleware",
    "Resolution",
    "RowId",
    "Sessions",
    "TenantCacheDep",
    "TenantConnection",
    "TenantMiddleware",
    "TenantResolver",
    "TokenService",
    "clear_session_cookie",
    "create_app",
    "get_cache",
    "get_platform",
    "get_tenant_connection",
    "get_tenant_flags",
    "problem_response",
    "set_session_cookie",
]
