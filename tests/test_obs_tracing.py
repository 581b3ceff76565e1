"""Traces: one trace per request, its SQL as child spans, the tenant on every span."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from tenantry import Platform, Settings
from tenantry.catalog import Tenant
from tests.obs_helpers import serve, with_settings

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


async def test_request_and_its_sql_share_one_trace_with_the_tenant(
    settings: Settings, make_tenant: Callable[..., Awaitable[Tenant]]
) -> None:
    """A request carrying a W3C traceparent: the server span continues the caller's trace,
    every SQL statement of the handler is a child span (client kind, db.statement), and
    all of them carry tenant.id; the access log's trace id is the same trace."""
    tenant = await make_tenant("trace", tier="enterprise")
    exporter = InMemorySpanExporter()
    traced = with_settings(settings, tracing={"enabled": True, "sample_ratio": 1.0})
    async with serve(traced) as (app, http):
        platform: Platform = app.state.tenantry
        platform.observability.tracing.add_exporter(exporter)
        # The first request resolves the tenant with a catalog query, before any tenant is
        # bound (so that span has no tenant.id); later ones hit the directory's cache.
        warm = await http.get("/api/employees", headers={"x-tenant-id": tenant.slug})
        assert warm.status_code == 200
        exporter.clear()
        response = await http.get(
            "/api/employees?limit=5",
            headers={
                "x-tenant-id": tenant.slug,
                "traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01",
            },
        )
        assert response.status_code == 200
    spans = exporter.get_finished_spans()
    server = [s for s in spans if s.kind == SpanKind.SERVER]
    assert len(server) == 1
    root = server[0]
    assert root.name == "GET /api/employees"
    assert format(root.context.trace_id, "032x") == CALLER_TRACE
    assert root.parent is not None
    assert format(root.parent.span_id, "016x") == CALLER_SPAN
    assert root.attributes is not None
    assert root.attributes["http.response.status_code"] == 200
    sql = [s for s in spans if s.name == "db.query"]
    statements = [str((s.attributes or {})["db.statement"]) for s in sql]
    assert any("FROM employees" in text for text in statements), statements
    assert any(text.startswith("BEGIN") for text in statements)  # the tenant-binding BEGIN
    ids = {s.context.span_id for s in spans}
    for span in sql:
        assert span.kind == SpanKind.CLIENT
        assert span.context.trace_id == root.context.trace_id
        assert span.parent is not None
        assert span.parent.span_id in ids
    for span in [root, *sql]:
        assert (span.attributes or {})["tenant.id"] == str(tenant.id)


async def test_unsampled_requests_record_no_spans_but_keep_a_trace_id(
    settings: Settings, make_tenant: Callable[..., Awaitable[Tenant]]
) -> None:
    """At a 0 % sample ratio nothing is exported, SQL is not wrapped in spans, and the
    request still answers with its id."""
    tenant = await make_tenant("notrace")
    exporter = InMemorySpanExporter()
    traced = with_settings(settings, tracing={"enabled": True, "sample_ratio": 0.0})
    async with serve(traced) as (app, http):
        app.state.tenantry.observability.tracing.add_exporter(exporter)
        response = await http.get("/api/employees", headers={"x-tenant-id": tenant.slug})
        assert response.status_code == 200
        assert response.headers["x-request-id"]
    assert exporter.get_finished_spans() == ()


def test_tracing_is_off_by_default() -> None:
    """No TENANTRY_TRACING and no OTLP endpoint: tracing is off."""
    assert Settings.from_env({}).tracing.enabled is False
    on = Settings.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert on.tracing.enabled is True
    assert on.tracing.otlp_endpoint == "http://127.0.0.1:4318"
