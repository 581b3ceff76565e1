"""Per-tenant rate limits, quotas and concurrency caps at the HTTP edge.

:func:`tenantry.web.create_app` has :class:`~tenantry.web.middleware.TenantMiddleware`
check each request right after it binds the tenant (``limiter=``): no middleware layer of
its own, because every layer is a coroutine frame that each suspension of every handler
passes through twice, and that cost more than the check itself. :class:`RateLimitMiddleware`
is the same check as a separate layer, for a stack built by hand around another tenant
binder.

A check costs at most one Redis round trip per request (concurrent requests share them),
none while the process holds tokens reserved for the tenant (and, with a concurrency cap,
a leased slot free: see :mod:`tenantry.cache.ratelimit`); giving back an in-flight slot is
local or queued, never waited for. A refused request gets a 429 in tenantry's error shape
with ``Retry-After`` and ``RateLimit-Limit/Remaining/Reset``; an admitted one gets the
``RateLimit-*`` headers. Requests with no tenant (exempt paths) pass untouched.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tenantry.cache import RateDecision, RateLimiter, RateLimitUnavailableError
from tenantry.context import TenantContext, current_tenant_or_none
from tenantry.web.errors import problem_response

RATE_LIMITED_KEY = "tenantry.rate_limited"  # scope state: why the request got its 429

_CODES = {
    "rate": ("rate_limited", "too many requests for this tenant; retry after the delay given"),
    "quota": ("quota_exceeded", "this tenant's request quota is used up for the current window"),
    "concurrency": ("too_many_concurrent_requests", "too many requests in flight for this tenant"),
}


async def admit(
    limiter: RateLimiter, tenant: TenantContext, scope: Scope, receive: Receive, send: Send
) -> RateDecision | None:
    """Check one request of ``tenant`` that ``limiter.admit_reserved`` could not admit
    (callers try that plain call first: it admits most requests, with no I/O and no
    coroutine): its admission (to be given back with ``limiter.release`` when the request
    ends), or ``None`` once it has been answered here (429, or 503 when the limiter is
    unavailable and fails closed)."""
    try:
        decision = await limiter.acquire_waiting(tenant)
    except RateLimitUnavailableError as exc:
        response = problem_response(
            503, "rate_limiter_unavailable", str(exc), headers={"Retry-After": "1"}
        )
        await response(scope, receive, send)
        return None
    if decision.allowed:
        return decision
    reason = decision.reason or "rate"
    code, message = _CODES[reason]
    scope.setdefault("state", {})[RATE_LIMITED_KEY] = reason
    await problem_response(429, code, message, headers=dict(decision.headers()))(
        scope, receive, send
    )
    return None


def with_rate_headers(send: Send, decision: RateDecision) -> Send:
    """``send``, adding ``decision``'s ``RateLimit-*`` headers to the response start."""
    extra = decision.raw_headers()
    if not extra:
        return send

    async def send_with_headers(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", ()), *extra]
        await send(message)

    return send_with_headers


class RateLimitMiddleware:
    """The check as an ASGI layer of its own, inside whatever binds the tenant (see the
    module docstring)."""

    def __init__(self, app: ASGIApp, *, limiter: RateLimiter) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        tenant = current_tenant_or_none() if scope["type"] == "http" else None
        if tenant is None:
            await self.app(scope, receive, send)
            return
        decision = self.limiter.admit_reserved(tenant) or await admit(
            self.limiter, tenant, scope, receive, send
        )
        if decision is None:
            return
        try:
            await self.app(scope, receive, with_rate_headers(send, decision))
        finally:
            self.limiter.release(decision)
