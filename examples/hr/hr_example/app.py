"""The HR app factory, as ``tenantry up`` and uvicorn load it."""

from __future__ import annotations

from fastapi import FastAPI

from hr_example.api import router
from hr_example.events import GROUP, build_handlers
from hr_example.schema import HR_SCHEMA
from hr_example.sessions import router as session_router
from tenantry import Platform, Settings
from tenantry.web import create_app as create_tenantry_app


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the HR API; settings come from the environment when not given."""
    app = create_tenantry_app(
        settings or Settings.from_env(),
        HR_SCHEMA,
        routers=[router, session_router],
        title="tenantry HR example",
    )
    platform: Platform = app.state.tenantry
    # Headcounts and the activity feed: in this process with the embedded default,
    # else in 'tenantry consume hr_example.events:build_handlers'.
    platform.events.add_consumer(GROUP, build_handlers(platform))
    return app
