"""The composition root: one object that owns the pools and wires the capabilities.

``Platform`` is what an app factory, the CLI and the tests construct. It holds no global
state: two platforms (two databases, say) can live in one process.
"""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Any

from tenantry.cache import (
    KeyBuilder,
    RateLimiter,
    RedisClient,
    RedisGuard,
    RedisUnavailableError,
    SessionStore,
    TenantCache,
    create_redis_client,
)
from tenantry.catalog import (
    Tenant,
    TenantCatalog,
    TenantDirectory,
    TenantStatus,
    bootstrap_control_plane,
)
from tenantry.db import CompiledTenantSchema, Database, TenantSchema
from tenantry.errors import ConfigurationError
from tenantry.events import Events, bootstrap_events
from tenantry.flags import FeatureFlags, bootstrap_flags
from tenantry.observability.hub import Observability, bootstrap_observability
from tenantry.provisioning import SparePool, TenantLifecycle
from tenantry.settings import Settings

logger = logging.getLogger("tenantry.platform")


class Platform:
    """Database cells, the catalog, the tenant directory, lifecycle, feature flags and
    (optional) Redis: tenant cache, sessions and rate limits."""

    def __init__(self, settings: Settings, tenant_schema: TenantSchema) -> None:
        if not settings.database.url:
            raise ConfigurationError(
                "DATABASE_URL is not set: point it at PostgreSQL, or run 'tenantry up' "
                "which starts an embedded one"
            )
        self.settings = settings
        self.tenant_schema = tenant_schema
        self.db = Database(settings.database)
        self.catalog = TenantCatalog()
        self.directory = TenantDirectory(
            self.db,
            self.catalog,
            ttl=settings.resolution.cache_ttl_seconds,
            max_entries=settings.resolution.cache_size,
        )
        self.redis: RedisClient | None = (
            create_redis_client(settings.redis) if settings.redis.url else None
        )
        # Cache, sessions and rate limits share the client and its outage detection.
        self.redis_guard = RedisGuard(
            retry_interval=settings.redis.retry_interval,
            warn_interval=settings.redis.warn_interval,
            max_in_flight=settings.redis.max_connections,
        )
        keys = KeyBuilder(settings.redis.key_prefix)
        self.cache = TenantCache(
            self.redis, guard=self.redis_guard, keys=keys, settings=settings.cache
        )
        self.sessions = SessionStore(
            self.redis, guard=self.redis_guard, keys=keys, settings=settings.sessions
        )
        self.rate_limiter: RateLimiter | None = (
            RateLimiter(self.redis, guard=self.redis_guard, keys=keys, settings=settings.rate_limit)
            if self.redis is not None and settings.rate_limit.enabled
            else None
        )
        self.flags = FeatureFlags(self.db, settings.flags, catalog=self.catalog)
        # Metrics, traces, SLO objectives, usage: wired into the pools, cache and flags.
        self.observability = Observability(settings, self.db)
        self.metrics = self.observability.metrics
        self.observability.watch_cache(lambda: self.cache.stats)
        if self.metrics.enabled:
            self.flags.on_evaluation = self.metrics.observe_flag
        self.events = Events(self.db, self.directory, settings.events)
        # Handlers run in a span continuing the publisher's trace, with consumer lag recorded.
        self.events.run_handler = self.observability.wrap_handler_runner(self.events.run_handler)
        if self.metrics.enabled:
            self.events.observe_outbox_lags = self.metrics.outbox_lags
        self.spares: SparePool | None = None
        self._compiled: CompiledTenantSchema | None = None
        self._lifecycle: TenantLifecycle | None = None

    @property
    def compiled_schema(self) -> CompiledTenantSchema:
        """The tenant schema compiled at start."""
        if self._compiled is None:
            raise RuntimeError("Platform.start() has not run")
        return self._compiled

    @property
    def tenants(self) -> TenantLifecycle:
        """Lifecycle operations (create, suspend, resume, export, offboard)."""
        if self._lifecycle is None:
            raise RuntimeError("Platform.start() has not run")
        return self._lifecycle

    async def start(self, *, bootstrap: bool = True, listen: bool = True) -> None:
        """Open pools, create the control plane if missing, compile the tenant schema and
        start listening for catalog changes."""
        cell = self.db.cell()
        await cell.check_reachable()
        await cell.owner_pool.open(wait=True, timeout=30)
        if bootstrap:
            async with cell.owner_pool.connection() as conn:
                await bootstrap_control_plane(
                    conn,
                    app_role=self.settings.database.app_role,
                    app_password=self.settings.database.app_password,
                )
                await bootstrap_flags(conn, app_role=self.settings.database.app_role)
                await bootstrap_observability(conn, app_role=self.settings.database.app_role)
                await bootstrap_events(conn, app_role=self.settings.database.app_role)
        async with cell.owner_pool.connection() as conn:
            self._compiled = await self.tenant_schema.compile(
                conn, app_role=self.settings.database.app_role
            )
        await cell.app_pool.open(wait=True, timeout=30)
        stock = self.settings.provisioning.spare_schemas
        if stock > 0:
            self.spares = SparePool(
                self.db,
                self._compiled,
                target=stock,
                synchronous=self.settings.provisioning.synchronous_claims,
            )
            await self.spares.prune()
        self._lifecycle = TenantLifecycle(
            self.db,
            self._compiled,
            directory=self.directory,
            catalog=self.catalog,
            spares=self.spares,
        )
        self._lifecycle.listeners.append(self._tenant_changed)
        await self.observability.refresh()
        if listen:
            self.observability.start()
            await self.directory.start()
            await self.flags.start()
            if self.spares is not None:
                await self.spares.start()
            await self.events.start()

    async def stop(self) -> None:
        """Stop listening and close every connection."""
        await self.events.stop()
        await self.directory.stop()
        await self.flags.stop()
        if self.spares is not None:
            await self.spares.stop()
        if self.rate_limiter is not None:
            await self.rate_limiter.close()
        if self.redis is not None:
            await self.redis.aclose()
        await self.observability.stop()
        await self.db.close()

    async def _tenant_changed(self, tenant: Tenant) -> None:
        # A tenant that stops being served loses its sessions everywhere ("log out
        # everywhere" on suspension); an offboarded tenant's cache goes with its data.
        if self.redis is None:
            return
        if tenant.status in (TenantStatus.OFFBOARDING, TenantStatus.DELETED):
            await self.cache.invalidate_tenant(tenant.id)  # replayed later if Redis is down
        if tenant.status in (TenantStatus.SUSPENDED, TenantStatus.OFFBOARDING):
            try:
                await self.sessions.logout_tenant(tenant.id)
            except RedisUnavailableError:
                logger.warning(
                    "could not end the sessions of tenant %s (%s): Redis is unavailable; "
                    "they stay refused while it is not active",
                    tenant.slug,
                    tenant.status.value,
                )

    async def health(self) -> dict[str, Any]:
        """Liveness of each backing service: ``{"postgres": "ok", "redis": "ok"|...}``."""
        report: dict[str, Any] = {}
        try:
            async with self.db.cell().app_pool.connection(timeout=2) as conn:
                await conn.execute("SELECT 1")
            report["postgres"] = "ok"
        except Exception as exc:
            report["postgres"] = f"error: {type(exc).__name__}"
        if self.redis is None:
            report["redis"] = "not configured"
        else:
            try:
                await self.redis.ping()
                report["redis"] = "ok"
            except Exception as exc:
                report["redis"] = f"error: {type(exc).__name__}"
        return report

    async def __aenter__(self) -> Platform:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
