"""The ASGI middleware that observes every HTTP request: correlation ids, the request's
trace span, its metrics, usage counts and one access-log line.

It is the outermost middleware, so it also sees the requests that
:class:`~tenantry.web.middleware.TenantMiddleware` refuses (unknown tenant: 404). The tenant
comes back from the request's ``state`` (the middleware records the context it bound),
and the route *template* (``/api/employees/{employee_id}``) from the matched route, so
label values stay bounded; a request answered before routing (tenant not resolved, rate
limited) is matched against the app's routes afterwards, so it keeps its template too
(``_unmatched`` only when no route matches). A request whose handler raised gets its
``X-Request-ID`` on the 500 as well (see ``REQUEST_ID_KEY``).

The cost per request is a few dict look-ups, one counter increment and one histogram
observation on cached label children, and one access line assembled from quoted strings.
An unsampled request builds no span, no attributes and no span name: its SQL statements
only check that no span is recording.
"""

from __future__ import annotations

from collections.abc import Iterator
from time import perf_counter
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.routing import Match
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
from tenantry.web.middleware import CONTEXT_KEY, PRINCIPAL_KEY, RESPONSE_HEADERS_KEY
from tenantry.web.ratelimit import RATE_LIMITED_KEY

REQUEST_ID_KEY = "tenantry.request_id"
"""Where the request id is left in ``scope["state"]`` when the app raised before answering,
so the 500 that Starlette's outermost error middleware renders can carry it too."""
REQUEST_ID_HEADER = b"x-request-id"
_TRACEPARENT_HEADER = b"traceparent"


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
        self._templates: tuple[object, list[Any]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = perf_counter()
        request_id: str | None = None
        traceparent: str | None = None
        for name, value in scope["headers"]:
            if name == REQUEST_ID_HEADER:
                request_id = clean_request_id(value.decode("latin-1"))
            elif name == _TRACEPARENT_HEADER:
                traceparent = value.decode("latin-1")
        if request_id is None:
            request_id = new_request_id()
        # X-Request-ID, and whatever inner layers add (rate-limit headers): one wrapper.
        extra = [(REQUEST_ID_HEADER, request_id.encode())]
        state = scope.setdefault("state", {})
        state[RESPONSE_HEADERS_KEY] = extra
        status = 500
        started = False

        async def send_observed(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status = message["status"]
                started = True
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        span = None
        otel_token = None
        tracing = self.tracing
        if tracing is not None and (traceparent or tracing.sample_root()):
            # Only recorded traces get here: an unsampled request builds no span at all.
            parent = Tracing.extract(traceparent) if traceparent else None
            method = scope["method"]
            span = tracing.tracer.start_span(
                f"{method} {scope['path']}",
                context=parent,
                kind=SpanKind.SERVER,
                attributes={"http.request.method": method, "url.path": scope["path"]},
            )
            otel_token = otel_context.attach(trace.set_span_in_context(span))
            trace_id = format(span.get_span_context().trace_id, "032x")
        else:
            trace_id = (traceparent and trace_id_of(traceparent)) or new_trace_id()
        token = bind_correlation(Correlation(request_id, trace_id))
        try:
            await self.app(scope, receive, send_observed)
        except BaseException:
            if not started:
                # Starlette's ServerErrorMiddleware (outside this one) answers the 500:
                # leave it the request id for its X-Request-ID header.
                state[REQUEST_ID_KEY] = request_id
            raise
        finally:
            unbind_correlation(token)
            seconds = perf_counter() - start
            tenant: TenantContext | None = state.get(CONTEXT_KEY)
            route_obj = scope.get("route")
            route = getattr(route_obj, "path", None) or self._template_of(scope)
            metrics = self.metrics
            if metrics is not None:
                tier, label = metrics.tenant_label(tenant)
                metrics.observe_request(route, scope["method"], status, tier, label, seconds)
                reason = state.get(RATE_LIMITED_KEY)
                if reason is not None:
                    metrics.observe_rate_limited(reason, tier, label)
            if self.usage is not None and tenant is not None:
                principal = state.get(PRINCIPAL_KEY)
                subject = (
                    principal.subject
                    if principal is not None and not principal.platform_admin
                    else None
                )
                self.usage.request(tenant.id, subject)
            if span is not None:
                self._finish_span(span, scope["method"], route, status, tenant)
                otel_context.detach(otel_token)  # type: ignore[arg-type]
            if self.access_log is not None:
                self.access_log.write_request(
                    scope["method"],
                    scope["path"],
                    route,
                    status,
                    seconds,
                    request_id,
                    trace_id,
                    tenant,
                )

    def _template_of(self, scope: Scope) -> str:
        """The template of the route ``scope`` would match, for requests answered before
        routing (tenant not resolved, rate limited): ``_unmatched`` when none does."""
        app = scope.get("app")
        routes = getattr(getattr(app, "router", None), "routes", None)
        if routes is None:
            return UNMATCHED_ROUTE
        cached = self._templates
        if cached is None or cached[0] is not app:
            cached = self._templates = (app, list(_leaf_routes(routes)))
        probe = dict(scope)
        partial: str | None = None
        for route in cached[1]:
            match, _ = route.matches(probe)
            if match == Match.FULL:
                return str(route.path)
            if match == Match.PARTIAL and partial is None:
                partial = str(route.path)
        return partial or UNMATCHED_ROUTE

    @staticmethod
    def _finish_span(
        span: Any, method: str, route: str, status: int, tenant: TenantContext | None
    ) -> None:
        if span.is_recording():
            attributes: dict[str, Any] = tenant_attributes(tenant)
            attributes["http.route"] = route
            attributes["http.response.status_code"] = status
            span.set_attributes(attributes)
            span.update_name(f"{method} {route}")
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR))
        span.end()


def _leaf_routes(routes: Any) -> Iterator[Any]:
    """Every route with a path template, included routers walked into, in match order."""
    for route in routes:
        inner = getattr(route, "original_router", None)  # FastAPI's included router
        if inner is not None:
            yield from _leaf_routes(inner.routes)
        elif isinstance(getattr(route, "path", None), str) and hasattr(route, "matches"):
            yield route
