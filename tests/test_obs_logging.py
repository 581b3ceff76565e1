"""Structured logs: tenant and correlation fields on every line, secrets never written."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from fastapi import APIRouter, Request

from tenantry import Settings
from tenantry.catalog import Tenant
from tenantry.observability import Redactor, correlation_scope, get_logger
from tenantry.web.auth import TokenService
from tests.obs_helpers import serve, with_settings

PASSWORD = "hunter2-correct-horse-battery"
SSN = "078-05-1120"


def _product_router() -> APIRouter:
    router = APIRouter(prefix="/obs")

    @router.post("/signup")
    async def signup(request: Request) -> dict[str, str]:
        body: dict[str, Any] = await request.json()
        # Careless product code: it logs the raw headers and the whole payload.
        logging.getLogger("product").warning("signup headers %s", dict(request.headers))
        get_logger("product").info(
            "signup", payload=body, authorization=request.headers["authorization"]
        )
        raise RuntimeError(f"boom while handling {request.headers['authorization']}")

    return router


def _lines(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


async def test_a_token_and_a_password_never_reach_the_log(
    settings: Settings,
    make_tenant: Callable[..., Awaitable[Tenant]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A JWT sent in Authorization and a password / listed key in the payload are logged by
    careless code four ways (stdlib message, structlog field, nested payload, exception
    text); the captured output holds none of them, and the lines still carry the tenant."""
    tenant = await make_tenant("logs", tier="pro")
    jwt = TokenService(settings.auth).issue(subject="alice@logs", tenant=tenant.slug)
    custom = with_settings(settings, log={"redact_keys": (*settings.log.redact_keys, "ssn")})
    async with serve(custom, routers=[_product_router()]) as (_, http):
        capsys.readouterr()
        response = await http.post(
            "/obs/signup",
            headers={"authorization": f"Bearer {jwt}", "x-tenant-id": tenant.slug},
            json={"email": "alice@example.com", "password": PASSWORD, "profile": {"ssn": SSN}},
        )
        assert response.status_code == 500
        captured = capsys.readouterr()
    text = captured.out + captured.err
    lines = _lines(text)
    assert lines, "nothing was logged"
    assert jwt not in text
    assert jwt.split(".")[1] not in text  # not even the claims segment
    assert PASSWORD not in text
    assert SSN not in text
    assert "[REDACTED]" in text
    request_lines = [line for line in lines if line.get("tenant_slug") == tenant.slug]
    events = {line["event"].split(" ")[0] for line in request_lines}
    assert {"signup", "request"} <= events
    assert any(
        "boom while handling" in line.get("event", "") or "boom" in line.get("exception", "")
        for line in lines
    )
    for line in request_lines:
        assert line["tenant_id"] == str(tenant.id)
        assert line["tier"] == "pro"
        assert len(line["request_id"]) >= 8
        assert len(line["trace_id"]) == 32
    access = [line for line in request_lines if line["event"] == "request"]
    assert access[0]["status"] == 500
    assert access[0]["route"] == "/obs/signup"


async def test_lines_of_one_request_share_its_ids_and_take_a_callers_ids(
    settings: Settings,
    make_tenant: Callable[..., Awaitable[Tenant]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """X-Request-ID and the traceparent's trace id are taken from the caller when valid."""
    tenant = await make_tenant("corr")
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    async with serve(settings) as (_, http):
        capsys.readouterr()
        response = await http.get(
            "/api/departments",
            headers={
                "x-tenant-id": tenant.slug,
                "x-request-id": "req-42",
                "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01",
            },
        )
        assert response.status_code == 200
        text = capsys.readouterr().err
    access = [line for line in _lines(text) if line.get("event") == "request"]
    assert access[-1]["request_id"] == "req-42"
    assert access[-1]["trace_id"] == trace_id
    assert access[-1]["tenant_slug"] == tenant.slug
    assert response.headers["x-request-id"] == "req-42"


def test_redactor_walks_nested_values_and_scrubs_strings() -> None:
    """Keys are matched by name and suffix at any depth; strings lose bearer tokens, JWTs
    and URL passwords whatever key they are under."""
    redactor = Redactor(["password", "token", "salary"])
    event = redactor(
        None,
        "info",
        {
            "event": "login via postgresql://app:s3cretpw@db:5432/x",
            "db_password": "p1",
            "user": {"csrf_token": "t1", "name": "bob", "items": [{"salary": 1}]},
            "note": "Authorization: Bearer abcdefghijklmnop",
            "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl",
        },
    )
    rendered = json.dumps(event)
    for secret in ("s3cretpw", "p1", "t1", "abcdefghijklmnop", "c2lnbmF0dXJl"):
        assert secret not in rendered
    assert event["user"]["name"] == "bob"
    assert event["user"]["items"][0]["salary"] == "[REDACTED]"


def test_jobs_bind_correlation_for_their_lines(capsys: pytest.CaptureFixture[str]) -> None:
    """Outside HTTP, correlation_scope gives job lines a request and trace id."""
    with correlation_scope(request_id="job-7"):
        get_logger("job").info("working", step=1)
    line = _lines(capsys.readouterr().err)[-1]
    assert line["request_id"] == "job-7"
    assert len(line["trace_id"]) == 32
