"""Observability with the tenant as a first-class dimension.

Structured logs (:mod:`.logging`), Prometheus metrics with a bounded tenant label
(:mod:`.metrics`, :mod:`.tenant_labels`), OpenTelemetry traces (:mod:`.tracing`),
per-tenant SLO objectives (:mod:`.slo`) and the alert rules built on them (:mod:`.rules`),
and usage metering (:mod:`.usage`). :class:`Observability` wires them into a platform.
"""

from tenantry.observability.correlation import (
    Correlation,
    correlation_scope,
    current_correlation,
)
from tenantry.observability.hub import Observability
from tenantry.observability.logging import Redactor, configure_logging, get_logger
from tenantry.observability.metrics import PlatformMetrics
from tenantry.observability.rules import RuleWindows, render_rules, write_rules
from tenantry.observability.slo import TIER_OBJECTIVES, Objectives, SLOCatalog
from tenantry.observability.tenant_labels import OTHER, TenantLabeler
from tenantry.observability.tracing import Tracing
from tenantry.observability.usage import UsageRecorder

__all__ = [
    "OTHER",
    "TIER_OBJECTIVES",
    "Correlation",
    "Objectives",
    "Observability",
    "PlatformMetrics",
    "Redactor",
    "RuleWindows",
    "SLOCatalog",
    "TenantLabeler",
    "Tracing",
    "UsageRecorder",
    "configure_logging",
    "correlation_scope",
    "current_correlation",
    "get_logger",
    "render_rules",
    "write_rules",
]
