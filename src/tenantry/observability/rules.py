"""Prometheus rule files for per-tenant SLOs: recording rules and burn-rate alerts.

The alerts follow the multi-window, multi-burn-rate recipe of Google's SRE workbook
("Alerting on SLOs"): a tenant pages when it burns its error budget 14.4x too fast over
1 h *and* over the last 5 min (2 % of a 30-day budget in an hour), or 6x over 6 h and
30 min; it gets a ticket at 3x over 1 d and 2 h, or 1x over 3 d and 6 h. The short window
makes the alert stop soon after the burn does.

The thresholds are not in the rules: each tenant's error budget comes from the series
``tenantry_tenant_slo_objective`` (see :mod:`tenantry.observability.slo`) and is joined
with ``on(tenant, tier) group_left``. So the rule count is the same for 3 tenants or
10,000, and a changed objective takes effect at the next scrape, with no new rule file.
The tenants folded into ``_other`` are judged, together, by their tier's default.

:func:`render_rules` takes the windows as parameters so a test can run the same rules
with seconds instead of hours.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OBJECTIVE = "tenantry_tenant_slo_objective"
REQUESTS = "tenantry_http_requests_total"
DURATION = "tenantry_http_request_duration_seconds_bucket"
TENANT_SELECTOR = 'tenant!="_none"'
RULES_FILE = "tenantry-slo.rules.yml"


@dataclass(frozen=True, slots=True)
class BurnWindow:
    """One alert condition: the error ratio above ``factor`` x budget over both windows."""

    long: str
    short: str
    factor: float


@dataclass(frozen=True, slots=True)
class RuleWindows:
    """The windows, burn factors and timings the rules use (SRE workbook defaults)."""

    page: tuple[BurnWindow, ...] = (BurnWindow("1h", "5m", 14.4), BurnWindow("6h", "30m", 6.0))
    ticket: tuple[BurnWindow, ...] = (BurnWindow("1d", "2h", 3.0), BurnWindow("3d", "6h", 1.0))
    latency_window: str = "5m"
    latency_for: str = "10m"
    page_for: str = "2m"
    ticket_for: str = "15m"
    interval: str = "30s"
    extra_labels: dict[str, str] = field(default_factory=dict)

    def all_windows(self) -> list[str]:
        """Every rate window the rules need, once each."""
        seen: list[str] = []
        for window in (*self.page, *self.ticket):
            for w in (window.long, window.short):
                if w not in seen:
                    seen.append(w)
        return seen


def error_ratio_record(window: str) -> str:
    """The recorded series name of the per-tenant 5xx ratio over ``window``."""
    return f"tenant:tenantry_http_error_ratio:rate{window}"


def _error_ratio_expr(window: str) -> str:
    total = f"sum by (tenant, tier) (rate({REQUESTS}{{{TENANT_SELECTOR}}}[{window}]))"
    errors = (
        f'sum by (tenant, tier) (rate({REQUESTS}{{{TENANT_SELECTOR},status=~"5.."}}[{window}]))'
    )
    # "or total * 0": a tenant with traffic but no 5xx series yet has a ratio of 0, not none.
    return f"({errors} or {total} * 0) / {total}"


def _burn_condition(windows: Sequence[BurnWindow]) -> str:
    budget = "tenant:tenantry_slo_error_budget:ratio"
    parts = []
    for w in windows:
        parts.append(
            f"(\n  {error_ratio_record(w.long)} > on(tenant, tier) group_left() "
            f"({_num(w.factor)} * {budget})\n  and\n  {error_ratio_record(w.short)} "
            f"> on(tenant, tier) group_left() ({_num(w.factor)} * {budget})\n)"
        )
    return "\nor\n".join(parts)


def _num(value: float) -> str:
    return repr(float(value)).removesuffix(".0") if float(value).is_integer() else repr(value)


def render_rules(windows: RuleWindows | None = None) -> dict[str, Any]:
    """The rule groups, as the data structure of a Prometheus rule file."""
    windows = windows or RuleWindows()
    labels = dict(windows.extra_labels)
    recording: list[dict[str, Any]] = [
        {
            "record": "tenant:tenantry_slo_error_budget:ratio",
            "expr": f'max by (tenant, tier) (1 - {OBJECTIVE}{{slo="availability"}})',
        },
        {
            "record": "tenant:tenantry_slo_latency_p99:seconds",
            "expr": f'max by (tenant, tier) ({OBJECTIVE}{{slo="latency_p99_seconds"}})',
        },
    ]
    for window in windows.all_windows():
        recording.append({"record": error_ratio_record(window), "expr": _error_ratio_expr(window)})
    latency_record = f"tenant:tenantry_http_latency_p99:rate{windows.latency_window}"
    recording.append(
        {
            "record": latency_record,
            "expr": (
                "histogram_quantile(0.99, sum by (tenant, tier, le) "
                f"(rate({DURATION}{{{TENANT_SELECTOR}}}[{windows.latency_window}])))"
            ),
        }
    )
    summary = "Tenant {{ $labels.tenant }} ({{ $labels.tier }}) is burning its error budget"
    alerts: list[dict[str, Any]] = [
        {
            "alert": "TenantErrorBudgetBurnFast",
            "expr": _burn_condition(windows.page),
            "for": windows.page_for,
            "labels": {"severity": "page", **labels},
            "annotations": {
                "summary": summary + " fast",
                "description": (
                    "5xx ratio over the fast burn windows is above the burn factor times the "
                    "tenant's error budget (1 - its availability objective)."
                ),
            },
        },
        {
            "alert": "TenantErrorBudgetBurnSlow",
            "expr": _burn_condition(windows.ticket),
            "for": windows.ticket_for,
            "labels": {"severity": "ticket", **labels},
            "annotations": {"summary": summary + " slowly"},
        },
        {
            "alert": "TenantLatencyP99High",
            "expr": (
                f"{latency_record} > on(tenant, tier) group_left() "
                "tenant:tenantry_slo_latency_p99:seconds"
            ),
            "for": windows.latency_for,
            "labels": {"severity": "ticket", **labels},
            "annotations": {
                "summary": "Tenant {{ $labels.tenant }} p99 latency {{ $value }}s is above "
                "its objective"
            },
        },
    ]
    return {
        "groups": [
            {"name": "tenantry-slo-recording", "interval": windows.interval, "rules": recording},
            {"name": "tenantry-slo-alerts", "interval": windows.interval, "rules": alerts},
        ]
    }


def to_yaml(value: Any, indent: int = 0) -> str:
    """A small YAML writer for rule files: mappings, lists, strings (JSON-quoted, which
    YAML reads as double-quoted scalars; multi-line ones as literal blocks) and numbers."""
    pad = "  " * indent
    if isinstance(value, dict):
        if not value:
            return "{}"
        lines = []
        for key, item in value.items():
            if isinstance(item, dict | list) and item:
                lines.append(f"{pad}{key}:\n{to_yaml(item, indent + 1)}")
            else:
                lines.append(f"{pad}{key}: {_scalar(item, indent + 1)}")
        return "\n".join(lines)
    if isinstance(value, list):
        if not value:
            return "[]"
        lines = []
        for item in value:
            text = to_yaml(item, indent + 1) if isinstance(item, dict | list) else _scalar(item, 0)
            lines.append(f"{pad}- {text.lstrip()}")
        return "\n".join(lines)
    return _scalar(value, indent)


def _scalar(value: Any, indent: int) -> str:
    if isinstance(value, dict | list):
        return "{}" if isinstance(value, dict) else "[]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return _num(value)
    text = str(value)
    if "\n" in text:
        pad = "  " * indent
        return "|-\n" + "\n".join(pad + line for line in text.splitlines())
    return json.dumps(text)


def write_rules(out: Path, windows: RuleWindows | None = None) -> Path:
    """Write the rule file into folder ``out``; return its path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / RULES_FILE
    path.write_text(to_yaml(render_rules(windows)) + "\n")
    return path
