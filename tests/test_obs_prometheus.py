"""End to end: a real Prometheus scrapes a running app and fires one tenant's alert."""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import APIRouter
from starlette.responses import JSONResponse

from hr_example.api import router as hr_router
from hr_example.schema import HR_SCHEMA
from tenantry import Settings
from tenantry.catalog import Tenant
from tenantry.devstack.errors import ServiceError
from tenantry.devstack.prometheus import PrometheusService
from tenantry.observability.rules import BurnWindow, RuleWindows, write_rules
from tenantry.web import create_app
from tests.obs_helpers import prometheus, with_settings

__all__ = ["prometheus"]  # the fixture


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _failing_router() -> APIRouter:
    router = APIRouter(prefix="/obs")

    @router.get("/flaky")
    async def flaky() -> JSONResponse:
        return JSONResponse({"error": {"code": "upstream", "message": "down"}}, status_code=503)

    return router


@pytest.fixture
def served_app(settings: Settings) -> Iterator[str]:
    """The HR app (plus a failing route) behind uvicorn on a free loopback port."""
    custom = with_settings(settings, metrics={"promote_after": 1})
    app = create_app(custom, HR_SCHEMA, routers=[_failing_router(), hr_router])
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
    )
    thread = threading.Thread(target=server.run, name="obs-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("the app did not start under uvicorn")
        time.sleep(0.05)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _alerts(prometheus: PrometheusService) -> list[dict[str, Any]]:
    with urllib.request.urlopen(prometheus.url + "/api/v1/alerts", timeout=5) as response:  # noqa: S310
        body = json.load(response)
    return list(body["data"]["alerts"])


async def test_prometheus_fires_the_alert_of_the_failing_tenant_only(
    prometheus: PrometheusService,
    served_app: str,
    make_tenant: Callable[..., Awaitable[Tenant]],
) -> None:
    """Rules rendered with 30 s / 10 s windows are loaded into the real server, which
    scrapes the app every second. One tenant's requests start failing: Prometheus's own
    alerts API shows that tenant's burn-rate alert, and none for the healthy tenant."""
    failing = await make_tenant("burn", tier="pro")
    healthy = await make_tenant("calm", tier="pro")
    run = secrets.token_hex(4)
    windows = RuleWindows(
        page=(BurnWindow("30s", "10s", 14.4),),
        ticket=(BurnWindow("2m", "1m", 6.0),),
        latency_window="30s",
        page_for="0s",
        ticket_for="1m",
        latency_for="1m",
        interval="1s",
    )
    rules = write_rules(prometheus.rules_dir / run, windows)
    (prometheus.rules_dir / f"{run}.yml").write_text(rules.read_text())
    rules.unlink()
    rules.parent.rmdir()
    target = prometheus.targets_dir / f"{run}.json"
    target.write_text(json.dumps([{"targets": [served_app], "labels": {"run": run}}]))
    prometheus.reload()
    try:
        seen: list[dict[str, Any]] = []
        async with httpx.AsyncClient(base_url=f"http://{served_app}", timeout=5) as http:
            deadline = time.monotonic() + 50
            while time.monotonic() < deadline:
                for _ in range(5):
                    for tenant in (failing, healthy):
                        ok = await http.get(
                            "/api/departments", headers={"x-tenant-id": tenant.slug}
                        )
                        assert ok.status_code == 200
                    bad = await http.get("/obs/flaky", headers={"x-tenant-id": failing.slug})
                    assert bad.status_code == 503
                seen = [
                    alert
                    for alert in await asyncio.to_thread(_alerts, prometheus)
                    if alert["labels"].get("tenant") in (failing.slug, healthy.slug)
                ]
                if any(a["labels"]["alertname"] == "TenantErrorBudgetBurnFast" for a in seen):
                    break
                await asyncio.sleep(0.5)
        fast = [a for a in seen if a["labels"]["alertname"] == "TenantErrorBudgetBurnFast"]
        assert fast, f"no burn-rate alert within 50 s; alerts seen: {seen}"
        assert {a["labels"]["tenant"] for a in seen} == {failing.slug}
        assert fast[0]["state"] in ("pending", "firing")
        assert fast[0]["labels"]["tier"] == "pro"
    finally:
        target.unlink(missing_ok=True)
        (prometheus.rules_dir / f"{run}.yml").unlink(missing_ok=True)
        prometheus.reload()


def test_a_prometheus_started_from_another_folder_is_refused_not_reused(
    prometheus: PrometheusService, tmp_path: Path
) -> None:
    """The server on the port reads its rules and targets from its own folder: a service
    for another folder must not take it for its own (it would write targets nobody reads),
    and says so."""
    stranger = PrometheusService(tmp_path / "prometheus", port=prometheus.port)
    with pytest.raises(ServiceError, match="not started from"):
        stranger.start()
    prometheus.start()  # its own server: a no-op
    assert prometheus.is_running()
