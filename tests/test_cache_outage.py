"""Valkey killed under load, then restarted: the API never stops answering reads, and
cache, sessions and rate limits come back by themselves, without restarting the app.

Uses a private ``valkey-server`` on a free port (never the shared test services).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from tenantry import Platform, Settings
from tenantry.cache import RedisGuard, RedisUnavailableError
from tenantry.devstack import ValkeyService
from tenantry.web import TokenService
from tests.cache_helpers import COOKIE, free_port, serve, session_cookie, tenant_headers
from tests.conftest import unique_slug


@pytest.fixture
def private_valkey(tmp_path: Path) -> Iterator[ValkeyService]:
    """A Valkey server of this test's own, stopped (or killed) at the end."""
    service = ValkeyService(tmp_path / "valkey", port=free_port())
    service.start()
    try:
        yield service
    finally:
        service.stop()


def kill(service: ValkeyService) -> None:
    """SIGKILL the server, as a crash would, and wait until its port is closed."""
    pid = int((service.data_dir / "valkey.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while service.is_running():
        assert time.monotonic() < deadline, "valkey-server survived SIGKILL"
        time.sleep(0.02)
    (service.data_dir / "valkey.pid").unlink(missing_ok=True)


async def test_killing_valkey_under_load_keeps_reads_up_and_recovers(
    settings: Settings, private_valkey: ValkeyService, caplog: pytest.LogCaptureFixture
) -> None:
    """Reads keep succeeding while Valkey is dead; sessions answer 503; one warning is
    logged; after a restart, sessions and the cache work again in the same app."""
    configured = Settings.from_env(
        {
            "DATABASE_URL": settings.database.url,
            "REDIS_URL": private_valkey.url,
            "TENANTRY_JWT_SECRET": settings.auth.jwt_secret or "",
            "TENANTRY_SESSION_COOKIE_SECURE": "false",
            "TENANTRY_REDIS_RETRY_INTERVAL": "0.2",
            "TENANTRY_RATE_LIMIT_PRO": "rate=10000,burst=10000,concurrency=1000",
        }
    )
    probe = Redis.from_url(private_valkey.url)
    async with serve(configured) as (app, http):
        platform: Platform = app.state.tenantry
        tenants = [await platform.tenants.create(unique_slug("kill"), tier="pro") for _ in range(3)]
        for tenant in tenants:
            made = await http.post(
                "/api/departments", json={"name": "Ops"}, headers=tenant_headers(tenant)
            )
            assert made.status_code == 201
        token = TokenService(configured.auth).issue(subject="ada", tenant=tenants[0].slug)
        login_headers = {**tenant_headers(tenants[0]), "Authorization": f"Bearer {token}"}
        login = await http.post("/api/session", headers=login_headers)
        cookie = {**tenant_headers(tenants[0]), "cookie": f"{COOKIE}={session_cookie(login)}"}
        assert (await http.get("/api/session", headers=cookie)).status_code == 200

        codes: list[int] = []
        stop = asyncio.Event()

        async def reader(tenant_index: int) -> None:
            headers = tenant_headers(tenants[tenant_index % len(tenants)])
            while not stop.is_set():
                response = await http.get("/api/departments", headers=headers)
                codes.append(response.status_code)
                await asyncio.sleep(0.005)

        with caplog.at_level(logging.INFO, logger="tenantry.cache"):
            load = [asyncio.create_task(reader(i)) for i in range(6)]
            await asyncio.sleep(0.3)
            before_kill = len(codes)
            await asyncio.to_thread(kill, private_valkey)
            await asyncio.sleep(1.0)
            during = len(codes) - before_kill
            down = await http.get("/api/session", headers=cookie)
            assert down.status_code == 503
            assert down.json()["error"]["code"] == "session_store_unavailable"

            await asyncio.to_thread(private_valkey.start)
            deadline = time.monotonic() + 5
            while (await http.post("/api/session", headers=login_headers)).status_code != 201:
                assert time.monotonic() < deadline, "sessions did not come back after restart"
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.3)
            stop.set()
            await asyncio.gather(*load)

        assert during > 50, "the API stopped answering while Valkey was down"
        assert platform.redis_guard.outages == 1
        assert set(codes) == {200}, {code: codes.count(code) for code in set(codes)}
        warnings = [
            r for r in caplog.records if r.name == "tenantry.cache" and r.levelno == logging.WARNING
        ]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        assert any("reachable again" in r.getMessage() for r in caplog.records)

        # Sessions: a new login works and is honoured (the old one may or may not have
        # survived in the append-only file; either is fine).
        relogin = await http.post("/api/session", headers=login_headers)
        fresh = {**tenant_headers(tenants[0]), "cookie": f"{COOKIE}={session_cookie(relogin)}"}
        assert (await http.get("/api/session", headers=fresh)).status_code == 200
        # The cache is filled and served again: a rename behind the API's back stays hidden.
        subject = tenants[1]
        await http.get("/api/departments", headers=tenant_headers(subject))
        entries = [key async for key in probe.scan_iter(match=f"t:{{{subject.id}}}:departments:*")]
        assert entries
        async with platform.db.tenant_transaction(subject.context()) as conn:
            await conn.execute("UPDATE departments SET name = 'Renamed'")
        cached = await http.get("/api/departments", headers=tenant_headers(subject))
        assert cached.json()["items"][0]["name"] == "Ops"
        # And rate limiting is back: responses carry its headers again.
        assert "ratelimit-limit" in cached.headers
    await probe.aclose()


async def test_the_outage_warning_is_logged_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """However many calls fail, the guard warns once per ``warn_interval``."""

    now = [1000.0]
    guard = RedisGuard(retry_interval=1.0, warn_interval=30.0, clock=lambda: now[0])
    calls = 0

    async def failing() -> None:
        nonlocal calls
        calls += 1
        raise RedisConnectionError("refused")

    async def working() -> str:
        return "ok"

    with caplog.at_level(logging.INFO, logger="tenantry.cache"):
        for step in range(100):  # 50 s of one call every half second
            now[0] = 1000.0 + step * 0.5
            with pytest.raises(RedisUnavailableError):
                await guard.run(failing)
        assert calls == 50  # one real attempt per retry interval; the rest short-circuit
        assert not guard.available
        now[0] += 1.0
        assert await guard.run(working) == "ok"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # at 0 s and at 30 s
    assert guard.available
    assert "reachable again" in caplog.records[-1].getMessage()
