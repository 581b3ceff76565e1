"""Metrics: a bounded tenant label whatever the fleet size, and /metrics on the app."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import MappingProxyType

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tenantry import Platform, Settings, TenantContext
from tenantry.catalog import Tenant
from tenantry.db import Database
from tenantry.flags import Flag
from tenantry.observability import OTHER, Observability, PlatformMetrics
from tenantry.observability.metrics import LATENCY_BUCKETS
from tenantry.settings import MetricsSettings, TierLimits
from tests.obs_helpers import serve, with_settings

TIERS = ("free", "pro", "enterprise")
ROUTES = ("/api/employees", "/api/departments/{department_id}")
STATUSES = (200, 404, 500)


def _tenant(i: int) -> TenantContext:
    return TenantContext(
        id=uuid.UUID(int=i + 1), slug=f"t{i:05d}", tier=TIERS[i % 3], schema=f"t_t{i:05d}"
    )


def test_series_stay_bounded_with_10000_tenants() -> None:
    """10,000 tenants with skewed traffic: at most ``cap`` tenant labels plus ``_other``,
    the busiest tenants get theirs, a label never changes once given, and the series
    count stays under the documented bound (it would be ~100x larger with raw ids)."""
    cap = 200
    metrics = PlatformMetrics(MetricsSettings(tenant_cap=cap, promote_after=20))
    tenants = [_tenant(i) for i in range(10_000)]
    # Zipf-like: tenant i sends ~3000/(i+1) requests, everybody at least 2.
    weights = [max(2, 3000 // (i + 1)) for i in range(len(tenants))]
    first_label: dict[uuid.UUID, str] = {}
    changed = 0
    for rnd in range(max(weights)):
        for i, tenant in enumerate(tenants):
            if weights[i] <= rnd:
                break  # weights decrease with i: nobody after i has traffic left this round
            tier, label = metrics.tenant_label(tenant)
            if label != OTHER:
                if first_label.setdefault(tenant.id, label) != label:
                    changed += 1
            elif tenant.id in first_label:
                changed += 1
            status = STATUSES[(rnd + i) % 3]
            metrics.observe_request(ROUTES[(rnd + i) % 2], "GET", status, tier, label, 0.01)
    busiest = {tenants[i].id for i in range(100)}
    assert busiest <= set(metrics.tenants.labelled())
    # Then the whole fleet gets busy: the cap holds, and nobody's label moves.
    for rnd in range(25):
        for i, tenant in enumerate(tenants):
            tier, label = metrics.tenant_label(tenant)
            if label != OTHER:
                if first_label.setdefault(tenant.id, label) != label:
                    changed += 1
            elif tenant.id in first_label:
                changed += 1
            metrics.observe_request(ROUTES[i % 2], "GET", STATUSES[rnd % 3], tier, label, 0.02)
    labelled = metrics.tenants.labelled()
    assert len(labelled) == cap
    assert changed == 0
    assert busiest <= set(labelled)
    families = {f.name: f for f in metrics.registry.collect()}
    label_values = {s.labels["tenant"] for s in families["tenantry_http_requests"].samples}
    assert len(label_values) <= cap + 1
    # The documented bound: (cap + tiers) label pairs x routes x methods x (statuses +
    # buckets + 3), for the request counter (total and created) and the latency histogram.
    per_pair = len(ROUTES) * (2 * len(STATUSES) + len(LATENCY_BUCKETS) + 1 + 2 + 1)
    bound = (cap + len(TIERS)) * per_pair
    series = metrics.series_count()
    assert series <= bound + 200, (series, bound)
    assert series < 20 * len(tenants)  # raw tenant ids would need > 10,000 x per_pair


def test_allow_list_counts_against_the_cap_and_other_keeps_its_tier() -> None:
    """Allow-listed tenants are labelled at once; past the cap everyone is ``_other``."""
    metrics = PlatformMetrics(
        MetricsSettings(tenant_cap=2, tenant_allow=("t00007",), promote_after=3)
    )
    assert metrics.tenant_label(_tenant(7)) == ("pro", "t00007")
    for _ in range(2):
        assert metrics.tenant_label(_tenant(1)) == ("pro", OTHER)
    assert metrics.tenant_label(_tenant(1)) == ("pro", "t00001")  # promoted at 3 requests
    for _ in range(10):
        assert metrics.tenant_label(_tenant(2))[1] == OTHER  # cap reached
    assert metrics.tenant_label(_tenant(2))[0] == "enterprise"


async def test_metrics_endpoint_exports_bounded_labels_templates_and_objectives(
    settings: Settings, make_tenant: Callable[..., Awaitable[Tenant]]
) -> None:
    """Through the real app: route templates (not paths), the tenant label capped at 2,
    the others under ``_other``, DB transaction and pool series, SLO objective series for
    every labelled tenant and for ``_other`` by tier."""
    tenants = [await make_tenant("met", tier=tier) for tier in ("pro", "free", "free", "free")]
    custom = with_settings(settings, metrics={"tenant_cap": 2, "promote_after": 1})
    async with serve(custom) as (_, http):
        for tenant in tenants:
            for _ in range(3):
                ok = await http.get("/api/employees", headers={"x-tenant-id": tenant.slug})
                assert ok.status_code == 200
            missing = await http.get("/api/employees/999999", headers={"x-tenant-id": tenant.slug})
            assert missing.status_code == 404
        unknown = await http.get("/api/employees", headers={"x-tenant-id": "nosuchtenant"})
        assert unknown.status_code == 404
        response = await http.get("/metrics")
    assert response.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    requests = families["tenantry_http_requests"].samples
    totals = [s for s in requests if s.name == "tenantry_http_requests_total"]
    tenant_labels = {s.labels["tenant"] for s in totals}
    assert tenant_labels == {tenants[0].slug, tenants[1].slug, OTHER, "_none"}
    routes = {s.labels["route"] for s in totals}
    assert "/api/employees/{employee_id}" in routes
    assert "/api/employees/999999" not in routes
    other_free = sum(
        s.value
        for s in totals
        if s.labels["tenant"] == OTHER
        and s.labels["tier"] == "free"
        and s.labels["status"] == "200"
    )
    assert other_free == 6  # tenants 3 and 4, three reads each, folded together
    tx = [
        s
        for s in families["tenantry_db_transaction_duration_seconds"].samples
        if s.name.endswith("_count")
    ]
    assert sum(s.value for s in tx) >= 12
    pools = {
        (s.labels["pool"], s.labels["state"])
        for s in families["tenantry_db_pool_connections"].samples
    }
    assert ("app", "in_use") in pools
    assert ("app", "max") in pools
    objectives = {
        (s.labels["tenant"], s.labels["tier"], s.labels["slo"]): s.value
        for s in families["tenantry_tenant_slo_objective"].samples
    }
    assert objectives[(tenants[0].slug, "pro", "availability")] == 0.995
    assert objectives[(OTHER, "free", "availability")] == 0.99
    assert objectives[(OTHER, "enterprise", "latency_p99_seconds")] == 0.25
    assert (tenants[2].slug, "free", "availability") not in objectives
    assert "tenantry_cache_requests" in families


_WORKER = """
import sys, uuid
from tenantry import TenantContext
from tenantry.observability import PlatformMetrics
from tenantry.settings import MetricsSettings
metrics = PlatformMetrics(MetricsSettings(multiproc_dir=sys.argv[1], promote_after=1))
tenant = TenantContext(id=uuid.UUID(int=7), slug="multi", tier="pro", schema="t_multi")
for _ in range(int(sys.argv[2])):
    tier, label = metrics.tenant_label(tenant)
    metrics.observe_request("/api/employees", "GET", 200, tier, label, 0.01)
