"""The ASGI middleware that binds a resolved tenant to every request it serves."""

from __future__ import annotations

from collections.abc import Sequence

from starlette.types import ASGIApp, Receive, Scope, Send

from tenantry.context import bind_tenant, unbind_tenant
from tenantry.web.errors import HTTPProblem
from tenantry.web.resolver import TenantResolver

PRINCIPAL_KEY = "tenantry.principal"
TENANT_KEY = "tenantry.tenant"
CONTEXT_KEY = "tenantry.context"
DEFAULT_EXEMPT = ("/health", "/docs", "/redoc", "/openapi.json", "/admin", "/metrics")


class TenantMiddleware:
    """Resolve the tenant of each HTTP/WebSocket request and bind it for the handler.

    Requests that cannot be resolved to an active tenant are answered here with a JSON
    error (400/401/403/404) and never reach the application, so no handler, and no SQL,
    runs without a tenant. Paths under ``exempt`` (health, docs, admin API) pass through
    with no tenant bound.
    """

    def __init__(
        self, app: ASGIApp, *, resolver: TenantResolver, exempt: Sequence[str] = DEFAULT_EXEMPT
    ) -> None:
        self.app = app
        self.resolver = resolver
        self.exempt = tuple(exempt)

    def _is_exempt(self, path: str) -> bool:
        return any(path == prefix or path.startswith(prefix + "/") for prefix in self.exempt)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self._is_exempt(scope["path"]):
            await self.app(scope, receive, send)
            return
        try:
            resolution = await self.resolver.resolve(scope)
        except HTTPProblem as problem:
            if scope["type"] == "http":
                await problem.response()(scope, receive, send)
            else:
                await send({"type": "websocket.close", "code": 4000 + problem.status})
            return
        state = scope.setdefault("state", {})
        state[PRINCIPAL_KEY] = resolution.principal
        state[TENANT_KEY] = resolution.tenant
        state[CONTEXT_KEY] = resolution.context  # for the observability middleware
        token = bind_tenant(resolution.context)
        try:
            await self.app(scope, receive, send)
        finally:
            unbind_tenant(token)
