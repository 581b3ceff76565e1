"""Bearer tokens and the admin API: who may act as which tenant, and who may run the
control plane."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from hr_example import create_app
from tenantry import Platform, Settings
from tenantry.catalog import Tenant
from tenantry.web import TokenService


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def error_code(response: httpx.Response) -> str:
    assert response.headers["content-type"].startswith("application/json"), response.text
    return response.json()["error"]["code"]  # type: ignore[no-any-return]


@pytest.fixture
def tokens(app: FastAPI) -> TokenService:
    """The app's token service (signs with the test secret)."""
    return app.state.tenantry_tokens  # type: ignore[no-any-return]


@pytest.fixture
def admin_headers(tokens: TokenService) -> dict[str, str]:
    """Headers of a platform operator."""
    return bearer(tokens.issue(subject="ops@platform", platform_admin=True))


async def _add_employee(
    client: httpx.AsyncClient, headers: dict[str, str], email: str
) -> dict[str, Any]:
    dept = await client.post("/api/departments", json={"name": "Ops"}, headers=headers)
    assert dept.status_code == 201, dept.text
    body = {
        "first_name": "Tok",
        "last_name": "En",
        "email": email,
        "department_id": dept.json()["id"],
        "hired_on": "2024-06-01",
    }
    created = await client.post("/api/employees", json=body, headers=headers)
    assert created.status_code == 201, created.text
    return created.json()  # type: ignore[no-any-return]


# -- tenant tokens on the tenant API ----------------------------------------------------
async def test_token_alone_resolves_its_tenant(
    client: httpx.AsyncClient, make_tenant: Callable[..., Awaitable[Tenant]], tokens: TokenService
) -> None:
    """A bearer token with no host or header acts as the tenant it names (slug or id)."""
    tenant = await make_tenant("auth")
    by_slug = bearer(tokens.issue(subject="u1", tenant=tenant.slug, role="admin"))
    employee = await _add_employee(client, by_slug, f"tok@{tenant.slug}.example")
    by_id = bearer(tokens.issue(subject="u2", tenant=str(tenant.id)))
    listed = await client.get("/api/employees", headers=by_id)
    assert listed.status_code == 200, listed.text
    assert listed.json()["items"] == [employee]


async def test_token_agreeing_with_host_and_header_is_accepted(
    client: httpx.AsyncClient, make_tenant: Callable[..., Awaitable[Tenant]], tokens: TokenService
) -> None:
    """Host, header and token may all name the tenant as long as they agree."""
    tenant = await make_tenant("auth")
    headers = {
        "Host": f"{tenant.slug}.localhost",
        "X-Tenant-ID": str(tenant.id),
        **bearer(tokens.issue(subject="u", tenant=tenant.slug)),
    }
    response = await client.get("/api/departments", headers=headers)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("where", ["header", "host", "header-uuid"])
async def test_token_for_a_used_on_b_is_403_tenant_mismatch(
    client: httpx.AsyncClient,
    make_tenant: Callable[..., Awaitable[Tenant]],
    tokens: TokenService,
    where: str,
) -> None:
    """A token for tenant A presented with tenant B's host or header is refused (403
    tenant_mismatch) and B's data is not served."""
    a, b = await make_tenant("autha"), await make_tenant("authb")
    await _add_employee(client, {"X-Tenant-ID": b.slug}, f"secret@{b.slug}.example")
    target = {
        "header": {"X-Tenant-ID": b.slug},
        "host": {"Host": f"{b.slug}.localhost"},
        "header-uuid": {"X-Tenant-ID": str(b.id)},
    }[where]
    for method, path in (("GET", "/api/employees"), ("DELETE", "/api/employees/1")):
        response = await client.request(
            method, path, headers={**target, **bearer(tokens.issue(subject="a", tenant=a.slug))}
        )
        assert response.status_code == 403, response.text
        assert error_code(response) == "tenant_mismatch"
        assert b.slug not in response.text
    still = await client.get("/api/employees", headers={"X-Tenant-ID": b.slug})
    assert [e["email"] for e in still.json()["items"]] == [f"secret@{b.slug}.example"]


