"""Usage metering and SLO overrides: admin API, CLI, and the exported objective series."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from tenantry import Platform, Settings, tenant_scope
from tenantry.catalog import Tenant
from tenantry.cli import cli
from tenantry.web.auth import TokenService
from tests.obs_helpers import serve, with_settings

TENANTRY = Path(sys.executable).with_name("tenantry")


def _objectives(text: str) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "tenantry_tenant_slo_objective":
            for sample in family.samples:
                out[(sample.labels["tenant"], sample.labels["slo"])] = sample.value
    return out


async def test_usage_counts_requests_users_and_storage_per_tenant(
    settings: Settings, make_tenant: Callable[..., Awaitable[Tenant]]
) -> None:
    """Requests, events published and distinct authenticated users are counted per
    tenant; storage is the size of each tenant's schema; only a platform admin may read
    the report."""
    busy = await make_tenant("busy")
    quiet = await make_tenant("quiet")
    tokens = TokenService(settings.auth)
    alice = tokens.issue(subject="alice@busy", tenant=busy.slug)
    bob = tokens.issue(subject="bob@busy", tenant=busy.slug)
    admin = tokens.issue(subject="ops", platform_admin=True)
    async with serve(settings) as (app, http):
        platform: Platform = app.state.tenantry
        with tenant_scope(busy.context()):
            async with platform.db.tenant_transaction() as conn:
                await conn.execute(
                    "INSERT INTO departments (name) SELECT 'Department ' || g "
                    "FROM generate_series(1, 3000) g"
                )
                for i in range(4):
                    await platform.events.publish("usageprobe.counted", {"n": i})
        for token in (alice, alice, alice, bob, bob):
            response = await http.get(
                "/api/departments?limit=1", headers={"authorization": f"Bearer {token}"}
            )
            assert response.status_code == 200
        for _ in range(3):
            response = await http.get("/api/departments", headers={"x-tenant-id": quiet.slug})
            assert response.status_code == 200
        refused = await http.get("/admin/api/usage", headers={"authorization": f"Bearer {alice}"})
        assert refused.status_code == 403
        response = await http.get("/admin/api/usage", headers={"authorization": f"Bearer {admin}"})
        assert response.status_code == 200
        items = {item["slug"]: item for item in response.json()["items"]}
        one = await http.get(
            f"/admin/api/usage?tenant={quiet.slug}", headers={"authorization": f"Bearer {admin}"}
        )
        assert [item["slug"] for item in one.json()["items"]] == [quiet.slug]
    assert items[busy.slug]["requests"] == 5
    assert items[busy.slug]["active_users"] == 2
    assert items[busy.slug]["events"] == 4
    assert items[quiet.slug]["events"] == 0
    assert items[quiet.slug]["requests"] == 3
    assert items[quiet.slug]["active_users"] == 0
    assert items[quiet.slug]["storage_bytes"] > 0
    assert items[busy.slug]["storage_bytes"] > items[quiet.slug]["storage_bytes"] + 100_000


async def test_an_slo_override_changes_the_exported_threshold_without_new_rules(
    settings: Settings, make_tenant: Callable[..., Awaitable[Tenant]]
) -> None:
    """PUT /admin/api/tenants/{slug}/slo stores an override in the catalog; the next
    scrape exports it; removing it falls back to the tier default."""
    tenant = await make_tenant("strict", tier="pro")
    admin = TokenService(settings.auth).issue(subject="ops", platform_admin=True)
    auth = {"authorization": f"Bearer {admin}"}
    custom = with_settings(settings, metrics={"promote_after": 1})
    async with serve(custom) as (_, http):
        assert (
            await http.get("/api/departments", headers={"x-tenant-id": tenant.slug})
        ).status_code == 200
        before = _objectives((await http.get("/metrics")).text)
        assert before[(tenant.slug, "availability")] == 0.995
        response = await http.put(
            f"/admin/api/tenants/{tenant.slug}/slo",
            headers=auth,
            json={"availability": 0.9999, "latency_p99_seconds": 0.2},
        )
        assert response.status_code == 200, response.text
        assert response.json()["overrides"] == {"availability": 0.9999, "latency_p99_seconds": 0.2}
        after = _objectives((await http.get("/metrics")).text)
        assert after[(tenant.slug, "availability")] == 0.9999
        assert after[(tenant.slug, "latency_p99_seconds")] == 0.2
        bad = await http.put(
            f"/admin/api/tenants/{tenant.slug}/slo", headers=auth, json={"availability": 1.5}
        )
        assert bad.status_code == 422
        await http.put(
            f"/admin/api/tenants/{tenant.slug}/slo", headers=auth, json={"availability": None}
        )
        reset = _objectives((await http.get("/metrics")).text)
        assert reset[(tenant.slug, "availability")] == 0.995
        assert reset[(tenant.slug, "latency_p99_seconds")] == 0.2


async def test_cli_sets_objectives_and_reports_usage(
    settings: Settings, tmp_path: Path, make_tenant: Callable[..., Awaitable[Tenant]]
) -> None:
    """``tenantry slo set`` and ``tenantry usage --json``, run as the installed command."""
    tenant = await make_tenant("cliobs", tier="enterprise")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "DATABASE_URL": settings.database.url,
        "TENANTRY_JWT_SECRET": "x" * 48,
        "TENANTRY_DATA_DIR": str(tmp_path / "none"),
    }

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(TENANTRY), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    result = run("slo", "set", tenant.slug, "--availability", "0.99995", "--json")
    assert result.returncode == 0, result.stderr
    view = json.loads(result.stdout)
    assert view["objectives"]["availability"] == 0.99995
    assert view["tier_defaults"]["availability"] == 0.999
    result = run("usage", "--tenant", tenant.slug, "--since", "7d", "--json")
    assert result.returncode == 0, result.stderr
    [item] = json.loads(result.stdout)["items"]
    assert item["slug"] == tenant.slug
    assert item["requests"] == 0
    assert item["storage_bytes"] > 0


def test_cli_renders_rules_and_refuses_bad_input(tmp_path: Path) -> None:
    """``tenantry alerts render --out DIR`` with custom windows; malformed windows and an
    impossible objective exit 2 before touching any database."""
    runner = CliRunner()
    result = runner.invoke(
        cli, ["alerts", "render", "--out", str(tmp_path), "--page", "1h:5m:14.4"]
    )
    assert result.exit_code == 0, result.output
    text = (tmp_path / "tenantry-slo.rules.yml").read_text()
    assert "TenantErrorBudgetBurnFast" in text
    assert "rate30m" not in text  # only the windows asked for (and the ticket defaults)
    assert runner.invoke(cli, ["alerts", "render", "--page", "1h:5m"]).exit_code == 2
    assert runner.invoke(cli, ["alerts", "render", "--interval", "soon"]).exit_code == 2
    assert runner.invoke(cli, ["slo", "set", "acme", "--availability", "2"]).exit_code == 2
    assert runner.invoke(cli, ["slo", "set", "acme"]).exit_code == 2
