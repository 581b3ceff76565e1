"""Hostile slugs, hosts, headers, tokens and bodies get a 4xx JSON error, never a 5xx.

Every refusal has the one error shape ``{"error": {"code": ..., "message": ...}}``;
nothing is logged at ERROR level while they are served; no catalog lookup fails in the
database; and the tenants the attacks aimed at are untouched afterwards.
"""

from __future__ import annotations

import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import httpx
import jwt
import pytest
from fastapi import FastAPI
from psycopg import AsyncConnection

from tenantry import Platform
from tenantry.catalog import Tenant, TenantCatalog

Headers = list[tuple[str, str | bytes]]


@dataclass(frozen=True)
class Targets:
    """Two real tenants the attacks aim at, and a way to mint tokens."""

    victim: Tenant
    other: Tenant
    app: FastAPI

    def token(self, **claims: Any) -> str:
        """A token signed with the server's key; ``claims`` override the defaults."""
        now = int(time.time())
        body = {"iss": "tenantry", "sub": "mallory", "iat": now, "exp": now + 600}
        body.update(claims)
        secret = self.app.state.tenantry_tokens.settings.jwt_secret
        return jwt.encode({k: v for k, v in body.items() if v is not None}, secret, "HS256")

    def issue(self, **kwargs: Any) -> str:
        return self.app.state.tenantry_tokens.issue(subject="mallory", **kwargs)  # type: ignore[no-any-return]


class RecordingCatalog(TenantCatalog):
    """The real catalog, recording every lookup and any error the database raised."""

    def __init__(self) -> None:
        self.lookups = 0
        self.errors: list[BaseException] = []

    async def find(self, conn: AsyncConnection[Any], key: str | UUID) -> Tenant | None:
        self.lookups += 1
        try:
            return await super().find(conn, key)
        except Exception as exc:
            self.errors.append(exc)
            raise

    async def find_by_domain(self, conn: AsyncConnection[Any], host: str) -> Tenant | None:
        self.lookups += 1
        try:
            return await super().find_by_domain(conn, host)
        except Exception as exc:
            self.errors.append(exc)
            raise


@pytest.fixture(scope="module")
async def targets(app: FastAPI, platform: Platform) -> Targets:
    """A victim tenant with an employee, and a second tenant."""
    victim = await platform.tenants.create(f"victim{secrets.token_hex(4)}")
    other = await platform.tenants.create(f"other{secrets.token_hex(4)}")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        headers = {"X-Tenant-ID": victim.slug}
        dept = await http.post("/api/departments", json={"name": "Vault"}, headers=headers)
        employee = {
            "first_name": "Victor",
            "last_name": "Victim",
            "email": f"victor@{victim.slug}.example",
            "department_id": dept.json()["id"],
            "hired_on": "2020-02-02",
        }
        assert (
            await http.post("/api/employees", json=employee, headers=headers)
        ).status_code == 201
    return Targets(victim, other, app)


