"""Request → tenant resolution: subdomains, custom domains, the resolution order, and the
directory cache that makes resolution free after the first request, yet hears about
catalog changes from other processes within a second."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest
from fastapi import FastAPI
from psycopg import AsyncConnection

from hr_example import create_app
from tenantry import Platform, Settings
from tenantry.catalog import Tenant, TenantCatalog

TENANTRY = Path(sys.executable).with_name("tenantry")


class CountingCatalog(TenantCatalog):
    """The real catalog, counting the lookups that reach the database."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def find(self, conn: AsyncConnection[Any], key: str | UUID) -> Tenant | None:
        self.calls.append(f"find:{key}")
        return await super().find(conn, key)

    async def find_by_domain(self, conn: AsyncConnection[Any], host: str) -> Tenant | None:
        self.calls.append(f"domain:{host}")
        return await super().find_by_domain(conn, host)


@pytest.fixture
async def tenant(
    client: httpx.AsyncClient, make_tenant: Callable[..., Awaitable[Tenant]]
) -> Tenant:
    """A fresh tenant whose only department is named after its slug."""
    made = await make_tenant("res")
    r = await client.post(
        "/api/departments", json={"name": made.slug}, headers={"X-Tenant-ID": made.slug}
    )
    assert r.status_code == 201, r.text
    return made


@pytest.fixture
async def lookups(
    platform: Platform, monkeypatch: pytest.MonkeyPatch, tenant: Tenant
) -> CountingCatalog:
    """Count the directory's catalog queries, starting from a cold cache for ``tenant``."""
    # Let the creation's NOTIFY reach this process's listener first: arriving later, it
    # would evict the entry the test is counting on.
    await asyncio.sleep(0.3)
    platform.directory.invalidate(tenant.id)
    counter = CountingCatalog()
    monkeypatch.setattr(platform.directory, "catalog", counter)
    return counter


async def _departments(client: httpx.AsyncClient, headers: dict[str, str]) -> httpx.Response:
    return await client.get("/api/departments", headers=headers)


def _names(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [d["name"] for d in response.json()["items"]]


# -- subdomains ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "host",
    [
        "{slug}.localhost",
        "{slug}.localhost:8000",
        "{slug}.localhost.",
        "{slug}.localhost.:8443",
        "{SLUG}.LOCALHOST",
        "{SLUG}.Localhost:80",
    ],
)
async def test_subdomain_names_the_tenant(
    client: httpx.AsyncClient, tenant: Tenant, host: str
) -> None:
    """``<slug>.localhost`` resolves, with a port, a trailing dot, in any letter case."""
    headers = {"Host": host.format(slug=tenant.slug, SLUG=tenant.slug.upper())}
    assert _names(await _departments(client, headers)) == [tenant.slug]


@pytest.mark.parametrize(
    "host",
    ["localhost", "localhost:8000", "127.0.0.1:8000", "[::1]:8000", "testserver", "localhost."],
)
async def test_base_domain_and_ip_hosts_name_no_tenant(
    client: httpx.AsyncClient, tenant: Tenant, host: str
) -> None:
    """The bare base domain, IP literals and single-label hosts name no tenant (400
    tenant_required), and do not stop the header from naming one."""
    bare = await _departments(client, {"Host": host})
    assert bare.status_code == 400, bare.text
    assert bare.json()["error"]["code"] == "tenant_required"
    assert _names(await _departments(client, {"Host": host, "X-Tenant-ID": tenant.slug})) == [
        tenant.slug
    ]


async def test_subdomain_and_header_must_agree(
    client: httpx.AsyncClient, tenant: Tenant, make_tenant: Callable[..., Awaitable[Tenant]]
) -> None:
    """Host naming one tenant and X-Tenant-ID another is 403 tenant_mismatch."""
    other = await make_tenant("res")
    response = await _departments(
        client, {"Host": f"{tenant.slug}.localhost", "X-Tenant-ID": other.slug}
    )
    assert response.status_code == 403, response.text
    assert response.json()["error"]["code"] == "tenant_mismatch"


