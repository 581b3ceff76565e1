"""What ships in deploy/: the rendered rule file and the Grafana dashboard."""

from __future__ import annotations

import json
import re
import urllib.parse
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tenantry.devstack.prometheus import PrometheusService
from tenantry.observability import PlatformMetrics
from tenantry.observability.rules import RULES_FILE, render_rules, to_yaml
from tests.obs_helpers import prometheus

__all__ = ["prometheus"]  # the fixture

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
DASHBOARD = DEPLOY / "grafana" / "tenantry-tenants.json"


def test_shipped_rule_file_is_what_render_writes() -> None:
    """deploy/prometheus holds ``tenantry alerts render`` output with default windows
    (re-render it when the rules change)."""
    shipped = (DEPLOY / "prometheus" / RULES_FILE).read_text()
    assert shipped == to_yaml(render_rules()) + "\n"


def _query_ok(prometheus: PrometheusService, expr: str) -> dict[str, object]:
    url = prometheus.url + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback
            return dict(json.load(response))
    except urllib.error.HTTPError as exc:
        return dict(json.load(exc))


def test_dashboard_has_a_tenant_selector_and_valid_queries(
    prometheus: PrometheusService,
) -> None:
    """The dashboard's ``tenant`` variable lists the tenant label's values; every panel
    query is accepted by the real Prometheus and names a metric tenantry exports (or a
    recording rule it ships)."""
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert "label_values(tenantry_http_requests_total" in variables["tenant"]["definition"]
    assert variables["tenant"]["multi"] is True
    exported = {f.name for f in PlatformMetrics().registry.collect()} | {
        "tenantry_tenant_slo_objective",
        "tenantry_db_pool_connections",
        "tenantry_cache_requests",
    }
    recorded = {
        rule["record"]
        for group in render_rules()["groups"]
        for rule in group["rules"]
        if "record" in rule
    }
    assert dashboard["panels"]
    for panel in dashboard["panels"]:
        expr = panel["targets"][0]["expr"]
        concrete = (
            expr.replace("$tenant", ".+").replace("$tier", ".+").replace("$__rate_interval", "1m")
        )
        answer = _query_ok(prometheus, concrete)
        assert answer["status"] == "success", (panel["title"], answer)
        names = set(re.findall(r"\b(tenant:[a-z0-9_:]+|tenantry_[a-z0-9_]+)", expr))
        for name in names:
            base = re.sub(r"_(total|bucket|count|sum|created)$", "", name)
            assert name in recorded or base in exported or name in exported, (panel["title"], name)
    # the metric families the exporter produces really parse as such
    assert list(text_string_to_metric_families(PlatformMetrics().render().decode()))
