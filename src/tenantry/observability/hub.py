"""The platform's observability: metrics, traces, SLO objectives and usage, wired once.

:class:`Observability` is built by :class:`~tenantry.Platform` from the settings and
instruments the database (transaction latency, pool usage, SQL spans); the web layer,
events and cache read from it. Logging is configured separately, by the process's edge
(:func:`tenantry.observability.logging.configure_logging`), because it is process-wide.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from opentelemetry.trace import SpanKind
from prometheus_client import start_http_server
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from psycopg import AsyncConnection, sql
from psycopg.errors import UndefinedTable

from tenantry.catalog.bootstrap import run_bootstrap_script
from tenantry.db import Database
from tenantry.observability.correlation import correlation_scope, new_trace_id, trace_id_of
from tenantry.observability.metrics import (
    CallbackCollector,
    PlatformMetrics,
    cache_metrics,
    pool_metrics,
)
from tenantry.observability.slo import SLO_DDL, SLOCatalog, SLOObjectiveCollector
from tenantry.observability.tracing import Tracing
from tenantry.observability.usage import USAGE_DDL, UsageRecorder
from tenantry.settings import Settings

HandlerRunner = Callable[[Any, Any, Any], Awaitable[None]]
"""``(handler, event, conn)``: how the events capability invokes a handler."""


async def bootstrap_observability(conn: AsyncConnection[Any], *, app_role: str) -> None:
    """Create the SLO-override and usage tables if missing (owner connection, autocommit)."""
    del app_role  # the application role reads none of them: the control plane does
    await run_bootstrap_script(conn, sql.SQL(SLO_DDL + USAGE_DDL))  # constants, no input


class Observability:
    """Metrics, tracing, SLO catalog and usage recorder of one platform."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self.metrics = PlatformMetrics(settings.metrics)
        self.tracing = Tracing(settings.tracing)
        self.slo = SLOCatalog()
        self.usage = UsageRecorder(db, settings.usage)
        self.metrics.add_collector(SLOObjectiveCollector(self.slo, self.metrics.tenants))
        self.metrics.add_collector(
            CallbackCollector(
                lambda: pool_metrics(
                    lambda: [
                        (name, pool_name, pool)
                        for name, cell in db.cells.items()
                        for pool_name, pool in (("app", cell.app_pool), ("owner", cell.owner_pool))
                    ]
                )
            )
        )
        if self.metrics.enabled:
            db.on_transaction = self.metrics.observe_transaction
        if self.tracing.enabled:
            cursor = self.tracing.cursor_factory()
            for cell in db.cells.values():
                for pool in (cell.app_pool, cell.owner_pool):
                    # The pools are not open yet: their connections get the traced cursor.
                    kwargs = pool.kwargs
                    assert isinstance(kwargs, dict)
                    kwargs["cursor_factory"] = cursor
        self._db = db
        self._metrics_server: tuple[Any, Any] | None = None

    def wrap_handler_runner(self, inner: HandlerRunner) -> HandlerRunner:
        """Wrap how event handlers are called: each handling continues the publisher's
        trace (``traceparent``) in a consumer span with the tenant, binds a correlation
        (the event id as request id), and records consumer lag and the event count."""
        tracing, metrics = self.tracing, self.metrics

        async def run(handler: Any, event: Any, conn: Any) -> None:
            lag = (datetime.now(UTC) - event.occurred_at).total_seconds()
            if metrics.enabled:
                metrics.consumer_lag(event.tenant.tier, lag)
                metrics.event_consumed(event.tenant)
            trace_id = trace_id_of(event.traceparent) or new_trace_id()
            if not tracing.enabled:
                with correlation_scope(str(event.id), trace_id):
                    await inner(handler, event, conn)
                return
            with (
                tracing.span(
                    f"handle {event.type}",
                    kind=SpanKind.CONSUMER,
                    parent=tracing.extract(event.traceparent),
                    tenant=event.tenant,
                    attributes={"messaging.message.id": str(event.id), "event.type": event.type},
                ),
                correlation_scope(str(event.id), tracing.current_trace_id() or trace_id),
            ):
                await inner(handler, event, conn)

        return run

    def watch_cache(self, stats: Callable[[], Any]) -> None:
        """Export a cache's hit/miss counters (``stats()`` returns its ``CacheStats``)."""
        self.metrics.add_collector(CallbackCollector(lambda: cache_metrics(stats)))

    def serve_metrics(self) -> int | None:
        """Serve ``/metrics`` on ``TENANTRY_METRICS_PORT`` from a thread, for processes
        with no HTTP app of their own (relay, consumers); returns the port (None: off)."""
        settings = self.metrics.settings
        if settings.port is None or not self.metrics.enabled or self._metrics_server:
            return settings.port
        metrics = self.metrics

        class _Rendered:  # what start_http_server scrapes: render() knows multiprocess mode
            def collect(self) -> Iterable[Metric]:
                return text_string_to_metric_families(metrics.render().decode())

        server, thread = start_http_server(
            settings.port,
            addr=settings.host,
            registry=_Rendered(),
        )
        self._metrics_server = (server, thread)
        return int(server.server_address[1])

    def start(self) -> None:
        """Start the background loops (SLO refresh, usage flush)."""
        self.slo.start(self._db.cell().owner_pool.connection)
        self.usage.start()

    async def refresh(self) -> None:
        """Reload the SLO overrides now."""
        async with self._db.cell().owner_pool.connection() as conn:
            try:
                await self.slo.refresh(conn)
            except UndefinedTable:  # not bootstrapped (start(bootstrap=False)): tier defaults
                return

    async def stop(self) -> None:
        """Stop the loops, flush usage; call before the pools close."""
        await self.slo.stop()
        await self.usage.stop()
        self.tracing.shutdown()
        if self._metrics_server is not None:
            server, thread = self._metrics_server
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
            self._metrics_server = None
