"""The ASGI middleware that enforces per-tenant rate limits, quotas and concurrency caps.

It sits inside :class:`~tenantry.web.middleware.TenantMiddleware` (it needs the bound
tenant) and costs at most one Redis round trip per request (concurrent requests share
them), none while the process holds tokens reserved for the tenant (and, with a
concurrency cap, a leased slot free: see :mod:`tenantry.cache.ratelimit`); giving back an
in-flight slot is local or queued, never waited for. A refused request gets a
429 in tenantry's error shape with ``Retry-After`` and ``RateLimit-Limit/Remaining/Reset``;
an admitted one gets the ``RateLimit-*`` headers. Requests with no tenant (exempt paths)
pass untouched.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tenantry.cache import RateLimiter, RateLimitUnavailableError
from tenantry.context import current_tenant_or_none
from tenantry.web.errors import problem_response

_CODES = {
    "rate": ("rate_limited", "too many requests for this tenant; retry after the delay given"),
    "quota": ("quota_exceeded", "this tenant's request quota is used up for the current window"),
    "concurrency": ("too_many_concurrent_requests", "too many requests in flight for this tenant"),
}


class RateLimitMiddleware:
    """Check every tenant request against its tenant's limits (see the module docstring)."""

    def __init__(self, app: ASGIApp, *, limiter: RateLimiter) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        tenant = current_tenant_or_none() if scope["type"] == "http" else None
        if tenant is None:
            await self.app(scope, receive, send)
            return
        try:
            decision = await self.limiter.acquire(tenant)
        except RateLimitUnavailableError as exc:
            response = problem_response(
                503, "rate_limiter_unavailable", str(exc), headers={"Retry-After": "1"}
            )
            await response(scope, receive, send)
            return
        if not decision.allowed:
            code, message = _CODES[decision.reason or "rate"]
            scope.setdefault("state", {})["tenantry.rate_limited"] = decision.reason or "rate"
            response = problem_response(429, code, message, headers=dict(decision.headers()))
            await response(scope, receive, send)
            return
        extra = decision.raw_headers()

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start" and extra:
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            self.limiter.release(decision)