async def test_platform_admin_token_on_tenant_api_is_403(
    client: httpx.AsyncClient,
    make_tenant: Callable[..., Awaitable[Tenant]],
    admin_headers: dict[str, str],
) -> None:
    """The platform-admin scope is not a tenant: 403 with or without a tenant named."""
    tenant = await make_tenant("auth")
    for extra in ({}, {"X-Tenant-ID": tenant.slug}, {"Host": f"{tenant.slug}.localhost"}):
        response = await client.get("/api/employees", headers={**admin_headers, **extra})
        assert response.status_code == 403, response.text
        assert error_code(response) == "forbidden"


async def test_token_for_unknown_tenant_is_403(
    client: httpx.AsyncClient, tokens: TokenService
) -> None:
    """A validly signed token naming no existing tenant is refused (403, not 404: the
    caller holds a credential, it just does not open anything)."""
    response = await client.get(
        "/api/employees", headers=bearer(tokens.issue(subject="x", tenant="ghosttown"))
    )
    assert response.status_code == 403, response.text
    assert error_code(response) == "tenant_not_found"


async def test_unknown_tenant_is_404_and_malformed_is_400(client: httpx.AsyncClient) -> None:
    """An unknown (well-formed) tenant is 404 tenant_not_found; a malformed one is 400."""
    unknown = await client.get("/api/employees", headers={"X-Tenant-ID": "nobody-here"})
    assert unknown.status_code == 404, unknown.text
    assert error_code(unknown) == "tenant_not_found"
    unknown_host = await client.get("/api/employees", headers={"Host": "nobody-here.localhost"})
    assert unknown_host.status_code == 404, unknown_host.text
    malformed = await client.get("/api/employees", headers={"X-Tenant-ID": "Not A Slug!"})
    assert malformed.status_code == 400, malformed.text
    assert error_code(malformed) == "invalid_tenant_identifier"


@pytest.fixture
async def strict_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A second app over the same database with TENANTRY_AUTH_REQUIRED on."""
    strict = dataclasses.replace(settings, auth=dataclasses.replace(settings.auth, required=True))
    application = create_app(strict)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http


async def test_required_auth_refuses_anonymous_tenant_requests(
    strict_client: httpx.AsyncClient,
    make_tenant: Callable[..., Awaitable[Tenant]],
    tokens: TokenService,
) -> None:
    """With auth required, naming a tenant is not enough: 401 without a token, 200 with."""
    tenant = await make_tenant("auth")
    anonymous = await strict_client.get("/api/employees", headers={"X-Tenant-ID": tenant.slug})
    assert anonymous.status_code == 401, anonymous.text
    assert error_code(anonymous) == "authentication_required"
    assert anonymous.headers["www-authenticate"] == "Bearer"
    signed = await strict_client.get(
        "/api/employees",
        headers={
            "X-Tenant-ID": tenant.slug,
            **bearer(tokens.issue(subject="u", tenant=tenant.slug)),
        },
    )
    assert signed.status_code == 200, signed.text


# -- the admin API ---------------------------------------------------------------------
async def test_admin_api_without_token_is_401(client: httpx.AsyncClient) -> None:
    """No token: 401 with a Bearer challenge, on every admin route."""
    for method, path in (
        ("GET", "/admin/api/tenants"),
        ("POST", "/admin/api/tenants"),
        ("GET", "/admin/api/tenants/acme"),
        ("POST", "/admin/api/tenants/acme/suspend"),
        ("POST", "/admin/api/tenants/acme/resume"),
    ):
        response = await client.request(
            method, path, json={"slug": "nope"} if method == "POST" else None
        )
        assert response.status_code == 401, (path, response.text)
        assert error_code(response) == "authentication_required"
        assert response.headers["www-authenticate"] == "Bearer"


async def test_admin_api_with_tenant_token_is_403(
    client: httpx.AsyncClient, make_tenant: Callable[..., Awaitable[Tenant]], tokens: TokenService
) -> None:
    """A tenant token, even a tenant admin's, cannot call the platform admin API."""
    tenant = await make_tenant("auth")
    headers = bearer(tokens.issue(subject="boss", tenant=tenant.slug, role="admin"))
    listed = await client.get("/admin/api/tenants", headers=headers)
    assert listed.status_code == 403, listed.text
    assert error_code(listed) == "forbidden"
    suspend = await client.post(f"/admin/api/tenants/{tenant.slug}/suspend", headers=headers)
    assert suspend.status_code == 403, suspend.text
    assert (await client.get("/api/departments", headers=headers)).status_code == 200


