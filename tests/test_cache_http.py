"""Cache, sessions and rate limits at the HTTP edge, through the HR example app.

Cached department reads and their invalidation by writes; sessions bound to their tenant;
per-tenant rate limits with 429s in tenantry's error shape (the noisy-neighbour case); and
a Redis that cannot be reached: reads keep working, sessions answer 503, rate limiting
fails open or closed as configured, and the outage is logged once, not per request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
from collections.abc import Callable
from types import MappingProxyType
from typing import Any
from uuid import uuid4

import httpx
import pytest
from starlette.responses import PlainTextResponse

from tenantry import Platform, Settings
from tenantry.cache import KeyBuilder, RateLimiter, RedisGuard, create_redis_client
from tenantry.catalog import Tenant
from tenantry.context import TenantContext, tenant_scope
from tenantry.settings import RateLimitSettings, TierLimits
from tenantry.web import RateLimitMiddleware, TokenService
from tests.cache_helpers import (
    COOKIE,
    free_port,
    serve,
    session_cookie,
    tenant_headers,
)
from tests.conftest import unique_slug


# -- cached department reads ----------------------------------------------------------------
async def _rename_behind_the_apis_back(platform: Platform, tenant: Tenant, name: str) -> None:
    async with platform.db.tenant_transaction(tenant.context()) as conn:
        await conn.execute("UPDATE departments SET name = %s", (name,))


async def test_department_reads_are_cached_and_writes_invalidate_them(
    client: httpx.AsyncClient, platform: Platform, make_tenant: Callable[..., Any]
) -> None:
    """Department reads come from the cache (a change made behind the API's back does not
    show) until a department or employee write invalidates them, at once."""
    tenant = await make_tenant("cache")
    headers = tenant_headers(tenant)
    created = await client.post("/api/departments", json={"name": "Ops"}, headers=headers)
    dept = created.json()["id"]
    assert (await client.get("/api/departments", headers=headers)).json()["items"][0][
        "name"
    ] == "Ops"
    assert (await client.get(f"/api/departments/{dept}", headers=headers)).json()["name"] == "Ops"

    await _rename_behind_the_apis_back(platform, tenant, "Renamed")
    listed = await client.get("/api/departments", headers=headers)
    one = await client.get(f"/api/departments/{dept}", headers=headers)
    assert listed.json()["items"][0]["name"] == one.json()["name"] == "Ops"  # cached

    hire = {
        "first_name": "Ada",
        "last_name": "Lovelace",
        "email": f"ada@{tenant.slug}.example",
        "department_id": dept,
        "hired_on": "2024-01-15",
    }
    employee = (await client.post("/api/employees", json=hire, headers=headers)).json()
    listed = (await client.get("/api/departments", headers=headers)).json()["items"]
    one = (await client.get(f"/api/departments/{dept}", headers=headers)).json()
    assert (listed[0]["name"], listed[0]["headcount"]) == ("Renamed", 1)
    assert (one["name"], one["headcount"]) == ("Renamed", 1)

    other = (await client.post("/api/departments", json={"name": "R&D"}, headers=headers)).json()
    moved = await client.patch(
        f"/api/employees/{employee['id']}", json={"department_id": other["id"]}, headers=headers
    )
    assert moved.status_code == 200
    counts = {
        d["name"]: d["headcount"]
        for d in (await client.get("/api/departments", headers=headers)).json()["items"]
    }
    assert counts == {"Renamed": 0, "R&D": 1}
    deleted = await client.delete(f"/api/employees/{employee['id']}", headers=headers)
    assert deleted.status_code == 204
    assert (await client.get(f"/api/departments/{other['id']}", headers=headers)).json()[
        "headcount"
    ] == 0


async def test_a_missing_department_is_a_cached_404_until_created(
    client: httpx.AsyncClient, make_tenant: Callable[..., Any]
) -> None:
    """A 404 is cached too, and creating departments invalidates it."""
    tenant = await make_tenant("cache")
    headers = tenant_headers(tenant)
    assert (await client.get("/api/departments/1", headers=headers)).status_code == 404
    assert (await client.get("/api/departments/1", headers=headers)).status_code == 404
    created = await client.post("/api/departments", json={"name": "First"}, headers=headers)
    assert created.json()["id"] == 1
    assert (await client.get("/api/departments/1", headers=headers)).json()["name"] == "First"


async def test_a_cache_hit_opens_no_database_transaction(
    client: httpx.AsyncClient,
    platform: Platform,
    make_tenant: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A department read served from the cache does not touch PostgreSQL at all."""
    tenant = await make_tenant("cache")
    headers = tenant_headers(tenant)
    await client.post("/api/departments", json={"name": "Ops"}, headers=headers)
    await client.get("/api/departments", headers=headers)  # warm
    opened: list[object] = []
    original = platform.db.tenant_transaction

    def counting(*args: Any, **kwargs: Any) -> Any:
        opened.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(platform.db, "tenant_transaction", counting)
    for _ in range(5):
        assert (await client.get("/api/departments", headers=headers)).status_code == 200
    assert opened == []
    await client.get("/api/departments?limit=7", headers=headers)  # another key: a miss
    assert len(opened) == 1


