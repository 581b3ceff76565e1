"""The flag admin API (``/admin/api/flags``): platform-admin token only, the same
operations as the CLI, audited under the token's subject, and 4xx JSON errors for bad
input."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tenantry.catalog import Tenant
from tenantry.web import TokenService
from tests.test_flags_store import new_key

MakeTenant = Callable[..., Awaitable[Tenant]]
BASE = "/admin/api/flags"


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@pytest.fixture
def admin(app: FastAPI) -> dict[str, str]:
    """Headers of a platform operator."""
    tokens: TokenService = app.state.tenantry_tokens
    return _bearer(tokens.issue(subject="ops@platform", platform_admin=True))


async def test_the_flag_api_needs_a_platform_admin_token(
    client: httpx.AsyncClient, app: FastAPI, make_tenant: MakeTenant
) -> None:
    """No token is 401, a tenant's admin token is 403, on reads and writes alike."""
    tenant = await make_tenant("fa")
    tokens: TokenService = app.state.tenantry_tokens
    tenant_admin = _bearer(tokens.issue(subject="boss", tenant=tenant.slug, role="admin"))
    body = {"key": new_key(), "type": "boolean", "default": False}
    for method, path, json in (("GET", BASE, None), ("POST", BASE, body)):
        anonymous = await client.request(method, path, json=json)
        assert anonymous.status_code == 401
        assert anonymous.json()["error"]["code"] == "authentication_required"
        forbidden = await client.request(method, path, json=json, headers=tenant_admin)
        assert forbidden.status_code == 403
    assert (await client.get(f"{BASE}/{body['key']}", headers=tenant_admin)).status_code == 403


async def test_create_target_rollout_kill_and_history_over_http(
    client: httpx.AsyncClient, admin: dict[str, str], make_tenant: MakeTenant
) -> None:
    """A flag's whole life through the API, evaluated by this process after each step."""
    key = new_key("http")
    enterprise = await make_tenant("fe", tier="enterprise")
    free = await make_tenant("ff", tier="free")
    created = await client.post(
        BASE,
        json={
            "key": key,
            "type": "boolean",
            "default": False,
            "description": "new approval flow",
            "rules": [{"name": "enterprise-first", "tiers": ["enterprise"]}],
        },
        headers=admin,
    )
    assert created.status_code == 201, created.text
    assert created.json()["rules"] == [
        {"name": "enterprise-first", "tiers": ["enterprise"], "serve": True}
    ]

    async def evaluate(tenant: Tenant) -> dict[str, Any]:
        r = await client.get(f"{BASE}/{key}/evaluate/{tenant.slug}", headers=admin)
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    assert (await evaluate(enterprise))["reason"] == "RULE_MATCH"
    assert (await evaluate(free))["value"] is False

    r = await client.put(f"{BASE}/{key}/targets/{free.slug}", headers=admin)
    assert r.status_code == 200, r.text
    assert r.json()["targets"] == {str(free.id): True}
    assert (await evaluate(free))["reason"] == "TARGETING_MATCH"
    r = await client.put(
        f"{BASE}/{key}/targets/{enterprise.slug}", json={"serve": False}, headers=admin
    )
    assert (await evaluate(enterprise))["value"] is False
    r = await client.delete(f"{BASE}/{key}/targets/{enterprise.slug}", headers=admin)
    assert r.json()["targets"] == {str(free.id): True}

    r = await client.post(f"{BASE}/{key}/rollout", json={"percentage": 20}, headers=admin)
    assert r.status_code == 200, r.text
    assert r.json()["rules"][-1] == {"name": "rollout", "rollout": 20, "serve": True}

    r = await client.post(f"{BASE}/{key}/kill", headers=admin)
    assert r.json()["enabled"] is False
    assert (await evaluate(free))["reason"] == "DISABLED"
    r = await client.post(f"{BASE}/{key}/enable", headers=admin)
    assert (await evaluate(free))["reason"] == "TARGETING_MATCH"

    r = await client.patch(
        f"{BASE}/{key}",
        json={"description": "v2", "default": True, "expected_version": r.json()["version"]},
        headers=admin,
    )
    assert r.status_code == 200, r.text
    assert (r.json()["description"], r.json()["default"]) == ("v2", True)

    history = (await client.get(f"{BASE}/{key}/history", headers=admin)).json()["items"]
    assert [(h["action"], h["actor"]) for h in history] == [
        ("set", "ops@platform"),
        ("enable", "ops@platform"),
        ("kill", "ops@platform"),
        ("rollout", "ops@platform"),
        ("untarget", "ops@platform"),
        ("target", "ops@platform"),
        ("target", "ops@platform"),
        ("create", "ops@platform"),
    ]
    assert history[0]["before"]["description"] == "new approval flow"
    assert history[0]["after"]["description"] == "v2"
    listed = (await client.get(BASE, headers=admin)).json()["items"]
    assert key in {item["key"] for item in listed}
    shown = (await client.get(f"{BASE}/{key}", headers=admin)).json()
    assert shown["version"] == len(history)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"type": "boolean", "default": "yes"}, 422, "invalid_flag"),
        ({"type": "boolean", "default": False, "description": "a\x00b"}, 422, "validation_error"),
        ({"type": "colour", "default": False}, 422, "validation_error"),
        (
            {"type": "boolean", "default": False, "rules": [{"tiers": ["gold"]}]},
            422,
            "invalid_flag",
        ),
        ({"type": "json", "default": {"a": "\x00"}}, 422, "invalid_flag"),
        ({"type": "boolean", "default": False, "targets": {"acme": True}}, 422, "invalid_flag"),
    ],
)
async def test_bad_definitions_are_422s(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    body: dict[str, Any],
    status: int,
    code: str,
) -> None:
    """Malformed flags are refused with the JSON error shape, never a database error."""
    r = await client.post(BASE, json={"key": new_key(), **body}, headers=admin)
    assert (r.status_code, r.json()["error"]["code"]) == (status, code), r.text


