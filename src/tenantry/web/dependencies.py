"""FastAPI dependencies: the current tenant, a tenant-bound connection, the caller.

Every dependency here is ``async def``, even those that never wait: FastAPI runs a plain
``def`` dependency in its thread pool, and that hop costs more CPU than a cached read's
whole handler. Write your own dependencies the same way unless they block.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, Request
from psycopg import AsyncConnection

from tenantry.cache import TenantCache
from tenantry.context import TenantContext, current_tenant
from tenantry.platform import Platform
from tenantry.web.auth import Principal, TokenService
from tenantry.web.errors import HTTPProblem
from tenantry.web.middleware import PRINCIPAL_KEY


def platform_of(request: Request) -> Platform:
    """The :class:`Platform` the app was built with (a plain function, for code that is
    not a dependency)."""
    platform: Platform = request.app.state.tenantry
    return platform


async def get_platform(request: Request) -> Platform:
    """The :class:`Platform` the app was built with."""
    return platform_of(request)


async def get_cache(request: Request) -> TenantCache:
    """The platform's tenant-scoped cache (it calls loaders directly when Redis is not
    configured or unavailable)."""
    return platform_of(request).cache


async def get_tenant() -> TenantContext:
    """The tenant the middleware bound to this request."""
    return current_tenant()


async def get_tenant_connection(request: Request) -> AsyncIterator[AsyncConnection[Any]]:
    """A connection in a transaction bound to the request's tenant.

    Commits when the handler returns, before the response is sent (the dependency is
    function-scoped), and rolls back if it raises.
    """
    async with platform_of(request).db.tenant_transaction() as conn:
        yield conn


async def get_principal(request: Request) -> Principal | None:
    """The verified caller, or ``None`` for an anonymous request."""
    principal: Principal | None = request.scope.get("state", {}).get(PRINCIPAL_KEY)
    return principal


async def require_platform_admin(request: Request) -> Principal:
    """Admit only a valid platform-admin token (tenant tokens get 403)."""
    tokens: TokenService = request.app.state.tenantry_tokens
    principal = tokens.from_authorization(request.headers.get("authorization", "").encode() or None)
    if principal is None:
        raise HTTPProblem(
            401,
            "authentication_required",
            "the admin API needs a platform-admin bearer token",
            headers={"www-authenticate": "Bearer"},
        )
    if not principal.platform_admin:
        raise HTTPProblem(403, "forbidden", "tenant tokens cannot call the platform admin API")
    return principal


CurrentTenant = Annotated[TenantContext, Depends(get_tenant)]
TenantConnection = Annotated[AsyncConnection[Any], Depends(get_tenant_connection, scope="function")]
CurrentPrincipal = Annotated[Principal | None, Depends(get_principal)]
PlatformAdmin = Annotated[Principal, Depends(require_platform_admin)]
PlatformDep = Annotated[Platform, Depends(get_platform)]
TenantCacheDep = Annotated[TenantCache, Depends(get_cache)]
