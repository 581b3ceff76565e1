"""One trace from an HTTP request, through its SQL and the outbox, over Kafka, to the
event handler and the handler's SQL: all spans with the tenant."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from fastapi import APIRouter
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from psycopg import AsyncConnection

from tenantry import Platform, Settings, current_tenant
from tenantry.catalog import Tenant
from tenantry.events import Event, EventHandlers
from tenantry.observability import Tracing, current_correlation
from tenantry.web import TenantConnection
from tenantry.web.dependencies import PlatformDep
from tests.events_helpers import running
from tests.obs_helpers import serve, with_settings


def _hiring_router(kind: str) -> APIRouter:
    router = APIRouter(prefix="/obs")

    @router.post("/departments", status_code=201)
    async def create(conn: TenantConnection, platform: PlatformDep) -> dict[str, int]:
        cur = await conn.execute("INSERT INTO departments (name) VALUES ('Traced') RETURNING id")
        row = await cur.fetchone()
        assert row is not None
        await platform.events.publish(kind, {"department_id": row[0]}, conn=conn)
        return {"id": row[0]}

    return router


async def test_one_trace_connects_request_sql_outbox_kafka_and_handler(
    settings: Settings,
    kafka_bootstrap: str,
    topic_prefix: str,
    make_tenant: Callable[..., Awaitable[Tenant]],
) -> None:
    """The request's server span, its INSERT and the outbox write (SQL spans), then,
    after the relay produced the event to Kafka with a ``traceparent`` header, the
    consumer's handler span (child of the request's span) and the handler's SELECT: one
    trace id, every span with tenant.id; the handler's log correlation has the same trace.
    Outbox and consumer lag were recorded for the tenant's tier."""
    tenant = await make_tenant("trk", tier="pro")
    family = f"obs{secrets.token_hex(4)}"
    kind = f"{family}.created"
    events = replace(
        settings.events,
        kafka_bootstrap=kafka_bootstrap,
        topic_prefix=topic_prefix,
        topic_partitions=1,
        consume_in_app=False,
    )
    traced = replace(
        with_settings(settings, tracing={"enabled": True, "sample_ratio": 1.0}), events=events
    )
    handled: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
    handlers = EventHandlers(f"g-{family}")

    @handlers.on(kind)
    async def on_created(event: Event, conn: AsyncConnection[Any]) -> None:
        await conn.execute("SELECT count(*) FROM departments")
        correlation = current_correlation()
        if not handled.done():
            handled.set_result(
                {
                    "trace": Tracing.current_trace_id(),
                    "tenant": current_tenant().id,
                    "log_trace": correlation.trace_id if correlation else None,
                }
            )

    exporter = InMemorySpanExporter()
    async with serve(traced, routers=[_hiring_router(kind)]) as (app, http):
        platform: Platform = app.state.tenantry
        platform.observability.tracing.add_exporter(exporter)
        warm = await http.get("/api/departments", headers={"x-tenant-id": tenant.slug})
        assert warm.status_code == 200  # the tenant is resolved (and cached) outside the trace
        exporter.clear()
        response = await http.post("/obs/departments", headers={"x-tenant-id": tenant.slug})
        assert response.status_code == 201, response.text
        relay = platform.events.relay()
        consumer = platform.events.consumer(f"g-{family}", handlers)
        async with running(relay.run), running(consumer.run):
            seen = await asyncio.wait_for(handled, timeout=60)
    spans = exporter.get_finished_spans()
    [server] = [s for s in spans if s.kind == SpanKind.SERVER]
    trace_id = server.context.trace_id
    request_sql = [s for s in spans if s.name == "db.query" and s.context.trace_id == trace_id]
    statements = [str((s.attributes or {})["db.statement"]) for s in request_sql]
    assert any("INSERT INTO departments" in text for text in statements), statements
    assert any("append_events" in text for text in statements), statements  # the outbox
    [handler] = [s for s in spans if s.kind == SpanKind.CONSUMER]
    assert handler.name == f"handle {kind}"
    assert handler.context.trace_id == trace_id  # continued from the Kafka header
    assert handler.parent is not None
    assert handler.parent.span_id == server.context.span_id
    handler_sql = [
        s for s in request_sql if s.parent and s.parent.span_id == handler.context.span_id
    ]
    assert any(
        "SELECT count(*) FROM departments" in str((s.attributes or {})["db.statement"])
        for s in handler_sql
    )
    for span in [server, handler, *request_sql]:
        assert (span.attributes or {})["tenant.id"] == str(tenant.id), span.name
    assert seen["trace"] == format(trace_id, "032x")
    assert seen["log_trace"] == format(trace_id, "032x")
    assert seen["tenant"] == tenant.id
    # The relay and the consumer fed the lag histograms of the tenant's tier.
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in platform.metrics.registry.collect()
        for s in family.samples
    }
    assert samples[("tenantry_outbox_lag_seconds_count", (("tier", "pro"),))] >= 1
    assert samples[("tenantry_consumer_lag_seconds_count", (("tier", "pro"),))] >= 1
