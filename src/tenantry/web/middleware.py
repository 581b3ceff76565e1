"""The ASGI middleware that binds a resolved tenant to every request it serves."""

from __future__ import annotations

from collections.abc import Sequence

from starlette.types import ASGIApp, Receive, Scope, Send

from tenantry.cache import RateLimiter
from tenantry.context import bind_tenant, unbind_tenant
from tenantry.web.errors import HTTPProblem
from tenantry.web.ratelimit import admit, with_rate_headers
from tenantry.web.resolver import TenantResolver

PRINCIPAL_KEY = "tenantry.principal"
TENANT_KEY = "tenantry.tenant"
CONTEXT_KEY = "tenantry.context"
RESPONSE_HEADERS_KEY = "tenantry.response_headers"
"""In ``scope["state"]``: a list of raw ``(name, value)`` headers that an outer middleware
(:class:`~tenantry.web.observability.ObservabilityMiddleware`) adds to the response start.
An inner layer with headers to add extends it instead of wrapping ``send`` once more."""
DEFAULT_EXEMPT = ("/health", "/docs", "/redoc", "/openapi.json", "/admin", "/metrics")


class TenantMiddleware:
    """Resolve the tenant of each HTTP/WebSocket request and bind it for the handler.

    Requests that cannot be resolved to an active tenant are answered here with a JSON
    error (400/401/403/404) and never reach the application, so no handler, and no SQL,
    runs without a tenant. Paths under ``exempt`` (health, docs, admin API) pass through
    with no tenant bound. With a ``limiter``, each HTTP request is then checked against its
    tenant's rate limits, quota and concurrency cap (see :mod:`tenantry.web.ratelimit`).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        resolver: TenantResolver,
        exempt: Sequence[str] = DEFAULT_EXEMPT,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.app = app
        self.resolver = resolver
        self.limiter = limiter
        self.exempt = tuple(exempt)
        # One set lookup and one C-level prefix test per request, not a loop over prefixes.
        self._exempt_paths = frozenset(self.exempt)
        self._exempt_prefixes = tuple(prefix + "/" for prefix in self.exempt)

    def _is_exempt(self, path: str) -> bool:
        return path in self._exempt_paths or path.startswith(self._exempt_prefixes)

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
        ctx = resolution.context
        token = bind_tenant(ctx)
        try:
            limiter = self.limiter
            if limiter is None or ctx is None or scope["type"] != "http":
                await self.app(scope, receive, send)
                return
            # Inline, not a layer of its own (see tenantry.web.ratelimit); most requests are
            # admitted from tokens held locally, with no I/O and no coroutine.
            decision = limiter.admit_reserved(ctx) or await admit(
                limiter, ctx, scope, receive, send
            )
            if decision is None:
                return
            try:
                offered = state.get(RESPONSE_HEADERS_KEY)
                if offered is None:
                    await self.app(scope, receive, with_rate_headers(send, decision))
                else:
                    offered.extend(decision.raw_headers())
                    await self.app(scope, receive, send)
            finally:
                limiter.release(decision)
        finally:
            unbind_tenant(token)