# -- custom domains -----------------------------------------------------------------------
async def _add_domain(platform: Platform, tenant: Tenant, host: str) -> None:
    async with platform.db.transaction() as conn:
        await platform.catalog.add_domain(conn, tenant.id, host)


async def test_custom_domain_names_its_tenant(
    client: httpx.AsyncClient,
    platform: Platform,
    tenant: Tenant,
    make_tenant: Callable[..., Awaitable[Tenant]],
) -> None:
    """A domain mapped in the catalog resolves to its tenant (any case, with a port);
    it must agree with any other source; unmapped domains name no tenant."""
    domain = f"hr.{tenant.slug}.example.org"
    await _add_domain(platform, tenant, domain.upper())
    for host in (domain, f"{domain}:8443", domain.upper(), f"{domain}."):
        assert _names(await _departments(client, {"Host": host})) == [tenant.slug]
    other = await make_tenant("res")
    mismatch = await _departments(client, {"Host": domain, "X-Tenant-ID": other.slug})
    assert mismatch.status_code == 403, mismatch.text
    assert mismatch.json()["error"]["code"] == "tenant_mismatch"
    unmapped = await _departments(client, {"Host": f"nobody.{tenant.slug}.example.org"})
    assert unmapped.status_code == 400, unmapped.text
    assert unmapped.json()["error"]["code"] == "tenant_required"
    assert (await platform.tenants.get(tenant.slug)).domains == (domain,)


async def test_domain_mapped_after_a_miss_is_served_at_once(
    client: httpx.AsyncClient, platform: Platform, tenant: Tenant
) -> None:
    """A miss is cached, but mapping the domain invalidates it (NOTIFY at commit): the
    domain resolves within a second, without waiting for the negative-cache TTL."""
    domain = f"late.{tenant.slug}.example.net"
    assert (await _departments(client, {"Host": domain})).status_code == 400
    assert platform.directory.negative_ttl >= 5
    await _add_domain(platform, tenant, domain)
    await _poll_status(client, {"Host": domain}, 200, within=1.0)
    assert _names(await _departments(client, {"Host": domain})) == [tenant.slug]


# -- resolution order ---------------------------------------------------------------------
@pytest.fixture
async def app_with_order(
    settings: Settings,
) -> AsyncIterator[Callable[[str], Awaitable[httpx.AsyncClient]]]:
    """Factory of extra apps over the session database, with TENANTRY_RESOLUTION_ORDER set."""
    async with AsyncExitStack() as stack:

        async def make(order: str) -> httpx.AsyncClient:
            configured = Settings.from_env(
                {
                    "DATABASE_URL": settings.database.url,
                    "TENANTRY_JWT_SECRET": settings.auth.jwt_secret or "",
                    "TENANTRY_RESOLUTION_ORDER": order,
                    "TENANTRY_DB_POOL_MAX": "4",
                }
            )
            application = create_app(configured)
            await stack.enter_async_context(application.router.lifespan_context(application))
            transport = httpx.ASGITransport(app=application)
            return await stack.enter_async_context(
                httpx.AsyncClient(transport=transport, base_url="http://testserver")
            )

        yield make


async def test_order_limits_which_sources_name_the_tenant(
    app_with_order: Callable[[str], Awaitable[httpx.AsyncClient]], tenant: Tenant, app: FastAPI
) -> None:
    """Only the resolvers listed in TENANTRY_RESOLUTION_ORDER are consulted."""
    token = app.state.tenantry_tokens.issue(subject="u", tenant=tenant.slug)
    sources = {
        "subdomain": {"Host": f"{tenant.slug}.localhost"},
        "header": {"X-Tenant-ID": tenant.slug},
        "jwt": {"Authorization": f"Bearer {token}"},
    }
    for order, served in (
        ("header", {"header"}),
        ("subdomain,jwt", {"subdomain", "jwt"}),
        ("jwt", {"jwt"}),
    ):
        http = await app_with_order(order)
        for source, headers in sources.items():
            response = await _departments(http, headers)
            if source in served:
                assert _names(response) == [tenant.slug], (order, source)
            else:
                assert response.status_code == 400, (order, source, response.text)
                assert response.json()["error"]["code"] == "tenant_required"


