"""OpenTelemetry traces: the HTTP request, its SQL, and W3C ``traceparent`` propagation.

Off by default (``TENANTRY_TRACING``). When on, each platform owns a
:class:`~opentelemetry.sdk.trace.TracerProvider` (not the process-global one: two
platforms keep separate pipelines). A new trace is recorded with probability
``sample_ratio``, decided at the edge before any span is built (an unsampled request
costs no span); a continued trace follows its parent's sampled flag. Spans are exported
over OTLP/HTTP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set and to any exporter added with
:meth:`Tracing.add_exporter` (an in-memory one in tests).

Every span tenantry starts carries ``tenant.id`` (and ``tenant.slug``, ``tenant.tier``).
SQL spans come from a psycopg cursor factory installed on the pools: inside a recorded
trace it builds a cursor whose statements are (leaf) child spans, elsewhere a plain psycopg
cursor, so background loops and unsampled requests pay one context look-up per cursor.
Events carry the trace in a ``traceparent`` field/header: :meth:`Tracing.traceparent`
writes it, :meth:`Tracing.extract` continues it on the consumer side.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from psycopg import AsyncCursor

from tenantry.context import TenantContext, current_tenant_or_none
from tenantry.settings import TracingSettings

_PROPAGATOR = TraceContextTextMapPropagator()
_MAX_STATEMENT = 2000


_TENANT_ATTRIBUTES: dict[int, tuple[TenantContext, dict[str, str]]] = {}


def tenant_attributes(tenant: TenantContext | None) -> dict[str, str]:
    """The span attributes naming ``tenant`` (empty without one); a new dict each call."""
    if tenant is None:
        return {}
    # Rendered once per tenant context (str(UUID) is not free); the entry holds the
    # context, so its id() cannot be reused while cached.
    cached = _TENANT_ATTRIBUTES.get(id(tenant))
    if cached is None or cached[0] is not tenant:
        if len(_TENANT_ATTRIBUTES) >= 1024:
            _TENANT_ATTRIBUTES.clear()
        attrs = {
            "tenant.id": str(tenant.id),
            "tenant.slug": tenant.slug,
            "tenant.tier": tenant.tier,
        }
        cached = _TENANT_ATTRIBUTES[id(tenant)] = (tenant, attrs)
    return dict(cached[1])


class Tracing:
    """The platform's tracer, exporters and propagation helpers."""

    def __init__(self, settings: TracingSettings | None = None) -> None:
        settings = settings or TracingSettings()
        self.settings = settings
        self.enabled = settings.enabled
        self.provider: TracerProvider | None = None
        if not self.enabled:
            self.tracer: trace.Tracer = trace.NoOpTracer()
            return
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": settings.service_name}),
            # Root spans are sampled by sample_root() at the edges, before anything is
            # built: an unsampled request then costs no span at all. Children follow.
            sampler=ParentBased(ALWAYS_ON),
        )
        if settings.otlp_endpoint:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            endpoint = settings.otlp_endpoint.rstrip("/")
            if not endpoint.endswith("/v1/traces"):
                endpoint += "/v1/traces"
            self.provider.add_span_processor(
                BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint))
            )
        self.tracer = self.provider.get_tracer("tenantry")

    def sample_root(self) -> bool:
        """Whether a new trace (no parent) is recorded: with probability ``sample_ratio``."""
        ratio = self.settings.sample_ratio
        return self.enabled and (ratio >= 1.0 or random.random() < ratio)  # noqa: S311 - sampling, not security

    def add_exporter(self, exporter: SpanExporter, *, batch: bool = False) -> None:
        """Send finished spans to ``exporter`` too (``batch=False``: synchronously)."""
        if self.provider is None:
            raise RuntimeError("tracing is off (TENANTRY_TRACING=false): nothing to export")
        processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
        self.provider.add_span_processor(processor)

    def shutdown(self) -> None:
        """Flush and stop the exporters."""
        if self.provider is not None:
            self.provider.shutdown()

    @contextmanager
    def span(
        self,
        name: str,
        *,
        kind: SpanKind = SpanKind.INTERNAL,
        parent: Context | None = None,
        attributes: Mapping[str, Any] | None = None,
        tenant: TenantContext | None = None,
    ) -> Iterator[Span]:
        """A current span carrying the tenant (the bound one unless ``tenant`` is given)."""
        parent_span = trace.get_current_span(parent)
        if not parent_span.get_span_context().is_valid and not self.sample_root():
            yield trace.INVALID_SPAN  # an unsampled new trace: nothing recorded
            return
        if not parent_span.is_recording() and not parent_span.get_span_context().is_remote:
            yield trace.INVALID_SPAN  # inside an unsampled local trace
            return
        attrs = tenant_attributes(tenant or current_tenant_or_none())
        if attributes:
            attrs.update(attributes)
        with self.tracer.start_as_current_span(
            name, context=parent, kind=kind, attributes=attrs
        ) as span:
            yield span

    @staticmethod
    def traceparent() -> str | None:
        """The W3C ``traceparent`` of the current span (``None`` outside any trace)."""
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier)
        return carrier.get("traceparent")

    @staticmethod
    def extract(carrier: Mapping[str, str] | str | None) -> Context:
        """The trace context of a ``traceparent`` string or a header mapping."""
        if carrier is None:
            return Context()
        if isinstance(carrier, str):
            carrier = {"traceparent": carrier}
        return _PROPAGATOR.extract(carrier)

    @staticmethod
    def current_trace_id() -> str | None:
        """The current span's trace id (32 hex digits), if a span is active."""
        ctx = trace.get_current_span().get_span_context()
        return format(ctx.trace_id, "032x") if ctx.is_valid else None

    def traced_cursor_class(self) -> type[AsyncCursor[Any]]:
        """A psycopg cursor class whose statements become child spans of the current one.

        Outside a recorded span a statement costs one context look-up. A statement's span
        is a leaf: it is started and ended around the statement without being made
        current (no context attach/detach); an error is recorded on it as
        ``start_as_current_span`` would.
        """
        tracer = self.tracer
        current_span = trace.get_current_span

        class TracedAsyncCursor(AsyncCursor[Any]):
            async def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
                if not current_span().is_recording():
                    return await super().execute(query, params, **kwargs)
                span = tracer.start_span(
                    "db.query", kind=SpanKind.CLIENT, attributes=_sql_attributes(query, self)
                )
                try:
                    return await super().execute(query, params, **kwargs)
                except Exception as exc:
                    _record_error(span, exc)
                    raise
                finally:
                    span.end()

            async def executemany(self, query: Any, params_seq: Any, **kwargs: Any) -> None:
                if not current_span().is_recording():
                    return await super().executemany(query, params_seq, **kwargs)
                span = tracer.start_span(
                    "db.query", kind=SpanKind.CLIENT, attributes=_sql_attributes(query, self)
                )
                try:
                    return await super().executemany(query, params_seq, **kwargs)
                except Exception as exc:
                    _record_error(span, exc)
                    raise
                finally:
                    span.end()

        return TracedAsyncCursor

    def cursor_factory(self) -> Callable[..., AsyncCursor[Any]]:
        """What the pools' connections build cursors with: a plain psycopg cursor when no
        span is recording (an unsampled request's statements run exactly as with tracing
        off), a :meth:`traced_cursor_class` one inside a recorded trace. Decided when the
        cursor is created, which for ``conn.execute`` is the statement itself."""
        traced = self.traced_cursor_class()
        current_span = trace.get_current_span

        def make_cursor(connection: Any, *, row_factory: Any = None) -> AsyncCursor[Any]:
            kind = traced if current_span().is_recording() else AsyncCursor
            return kind(connection, row_factory=row_factory)

        return make_cursor


def _record_error(span: Span, exc: Exception) -> None:
    """What ``start_as_current_span`` does with an exception: an event and ERROR status."""
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


def _sql_attributes(query: Any, cursor: AsyncCursor[Any]) -> dict[str, str]:
    if isinstance(query, bytes):
        text = query.decode(errors="replace")
    elif isinstance(query, str):
        text = query
    else:
        try:
            text = query.as_string(cursor.connection)  # sql.Composed / sql.SQL
        except Exception:
            text = type(query).__name__
    attrs = tenant_attributes(current_tenant_or_none())
    attrs["db.system"] = "postgresql"
    attrs["db.statement"] = text[:_MAX_STATEMENT]
    return attrs


def attach(ctx: Context) -> object:
    """Make ``ctx`` current (for edges that cannot use a ``with`` block)."""
    return otel_context.attach(ctx)


def detach(token: object) -> None:
    """Undo :func:`attach`."""
    otel_context.detach(token)  # type: ignore[arg-type]
