"""Every error leaves the API in the same JSON shape, unexpected ones included."""

from __future__ import annotations

import logging

import httpx
import pytest
from fastapi import APIRouter

from hr_example import HR_SCHEMA
from tenantry import Settings
from tenantry.web import create_app


async def test_an_unexpected_exception_is_a_json_500_and_is_logged(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug in a handler answers {"error": {"code": "internal_error"}} and logs a traceback."""
    router = APIRouter()

    @router.get("/boom")
    async def boom() -> None:
        raise RuntimeError("bug in product code")

    app = create_app(settings, HR_SCHEMA, routers=[router], exempt=("/boom",))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
    ):
        with caplog.at_level(logging.ERROR, logger="tenantry.web"):
            response = await client.get("/boom")
    assert response.status_code == 500
    assert response.json() == {"error": {"code": "internal_error", "message": "internal error"}}
    assert "bug in product code" not in response.text
    assert any(
        "RuntimeError: bug in product code" in r.exc_text for r in caplog.records if r.exc_text
    )
