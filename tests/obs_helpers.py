"""Helpers of the observability tests: apps with their own settings, served in-process."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI

from hr_example.api import router as hr_router
from hr_example.schema import HR_SCHEMA
from tenantry import Settings
from tenantry.devstack.prometheus import PrometheusService
from tenantry.web import create_app


def with_settings(settings: Settings, **sections: dict[str, Any]) -> Settings:
    """``settings`` with fields of some sections replaced: ``metrics={"tenant_cap": 2}``."""
    changes = {
        name: dataclasses.replace(getattr(settings, name), **values)
        for name, values in sections.items()
    }
    return dataclasses.replace(settings, **changes)


@asynccontextmanager
async def serve(
    settings: Settings, routers: Sequence[APIRouter] = ()
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The HR API (plus ``routers``) on its own platform, lifespan run, with a client."""
    app = create_app(settings, HR_SCHEMA, routers=[*routers, hr_router])
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield app, http


PROMETHEUS_PORT = int(os.environ.get("TENANTRY_TEST_PROMETHEUS_PORT", "19090"))
SERVICES_DIR = Path(os.environ.get("TENANTRY_SERVICES_DIR", ".services")).absolute()


@pytest.fixture(scope="session")
def prometheus() -> PrometheusService:
    """The test Prometheus server (``scripts/services start prometheus``)."""
    service = PrometheusService(SERVICES_DIR / "prometheus", port=PROMETHEUS_PORT)
    if not service.is_running():
        pytest.fail(
            f"Prometheus is not reachable at {service.url}; start it with "
            "'scripts/services start prometheus' (make test does this for you)",
            pytrace=False,
        )
    return service
