"""Per-tenant service-level objectives: tier defaults, catalog overrides, exported series.

Each tenant has two objectives: ``availability`` (the share of its requests that must not
fail with a 5xx, e.g. ``0.999``) and ``latency_p99_seconds`` (the 99th percentile latency
it must stay under). A tier gives the defaults; a row in ``tenantry.tenant_slo_overrides``
replaces one objective for one tenant (an enterprise contract, say).

The objectives are not baked into alert rules: :class:`SLOObjectiveCollector` exports them
as ``tenantry_tenant_slo_objective{tenant,tier,slo}`` for every tenant that has a metrics
label, plus one ``tenant="_other"`` series per tier holding the tier default (the traffic
folded into ``_other`` is judged by its tier's objective). The rules of
:mod:`tenantry.observability.rules` join on them, so changing an objective needs no new
rules, and the rule count does not grow with the fleet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any
from uuid import UUID

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from psycopg import AsyncConnection
from psycopg.rows import dict_row

from tenantry.errors import TenantryError
from tenantry.observability.tenant_labels import OTHER, TenantLabeler

logger = logging.getLogger("tenantry.observability")

AVAILABILITY = "availability"
LATENCY_P99 = "latency_p99_seconds"
SLO_KINDS = (AVAILABILITY, LATENCY_P99)


@dataclass(frozen=True, slots=True)
class Objectives:
    """One tenant's (or tier's) objectives."""

    availability: float
    latency_p99_seconds: float

    def get(self, slo: str) -> float:
        """The objective called ``slo``."""
        return float(getattr(self, slo))

    def as_dict(self) -> dict[str, float]:
        """``{"availability": ..., "latency_p99_seconds": ...}``."""
        return {AVAILABILITY: self.availability, LATENCY_P99: self.latency_p99_seconds}


TIER_OBJECTIVES: Mapping[str, Objectives] = MappingProxyType(
    {
        "free": Objectives(availability=0.99, latency_p99_seconds=1.0),
        "pro": Objectives(availability=0.995, latency_p99_seconds=0.5),
        "enterprise": Objectives(availability=0.999, latency_p99_seconds=0.25),
    }
)

SLO_DDL = """
CREATE TABLE IF NOT EXISTS tenantry.tenant_slo_overrides (
    tenant_id   uuid NOT NULL REFERENCES tenantry.tenants (id) ON DELETE CASCADE,
    slo         text NOT NULL CHECK (slo IN ('availability', 'latency_p99_seconds')),
    objective   double precision NOT NULL CHECK (
                    (slo = 'availability' AND objective > 0 AND objective < 1)
                    OR (slo = 'latency_p99_seconds' AND objective > 0)),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    updated_by  text NOT NULL DEFAULT '',
    PRIMARY KEY (tenant_id, slo)
);
"""


class InvalidObjectiveError(TenantryError):
    """An SLO name or value that cannot be used."""


def validate_objective(slo: str, value: float) -> float:
    """Check one objective: availability in (0, 1), latency in seconds > 0."""
    if slo not in SLO_KINDS:
        raise InvalidObjectiveError(f"unknown SLO {slo!r}; use one of {list(SLO_KINDS)}")
    if slo == AVAILABILITY and not 0 < value < 1:
        raise InvalidObjectiveError("availability is a ratio between 0 and 1, e.g. 0.999")
    if slo == LATENCY_P99 and not value > 0:
        raise InvalidObjectiveError("latency_p99_seconds must be a positive number of seconds")
    return float(value)


class SLOCatalog:
    """Tier defaults plus the catalog's per-tenant overrides, cached in memory.

    :meth:`refresh` reloads every override in one query; a long-running process does it
    every ``refresh_seconds`` (and the admin API after each change it makes).
    """

    def __init__(
        self,
        tiers: Mapping[str, Objectives] = TIER_OBJECTIVES,
        *,
        refresh_seconds: float = 15.0,
    ) -> None:
        self.tiers = tiers
        self.refresh_seconds = refresh_seconds
        self._overrides: dict[UUID, dict[str, float]] = {}
        self._task: asyncio.Task[None] | None = None

    def for_tier(self, tier: str) -> Objectives:
        """A tier's defaults (``free``'s for an unknown tier)."""
        return self.tiers.get(tier) or self.tiers["free"]

    def for_tenant(self, tenant_id: UUID, tier: str) -> Objectives:
        """A tenant's objectives: its overrides over its tier's defaults."""
        base = self.for_tier(tier)
        extra = self._overrides.get(tenant_id)
        if not extra:
            return base
        return Objectives(
            availability=extra.get(AVAILABILITY, base.availability),
            latency_p99_seconds=extra.get(LATENCY_P99, base.latency_p99_seconds),
        )

    def overrides(self, tenant_id: UUID) -> dict[str, float]:
        """The tenant's own overrides (empty when it uses its tier's defaults)."""
        return dict(self._overrides.get(tenant_id, {}))

    async def refresh(self, conn: AsyncConnection[Any]) -> None:
        """Reload every override (one query)."""
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute("SELECT tenant_id, slo, objective FROM tenantry.tenant_slo_overrides")
            rows = await cur.fetchall()
        loaded: dict[UUID, dict[str, float]] = {}
        for row in rows:
            loaded.setdefault(row["tenant_id"], {})[row["slo"]] = float(row["objective"])
        self._overrides = loaded

    async def set_override(
        self,
        conn: AsyncConnection[Any],
        tenant_id: UUID,
        slo: str,
        value: float | None,
        *,
        actor: str = "",
    ) -> None:
        """Set (or, with ``None``, remove) one tenant's override, then reload."""
        if value is None:
            if slo not in SLO_KINDS:
                raise InvalidObjectiveError(f"unknown SLO {slo!r}; use one of {list(SLO_KINDS)}")
            await conn.execute(
                "DELETE FROM tenantry.tenant_slo_overrides WHERE tenant_id = %s AND slo = %s",
                (tenant_id, slo),
            )
        else:
            value = validate_objective(slo, value)
            await conn.execute(
                "INSERT INTO tenantry.tenant_slo_overrides (tenant_id, slo, objective, updated_by)"
                " VALUES (%s, %s, %s, %s) ON CONFLICT (tenant_id, slo) DO UPDATE"
                " SET objective = EXCLUDED.objective, updated_by = EXCLUDED.updated_by,"
                " updated_at = now()",
                (tenant_id, slo, value, actor),
            )
        await self.refresh(conn)

    def start(self, connect: Any) -> None:
        """Refresh in the background every ``refresh_seconds``; ``connect()`` gives an async
        context manager yielding a connection (an owner pool's ``connection``)."""

        async def loop() -> None:
            while True:
                try:
                    async with connect() as conn:
                        await self.refresh(conn)
                except Exception as exc:  # the last snapshot keeps serving
                    logger.warning("could not refresh the SLO overrides: %s", exc)
                await asyncio.sleep(self.refresh_seconds)

        if self._task is None:
            self._task = asyncio.create_task(loop(), name="tenantry-slo-refresh")

    async def stop(self) -> None:
        """Stop the background refresh."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


class SLOObjectiveCollector(Collector):
    """Exports ``tenantry_tenant_slo_objective{tenant,tier,slo}`` at scrape time: for every
    labelled tenant, and ``_other`` per tier (see the module docstring)."""

    def __init__(self, catalog: SLOCatalog, labeler: TenantLabeler) -> None:
        self.catalog = catalog
        self.labeler = labeler

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "tenantry_tenant_slo_objective",
            "Per-tenant SLO objectives (availability ratio; p99 latency in seconds), from the "
            "tier defaults and the catalog's overrides; tenant='_other' holds the tier default.",
            labels=("tenant", "tier", "slo"),
        )
        for tier in self.catalog.tiers:
            objectives = self.catalog.for_tier(tier)
            for slo in SLO_KINDS:
                family.add_metric((OTHER, tier, slo), objectives.get(slo))
        for tenant_id, (label, tier) in self.labeler.labelled().items():
            objectives = self.catalog.for_tenant(tenant_id, tier)
            for slo in SLO_KINDS:
                family.add_metric((label, tier, slo), objectives.get(slo))
        yield family
