"""The rate limiter's lean pipelined path where it differs from plain redis-py: scripts the
server forgot, a cluster redirection, a server that stops answering, and shutdown.

Real servers only: the shared single node and 3-master cluster for what leaves data
alone, a private ``valkey-server`` for what freezes or kills one.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any
from uuid import uuid4

import pytest
from redis.crc import key_slot

from tenantry import TenantContext
from tenantry.cache import (
    KeyBuilder,
    RateLimiter,
    RateLimitUnavailableError,
    RedisGuard,
    create_redis_client,
)
from tenantry.cache._resp import NodeAddress, RespConnection, RespStats
from tenantry.devstack import ValkeyService
from tenantry.settings import RateLimitSettings, RedisSettings, TierLimits
from tests.cache_helpers import free_port

LIMITS = TierLimits(rate=0.01, burst=3, concurrency=10)  # no refill during a test


def limiter_on(client: Any, **settings: Any) -> RateLimiter:
    tiers = settings.pop("tiers", MappingProxyType({"free": LIMITS}))
    return RateLimiter(
        client,
        guard=RedisGuard(retry_interval=0.2),
        keys=KeyBuilder(f"test-{secrets.token_hex(4)}:"),
        settings=RateLimitSettings(tiers=tiers, **settings),
    )


def tenant() -> TenantContext:
    slug = f"p{secrets.token_hex(4)}"
    return TenantContext(id=uuid4(), slug=slug, tier="free", schema=f"t_{slug}")


@pytest.fixture
async def cluster_client(redis_cluster_url: str) -> AsyncIterator[Any]:
    client = create_redis_client(RedisSettings(url=redis_cluster_url))
    yield client
    await client.aclose()


@pytest.fixture
def private_valkey(tmp_path: Path) -> Iterator[ValkeyService]:
    service = ValkeyService(tmp_path / "valkey", port=free_port())
    service.start()
    try:
        yield service
    finally:
        pid_file = service.data_dir / "valkey.pid"
        if pid_file.exists():
            os.kill(int(pid_file.read_text()), signal.SIGCONT)
        service.stop()


async def test_checks_go_on_after_the_server_forgets_its_scripts(redis_url: str) -> None:
    """After ``SCRIPT FLUSH`` (what a restart does to the script cache) the next check
    loads the script again and decides as before: burst 3 still means 3."""
    client: Any = create_redis_client(RedisSettings(url=redis_url))
    limiter = limiter_on(client)
    who = tenant()
    try:
        assert (await limiter.acquire(who)).allowed
        await client.script_flush()
        decisions = [await limiter.acquire(who) for _ in range(3)]
        assert [d.allowed for d in decisions] == [True, True, False]
    finally:
        await limiter.close()
        await client.aclose()


async def test_a_redirected_check_follows_the_cluster(cluster_client: Any) -> None:
    """A check sent to a node that does not own the tenant's slot gets a real ``MOVED``
    reply; it is retried through redis-py, answered correctly, and later checks find the
    right node again."""
    limiter = limiter_on(cluster_client)
    who = tenant()
    assert (await limiter.acquire(who)).allowed
    slot = key_slot(limiter.keys.internal("_rl", "api", who.id).encode())
    owner = cluster_client.nodes_manager.get_node_from_slot(slot)
    other = next(node for node in cluster_client.get_primaries() if node.name != owner.name)
    wrong = await RespConnection.open(
        NodeAddress(host=other.host, port=int(other.port), timeout=1.0), RespStats()
    )
    pipeline: Any = limiter.pipeline
    pipeline._routes[slot] = wrong  # as if the slot had moved away since it was routed
    try:
        second = await limiter.acquire(who)
        assert second.allowed
        assert second.remaining == 1
        assert slot not in pipeline._routes  # the stale route is gone
        third, fourth = await limiter.acquire(who), await limiter.acquire(who)
        assert (third.allowed, fourth.allowed) == (True, False)
        assert pipeline._routes[slot] is not wrong
    finally:
        wrong.close()
        await limiter.close()


async def test_a_frozen_server_degrades_checks_within_the_timeout(
    private_valkey: ValkeyService,
) -> None:
    """SIGSTOP the server: pending checks fail open after ``socket_timeout`` instead of
    hanging (fail-closed ones raise); SIGCONT: checks are counted again."""
    client = _impatient_client(private_valkey)
    open_limiter = limiter_on(client)
    closed_limiter = limiter_on(client, fail_open=False)
    who = tenant()
    pid = int((private_valkey.data_dir / "valkey.pid").read_text())
    try:
        assert (await open_limiter.acquire(who)).allowed
        assert (await closed_limiter.acquire(who)).allowed
        os.kill(pid, signal.SIGSTOP)
        start = time.monotonic()
        degraded = await asyncio.wait_for(open_limiter.acquire(who), timeout=5)
        assert degraded.allowed
        assert degraded.degraded
        assert time.monotonic() - start < 2.0
        with pytest.raises(RateLimitUnavailableError):
            await asyncio.wait_for(closed_limiter.acquire(who), timeout=5)
        os.kill(pid, signal.SIGCONT)
        decision = await _checked_again(open_limiter, who)
        assert decision.allowed
        assert decision.limit == 3
    finally:
        os.kill(pid, signal.SIGCONT)
        await open_limiter.close()
        await closed_limiter.close()
        await client.aclose()


async def test_reserved_tokens_then_a_frozen_server_degrades_within_the_timeout(
    private_valkey: ValkeyService,
) -> None:
    """With local token reservation (no concurrency cap) a frozen server costs no more than
    before: the tokens already reserved are spent, then the next requests fail open (or
    closed) within ``socket_timeout``, and are counted again once the server is back."""
    client = _impatient_client(private_valkey)
    limits = MappingProxyType({"free": TierLimits(rate=1_000_000, burst=1_000_000)})
    open_limiter = limiter_on(client, tiers=limits)
    closed_limiter = limiter_on(client, tiers=limits, fail_open=False)
    batch = open_limiter.reserve_batch(limits["free"])
    who = tenant()
    pid = int((private_valkey.data_dir / "valkey.pid").read_text())
    try:
        assert (await open_limiter.acquire(who)).allowed
        assert (await closed_limiter.acquire(who)).allowed
        await open_limiter.drain()
        await closed_limiter.drain()
        os.kill(pid, signal.SIGSTOP)
        start = time.monotonic()
        spent = 0
        while not (decision := await asyncio.wait_for(open_limiter.acquire(who), 5)).degraded:
            spent += 1
            assert spent < batch, "admitted more than the tokens reserved"
        assert decision.allowed
        assert time.monotonic() - start < 2.0
        assert await _fails_closed(closed_limiter, who, within=batch)  # after the tokens held
        assert time.monotonic() - start < 4.0
        os.kill(pid, signal.SIGCONT)
        decision = await _checked_again(open_limiter, who)
        assert decision.allowed
        assert decision.limit == 1_000_000
    finally:
        os.kill(pid, signal.SIGCONT)
        await open_limiter.close()
        await closed_limiter.close()
        await client.aclose()


async def test_leased_slots_then_a_frozen_server_degrades_within_the_timeout(
    private_valkey: ValkeyService,
) -> None:
    """With concurrency slots leased (a capped tenant) a frozen server costs no more than
    with tokens: the slots (and tokens) already held are used, never more, then the next
    requests fail open (or closed) within ``socket_timeout``; once the server is back,
    checks are counted again and no leased slot is left behind."""
    client = _impatient_client(private_valkey)
    capped = TierLimits(rate=1_000_000, burst=1_000_000, concurrency=40)
    limits = MappingProxyType({"free": capped})
    open_limiter = limiter_on(client, tiers=limits)
    closed_limiter = limiter_on(client, tiers=limits, fail_open=False)
    assert open_limiter.lease_size(capped) == 10
    who = tenant()
    pid = int((private_valkey.data_dir / "valkey.pid").read_text())
    held: list[Any] = []
    try:
        held.append(await open_limiter.acquire(who))
        held.append(await closed_limiter.acquire(who))
        assert all(d.slot is not None for d in held)
        await asyncio.sleep(0.05)  # background leases settle
        os.kill(pid, signal.SIGSTOP)
        start = time.monotonic()
        spent = 0
        while not (decision := await asyncio.wait_for(open_limiter.acquire(who), 5)).degraded:
            assert decision.slot is not None
            held.append(decision)
            spent += 1
            assert spent <= 20, "admitted more than the slots leased"
        assert decision.allowed
        assert time.monotonic() - start < 2.0
        assert await _fails_closed(closed_limiter, who, within=40, held=held)  # after the slots
        assert time.monotonic() - start < 4.0
        os.kill(pid, signal.SIGCONT)
        decision = await _checked_again(open_limiter, who)
        assert decision.allowed
        assert decision.slot is not None
        held.append(decision)
        deadline = time.monotonic() + 10
        while True:
            try:
                held.append(await closed_limiter.acquire(who))
                break
            except RateLimitUnavailableError:
                assert time.monotonic() < deadline, "checks never came back"
                await asyncio.sleep(0.05)
        for limiter in (open_limiter, closed_limiter):
            for d in held:
                if d.slot is not None and d.slot in limiter._leasing:
                    limiter.release(d)
        await open_limiter.drain()
        await closed_limiter.drain()
        for limiter in (open_limiter, closed_limiter):
            inflight = limiter.keys.internal("_rl", "api:inflight", who.id)
            assert await client.zcard(inflight) == 0
    finally:
        os.kill(pid, signal.SIGCONT)
        await open_limiter.close()
        await closed_limiter.close()
        await client.aclose()


def _impatient_client(valkey: ValkeyService) -> Any:
    """A client that gives up on a silent server after 0.3 s."""
    return create_redis_client(
        RedisSettings(url=valkey.url, socket_timeout=0.3, connect_timeout=0.3)
    )


async def _checked_again(limiter: Any, who: Any) -> Any:
    """The first decision that Redis made again after an outage (fails after 10 s)."""
    deadline = time.monotonic() + 10
    while (decision := await limiter.acquire(who)).degraded:
        assert time.monotonic() < deadline, "checks never came back"
        await asyncio.sleep(0.05)
    return decision


async def _fails_closed(
    limiter: Any, who: Any, *, within: int, held: list[Any] | None = None
) -> bool:
    """Whether a fail-closed limiter refuses within ``within`` requests (those admitted
    from what it holds are appended to ``held``)."""
    for _ in range(within):
        try:
            decision = await asyncio.wait_for(limiter.acquire(who), timeout=5)
        except RateLimitUnavailableError:
            return True
        if held is not None:
            held.append(decision)
    return False


async def test_close_gives_back_queued_slots_first(redis_url: str) -> None:
    """Slots released just before shutdown reach Redis: ``close`` drains before closing."""
    client: Any = create_redis_client(RedisSettings(url=redis_url))
    limiter = limiter_on(client)
    who = tenant()
    try:
        decisions = await asyncio.gather(*(limiter.acquire(who) for _ in range(3)))
        inflight = limiter.keys.internal("_rl", "api:inflight", who.id)
        assert await client.zcard(inflight) == 3
        for decision in decisions:
            limiter.release(decision)
        await limiter.close()
        assert limiter.pipeline.connections == []
        assert await client.zcard(inflight) == 0
    finally:
        await client.aclose()