@pytest.fixture
async def guarded(
    platform: Platform, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[RecordingCatalog]:
    """Fail the test if anything logs at ERROR or a catalog query errors in the database."""
    recorder = RecordingCatalog()
    monkeypatch.setattr(platform.directory, "catalog", recorder)
    caplog.set_level(logging.WARNING)
    yield recorder
    assert recorder.errors == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def assert_problem(
    response: httpx.Response, status: int, code: str | None = None
) -> dict[str, Any]:
    """A 4xx JSON error of tenantry's shape (and, when given, this status and code)."""
    assert response.status_code == status, response.text
    assert 400 <= response.status_code < 500
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    for key in ("code", "message"):
        assert isinstance(body["error"][key], str), body
        assert body["error"][key], body
    if code is not None:
        assert body["error"]["code"] == code, body
    return body  # type: ignore[no-any-return]


def bearer(token: str) -> tuple[str, str]:
    return ("Authorization", f"Bearer {token}")


BIG = "a" * 10_240
CYRILLIC_ACME = "\u0430cme"  # looks like "acme"; the first letter is Cyrillic

# (id, headers built from the targets, expected status, expected code)
HOSTILE: list[tuple[str, Callable[[Targets], Headers], int, str]] = [
    ("quote", lambda t: [("X-Tenant-ID", t.victim.slug + "'")], 400, "invalid_tenant_identifier"),
    (
        "sql-injection",
        lambda t: [("X-Tenant-ID", f"{t.victim.slug}'; DROP SCHEMA tenantry CASCADE; --")],
        400,
        "invalid_tenant_identifier",
    ),
    (
        "semicolon",
        lambda t: [("X-Tenant-ID", f"{t.victim.slug};select")],
        400,
        "invalid_tenant_identifier",
    ),
    (
        "dot-dot-slash",
        lambda t: [("X-Tenant-ID", f"../{t.victim.slug}")],
        400,
        "invalid_tenant_identifier",
    ),
    (
        "etc-passwd",
        lambda t: [("X-Tenant-ID", "../../../etc/passwd")],
        400,
        "invalid_tenant_identifier",
    ),
    (
        "percent-00",
        lambda t: [("X-Tenant-ID", f"{t.victim.slug}%00")],
        400,
        "invalid_tenant_identifier",
    ),
    (
        "nul-byte",
        lambda t: [("X-Tenant-ID", t.victim.slug.encode() + b"\x00")],
        400,
        "invalid_tenant_identifier",
    ),
    (
        "cyrillic-a",
        lambda t: [("X-Tenant-ID", CYRILLIC_ACME.encode())],
        400,
        "invalid_tenant_identifier",
    ),
    (
        "cyrillic-lookalike-of-victim",
        lambda t: [("X-Tenant-ID", t.victim.slug.replace("c", "\u0441", 1).encode())],
        400,
        "invalid_tenant_identifier",
    ),
    ("latin1-bytes", lambda t: [("X-Tenant-ID", b"acm\xe9")], 400, "invalid_tenant_identifier"),
    (
        "uppercase-header",
        lambda t: [("X-Tenant-ID", t.victim.slug.upper())],
        400,
        "invalid_tenant_identifier",
    ),
    ("empty-header", lambda t: [("X-Tenant-ID", "")], 400, "invalid_tenant_identifier"),
    ("10kB-header", lambda t: [("X-Tenant-ID", BIG)], 400, "invalid_tenant_identifier"),
    (
        "braced-uuid",
        lambda t: [("X-Tenant-ID", "{" + str(t.victim.id) + "}")],
        400,
        "invalid_tenant_identifier",
    ),
    ("urn-uuid", lambda t: [("X-Tenant-ID", t.victim.id.urn)], 400, "invalid_tenant_identifier"),
    ("unknown-uuid", lambda t: [("X-Tenant-ID", str(uuid.uuid4()))], 404, "tenant_not_found"),
    ("reserved-slug", lambda t: [("X-Tenant-ID", "admin")], 404, "tenant_not_found"),
    ("unknown-slug", lambda t: [("X-Tenant-ID", "nosuchtenant")], 404, "tenant_not_found"),
    (
        "duplicate-tenant-header",
        lambda t: [("X-Tenant-ID", t.other.slug), ("X-Tenant-ID", t.victim.slug)],
        400,
        "invalid_request",
    ),
    (
        "cyrillic-host",
        lambda t: [("Host", f"{CYRILLIC_ACME}.localhost".encode())],
        400,
        "invalid_tenant_identifier",
    ),
    ("punycode-host", lambda t: [("Host", "xn--cme-8cd.localhost")], 404, "tenant_not_found"),
    ("quote-host", lambda t: [("Host", f"{t.victim.slug}'.localhost")], 400, "invalid_host"),
    ("semicolon-host", lambda t: [("Host", f"{t.victim.slug};.localhost")], 400, "invalid_host"),
    ("slash-host", lambda t: [("Host", f"{t.victim.slug}.localhost/../x")], 400, "invalid_host"),
    ("userinfo-host", lambda t: [("Host", f"evil@{t.victim.slug}.localhost")], 400, "invalid_host"),
    ("underscore-host", lambda t: [("Host", "a_b.localhost")], 400, "invalid_host"),
    (
        "double-port-host",
        lambda t: [("Host", f"{t.victim.slug}.localhost:80:80")],
        400,
        "invalid_host",
    ),
    ("10kB-host", lambda t: [("Host", BIG + ".localhost")], 400, "invalid_tenant_identifier"),
    ("nested-subdomain", lambda t: [("Host", "a.b.localhost")], 400, "invalid_tenant_identifier"),
    (
        "nested-subdomain-of-victim",
        lambda t: [("Host", f"evil.{t.victim.slug}.localhost")],
        400,
        "invalid_tenant_identifier",
    ),
    ("empty-label-host", lambda t: [("Host", ".localhost")], 400, "invalid_tenant_identifier"),
    (
        "duplicate-host",
        lambda t: [("Host", f"{t.other.slug}.localhost"), ("Host", f"{t.victim.slug}.localhost")],
        400,
        "invalid_request",
    ),
    ("10kB-other-header", lambda t: [("X-Padding", BIG)], 400, "tenant_required"),
    ("no-tenant-at-all", lambda t: [], 400, "tenant_required"),
    (
        "mismatched-jwt",
        lambda t: [("X-Tenant-ID", t.victim.slug), bearer(t.issue(tenant=t.other.slug))],
        403,
        "tenant_mismatch",
    ),
    (
        "mismatched-jwt-on-host",
        lambda t: [("Host", f"{t.victim.slug}.localhost"), bearer(t.issue(tenant=t.other.slug))],
        403,
        "tenant_mismatch",
    ),
    (
        "garbage-jwt",
        lambda t: [("X-Tenant-ID", t.victim.slug), bearer("garbage")],
        401,
        "invalid_token",
    ),
    (
        "three-dots-jwt",
        lambda t: [("X-Tenant-ID", t.victim.slug), bearer("a.b.c")],
        401,
        "invalid_token",
    ),
    (
        "jwt-signed-with-another-key",
        lambda t: [
            ("X-Tenant-ID", t.victim.slug),
            bearer(
                jwt.encode(
                    {
                        "iss": "tenantry",
                        "sub": "m",
                        "iat": int(time.time()),
                        "exp": int(time.time()) + 600,
                        "tenant": t.victim.slug,
                    },
                    "another-key-" + "y" * 40,
                    algorithm="HS256",
                )
            ),
        ],
        401,
        "invalid_token",
    ),
    (
        "expired-jwt",
        lambda t: [bearer(t.token(tenant=t.victim.slug, iat=1, exp=2))],
        401,
        "token_expired",
    ),
    (
        "alg-none-jwt",
        lambda t: [
            bearer(
                jwt.encode(
                    {
                        "iss": "tenantry",
                        "sub": "m",
                        "iat": int(time.time()),
                        "exp": int(time.time()) + 600,
                        "tenant": t.victim.slug,
                    },
                    None,
                    algorithm="none",
                )
            )
        ],
        401,
        "invalid_token",
    ),
    (
        "wrong-issuer-jwt",
        lambda t: [bearer(t.token(tenant=t.victim.slug, iss="evil"))],
        401,
        "invalid_token",
    ),
    (
        "no-exp-jwt",
        lambda t: [bearer(t.token(tenant=t.victim.slug, exp=None))],
        401,
        "invalid_token",
    ),
    (
        "list-tenant-claim",
        lambda t: [bearer(t.token(tenant=[t.victim.slug]))],
        401,
        "invalid_token",
    ),
    ("no-tenant-claim", lambda t: [bearer(t.token())], 401, "invalid_token"),
    (
        "injection-in-tenant-claim",
        lambda t: [bearer(t.token(tenant=f"{t.victim.slug}'; DROP TABLE employees; --"))],
        400,
        "invalid_tenant_identifier",
    ),
    (
        "unknown-tenant-claim",
        lambda t: [bearer(t.token(tenant="nosuchtenant"))],
        403,
        "tenant_not_found",
    ),
    (
        "platform-admin-jwt-as-tenant",
        lambda t: [("X-Tenant-ID", t.victim.slug), bearer(t.issue(platform_admin=True))],
        403,
        "forbidden",
    ),
    (
        "basic-auth",
        lambda t: [("X-Tenant-ID", t.victim.slug), ("Authorization", "Basic dXNlcjpwYXNz")],
        401,
        "invalid_token",
    ),
    (
        "empty-bearer",
        lambda t: [("X-Tenant-ID", t.victim.slug), ("Authorization", "Bearer ")],
        401,
        "invalid_token",
    ),
    ("10kB-bearer", lambda t: [("X-Tenant-ID", t.victim.slug), bearer(BIG)], 401, "invalid_token"),
    (
        "non-ascii-authorization",
        lambda t: [("X-Tenant-ID", t.victim.slug), ("Authorization", "Bearer ключ".encode())],
        401,
        "invalid_token",
    ),
    (
        "duplicate-authorization",
        lambda t: [bearer(t.issue(tenant=t.other.slug)), bearer(t.issue(tenant=t.victim.slug))],
        400,
        "invalid_request",
    ),
]


@pytest.mark.parametrize(
    ("build", "status", "code"),
    [pytest.param(build, status, code, id=name) for name, build, status, code in HOSTILE],
)
@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
async def test_hostile_tenant_request_gets_a_4xx_json_error(
    client: httpx.AsyncClient,
    targets: Targets,
    guarded: RecordingCatalog,
    build: Callable[[Targets], Headers],
    status: int,
    code: str,
    method: str,
) -> None:
    """Each hostile slug, host, header or token is refused with its 4xx JSON error before
    any handler runs, whatever the method."""
    path = {"GET": "/api/employees", "POST": "/api/departments", "DELETE": "/api/employees/1"}
    body = {"name": "should never be written"} if method == "POST" else None
    response = await client.request(method, path[method], headers=build(targets), json=body)
    assert_problem(response, status, code)
    assert "Victor" not in response.text


async def raw_get(app: FastAPI, path: str) -> httpx.Response:
    """GET ``path`` exactly as given (an HTTP client would remove its dot segments; a
    server such as uvicorn passes them through to the app)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 50_000),
        "server": ("testserver", 80),
    }
    start: dict[str, Any] = {}
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
        else:
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return httpx.Response(
        start["status"],
        headers=[(k.decode(), v.decode()) for k, v in start["headers"]],
        content=b"".join(chunks),
    )


@pytest.mark.parametrize(
    "path",
    [
        "/admin/../api/employees",
        "/admin/api/../../api/employees",
        "/health/../api/employees",
        "/docs/../api/departments",
        "/metrics/../api/employees/1",
        "/openapi.json/../api/leave-requests",
    ],
)
async def test_dot_segments_under_an_exempt_prefix_reach_no_tenant_route(
    app: FastAPI, targets: Targets, guarded: RecordingCatalog, path: str
) -> None:
    """A path that starts with an exempt prefix (where no tenant is resolved) and climbs
    out of it with ``..`` reaches no tenant route: 404 JSON, not a tenant-less handler."""
    response = await raw_get(app, path)
    assert_problem(response, 404, "not_found")
    assert "Victor" not in response.text


ADMIN_HOSTILE: list[tuple[str, str, str, dict[str, Any] | None, int, str]] = [
    ("quote-key", "GET", "/admin/api/tenants/acme'", None, 400, "invalid_tenant_identifier"),
    (
        "injection-key",
        "GET",
        "/admin/api/tenants/acme';DROP TABLE x;--",
        None,
        400,
        "invalid_tenant_identifier",
    ),
    ("dot-dot-key", "GET", "/admin/api/tenants/..%2F..%2Fetc", None, 404, "not_found"),
    ("huge-key", "GET", "/admin/api/tenants/" + "a" * 5000, None, 400, "invalid_tenant_identifier"),
    (
        "cyrillic-key",
        "GET",
        f"/admin/api/tenants/{CYRILLIC_ACME}",
        None,
        400,
        "invalid_tenant_identifier",
    ),
    ("unknown-key", "GET", "/admin/api/tenants/nosuchtenant", None, 404, "tenant_not_found"),
    (
        "unknown-suspend",
        "POST",
        "/admin/api/tenants/nosuchtenant/suspend",
        None,
        404,
        "tenant_not_found",
    ),
    (
        "injection-slug",
        "POST",
        "/admin/api/tenants",
        {"slug": "x'); DROP TABLE tenantry.tenants;--"},
        400,
        "invalid_tenant_identifier",
    ),
    (
        "uppercase-slug",
        "POST",
        "/admin/api/tenants",
        {"slug": "ACME"},
        400,
        "invalid_tenant_identifier",
    ),
    (
        "reserved-slug",
        "POST",
        "/admin/api/tenants",
        {"slug": "admin"},
        400,
        "invalid_tenant_identifier",
    ),
    (
        "uuid-shaped-slug",
        "POST",
        "/admin/api/tenants",
        {"slug": "deadbeef-dead-beef-dead-beefdeadbeef"},
        400,
        "invalid_tenant_identifier",
    ),
    (
        "nul-in-name",
        "POST",
        "/admin/api/tenants",
        {"slug": "nulname", "name": "a\x00b"},
        422,
        "validation_error",
    ),
    (
        "bad-tier",
        "POST",
        "/admin/api/tenants",
        {"slug": "goldtier", "tier": "gold"},
        422,
        "validation_error",
    ),
    (
        "negative-ring",
        "POST",
        "/admin/api/tenants",
        {"slug": "ringneg", "ring": -1},
        422,
        "validation_error",
    ),
    ("long-slug", "POST", "/admin/api/tenants", {"slug": "a" * 400}, 422, "validation_error"),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [pytest.param(*case[1:], id=case[0]) for case in ADMIN_HOSTILE],
)
async def test_hostile_admin_request_gets_a_4xx_json_error(
    client: httpx.AsyncClient,
    targets: Targets,
    guarded: RecordingCatalog,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    status: int,
    code: str,
) -> None:
    """Even a platform admin's hostile keys and bodies are refused with 4xx JSON."""
    headers = {"Authorization": f"Bearer {targets.issue(platform_admin=True)}"}
    response = await client.request(method, path, headers=headers, json=body)
    assert_problem(response, status, code)


async def test_nul_in_suspend_reason_is_refused_and_tenant_stays_active(
    client: httpx.AsyncClient, targets: Targets, guarded: RecordingCatalog
) -> None:
    """A NUL in a suspension reason is a 422, not a database error; nothing changes."""
    headers = {"Authorization": f"Bearer {targets.issue(platform_admin=True)}"}
    path = f"/admin/api/tenants/{targets.other.slug}/suspend"
    response = await client.post(path, headers=headers, json={"reason": "x\x00y"})
    assert_problem(response, 422, "validation_error")
    shown = await client.get(f"/admin/api/tenants/{targets.other.slug}", headers=headers)
    assert shown.json()["status"] == "active"


BAD_BODIES: list[tuple[str, str, str, Any, str]] = [
    # (id, method, path, json body (or raw bytes), a field named in the error's locations)
    ("dept-missing-name", "POST", "/api/departments", {}, "name"),
    ("dept-empty-name", "POST", "/api/departments", {"name": ""}, "name"),
    ("dept-long-name", "POST", "/api/departments", {"name": "x" * 121}, "name"),
    ("dept-nul-name", "POST", "/api/departments", {"name": "R\x00D"}, "name"),
    ("dept-extra-field", "POST", "/api/departments", {"name": "ok", "tenant_id": "x"}, "tenant_id"),
    ("dept-name-not-string", "POST", "/api/departments", {"name": ["x"]}, "name"),
    ("dept-not-json", "POST", "/api/departments", b"{not json", "body"),
    ("dept-json-array", "POST", "/api/departments", b"[]", "body"),
    ("emp-bad-email", "POST", "/api/employees", {"email": "not-an-email"}, "email"),
    ("emp-zero-department", "POST", "/api/employees", {"department_id": 0}, "department_id"),
    ("emp-bigint-overflow", "POST", "/api/employees", {"department_id": 2**63}, "department_id"),
    ("emp-huge-department", "POST", "/api/employees", {"department_id": 10**30}, "department_id"),
    (
        "emp-string-department",
        "POST",
        "/api/employees",
        {"department_id": "1; DROP"},
        "department_id",
    ),
    ("emp-bad-date", "POST", "/api/employees", {"hired_on": "2024-13-45"}, "hired_on"),
    ("emp-nul-last-name", "POST", "/api/employees", {"last_name": "a\x00"}, "last_name"),
    (
        "leave-backwards",
        "POST",
        "/api/leave-requests",
        {"employee_id": 1, "starts_on": "2030-01-10", "ends_on": "2030-01-01", "kind": "sick"},
        "body",
    ),
    (
        "leave-bad-kind",
        "POST",
        "/api/leave-requests",
        {"employee_id": 1, "starts_on": "2030-01-01", "ends_on": "2030-01-01", "kind": "holiday"},
        "kind",
    ),
    (
        "leave-huge-employee",
        "POST",
        "/api/leave-requests",
        {"employee_id": 2**64, "starts_on": "2030-01-01", "ends_on": "2030-01-01", "kind": "sick"},
        "employee_id",
    ),
    ("patch-null-email", "PATCH", "/api/employees/1", {"email": None}, "email"),
    ("patch-empty-first-name", "PATCH", "/api/employees/1", {"first_name": ""}, "first_name"),
    (
        "patch-huge-department",
        "PATCH",
        "/api/employees/1",
        {"department_id": 2**63},
        "department_id",
    ),
    ("patch-unknown-column", "PATCH", "/api/employees/1", {"tenant_id": "x"}, "tenant_id"),
    ("patch-nul-title", "PATCH", "/api/employees/1", {"title": "\x00"}, "title"),
    ("path-not-int", "GET", "/api/employees/abc", None, "employee_id"),
    ("path-injection", "GET", "/api/employees/1%20OR%201=1", None, "employee_id"),
    ("query-limit-zero", "GET", "/api/employees?limit=0", None, "limit"),
    ("query-limit-huge", "GET", "/api/employees?limit=100000", None, "limit"),
    ("query-negative-after", "GET", "/api/employees?after=-1", None, "after"),
    ("query-department-zero", "GET", "/api/employees?department_id=0", None, "department_id"),
    ("query-limit-text", "GET", "/api/departments?limit=1;DROP", None, "limit"),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_BODIES],
)
async def test_invalid_input_is_a_422_naming_the_field(
    client: httpx.AsyncClient,
    targets: Targets,
    guarded: RecordingCatalog,
    method: str,
    path: str,
    body: Any,
    field: str,
) -> None:
    """Bodies, path and query values that fail validation get 422 with per-field details
    (``loc`` and ``message``), never a database error."""
    headers = {"X-Tenant-ID": targets.victim.slug}
    if isinstance(body, bytes):
        headers["Content-Type"] = "application/json"
        response = await client.request(method, path, headers=headers, content=body)
    else:
        response = await client.request(method, path, headers=headers, json=body)
    error = assert_problem(response, 422, "validation_error")["error"]
    assert error["fields"], error
    for detail in error["fields"]:
        assert isinstance(detail["loc"], list), detail
        assert detail["loc"], detail
        assert isinstance(detail["message"], str), detail
        assert detail["message"], detail
    assert any(field in detail["loc"] for detail in error["fields"]), error["fields"]


async def test_targets_are_intact_after_the_attacks(
    client: httpx.AsyncClient, targets: Targets, platform: Platform
) -> None:
    """After everything above, the victim is active, its data is whole, and the control
    plane still has its tables."""
    headers = {"X-Tenant-ID": targets.victim.slug}
    employees = await client.get("/api/employees", headers=headers)
    assert employees.status_code == 200, employees.text
    assert [e["first_name"] for e in employees.json()["items"]] == ["Victor"]
    departments = await client.get("/api/departments", headers=headers)
    assert [d["name"] for d in departments.json()["items"]] == ["Vault"]
    assert (await platform.tenants.get(targets.victim.slug)).status.value == "active"
    async with platform.db.transaction(readonly=True) as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'tenantry' "
            "AND tablename IN ('tenants', 'domains', 'lifecycle_log')"
        )
        assert await cur.fetchone() == (3,)
