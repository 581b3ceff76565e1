"""The HR app factory, as ``tenantry up`` and uvicorn load it."""

from __future__ import annotations

from fastapi import FastAPI

from hr_example.api import router
from hr_example.schema import HR_SCHEMA
from hr_example.sessions import router as session_router
from tenantry import Settings
from tenantry.web import create_app as create_tenantry_app


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the HR API; settings come from the environment when not given."""
    return create_tenantry_app(
        settings or Settings.from_env(),
        HR_SCHEMA,
        routers=[router, session_router],
        title="tenantry HR example",
    )