async def test_one_tenants_writes_leave_another_tenants_cache_alone(
    client: httpx.AsyncClient, platform: Platform, make_tenant: Callable[..., Any]
) -> None:
    """Invalidation is per tenant: tenant A's write does not drop tenant B's entries."""
    a, b = await make_tenant("cache"), await make_tenant("cache")
    for tenant in (a, b):
        await client.post("/api/departments", json={"name": "Ops"}, headers=tenant_headers(tenant))
        await client.get("/api/departments", headers=tenant_headers(tenant))
    await _rename_behind_the_apis_back(platform, b, "Changed")
    await client.post("/api/departments", json={"name": "New"}, headers=tenant_headers(a))
    b_view = (await client.get("/api/departments", headers=tenant_headers(b))).json()["items"]
    assert [d["name"] for d in b_view] == ["Ops"]  # still B's cached entry


# -- sessions -------------------------------------------------------------------------------
async def test_sessions_over_http(
    client: httpx.AsyncClient,
    settings: Settings,
    make_tenant: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Log in with a token, use the cookie, rotate on login, refuse it on another tenant
    (logged), log out."""
    acme, globex = await make_tenant("sess"), await make_tenant("sess")
    tokens = TokenService(settings.auth)
    bearer = {"Authorization": f"Bearer {tokens.issue(subject='ada', tenant=acme.slug)}"}

    anonymous = await client.post("/api/session", headers=tenant_headers(acme))
    assert anonymous.status_code == 401
    login = await client.post("/api/session", headers=tenant_headers(acme, **bearer))
    assert login.status_code == 201
    cookie_header = login.headers["set-cookie"].lower()
    for attribute in ("httponly", "secure", "samesite=lax", "path=/"):
        assert attribute in cookie_header
    first = session_cookie(login)
    assert len(first) == 43

    def with_cookie(tenant: Tenant, session_id: str) -> dict[str, str]:
        return tenant_headers(tenant, cookie=f"{COOKIE}={session_id}")

    me = await client.get("/api/session", headers=with_cookie(acme, first))
    assert me.status_code == 200
    assert me.json()["user"] == "ada"

    with caplog.at_level(logging.WARNING, logger="tenantry.sessions"):
        replayed = await client.get("/api/session", headers=with_cookie(globex, first))
    assert replayed.status_code == 403
    assert replayed.json()["error"]["code"] == "session_tenant_mismatch"
    assert str(acme.id) in caplog.text
    assert str(globex.id) in caplog.text

    again = await client.post("/api/session", headers={**with_cookie(acme, first), **bearer})
    second = session_cookie(again)
    assert second != first
    gone = await client.get("/api/session", headers=with_cookie(acme, first))
    assert gone.status_code == 401
    assert gone.json()["error"]["code"] == "session_required"
    assert (await client.get("/api/session", headers=with_cookie(acme, second))).status_code == 200

    out = await client.delete("/api/session", headers=with_cookie(acme, second))
    assert out.status_code == 204
    assert (
        f'{COOKIE}=""' in out.headers["set-cookie"]
        or "max-age=0" in out.headers["set-cookie"].lower()
    )
    assert (await client.get("/api/session", headers=with_cookie(acme, second))).status_code == 401


async def test_suspending_a_tenant_logs_out_its_sessions_everywhere(
    client: httpx.AsyncClient,
    platform: Platform,
    settings: Settings,
    make_tenant: Callable[..., Any],
) -> None:
    """Suspension ends every session of the tenant: after resuming, old cookies are dead;
    another tenant's sessions are untouched."""
    acme, globex = await make_tenant("sess"), await make_tenant("sess")
    tokens = TokenService(settings.auth)
    cookies = {}
    for tenant in (acme, globex):
        bearer = {"Authorization": f"Bearer {tokens.issue(subject='u', tenant=tenant.slug)}"}
        login = await client.post("/api/session", headers=tenant_headers(tenant, **bearer))
        cookies[tenant.slug] = {"cookie": f"{COOKIE}={session_cookie(login)}"}
    await platform.tenants.suspend(acme.slug, reason="test")
    await platform.tenants.resume(acme.slug)
    dead = await client.get("/api/session", headers=tenant_headers(acme, **cookies[acme.slug]))
    alive = await client.get("/api/session", headers=tenant_headers(globex, **cookies[globex.slug]))
    assert (dead.status_code, alive.status_code) == (401, 200)


# -- rate limits ----------------------------------------------------------------------------
def _assert_refused(response: httpx.Response, code: str, message: str) -> None:
    """A 429 in tenantry's error shape, telling the client when to retry."""
    assert response.status_code == 429
    assert response.json() == {"error": {"code": code, "message": message}}
    assert int(response.headers["retry-after"]) >= 1


def limited(settings: Settings, limits: TierLimits, **rate_limit: Any) -> Settings:
    """``settings`` with rate limiting on, every tier at ``limits``, keys of their own."""
    tiers = MappingProxyType({"free": limits, "pro": limits, "enterprise": limits})
    return dataclasses.replace(
        settings,
        redis=dataclasses.replace(settings.redis, key_prefix=f"rl-{secrets.token_hex(4)}:"),
        rate_limit=RateLimitSettings(tiers=tiers, **rate_limit),
    )


async def test_a_noisy_neighbour_gets_429s_while_other_tenants_all_succeed(
    settings: Settings,
) -> None:
    """One tenant flooding far above its limit is refused with 429s in tenantry's error
    shape; four other tenants' concurrent requests, within their limits, all succeed."""
    async with serve(limited(settings, TierLimits(rate=5, burst=10))) as (app, http):
        platform: Platform = app.state.tenantry
        noisy = await platform.tenants.create(unique_slug("noisy"))
        quiet = [await platform.tenants.create(unique_slug("quiet")) for _ in range(4)]
        gate = asyncio.Semaphore(40)

        async def get(tenant: Tenant) -> httpx.Response:
            async with gate:
                return await http.get("/api/departments", headers=tenant_headers(tenant))

        flood = [get(noisy) for _ in range(300)]
        polite = [get(tenant) for tenant in quiet for _ in range(8)]
        started = asyncio.get_running_loop().time()
        responses = await asyncio.gather(*flood, *polite)
        elapsed = asyncio.get_running_loop().time() - started
        noisy_codes = [r.status_code for r in responses[:300]]
        quiet_codes = [r.status_code for r in responses[300:]]

    assert set(quiet_codes) == {200}
    assert set(noisy_codes) == {200, 429}
    admitted = noisy_codes.count(200)
    assert 10 <= admitted <= 10 + 5 * elapsed + 1  # the burst, plus what the rate refills
    refused = next(r for r in responses[:300] if r.status_code == 429)
    _assert_refused(
        refused, "rate_limited", "too many requests for this tenant; retry after the delay given"
    )
    assert refused.headers["ratelimit-limit"] == "10"
    assert refused.headers["ratelimit-remaining"] == "0"
    assert int(refused.headers["ratelimit-reset"]) >= 1
    ok = responses[300]
    assert ok.headers["ratelimit-limit"] == "10"
    assert 0 <= int(ok.headers["ratelimit-remaining"]) < 10


def _unobserved(settings: Settings) -> Settings:
    """``settings`` with metrics, traces, usage and the access log off: ``create_app`` then
    installs no observability middleware at all."""
    return dataclasses.replace(
        settings,
        log=dataclasses.replace(settings.log, access_log=False),
        metrics=dataclasses.replace(settings.metrics, enabled=False),
        tracing=dataclasses.replace(settings.tracing, enabled=False),
        usage=dataclasses.replace(settings.usage, enabled=False),
    )


@pytest.mark.parametrize("observed", [True, False], ids=["observed", "unobserved"])
async def test_each_admitted_response_carries_the_rate_limit_headers_once(
    settings: Settings, observed: bool
) -> None:
    """The tenant middleware checks the limits itself (no layer of its own). The headers of
    an admitted response travel in the observability middleware's send wrapper, with
    ``X-Request-ID``, or, with no such middleware, in one of their own: either way every
    admitted response has each ``RateLimit-*`` header exactly once, counting down, and the
    next request gets its 429."""
    chosen = limited(settings, TierLimits(rate=1, burst=3))
    async with serve(chosen if observed else _unobserved(chosen)) as (app, http):
        installed = {m.cls.__name__ for m in app.user_middleware}  # type: ignore[attr-defined]
        assert ("ObservabilityMiddleware" in installed) is observed
        assert "RateLimitMiddleware" not in installed
        tenant = await app.state.tenantry.tenants.create(unique_slug("rlh"))
        responses = [
            await http.get("/api/departments", headers=tenant_headers(tenant)) for _ in range(4)
        ]
    assert [r.status_code for r in responses] == [200, 200, 200, 429]
    for response in responses[:3]:
        for name in ("ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"):
            assert len(response.headers.get_list(name)) == 1, name
        assert response.headers["ratelimit-limit"] == "3"
        assert len(response.headers.get_list("x-request-id")) == (1 if observed else 0)
    assert [r.headers["ratelimit-remaining"] for r in responses[:3]] == ["2", "1", "0"]
    assert responses[3].headers["ratelimit-remaining"] == "0"
    assert int(responses[3].headers["retry-after"]) >= 1


async def test_rate_limit_middleware_works_as_a_layer_of_its_own(settings: Settings) -> None:
    """``RateLimitMiddleware`` (for stacks built by hand) checks the tenant bound by an outer
    layer, adds the headers to admitted responses and refuses with a 429; a request with no
    tenant bound passes untouched."""
    chosen = limited(settings, TierLimits(rate=1, burst=2))
    client = create_redis_client(chosen.redis)
    limiter = RateLimiter(
        client,
        guard=RedisGuard(),
        keys=KeyBuilder(chosen.redis.key_prefix),
        settings=chosen.rate_limit,
    )
    ctx = TenantContext(id=uuid4(), slug="hand", tier="free", schema="t_hand")

    async def endpoint(scope: Any, receive: Any, send: Any) -> None:
        await PlainTextResponse("ok")(scope, receive, send)

    inner = RateLimitMiddleware(endpoint, limiter=limiter)

    async def bind(scope: Any, receive: Any, send: Any) -> None:
        with tenant_scope(ctx if scope["path"] == "/tenant" else None):
            await inner(scope, receive, send)

    try:
        transport = httpx.ASGITransport(app=bind)
        async with httpx.AsyncClient(transport=transport, base_url="http://hand") as http:
            codes = [(await http.get("/tenant")) for _ in range(3)]
            free = [(await http.get("/none")) for _ in range(5)]
    finally:
        await limiter.close()
        await client.aclose()
    assert [r.status_code for r in codes] == [200, 200, 429]
    assert [r.headers["ratelimit-remaining"] for r in codes] == ["1", "0", "0"]
    assert codes[2].json()["error"]["code"] == "rate_limited"
    assert {r.status_code for r in free} == {200}
    assert all("ratelimit-limit" not in r.headers for r in free)


async def test_a_noisy_neighbour_is_limited_from_reserved_tokens_too(settings: Settings) -> None:
    """Without a concurrency cap the process admits from tokens it reserved (a batch of 10
    here): the flood still gets 429s with the usual headers, no more is admitted than the
    burst, the rate and one batch allow, and quiet tenants all succeed."""
    limits = TierLimits(rate=100, burst=40)
    async with serve(limited(settings, limits)) as (app, http):
        platform: Platform = app.state.tenantry
        assert platform.rate_limiter is not None
        batch = platform.rate_limiter.reserve_batch(limits)
        assert batch == 10
        noisy = await platform.tenants.create(unique_slug("noisy"))
        quiet = [await platform.tenants.create(unique_slug("quiet")) for _ in range(2)]
        gate = asyncio.Semaphore(40)

        async def get(tenant: Tenant) -> httpx.Response:
            async with gate:
                return await http.get("/api/departments", headers=tenant_headers(tenant))

        started = asyncio.get_running_loop().time()
        responses = await asyncio.gather(
            *(get(noisy) for _ in range(400)), *(get(t) for t in quiet for _ in range(8))
        )
        elapsed = asyncio.get_running_loop().time() - started
    noisy_codes = [r.status_code for r in responses[:400]]
    assert {r.status_code for r in responses[400:]} == {200}
    admitted = noisy_codes.count(200)
    assert 40 <= admitted <= 40 + 100 * elapsed + batch
    refused = next(r for r in responses[:400] if r.status_code == 429)
    assert refused.json()["error"]["code"] == "rate_limited"
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["ratelimit-remaining"] == "0"
    ok = next(r for r in responses[:400] if r.status_code == 200)
    assert ok.headers["ratelimit-limit"] == "40"
    assert 0 <= int(ok.headers["ratelimit-remaining"]) <= 40
    assert int(ok.headers["ratelimit-reset"]) >= 0


async def test_catalog_overrides_change_a_tenants_limits_at_once(settings: Settings) -> None:
    """``attributes.rate_limit`` in the catalog overrides the tier for that tenant only,
    quotas included (429 ``quota_exceeded``); exempt paths are never limited."""
    async with serve(limited(settings, TierLimits(rate=100, burst=100))) as (app, http):
        platform: Platform = app.state.tenantry
        tight = await platform.tenants.create(unique_slug("rl"))
        other = await platform.tenants.create(unique_slug("rl"))
        await platform.tenants.update_attributes(
            tight.slug, {"rate_limit": {"rate": 1, "burst": 3, "quota": 5}}
        )
        codes = [
            (await http.get("/api/departments", headers=tenant_headers(tight))).status_code
            for _ in range(4)
        ]
        assert codes == [200, 200, 200, 429]
        others = [
            (await http.get("/api/departments", headers=tenant_headers(other))).status_code
            for _ in range(10)
        ]
        assert others == [200] * 10
        await platform.tenants.update_attributes(tight.slug, {"rate_limit": {"quota": 3}})
        quota = await http.get("/api/departments", headers=tenant_headers(tight))
        assert quota.status_code == 429
        assert quota.json()["error"]["code"] == "quota_exceeded"
        assert int(quota.headers["retry-after"]) >= 1
        assert [(await http.get("/health")).status_code for _ in range(20)] == [200] * 20


# -- Redis unreachable ----------------------------------------------------------------------
def unreachable(settings: Settings, **env: str) -> Settings:
    """``settings`` pointing at a loopback port where no Redis listens."""
    configured = Settings.from_env(
        {
            "DATABASE_URL": settings.database.url,
            "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
            "TENANTRY_JWT_SECRET": settings.auth.jwt_secret or "",
            "TENANTRY_REDIS_RETRY_INTERVAL": "0.2",
            **env,
        }
    )
    return configured


async def test_without_redis_reads_work_sessions_503_and_one_warning(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis unreachable: the API keeps serving reads (cache bypassed, rate limits fail
    open by default), sessions answer a clear 503, and the outage is logged once."""
    async with serve(unreachable(settings)) as (app, http):
        platform: Platform = app.state.tenantry
        tenant = await platform.tenants.create(unique_slug("down"))
        headers = tenant_headers(tenant)
        with caplog.at_level(logging.WARNING, logger="tenantry"):
            created = await http.post("/api/departments", json={"name": "Ops"}, headers=headers)
            assert created.status_code == 201
            for _ in range(3):
                reads = await asyncio.gather(
                    *(http.get("/api/departments", headers=headers) for _ in range(20))
                )
                assert {r.status_code for r in reads} == {200}
                assert all(r.json()["items"][0]["name"] == "Ops" for r in reads)
                assert not any("ratelimit-limit" in r.headers for r in reads)
                await asyncio.sleep(0.25)  # past the retry interval: Redis is probed again
            session = await http.get("/api/session", headers={**headers, "cookie": "x=1"})
            assert session.status_code == 401
            token = TokenService(settings.auth).issue(subject="ada", tenant=tenant.slug)
            login = await http.post(
                "/api/session", headers={**headers, "Authorization": f"Bearer {token}"}
            )
            assert login.status_code == 503
            assert login.json()["error"]["code"] == "session_store_unavailable"
            health = await http.get("/health")
        assert health.status_code == 200
        assert health.json()["redis"].startswith("error")
        warnings = [r for r in caplog.records if r.name == "tenantry.cache"]
        assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_rate_limiting_can_fail_closed(settings: Settings) -> None:
    """With ``TENANTRY_RATE_LIMIT_FAIL=closed``, an unreachable Redis refuses tenant
    requests with 503 ``rate_limiter_unavailable``; exempt paths still answer."""
    async with serve(unreachable(settings, TENANTRY_RATE_LIMIT_FAIL="closed")) as (app, http):
        platform: Platform = app.state.tenantry
        tenant = await platform.tenants.create(unique_slug("closed"))
        refused = await http.get("/api/departments", headers=tenant_headers(tenant))
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "rate_limiter_unavailable"
        assert refused.headers["retry-after"] == "1"
        assert (await http.get("/health")).status_code == 200


async def test_a_noisy_neighbour_is_capped_from_leased_slots_too(settings: Settings) -> None:
    """With a concurrency cap the process leases slots (two at a time here, with its
    tokens): the flood's excess gets 429 ``too_many_concurrent_requests`` with the usual
    headers, admitted requests carry ``RateLimit-*``, and quiet tenants all succeed."""
    limits = TierLimits(rate=1000, burst=1000, concurrency=8)
    async with serve(limited(settings, limits)) as (app, http):
        platform: Platform = app.state.tenantry
        assert platform.rate_limiter is not None
        assert platform.rate_limiter.lease_size(limits) == 2
        assert platform.rate_limiter.reserve_batch(limits) == 100
        noisy = await platform.tenants.create(unique_slug("noisy"))
        quiet = [await platform.tenants.create(unique_slug("quiet")) for _ in range(2)]
        gate = asyncio.Semaphore(40)

        async def get(tenant: Tenant) -> httpx.Response:
            async with gate:
                return await http.get("/api/departments", headers=tenant_headers(tenant))

        async def polite(tenant: Tenant) -> list[httpx.Response]:
            return [await get(tenant) for _ in range(8)]  # one at a time: within the cap

        flood, *calm = await asyncio.gather(
            asyncio.gather(*(get(noisy) for _ in range(300))), *(polite(t) for t in quiet)
        )
        await platform.rate_limiter.drain()
    assert {r.status_code for batch in calm for r in batch} == {200}
    codes = [r.status_code for r in flood]
    assert set(codes) == {200, 429}
    refused = next(r for r in flood if r.status_code == 429)
    _assert_refused(
        refused, "too_many_concurrent_requests", "too many requests in flight for this tenant"
    )
    assert refused.headers["ratelimit-limit"] == "1000"
    ok = next(r for r in flood if r.status_code == 200)
    assert ok.headers["ratelimit-limit"] == "1000"
    assert 0 <= int(ok.headers["ratelimit-remaining"]) <= 1000
