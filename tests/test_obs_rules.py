"""Alert rules: real ``promtool check rules`` and ``promtool test rules`` on the rendered
files, with generated input series."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tenantry.observability.rules import (
    RULES_FILE,
    BurnWindow,
    RuleWindows,
    render_rules,
    to_yaml,
    write_rules,
)


def _promtool() -> str:
    path = shutil.which("promtool") or (
        "/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None
    )
    if path is None:
        pytest.fail(
            "promtool is missing; 'scripts/services start prometheus' installs it "
            "(Debian package prometheus)",
            pytrace=False,
        )
    return path


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_promtool(), *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_rendered_rules_pass_promtool_check(tmp_path: Path) -> None:
    """Both the default rules and short test windows are valid Prometheus rule files, and
    their number does not depend on the tenants."""
    for windows in (RuleWindows(), _short_windows()):
        path = write_rules(tmp_path / windows.page[0].long, windows)
        result = _run("check", "rules", str(path))
        assert result.returncode == 0, result.stdout + result.stderr
        count = sum(len(group["rules"]) for group in render_rules(windows)["groups"])
        assert f"SUCCESS: {count} rules found" in result.stdout


def _short_windows() -> RuleWindows:
    return RuleWindows(
        page=(BurnWindow("30s", "10s", 14.4),),
        ticket=(BurnWindow("1m", "20s", 6.0),),
        latency_window="20s",
        page_for="0s",
        interval="1s",
    )


def _series(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


def _requests(
    tenant: str, tier: str, per_minute: float, errors_per_minute: float
) -> list[dict[str, str]]:
    ok = per_minute - errors_per_minute
    base = {"route": "/api/employees", "method": "GET", "tier": tier, "tenant": tenant}
    out = [_series("tenantry_http_requests_total", {**base, "status": "200"}, f"0+{ok}x160")]
    if errors_per_minute:
        out.append(
            _series(
                "tenantry_http_requests_total",
                {**base, "status": "500"},
                # healthy for 30 minutes, then failing
                f"0x30 {errors_per_minute}+{errors_per_minute}x120",
            )
        )
    return out


def _objective(tenant: str, tier: str, availability: float) -> dict[str, str]:
    return _series(
        "tenantry_tenant_slo_objective",
        {"tenant": tenant, "tier": tier, "slo": "availability", "instance": "app:8000"},
        f"{availability}x160",
    )


def _fast_alert(tenant: str, tier: str) -> dict[str, object]:
    return {
        "exp_labels": {"severity": "page", "tenant": tenant, "tier": tier},
        "exp_annotations": {
            "summary": f"Tenant {tenant} ({tier}) is burning its error budget fast",
            "description": (
                "5xx ratio over the fast burn windows is above the burn factor times the "
                "tenant's error budget (1 - its availability objective)."
            ),
        },
    }


def test_burn_rate_alerts_fire_per_tenant_with_their_own_thresholds(tmp_path: Path) -> None:
    """Generated series for five pro tenants (objective 99.5 %, budget 0.5 %):

    * ``alpha`` fails 10 % of its requests: 20x its budget, it pages;
    * ``bravo`` fails nothing: no alert;
    * ``strict`` has an override of 99.99 % and fails 0.5 %: 50x *its* budget, it pages;
    * ``lenient`` fails the same 0.5 % on the tier default: 1x, no page;
    * ``_other`` (unlabelled tenants, tier default) fails 0.2 %: no page.

    promtool compares the full list of firing alerts, so "no other tenant's" is checked.
    """
    rules = write_rules(tmp_path)
    inputs = [
        *_requests("alpha", "pro", 100, 10),
        *_requests("bravo", "pro", 100, 0),
        *_requests("strict", "pro", 100, 0.5),
        *_requests("lenient", "pro", 100, 0.5),
        *_requests("_other", "pro", 1000, 2),
        _objective("alpha", "pro", 0.995),
        _objective("bravo", "pro", 0.995),
        _objective("strict", "pro", 0.9999),
        _objective("lenient", "pro", 0.995),
        _objective("_other", "pro", 0.995),
        # The same objective from a second app instance must not break the join.
        {
            **_objective("alpha", "pro", 0.995),
            "series": _objective("alpha", "pro", 0.995)["series"].replace("app:8000", "app2:8000"),
        },
    ]
    tests = {
        "rule_files": [str(rules)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": inputs,
                "alert_rule_test": [
                    {
                        "eval_time": "100m",
                        "alertname": "TenantErrorBudgetBurnFast",
                        "exp_alerts": [_fast_alert("alpha", "pro"), _fast_alert("strict", "pro")],
                    },
                    {
                        "eval_time": "25m",
                        "alertname": "TenantErrorBudgetBurnFast",
                        "exp_alerts": [],
                    },
                ],
            }
        ],
    }
    test_file = tmp_path / "tenantry-slo.test.yml"
    test_file.write_text(to_yaml(tests) + "\n")
    result = _run("test", "rules", str(test_file))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_rule_count_does_not_depend_on_tenants() -> None:
    """The rules name no tenant: thresholds come from the exported objective series."""
    rendered = to_yaml(render_rules())
    groups = render_rules()["groups"]
    assert sum(len(g["rules"]) for g in groups) == 13
    assert "group_left" in rendered
    assert "tenantry_tenant_slo_objective" in rendered
    assert RULES_FILE.endswith(".yml")
