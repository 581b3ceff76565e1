"""Prometheus metrics with the tenant as a (bounded) dimension.

One :class:`PlatformMetrics` per :class:`~tenantry.Platform`, with its own registry (two
platforms in one process do not mix their series). Hot-path calls look up a cached label
child by a tuple and increment it: no label dict is built per request.

Every per-tenant series carries ``tenant`` from :class:`TenantLabeler` (at most
``tenant_cap`` names, the rest ``_other``) and ``tier``, so the number of series is
bounded by ``(tenant_cap + tiers) x routes x methods x statuses`` whatever the fleet size.

Multi-process servers (gunicorn, ``uvicorn --workers``): set ``PROMETHEUS_MULTIPROC_DIR``
in the environment before the processes start; ``/metrics`` then aggregates every
worker's files (prometheus-client's multiprocess mode), and the gauges computed at scrape
time (pools, SLO objectives) are those of the worker that answers.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tenantry.context import TenantContext
from tenantry.observability.tenant_labels import OTHER, TenantLabeler
from tenantry.settings import MetricsSettings

NO_TENANT = "_none"
UNMATCHED_ROUTE = "_unmatched"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LAG_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
CONTENT_TYPE = CONTENT_TYPE_LATEST
_FLAG_HELP = "Feature-flag evaluations, by flag and variant (or reason, for fallbacks)."


class PlatformMetrics:
    """The platform's metrics and the cheap calls that record them."""

    def __init__(self, settings: MetricsSettings | None = None) -> None:
        settings = settings or MetricsSettings()
        self.settings = settings
        self.enabled = settings.enabled
        self.registry = CollectorRegistry(auto_describe=False)
        self.tenants = TenantLabeler(
            cap=settings.tenant_cap,
            allow=settings.tenant_allow,
            promote_after=settings.promote_after,
        )
        reg = self.registry
        self.http_requests = Counter(
            "tenantry_http_requests",
            "HTTP requests served, by route template, method, status, tier and tenant label.",
            ("route", "method", "status", "tier", "tenant"),
            registry=reg,
        )
        self.http_duration = Histogram(
            "tenantry_http_request_duration_seconds",
            "HTTP request latency, by route template, method, tier and tenant label.",
            ("route", "method", "tier", "tenant"),
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.db_transactions = Histogram(
            "tenantry_db_transaction_duration_seconds",
            "Tenant-bound database transactions, from BEGIN to COMMIT/ROLLBACK, by tier.",
            ("tier",),
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.rate_limited = Counter(
            "tenantry_rate_limit_rejections",
            "Requests refused by the per-tenant rate limiter, by reason, tier and tenant label.",
            ("reason", "tier", "tenant"),
            registry=reg,
        )
        # Flag evaluations are the hottest path (sub-microsecond): counted in a plain dict
        # and exported at scrape time, except in multi-process mode (shared files).
        self._flag_counts: dict[tuple[str, str], int] = {}
        self.flag_evaluations: Counter | None = None
        if settings.multiproc_dir:
            self.flag_evaluations = Counter(
                "tenantry_flag_evaluations", _FLAG_HELP, ("flag", "variant"), registry=reg
            )
        else:
            reg.register(CallbackCollector(self._flag_families))
        self.events = Counter(
            "tenantry_events",
            "Events published to the outbox or handled by a consumer, by tier and tenant label.",
            ("direction", "tier", "tenant"),
            registry=reg,
        )
        self.outbox_lag_seconds = Histogram(
            "tenantry_outbox_lag_seconds",
            "Time from an event's commit to the outbox until it was relayed, by tier.",
            ("tier",),
            buckets=LAG_BUCKETS,
            registry=reg,
        )
        self.consumer_lag_seconds = Histogram(
            "tenantry_consumer_lag_seconds",
            "Time from an event's creation until a consumer handled it, by tier.",
            ("tier",),
            buckets=LAG_BUCKETS,
            registry=reg,
        )
        self._requests: dict[tuple[str, str, int, str, str], tuple[Any, Any]] = {}
        self._durations: dict[tuple[str, str, str, str], Any] = {}
        self._by_tier: dict[tuple[int, str], Any] = {}
        self._rejections: dict[tuple[str, str, str], Any] = {}
        self._flags: dict[tuple[str, str], Any] = {}
        self._extra: list[Collector] = []
        self.registry.register(_LabelerCollector(self.tenants))

    # -- labels -------------------------------------------------------------------------
    def tenant_label(self, tenant: TenantContext | None) -> tuple[str, str]:
        """``(tier, tenant label)`` for one unit of work of ``tenant`` (counts traffic)."""
        if tenant is None:
            return NO_TENANT, NO_TENANT
        return tenant.tier, self.tenants.label(tenant.id, tenant.slug, tenant.tier)

    def _peek(self, tenant: TenantContext | None) -> tuple[str, str]:
        if tenant is None:
            return NO_TENANT, NO_TENANT
        return tenant.tier, self.tenants.peek(tenant.id)

    # -- HTTP ---------------------------------------------------------------------------
    def observe_request(
        self, route: str, method: str, status: int, tier: str, tenant: str, seconds: float
    ) -> None:
        """Count one served request and its latency (labels from :meth:`tenant_label`)."""
        key = (route, method, status, tier, tenant)
        children = self._requests.get(key)
        if children is None:
            children = self._request_children(route, method, status, tier, tenant)
        counter, hist = children
        counter.inc()
        hist.observe(seconds)

    def _request_children(
        self, route: str, method: str, status: int, tier: str, tenant: str
    ) -> tuple[Any, Any]:
        """The (counter, histogram) label children of one request label set, cached."""
        label_method = method if method in _METHODS else "OTHER"
        dkey = (route, label_method, tier, tenant)
        hist = self._durations.get(dkey)
        if hist is None:
            hist = self._durations[dkey] = self.http_duration.labels(*dkey)
        counter = self.http_requests.labels(route, label_method, str(status), tier, tenant)
        if label_method == method:  # unknown methods are not cached one by one
            self._requests[(route, method, status, tier, tenant)] = (counter, hist)
        return counter, hist

    def observe_rate_limited(self, reason: str, tier: str, tenant: str) -> None:
        """Count one request refused by the rate limiter."""
        key = (reason, tier, tenant)
        child = self._rejections.get(key)
        if child is None:
            child = self._rejections[key] = self.rate_limited.labels(reason, tier, tenant)
        child.inc()

    # -- database, flags, events ---------------------------------------------------------
    def observe_transaction(self, tenant: TenantContext, seconds: float) -> None:
        """Record one tenant-bound transaction's duration."""
        key = (0, tenant.tier)
        child = self._by_tier.get(key)
        if child is None:
            child = self._by_tier[key] = self.db_transactions.labels(tenant.tier)
        child.observe(seconds)

    def observe_flag(self, flag: str, variant: str) -> None:
        """Count one flag evaluation."""
        key = (flag, variant)
        if self.flag_evaluations is None:
            self._flag_counts[key] = self._flag_counts.get(key, 0) + 1
            return
        child = self._flags.get(key)
        if child is None:
            child = self._flags[key] = self.flag_evaluations.labels(flag, variant)
        child.inc()

    def _flag_families(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "tenantry_flag_evaluations", _FLAG_HELP, labels=("flag", "variant")
        )
        for (flag, variant), count in list(self._flag_counts.items()):
            family.add_metric((flag, variant), count)
        yield family

    def event_published(self, tenant: TenantContext | None) -> None:
        """Count one event written to the outbox."""
        tier, label = self._peek(tenant)
        self.events.labels("published", tier, label).inc()

    def event_consumed(self, tenant: TenantContext | None) -> None:
        """Count one event handled by a consumer."""
        tier, label = self._peek(tenant)
        self.events.labels("consumed", tier, label).inc()

    def outbox_lag(self, tier: str, seconds: float) -> None:
        """Record how long an event waited in the outbox before the relay published it."""
        self.outbox_lags(tier, (seconds,))

    def outbox_lags(self, tier: str, seconds: Sequence[float]) -> None:
        """Record :meth:`outbox_lag` for each of a relay round's events of ``tier``."""
        key = (1, tier)
        child = self._by_tier.get(key)
        if child is None:
            child = self._by_tier[key] = self.outbox_lag_seconds.labels(tier)
        observe_many(child, seconds)

    def consumer_lag(self, tier: str, seconds: float) -> None:
        """Record how long after its creation an event reached its consumer's handler."""
        key = (2, tier)
        child = self._by_tier.get(key)
        if child is None:
            child = self._by_tier[key] = self.consumer_lag_seconds.labels(tier)
        child.observe(max(0.0, seconds))

    # -- exposition ----------------------------------------------------------------------
    def add_collector(self, collector: Collector) -> None:
        """Register a collector computed at scrape time (pools, cache, SLO objectives)."""
        self.registry.register(collector)
        self._extra.append(collector)

    def render(self) -> bytes:
        """The text exposition format of every metric (what ``/metrics`` answers)."""
        if self.settings.multiproc_dir:
            registry = CollectorRegistry(auto_describe=False)
            multiprocess.MultiProcessCollector(  # type: ignore[no-untyped-call]
                registry, path=self.settings.multiproc_dir
            )
            for collector in self._extra:
                registry.register(collector)
            return generate_latest(registry)
        return generate_latest(self.registry)

    def series_count(self) -> int:
        """How many samples one scrape returns (what Prometheus stores as series)."""
        return sum(len(metric.samples) for metric in self.registry.collect())


class _LabelerCollector(Collector):
    """How many tenants have a label of their own, and the cap."""

    def __init__(self, labeler: TenantLabeler) -> None:
        self._labeler = labeler

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            "tenantry_metrics_tenant_labels",
            f"Tenants with a metrics label of their own (the others are '{OTHER}').",
            value=len(self._labeler.labelled()),
        )
        yield GaugeMetricFamily(
            "tenantry_metrics_tenant_label_cap",
            "The most tenants that get a label of their own in this process.",
            value=self._labeler.cap,
        )


class CallbackCollector(Collector):
    """A collector whose metric families come from a function called at scrape time."""

    def __init__(self, produce: Callable[[], Iterator[Metric]]) -> None:
        self._produce = produce

    def collect(self) -> Iterable[Metric]:
        return list(self._produce())


def pool_metrics(pools: Callable[[], Iterable[tuple[str, str, Any]]]) -> Iterator[Metric]:
    """``tenantry_db_pool_connections{cell,pool,state}`` from psycopg pools' statistics."""
    family = GaugeMetricFamily(
        "tenantry_db_pool_connections",
        "Connection pool usage: size, idle (available) and requests waiting, by cell and pool.",
        labels=("cell", "pool", "state"),
    )
    for cell, name, pool in pools():
        stats = pool.get_stats()
        size = stats.get("pool_size", 0)
        idle = stats.get("pool_available", 0)
        family.add_metric((cell, name, "size"), size)
        family.add_metric((cell, name, "idle"), idle)
        family.add_metric((cell, name, "in_use"), max(0, size - idle))
        family.add_metric((cell, name, "waiting"), stats.get("requests_waiting", 0))
        family.add_metric((cell, name, "max"), pool.max_size)
    yield family


def cache_metrics(stats: Callable[[], Any]) -> Iterator[Metric]:
    """``tenantry_cache_requests_total{result}``: hits, misses and bypasses of the tenant cache
    (hit ratio = hits / (hits + misses))."""
    current = stats()
    family = CounterMetricFamily(
        "tenantry_cache_requests",
        "Tenant cache reads, by result (hit, miss, bypass: Redis absent or unavailable).",
        labels=("result",),
    )
    family.add_metric(("hit",), current.hits)
    family.add_metric(("miss",), current.misses)
    family.add_metric(("bypass",), current.bypassed)
    yield family


def observe_many(histogram: Any, values: Sequence[float]) -> None:
    """``histogram.observe(max(0, v))`` for each of ``values`` (a labelled child of a
    ``prometheus_client.Histogram``), counted per bucket first: one increment per bucket
    and one for the sum, where observing one by one takes the child's lock for each value
    and walks its buckets. The relay records a lag per event it moves, up to tens of
    thousands a second: one by one that was a fifth of its time in ``bench/events.py``'s
    drain. A histogram without the attributes this relies on is observed one by one."""
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for value in values:
            histogram.observe(max(0.0, value))
        return
    # Sorted (a round's lags come nearly sorted, which sorting finds in one pass), each
    # bucket's count is two binary searches instead of one search per value. A value counts
    # in the first bucket whose upper bound is at least it (the last bound is +Inf); one
    # at most 0 counts as 0, in every bucket whose bound is not negative.
    ordered = sorted(values)
    below = 0
    for bucket, bound in zip(buckets, bounds, strict=True):
        upto = bisect_right(ordered, bound) if bound >= 0.0 else 0
        if upto > below:
            bucket.inc(upto - below)
            below = upto
    total.inc(sum(filter((0.0).__lt__, values)))  # in their order: the same float sum