async def test_admin_api_with_bad_tokens_is_401(
    client: httpx.AsyncClient, tokens: TokenService
) -> None:
    """Forged, expired or non-bearer credentials are 401 on the admin API."""
    forger = TokenService(dataclasses.replace(tokens.settings, jwt_secret="z" * 48))
    expired = TokenService(dataclasses.replace(tokens.settings, token_ttl_seconds=-120))
    for headers, code in (
        (bearer("garbage"), "invalid_token"),
        (bearer(forger.issue(subject="evil", platform_admin=True)), "invalid_token"),
        (bearer(expired.issue(subject="old", platform_admin=True)), "token_expired"),
        ({"Authorization": "Basic b3BzOm9wcw=="}, "invalid_token"),
    ):
        response = await client.get("/admin/api/tenants", headers=headers)
        assert response.status_code == 401, response.text
        assert error_code(response) == code


async def test_admin_api_with_platform_admin_token_lists_tenants(
    client: httpx.AsyncClient,
    make_tenant: Callable[..., Awaitable[Tenant]],
    admin_headers: dict[str, str],
) -> None:
    """A platform-admin token gets 200 and the tenant list."""
    tenant = await make_tenant("auth")
    response = await client.get("/admin/api/tenants", headers=admin_headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["count"] == len(body["items"])
    assert tenant.slug in {t["slug"] for t in body["items"]}
    shown = await client.get(f"/admin/api/tenants/{tenant.id}", headers=admin_headers)
    assert shown.status_code == 200, shown.text
    assert shown.json()["slug"] == tenant.slug


async def test_admin_create_provisions_a_usable_tenant(
    client: httpx.AsyncClient, admin_headers: dict[str, str], tokens: TokenService
) -> None:
    """POST /admin/api/tenants provisions a tenant the tenant API serves at once; a second
    create of the same slug is 409 tenant_exists; a bad slug is 400."""
    slug = f"adm{secrets.token_hex(5)}"
    created = await client.post(
        "/admin/api/tenants",
        json={"slug": slug, "tier": "pro", "name": "Admin Made", "ring": 2},
        headers=admin_headers,
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["slug"], body["tier"], body["name"], body["ring"], body["status"]) == (
        slug,
        "pro",
        "Admin Made",
        2,
        "active",
    )
    served = await client.get(
        "/api/departments", headers=bearer(tokens.issue(subject="u", tenant=slug))
    )
    assert served.status_code == 200, served.text
    again = await client.post("/admin/api/tenants", json={"slug": slug}, headers=admin_headers)
    assert again.status_code == 409, again.text
    assert error_code(again) == "tenant_exists"
    bad = await client.post("/admin/api/tenants", json={"slug": "9lives"}, headers=admin_headers)
    assert bad.status_code == 400, bad.text
    assert error_code(bad) == "invalid_tenant_identifier"


async def test_admin_show_unknown_is_404_and_malformed_is_400(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    """Admin lookups: unknown slug 404 tenant_not_found, malformed key 400."""
    unknown = await client.get("/admin/api/tenants/ghosttown", headers=admin_headers)
    assert unknown.status_code == 404, unknown.text
    assert error_code(unknown) == "tenant_not_found"
    malformed = await client.get("/admin/api/tenants/Ghost!Town", headers=admin_headers)
    assert malformed.status_code == 400, malformed.text
    assert error_code(malformed) == "invalid_tenant_identifier"
    for action in ("suspend", "resume"):
        missing = await client.post(f"/admin/api/tenants/ghosttown/{action}", headers=admin_headers)
        assert missing.status_code == 404, missing.text


async def test_suspend_blocks_every_route_and_resume_restores_data(
    client: httpx.AsyncClient,
    make_tenant: Callable[..., Awaitable[Tenant]],
    admin_headers: dict[str, str],
    tokens: TokenService,
    platform: Platform,
) -> None:
    """A suspended tenant gets 403 tenant_suspended JSON however it is addressed (reads
    and writes alike); after resume its data is exactly as before."""
    tenant = await make_tenant("susp")
    as_tenant = {"X-Tenant-ID": tenant.slug}
    employee = await _add_employee(client, as_tenant, f"kept@{tenant.slug}.example")
    suspended = await client.post(
        f"/admin/api/tenants/{tenant.slug}/suspend",
        json={"reason": "unpaid invoice"},
        headers=admin_headers,
    )
    assert suspended.status_code == 200, suspended.text
    assert suspended.json()["status"] == "suspended"
    addressed = (
        as_tenant,
        {"Host": f"{tenant.slug}.localhost"},
        {"X-Tenant-ID": str(tenant.id)},
        bearer(tokens.issue(subject="u", tenant=tenant.slug)),
    )
    for headers in addressed:
        for method, path, body in (
            ("GET", "/api/employees", None),
            ("GET", f"/api/employees/{employee['id']}", None),
            ("PATCH", f"/api/employees/{employee['id']}", {"title": "changed while suspended"}),
            ("DELETE", f"/api/employees/{employee['id']}", None),
            ("POST", "/api/departments", {"name": "Sneaky"}),
        ):
            response = await client.request(method, path, headers=headers, json=body)
            assert response.status_code == 403, (method, path, response.text)
            assert error_code(response) == "tenant_suspended"
            assert response.json()["error"]["message"]
    again = await client.post(f"/admin/api/tenants/{tenant.slug}/suspend", headers=admin_headers)
    assert again.status_code == 200, again.text  # suspending twice is not an error
    assert again.json()["status"] == "suspended"
    resumed = await client.post(f"/admin/api/tenants/{tenant.slug}/resume", headers=admin_headers)
    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["status"] == "active"
    after = await client.get("/api/employees", headers=as_tenant)
    assert after.status_code == 200, after.text
    assert after.json()["items"] == [employee]
    departments = await client.get("/api/departments", headers=as_tenant)
    assert [d["name"] for d in departments.json()["items"]] == ["Ops"]
    assert (await platform.tenants.get(tenant.slug)).status.value == "active"


async def test_admin_suspend_of_offboarded_tenant_is_409(
    client: httpx.AsyncClient,
    make_tenant: Callable[..., Awaitable[Tenant]],
    admin_headers: dict[str, str],
    platform: Platform,
    tmp_path: Any,
) -> None:
    """Lifecycle conflicts surface as 409 tenant_state_conflict; a tombstone is not served."""
    tenant = await make_tenant("gone")
    await platform.tenants.offboard(tenant.slug, tmp_path)
    response = await client.post(f"/admin/api/tenants/{tenant.slug}/suspend", headers=admin_headers)
    assert response.status_code == 409, response.text
    assert error_code(response) == "tenant_state_conflict"
    served = await client.get("/api/employees", headers={"X-Tenant-ID": tenant.slug})
    assert served.status_code == 404, served.text
    assert error_code(served) == "tenant_not_found"


async def test_a_remembered_resolution_ends_when_its_token_expires(
    client: httpx.AsyncClient, tokens: TokenService, make_tenant: Callable[..., Awaitable[Tenant]]
) -> None:
    """Resolutions are memoised per request shape, but never past the token's expiry."""
    tenant = await make_tenant("exp")
    token = tokens.issue(subject="short@lived", tenant=tenant.slug, ttl_seconds=2)
    exp = TokenService(tokens.settings).verify(token).claims["exp"]
    for _ in range(3):  # the first answer is remembered, the next two come from memory
        ok = await client.get("/api/departments", headers=bearer(token))
        assert ok.status_code == 200, ok.text
    await asyncio.sleep(max(0.0, exp - time.time()) + 0.2)
    late = await client.get("/api/departments", headers=bearer(token))
    assert late.status_code == 401
    assert error_code(late) == "token_expired"


async def test_a_remembered_resolution_ends_when_the_tenant_is_suspended(
    client: httpx.AsyncClient, platform: Platform, make_tenant: Callable[..., Awaitable[Tenant]]
) -> None:
    """A suspension reaches requests whose resolution was remembered, at once."""
    tenant = await make_tenant("sus")
    headers = {"X-Tenant-ID": tenant.slug}
    for _ in range(2):
        assert (await client.get("/api/departments", headers=headers)).status_code == 200
    await platform.tenants.suspend(tenant.slug)
    refused = await client.get("/api/departments", headers=headers)
    assert refused.status_code == 403
    assert error_code(refused) == "tenant_suspended"