if len(sys.argv) > 3:
    sys.stdout.write(metrics.render().decode())
"""


def test_multiprocess_mode_aggregates_every_worker(tmp_path: Path) -> None:
    """With PROMETHEUS_MULTIPROC_DIR set, /metrics of any worker sums all workers."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", _WORKER, str(tmp_path), "3"], env=env, check=True)
    out = subprocess.run(
        [sys.executable, "-c", _WORKER, str(tmp_path), "4", "render"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    totals = [
        s.value
        for f in text_string_to_metric_families(out)
        for s in f.samples
        if s.name == "tenantry_http_requests_total" and s.labels.get("tenant") == "multi"
    ]
    assert totals == [7.0]  # 3 from the first worker (gone), 4 from the one answering


async def test_rate_limit_cache_and_flag_metrics_come_from_their_capabilities(
    settings: Settings, make_tenant: Callable[..., Awaitable[Tenant]]
) -> None:
    """A free tenant over its rate limit: 429s counted by reason and tenant; the cached
    department list: one miss then hits; a flag evaluated for two tenants: counted by
    flag and variant."""
    tenant = await make_tenant("lim", tier="free")
    other = await make_tenant("lim", tier="free")
    limits = TierLimits(rate=0.5, burst=3)
    custom = with_settings(
        settings,
        metrics={"promote_after": 1},
        redis={"key_prefix": f"obs-{uuid.uuid4().hex[:8]}:"},
        rate_limit={
            "enabled": True,
            "tiers": MappingProxyType({"free": limits, "pro": limits, "enterprise": limits}),
        },
    )
    key = f"obs-flag-{uuid.uuid4().hex[:8]}"
    async with serve(custom) as (app, http):
        platform: Platform = app.state.tenantry
        statuses = [
            (await http.get("/api/departments", headers={"x-tenant-id": tenant.slug})).status_code
            for _ in range(6)
        ]
        assert statuses.count(200) == 3
        assert statuses.count(429) == 3
        await platform.flags.create(
            Flag.from_definition(
                key, {"type": "boolean", "default": False, "targets": {str(other.id): True}}
            ),
            actor="test",
        )
        assert platform.flags.is_enabled(key, tenant=tenant.context()) is False
        assert platform.flags.is_enabled(key, tenant=other.context()) is True
        assert platform.flags.is_enabled(key, tenant=other.context()) is True
        text = (await http.get("/metrics")).text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    rejected = (("reason", "rate"), ("tenant", tenant.slug), ("tier", "free"))
    assert samples[("tenantry_rate_limit_rejections_total", rejected)] == 3
    assert samples[("tenantry_cache_requests_total", (("result", "miss"),))] == 1
    assert samples[("tenantry_cache_requests_total", (("result", "hit"),))] == 2
    flag = [
        (dict(labels), v)
        for (n, labels), v in samples.items()
        if n == "tenantry_flag_evaluations_total" and dict(labels)["flag"] == key
    ]
    assert sorted((labels["variant"], v) for labels, v in flag) == [("off", 1.0), ("on", 2.0)]


async def test_processes_without_http_serve_metrics_on_their_own_port(settings: Settings) -> None:
    """``TENANTRY_METRICS_PORT`` (relay, consumers): the same exposition on a port of the
    process's own, stopped with the platform."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    custom = with_settings(settings, metrics={"port": port})
    observability = Observability(custom, Database(custom.database))
    observability.metrics.outbox_lag("enterprise", 0.2)
    assert observability.serve_metrics() == port
    try:
        response = await asyncio.to_thread(httpx.get, f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert response.status_code == 200
        assert 'tenantry_outbox_lag_seconds_count{tier="enterprise"} 1.0' in response.text
    finally:
        await observability.stop()
    with pytest.raises(httpx.ConnectError):
        await asyncio.to_thread(httpx.get, f"http://127.0.0.1:{port}/metrics", timeout=2)


@pytest.mark.parametrize("bounds", [(0.005, 0.1, 2.5, 10.0), (-2.0, -0.5, 0.0, 0.1, 99.0)])
def test_observing_many_at_once_counts_as_observing_each(bounds: tuple[float, ...]) -> None:
    """``observe_many`` (the relay's lags, per round) leaves a histogram exactly as one
    ``observe`` per value would: values on a bucket's bound, between bounds, past the last
    finite one, negative (counted as 0, so below a negative bound's bucket) and repeated,
    in no order."""
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from tenantry.observability.metrics import observe_many

    values = [0.0, -1.0, 0.005, 0.0051, 0.1, 0.1, 2.5, 2.4999, 99.0, 1e9, 0.0001] * 3
    values += sorted(values, reverse=True)
    registries = []
    for bulk in (False, True):
        registry = CollectorRegistry()
        child = Histogram("lag_seconds", "lag", ["tier"], buckets=bounds, registry=registry).labels(
            "pro"
        )
        if bulk:
            observe_many(child, values)
        else:
            for value in values:
                child.observe(max(0.0, value))
        registries.append(registry)
    one_by_one, at_once = (
        [line for line in generate_latest(r).decode().splitlines() if "_created" not in line]
        for r in registries
    )
    if bounds[0] > 0:
        assert 'lag_seconds_bucket{le="0.005",tier="pro"} 24.0' in one_by_one
    else:
        assert 'lag_seconds_bucket{le="-0.5",tier="pro"} 0.0' in one_by_one
        assert 'lag_seconds_bucket{le="0.0",tier="pro"} 12.0' in one_by_one
    assert at_once == one_by_one
