"""The observability middleware's edges: refused requests keep their route template, a
crashed request still answers with its request id, and the access line's fast renderer
writes what the generic one writes."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from types import MappingProxyType

from fastapi import APIRouter
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client.parser import text_string_to_metric_families

from tenantry import Settings, TenantContext
from tenantry.catalog import Tenant
from tenantry.observability.logging import ACCESS_LOG, AccessLog, Redactor
from tenantry.observability.metrics import UNMATCHED_ROUTE
from tenantry.settings import LogSettings, TierLimits
from tenantry.web import TenantConnection
from tests.obs_helpers import serve, with_settings


def _requests_by_route(text: str) -> dict[tuple[str, str], float]:
    """``(route, status) -> count`` of ``tenantry_http_requests_total``."""
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "tenantry_http_requests_total":
                key = (sample.labels["route"], sample.labels["status"])
                out[key] = out.get(key, 0.0) + sample.value
    return out


async def test_refused_requests_carry_the_route_template_they_were_sent_to(
    settings: Settings, make_tenant: Callable[..., Awaitable[Tenant]]
) -> None:
    """429s (rate limit) and tenant-resolution errors are answered before routing; their
    metrics still name the route template, not ``_unmatched`` (a path no route matches
    still is ``_unmatched``)."""
    tenant = await make_tenant("refused", tier="free")
    limits = TierLimits(rate=0.5, burst=2)
    custom = with_settings(
        settings,
        redis={"key_prefix": f"obs-{uuid.uuid4().hex[:8]}:"},
        rate_limit={
            "enabled": True,
            "tiers": MappingProxyType({"free": limits, "pro": limits, "enterprise": limits}),
        },
    )
    async with serve(custom) as (_, http):
        statuses = [
            (await http.get("/api/employees/7", headers={"x-tenant-id": tenant.slug})).status_code
            for _ in range(4)
        ]
        unknown = await http.get("/api/departments", headers={"x-tenant-id": "no-such-tenant"})
        nowhere = await http.get("/no/such/route", headers={"x-tenant-id": "no-such-tenant"})
        text = (await http.get("/metrics")).text
    assert statuses.count(429) == 2
    assert unknown.status_code == 404
    assert nowhere.status_code == 404
    counts = _requests_by_route(text)
    assert counts[("/api/employees/{employee_id}", "429")] == 2
    assert counts[("/api/departments", "404")] == 1
    assert counts[(UNMATCHED_ROUTE, "404")] == 1
    assert (UNMATCHED_ROUTE, "429") not in counts


async def test_an_unhandled_exception_answers_500_with_the_request_id(
    settings: Settings, make_tenant: Callable[..., Awaitable[Tenant]]
) -> None:
    """A handler that raises: the 500 in the app's error shape carries X-Request-ID (the
    caller's, or a fresh one), the same id as its access line."""
    tenant = await make_tenant("crash")
    router = APIRouter(prefix="/obs")

    @router.get("/crash")
    async def crash() -> None:
        raise RuntimeError("bug in product code")

    stream = io.StringIO()
    async with serve(settings, routers=[router]) as (_, http):
        previous = ACCESS_LOG.stream
        ACCESS_LOG.stream = stream
        try:
            given = await http.get(
                "/obs/crash", headers={"x-tenant-id": tenant.slug, "x-request-id": "req-500"}
            )
            fresh = await http.get("/obs/crash", headers={"x-tenant-id": tenant.slug})
        finally:
            ACCESS_LOG.stream = previous
    for response in (given, fresh):
        assert response.status_code == 500
        assert response.json() == {"error": {"code": "internal_error", "message": "internal error"}}
    assert given.headers["x-request-id"] == "req-500"
    assert len(fresh.headers["x-request-id"]) == 16
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["request_id"] for line in lines] == ["req-500", fresh.headers["x-request-id"]]
    assert all(line["status"] == 500 and line["level"] == "error" for line in lines)
    assert all(line["route"] == "/obs/crash" for line in lines)