async def test_conflicts_and_unknowns_over_http(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    """Duplicate key 409, stale version 409, unknown flag 404, unknown or malformed tenant
    404/400, malformed key 422."""
    key = new_key()
    body = {"key": key, "type": "string", "default": "a"}
    assert (await client.post(BASE, json=body, headers=admin)).status_code == 201
    again = await client.post(BASE, json=body, headers=admin)
    assert (again.status_code, again.json()["error"]["code"]) == (409, "flag_exists")
    stale = await client.patch(
        f"{BASE}/{key}", json={"description": "x", "expected_version": 7}, headers=admin
    )
    assert (stale.status_code, stale.json()["error"]["code"]) == (409, "flag_version_conflict")
    unknown = await client.get(f"{BASE}/{new_key('nope')}", headers=admin)
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "flag_not_found")
    no_tenant = await client.put(
        f"{BASE}/{key}/targets/nosuchtenant", json={"serve": "b"}, headers=admin
    )
    assert (no_tenant.status_code, no_tenant.json()["error"]["code"]) == (404, "tenant_not_found")
    bad_tenant = await client.put(
        f"{BASE}/{key}/targets/x;drop", json={"serve": "b"}, headers=admin
    )
    assert bad_tenant.status_code == 400
    bad_key = await client.get(f"{BASE}/Bad%20Key", headers=admin)
    assert (bad_key.status_code, bad_key.json()["error"]["code"]) == (422, "invalid_flag")
    new_rule = await client.post(f"{BASE}/{key}/rollout", json={"percentage": 5}, headers=admin)
    assert (new_rule.status_code, new_rule.json()["error"]["code"]) == (422, "invalid_flag")
    replaced = await client.put(
        f"{BASE}/{key}",
        json={"type": "number", "default": 3, "expected_version": 1},
        headers=admin,
    )
    assert (replaced.status_code, replaced.json()["type"]) == (200, "number")
