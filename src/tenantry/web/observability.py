"""The ASGI middleware that observes every HTTP request: correlation ids, the request's
trace span, its metrics, usage counts and one access-log line.

It is the outermost middleware, so it also sees the requests that
:class:`~tenantry.web.middleware.TenantMiddleware` refuses (unknown tenant: 404). The tenant
comes back from the request's ``state`` (the middleware records the context it bound),
and the route *template* (``/api/employees/{employee_id}``) from the matched route, so
label values stay bounded. The cost per request is a few dict look-ups, one histogram
observation and, when enabled, one rendered log line.
"""

from __future__ import annotations

import time
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tenantry.context import TenantContext
from tenantry.observability.correlation import (
    Correlation,
    bind_correlation,
    clean_request_id,
    new_request_id,
    new_trace_id,
    trace_id_of,
    unbind_correlation,
)
from tenantry.observability.hub import Observability
from tenantry.observability.logging import ACCESS_LOG
from tenantry.observability.metrics import UNMATCHED_ROUTE
from tenantry.observability.tracing import Tracing, tenant_attributes
from tenantry.web.middleware import CONTEXT_KEY, PRINCIPAL_KEY

RATE_LIMITED_KEY = "tenantry.rate_limited"
REQUEST_ID_HEADER = b"x-request-id"


class ObservabilityMiddleware:
    """Observe each HTTP request (see the module docstring)."""

    def __init__(
        self, app: ASGIApp, *, observability: Observability, access_log: bool = True
    ) -> None:
        self.app = app
        self.metrics = observability.metrics if observability.metrics.enabled else None
        self.usage = observability.usage if observability.usage.enabled else None
        self.tracing = observability.tracing if observability.tracing.enabled else None
        self.access_log = ACCESS_LOG if access_log else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        request_id: str | None = None
        traceparent: str | None = None
        for name, value in scope["headers"]:
            if name == REQUEST_ID_HEADER:
                request_id = clean_request_id(value.decode("latin-1"))
            elif name == b"traceparent":
                traceparent = value.decode("latin-1")
        request_id = request_id or new_request_id()
        rid_header = (REQUEST_ID_HEADER, request_id.encode())
        status = 500

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), rid_header]
            await send(message)

        span = None
        otel_token = None
        if self.tracing is not None and (traceparent or self.tracing.sample_root()):
            parent = Tracing.extract(traceparent) if traceparent else None
            span = self.tracing.tracer.start_span(
                f"{scope['method']} {scope['path']}",
                context=parent,
                kind=SpanKind.SERVER,
                attributes={"http.request.method": scope["method"], "url.path": scope["path"]},
            )
            otel_token = otel_context.attach(trace.set_span_in_context(span))
            trace_id = format(span.get_span_context().trace_id, "032x")
        else:
            trace_id = trace_id_of(traceparent) or new_trace_id()
        token = bind_correlation(Correlation(request_id, trace_id))
        try:
            await self.app(scope, receive, send_observed)
        finally:
            unbind_correlation(token)
            seconds = time.perf_counter() - start
            state = scope.get("state") or {}
            tenant: TenantContext | None = state.get(CONTEXT_KEY)
            route_obj = scope.get("route")
            route = getattr(route_obj, "path", None) or UNMATCHED_ROUTE
            if self.metrics is not None:
                tier, label = self.metrics.tenant_label(tenant)
                self.metrics.observe_request(route, scope["method"], status, tier, label, seconds)
                reason = state.get(RATE_LIMITED_KEY)
                if reason is not None:
                    self.metrics.observe_rate_limited(reason, tier, label)
            if self.usage is not None and tenant is not None:
                principal = state.get(PRINCIPAL_KEY)
                subject = (
                    principal.subject
                    if principal is not None and not principal.platform_admin
                    else None
                )
                self.usage.request(tenant.id, subject)
            if span is not None:
                self._finish_span(span, route, status, tenant)
                otel_context.detach(otel_token)  # type: ignore[arg-type]
            if self.access_log is not None:
                self._log(scope, route, status, seconds, tenant, request_id, trace_id)

    @staticmethod
    def _finish_span(span: Any, route: str, status: int, tenant: TenantContext | None) -> None:
        if span.is_recording():
            span.set_attribute("http.route", route)
            span.set_attribute("http.response.status_code", status)
            span.update_name(f"{span.name.split(' ', 1)[0]} {route}")
            for key, value in tenant_attributes(tenant).items():
                span.set_attribute(key, value)
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR))
        span.end()

    def _log(
        self,
        scope: Scope,
        route: str,
        status: int,
        seconds: float,
        tenant: TenantContext | None,
        request_id: str,
        trace_id: str,
    ) -> None:
        assert self.access_log is not None
        fields: dict[str, Any] = {
            "method": scope["method"],
            "path": scope["path"],  # never the query string: it may carry secrets
            "route": route,
            "status": status,
            "duration_ms": round(seconds * 1000, 3),
            "request_id": request_id,
            "trace_id": trace_id,
        }
        if tenant is not None:
            fields["tenant_id"] = str(tenant.id)
            fields["tenant_slug"] = tenant.slug
            fields["tier"] = tenant.tier
        self.access_log.write(fields, error=status >= 500)