async def test_a_token_for_another_tenant_is_refused_even_when_jwt_is_not_a_resolver(
    app_with_order: Callable[[str], Awaitable[httpx.AsyncClient]],
    tenant: Tenant,
    make_tenant: Callable[..., Awaitable[Tenant]],
    app: FastAPI,
) -> None:
    """Leaving ``jwt`` out of the order does not let tenant A's token act on tenant B."""
    other = await make_tenant("res")
    token = app.state.tenantry_tokens.issue(subject="a", tenant=other.slug, role="admin")
    http = await app_with_order("subdomain,header")
    for headers in ({"X-Tenant-ID": tenant.slug}, {"Host": f"{tenant.slug}.localhost"}):
        response = await _departments(http, {**headers, "Authorization": f"Bearer {token}"})
        assert response.status_code == 403, response.text
        assert response.json()["error"]["code"] == "tenant_mismatch"
    own = app.state.tenantry_tokens.issue(subject="b", tenant=tenant.slug)
    served = await _departments(
        http, {"X-Tenant-ID": tenant.slug, "Authorization": f"Bearer {own}"}
    )
    assert _names(served) == [tenant.slug]


async def test_mismatch_message_follows_the_order(
    app_with_order: Callable[[str], Awaitable[httpx.AsyncClient]],
    tenant: Tenant,
    make_tenant: Callable[..., Awaitable[Tenant]],
) -> None:
    """The first source in the order is the reference the others are checked against."""
    other = await make_tenant("res")
    headers = {"Host": f"{tenant.slug}.localhost", "X-Tenant-ID": other.slug}
    for order, first, second in (
        ("subdomain,header", "subdomain", "header"),
        ("header,subdomain", "header", "subdomain"),
    ):
        response = await _departments(await app_with_order(order), headers)
        assert response.status_code == 403, response.text
        message = response.json()["error"]["message"]
        assert message == f"the tenant named by {second} differs from the one named by {first}"


# -- the directory cache ------------------------------------------------------------------
async def test_second_request_costs_no_catalog_query(
    client: httpx.AsyncClient, tenant: Tenant, lookups: CountingCatalog, app: FastAPI
) -> None:
    """The first request for a tenant queries the catalog once; the following ones,
    by header, host or token (all keyed by slug), query it not at all."""
    as_slug = {"X-Tenant-ID": tenant.slug}
    assert _names(await _departments(client, as_slug)) == [tenant.slug]
    assert lookups.calls == [f"find:{tenant.slug}"]
    token = app.state.tenantry_tokens.issue(subject="u", tenant=tenant.slug)
    for headers in (
        as_slug,
        {"Host": f"{tenant.slug}.localhost"},
        {"Authorization": f"Bearer {token}"},
    ) * 3:
        assert _names(await _departments(client, headers)) == [tenant.slug]
    assert lookups.calls == [f"find:{tenant.slug}"]
    by_id = {"X-Tenant-ID": str(tenant.id)}
    for _ in range(3):
        assert _names(await _departments(client, by_id)) == [tenant.slug]
    assert lookups.calls == [f"find:{tenant.slug}", f"find:{tenant.id}"]


async def test_custom_domain_and_misses_are_cached_too(
    client: httpx.AsyncClient, platform: Platform, tenant: Tenant, lookups: CountingCatalog
) -> None:
    """Custom-domain hits and unknown-tenant misses each cost one query, then none."""
    domain = f"cached.{tenant.slug}.example.com"
    await _add_domain(platform, tenant, domain)
    await asyncio.sleep(0.3)  # the NOTIFY of the mapping invalidates; let it land first
    lookups.calls.clear()
    for _ in range(4):
        assert _names(await _departments(client, {"Host": domain})) == [tenant.slug]
        missing = await _departments(client, {"X-Tenant-ID": f"ghost{tenant.slug}"})
        assert missing.status_code == 404, missing.text
    assert sorted(lookups.calls) == [f"domain:{domain}", f"find:ghost{tenant.slug}"]