def test_access_line_fast_renderer_matches_the_generic_one() -> None:
    """``write_request`` writes the fields, order and values of ``write`` (path scrubbed,
    tenant fields, level by status) and a UTC ISO timestamp."""
    tenant = TenantContext(id=uuid.uuid4(), slug="acme-\u00e9", tier="pro", schema="t_acme")
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    for status, with_tenant in ((200, True), (503, False), (404, True)):
        fast, slow = io.StringIO(), io.StringIO()
        before = datetime.now(UTC)
        fast_log = AccessLog()
        fast_log.configure(LogSettings(), fast, Redactor(("password",)))
        fast_log.write_request(
            "GET",
            f'/api/x/{jwt}/"q"',
            "/api/x/{token}/{q}",
            status,
            0.0123456,
            "req-1",
            "ab" * 16,
            tenant if with_tenant else None,
        )
        fast_log.write_request(
            "GET",
            "/again",
            "/again",
            status,
            0.5,
            "req-2",
            "cd" * 16,
            tenant if with_tenant else None,
        )
        slow_log = AccessLog()
        slow_log.configure(LogSettings(), slow, Redactor(("password",)))
        for path, route, seconds, rid, tid in (
            (f'/api/x/{jwt}/"q"', "/api/x/{token}/{q}", 0.0123456, "req-1", "ab" * 16),
            ("/again", "/again", 0.5, "req-2", "cd" * 16),
        ):
            fields = {
                "method": "GET",
                "path": path,
                "route": route,
                "status": status,
                "duration_ms": round(seconds * 1000, 3),
                "request_id": rid,
                "trace_id": tid,
            }
            if with_tenant:
                fields.update(tenant.log_fields())
            slow_log.write(fields, error=status >= 500)
        fast_lines = [json.loads(line) for line in fast.getvalue().splitlines()]
        slow_lines = [json.loads(line) for line in slow.getvalue().splitlines()]
        assert len(fast_lines) == 2
        for mine, theirs in zip(fast_lines, slow_lines, strict=True):
            stamp = mine.pop("timestamp")
            theirs.pop("timestamp")
            assert list(mine.items()) == list(theirs.items())
            assert stamp.endswith("Z")
            written = datetime.fromisoformat(stamp)
            assert before - timedelta(seconds=1) <= written <= datetime.now(UTC)
        assert jwt not in fast.getvalue()
        assert fast_lines[0]["duration_ms"] == 12.346
        assert fast_lines[0]["level"] == ("error" if status >= 500 else "info")
        assert ("tenant_slug" in fast_lines[0]) is with_tenant


async def test_a_failing_statement_is_an_error_span_under_the_request(
    settings: Settings, make_tenant: Callable[..., Awaitable[Tenant]]
) -> None:
    """SQL spans are leaves started around the statement: one that fails carries ERROR
    status and the exception event, and is still a child of the request's span."""
    tenant = await make_tenant("sqlerr")
    router = APIRouter(prefix="/obs")

    @router.get("/bad-sql")
    async def bad_sql(conn: TenantConnection) -> None:
        await conn.execute("SELECT * FROM no_such_table")

    exporter = InMemorySpanExporter()
    traced = with_settings(settings, tracing={"enabled": True, "sample_ratio": 1.0})
    async with serve(traced, routers=[router]) as (app, http):
        app.state.tenantry.observability.tracing.add_exporter(exporter)
        response = await http.get("/obs/bad-sql", headers={"x-tenant-id": tenant.slug})
    assert response.status_code == 500
    spans = exporter.get_finished_spans()
    (root,) = [s for s in spans if s.kind == SpanKind.SERVER]
    assert root.name == "GET /obs/bad-sql"
    assert root.status.status_code == StatusCode.ERROR
    failed = [
        s
        for s in spans
        if s.name == "db.query" and "no_such_table" in str((s.attributes or {})["db.statement"])
    ]
    assert len(failed) == 1
    span = failed[0]
    assert span.status.status_code == StatusCode.ERROR
    assert [event.name for event in span.events] == ["exception"]
    assert span.parent is not None
    assert span.parent.span_id == root.context.span_id
    assert (span.attributes or {})["tenant.id"] == str(tenant.id)