async def test_a_burst_of_first_requests_costs_one_query(
    client: httpx.AsyncClient, tenant: Tenant, lookups: CountingCatalog
) -> None:
    """Thirty concurrent first requests for a tenant share one catalog query."""
    responses = await asyncio.gather(
        *(_departments(client, {"X-Tenant-ID": tenant.slug}) for _ in range(30))
    )
    assert all(_names(r) == [tenant.slug] for r in responses)
    assert lookups.calls == [f"find:{tenant.slug}"]


def _cli(settings: Settings, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(cwd),
        "DATABASE_URL": settings.database.url,
        "TENANTRY_JWT_SECRET": settings.auth.jwt_secret or "",
        "TENANTRY_DATA_DIR": str(cwd / "no-up-state"),
    }
    return subprocess.run(
        [str(TENANTRY), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def _poll_status(
    client: httpx.AsyncClient, headers: dict[str, str], want: int, within: float
) -> float:
    """Seconds until a request gets status ``want``; fails after ``within`` seconds."""
    started = time.monotonic()
    while True:
        response = await _departments(client, headers)
        elapsed = time.monotonic() - started
        if response.status_code == want:
            return elapsed
        assert elapsed < within, (
            f"still {response.status_code} after {elapsed:.2f}s: {response.text}"
        )
        await asyncio.sleep(0.02)


async def test_suspend_from_another_process_reaches_this_one_within_a_second(
    client: httpx.AsyncClient,
    platform: Platform,
    settings: Settings,
    tenant: Tenant,
    lookups: CountingCatalog,
    tmp_path: Path,
) -> None:
    """``tenantry tenants suspend`` run in a separate process invalidates this process's
    cached entry through LISTEN/NOTIFY: 403 within a second, long before the 30 s TTL;
    ``resume`` likewise brings it back."""
    assert platform.directory.ttl >= 30
    assert platform.directory.listening.is_set()
    headers = {"X-Tenant-ID": tenant.slug}
    assert _names(await _departments(client, headers)) == [tenant.slug]
    warmed = len(lookups.calls)
    assert _names(await _departments(client, headers)) == [tenant.slug]
    assert len(lookups.calls) == warmed  # served from the cache from here on
    cached_at = time.monotonic()

    done = await asyncio.to_thread(
        _cli, settings, tmp_path, "tenants", "suspend", tenant.slug, "--json"
    )
    assert done.returncode == 0, done.stderr
    waited = await _poll_status(client, headers, 403, within=1.0)
    response = await _departments(client, headers)
    assert response.json()["error"]["code"] == "tenant_suspended"
    assert time.monotonic() - cached_at < platform.directory.ttl
    assert waited < 1.0

    done = await asyncio.to_thread(_cli, settings, tmp_path, "tenants", "resume", tenant.slug)
    assert done.returncode == 0, done.stderr
    await _poll_status(client, headers, 200, within=1.0)
    assert _names(await _departments(client, headers)) == [tenant.slug]


class PausingCatalog(TenantCatalog):
    """The real catalog, pausing after its query until the test lets it return."""

    def __init__(self) -> None:
        self.read = asyncio.Event()
        self.release = asyncio.Event()
        self.calls = 0

    async def find(self, conn: AsyncConnection[Any], key: str | UUID) -> Tenant | None:
        self.calls += 1
        found = await super().find(conn, key)
        self.read.set()
        await self.release.wait()
        return found


async def test_a_lookup_overtaken_by_an_invalidation_is_not_cached(
    platform: Platform, tenant: Tenant
) -> None:
    """A row read before a catalog change arrives is returned once but never cached."""
    from tenantry.catalog import TenantDirectory

    catalog = PausingCatalog()
    directory = TenantDirectory(platform.db, catalog)
    lookup = asyncio.create_task(directory.get(tenant.slug))
    await asyncio.wait_for(catalog.read.wait(), timeout=5)
    directory.invalidate(tenant.id)  # e.g. a NOTIFY for a suspension, mid-lookup
    catalog.release.set()
    assert (await lookup).id == tenant.id
    await directory.get(tenant.slug)
    assert catalog.calls == 2  # the second lookup went back to the catalog
    await directory.get(tenant.slug)
    assert catalog.calls == 2  # and that one, undisturbed, was cached
