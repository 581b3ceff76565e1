"""The cache contract: one suite, run against a real Valkey node and a real 3-master cluster.

Cache-aside hits, misses and TTL; invalidation by key, namespace and tenant that leaves
every other tenant's entries alone; stampede protection; sessions; rate limits, quotas and
concurrency caps. Tenants here are plain ``TenantContext`` values with fresh ids, and every
key lives under a prefix of this run, removed at the end.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any
from uuid import uuid4

import pytest
from redis.crc import key_slot

from tenantry import TenantContext, tenant_scope
from tenantry.cache import (
    KeyBuilder,
    RateDecision,
    RateLimiter,
    RedisClient,
    RedisGuard,
    SessionStore,
    SessionTenantMismatchError,
    TenantCache,
    create_redis_client,
    is_cluster,
    ratelimit,
)
from tenantry.settings import (
    CacheSettings,
    RateLimitSettings,
    RedisSettings,
    SessionSettings,
    TierLimits,
)


@dataclass
class Backend:
    """One Redis deployment under test, with helpers that build the capabilities on it."""

    name: str
    client: RedisClient
    guard: RedisGuard = field(default_factory=RedisGuard)
    keys: KeyBuilder = field(default_factory=lambda: KeyBuilder(f"test-{secrets.token_hex(4)}:"))
    limiters: list[RateLimiter] = field(default_factory=list)  # closed at the end

    def cache(self, **settings: Any) -> TenantCache:
        return TenantCache(
            self.client, guard=self.guard, keys=self.keys, settings=CacheSettings(**settings)
        )

    def sessions(self, **settings: Any) -> SessionStore:
        return SessionStore(
            self.client, guard=self.guard, keys=self.keys, settings=SessionSettings(**settings)
        )

    def limiter(self, limits: TierLimits, **settings: Any) -> RateLimiter:
        tiers = MappingProxyType({"free": limits, "pro": limits, "enterprise": limits})
        return self.tiered_limiter(RateLimitSettings(tiers=tiers, **settings))

    def tiered_limiter(self, settings: RateLimitSettings) -> RateLimiter:
        limiter = RateLimiter(self.client, guard=self.guard, keys=self.keys, settings=settings)
        self.limiters.append(limiter)  # it holds connections of its own
        return limiter


def tenant(tier: str = "free", **attributes: Any) -> TenantContext:
    """A fresh tenant (no database needed: the cache only uses its id, tier and attributes)."""
    slug = f"c{secrets.token_hex(4)}"
    return TenantContext(
        id=uuid4(), slug=slug, tier=tier, schema=f"t_{slug}", attributes=dict(attributes)
    )


@pytest.fixture(scope="module", params=["single", "cluster"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    """A real single Valkey node, then the real three-master cluster."""
    url = request.getfixturevalue("redis_url" if request.param == "single" else "redis_cluster_url")
    client = create_redis_client(RedisSettings(url=url))
    subject = Backend(request.param, client)
    try:
        yield subject
    finally:
        for limiter in subject.limiters:
            await limiter.close()
        stale = [key async for key in client.scan_iter(match=f"{subject.keys.prefix}*")]
        for key in stale:
            await client.delete(key)
        await client.aclose()


class Loader:
    """A loader that counts its calls and returns a new value each time."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls = 0
        self.delay = delay

    async def __call__(self) -> dict[str, int]:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        return {"version": self.calls}


# -- client and keys ------------------------------------------------------------------------
async def test_the_client_matches_the_deployment(backend: Backend) -> None:
    """One URL makes a single-node client for a node and a cluster client for a seed list."""
    assert is_cluster(backend.client) == (backend.name == "cluster")
    assert await backend.client.ping()


async def test_a_tenants_keys_share_one_cluster_slot(backend: Backend) -> None:
    """Every key of a tenant hashes to the slot of its id; another tenant's keys elsewhere."""
    one, two = tenant(), tenant()
    keys = [
        backend.keys.key("departments", "list:0:50", one),
        backend.keys.key("employees", 7, one),
        backend.keys.internal("_session", "x" * 43, one),
        backend.keys.internal("_rl", "api", one),
    ]
    assert all(key.startswith(f"{backend.keys.prefix}t:{{{one.id}}}:") for key in keys)
    assert {key_slot(key.encode()) for key in keys} == {key_slot(str(one.id).encode())}
    others = {key_slot(str(tenant().id).encode()) for _ in range(20)} | {
        key_slot(str(two.id).encode())
    }
    assert len(others) > 1  # ids spread over slots, so tenants spread over nodes


# -- cache-aside ----------------------------------------------------------------------------
async def test_a_miss_loads_and_a_hit_does_not(backend: Backend) -> None:
    """The first read runs the loader and stores its value; the next is served from Redis."""
    cache, load = backend.cache(), Loader()
    with tenant_scope(tenant()):
        first = await cache.get_or_load("departments", 1, load)
        second = await cache.get_or_load("departments", 1, load)
    assert first == second == {"version": 1}
    assert load.calls == 1
    assert (cache.stats.misses, cache.stats.hits) == (1, 1)


async def test_entries_expire_after_their_ttl(backend: Backend) -> None:
    """An entry stored with a TTL is recomputed once the TTL has passed, not before."""
    cache, load = backend.cache(), Loader()
    with tenant_scope(tenant()):
        await cache.get_or_load("departments", "ttl", load, ttl=0.3)
        await cache.get_or_load("departments", "ttl", load, ttl=0.3)
        assert load.calls == 1
        await asyncio.sleep(0.45)
        assert await cache.get_or_load("departments", "ttl", load, ttl=0.3) == {"version": 2}


async def test_values_round_trip_the_same_hit_or_miss(backend: Backend) -> None:
    """What a miss returns is what a hit returns: JSON data, ``None`` included."""
    cache = backend.cache()

    async def nothing() -> None:
        return None

    async def nested() -> dict[str, Any]:
        return {"a": [1, 2.5, "x", None], "b": {"c": True}}

    with tenant_scope(tenant()):
        assert await cache.get_or_load("things", "none", nothing) is None
        assert await cache.get_or_load("things", "none", Loader()) is None  # cached miss
        miss = await cache.get_or_load("things", "nested", nested)
        assert miss == await cache.get_or_load("things", "nested", Loader()) == await nested()
        assert await cache.set("things", "direct", [1, 2])
        assert await cache.get("things", "direct") == [1, 2]
        assert await cache.get("things", "absent") is None


async def test_invalidating_a_key_drops_only_that_key(backend: Backend) -> None:
    """``invalidate`` recomputes one key; its neighbours stay cached."""
    cache, load = backend.cache(), Loader()
    with tenant_scope(tenant()):
        await cache.get_or_load("departments", 1, load)
        await cache.get_or_load("departments", 2, load)
        await cache.invalidate("departments", 1)
        assert await cache.get_or_load("departments", 1, load) == {"version": 3}
        assert await cache.get_or_load("departments", 2, load) == {"version": 2}


async def test_invalidating_a_namespace_spares_other_namespaces_and_tenants(
    backend: Backend,
) -> None:
    """A namespace invalidation is one tenant's one namespace: nothing else is dropped."""
    cache = backend.cache()
    acme, globex = tenant(), tenant()
    for who in (acme, globex):
        await cache.set("departments", "list", f"{who.slug}-departments", tenant=who)
        await cache.set("employees", "list", f"{who.slug}-employees", tenant=who)
    await cache.invalidate_namespace("departments", tenant=acme)
    assert await cache.get("departments", "list", tenant=acme) is None
    assert await cache.get("employees", "list", tenant=acme) == f"{acme.slug}-employees"
    assert await cache.get("departments", "list", tenant=globex) == f"{globex.slug}-departments"


async def test_invalidating_a_tenant_leaves_other_tenants_intact(backend: Backend) -> None:
    """Clearing one tenant drops all of its entries, in O(1), and none of anyone else's."""
    cache = backend.cache()
    tenants = [tenant() for _ in range(5)]
    for who in tenants:
        for namespace in ("departments", "employees", "reports"):
            for key in range(3):
                await cache.set(namespace, key, [who.slug, namespace, key], tenant=who)
    victim, others = tenants[0], tenants[1:]
    await cache.invalidate_tenant(victim)
    for namespace in ("departments", "employees", "reports"):
        for key in range(3):
            assert await cache.get(namespace, key, tenant=victim) is None
            for who in others:
                assert await cache.get(namespace, key, tenant=who) == [who.slug, namespace, key]
    # And the tenant caches again at once.
    await cache.set("departments", 0, "fresh", tenant=victim)
    assert await cache.get("departments", 0, tenant=victim) == "fresh"


async def test_the_same_key_in_two_tenants_is_two_entries(backend: Backend) -> None:
    """A key never crosses tenants: each tenant loads and sees its own value."""
    cache = backend.cache()
    acme, globex = tenant(), tenant()
    for who in (acme, globex):
        with tenant_scope(who):

            async def load(slug: str = who.slug) -> str:
                return slug

            assert await cache.get_or_load("profile", "me", load) == who.slug
    with tenant_scope(acme):
        assert await cache.get_or_load("profile", "me", Loader()) == acme.slug


async def test_the_cached_decorator_keys_by_arguments(backend: Backend) -> None:
    """``@cache.cached`` caches per tenant and per argument list."""
    cache = backend.cache()
    calls: list[tuple[int, str]] = []

    @cache.cached("reports", ttl=30)
    async def report(year: int, kind: str = "full") -> dict[str, Any]:
        calls.append((year, kind))
        return {"year": year, "kind": kind}

    with tenant_scope(tenant()):
        assert await report(2025) == {"year": 2025, "kind": "full"}
        assert await report(2025) == {"year": 2025, "kind": "full"}
        assert await report(2025, kind="short") == {"year": 2025, "kind": "short"}
    with tenant_scope(tenant()):
        await report(2025)
    assert calls == [(2025, "full"), (2025, "short"), (2025, "full")]


# -- stampede protection --------------------------------------------------------------------
async def test_a_stampede_of_100_misses_recomputes_once(backend: Backend) -> None:
    """100 concurrent misses on one key, through 100 separate cache instances (as if from
    100 processes: no in-process sharing), run the loader exactly once."""
    caches = [backend.cache() for _ in range(100)]
    load = Loader(delay=0.2)
    with tenant_scope(tenant()):
        values = await asyncio.gather(*(c.get_or_load("hot", "key", load) for c in caches))
    assert load.calls == 1
    assert values == [{"version": 1}] * 100


async def test_concurrent_misses_in_one_process_share_one_round_trip(backend: Backend) -> None:
    """Within one instance, concurrent misses on a key wait for one lookup and one load."""
    cache, load = backend.cache(), Loader(delay=0.05)
    with tenant_scope(tenant()):
        values = await asyncio.gather(*(cache.get_or_load("hot", "k", load) for _ in range(100)))
    assert load.calls == 1
    assert cache.stats.misses == 1
    assert values == [{"version": 1}] * 100


async def test_a_failed_recompute_lets_the_next_caller_retry_at_once(backend: Backend) -> None:
    """A loader that raises gives its lease back: the next caller loads without waiting."""
    cache = backend.cache(lock_ttl=30)

    async def broken() -> None:
        raise RuntimeError("source down")

    with tenant_scope(tenant()):
        with pytest.raises(RuntimeError, match="source down"):
            await cache.get_or_load("hot", "fails", broken)
        value = await asyncio.wait_for(cache.get_or_load("hot", "fails", Loader()), timeout=2)
    assert value == {"version": 1}


async def test_a_recompute_racing_an_invalidation_is_not_cached(backend: Backend) -> None:
    """A value computed from rows a write then replaced is never served from the cache, and
    readers after the write do not wait for that stale recompute."""
    cache = backend.cache(lock_ttl=30)
    started, release = asyncio.Event(), asyncio.Event()

    async def slow_old_value() -> str:
        started.set()
        await release.wait()
        return "old"

    async def new_value() -> str:
        return "new"

    with tenant_scope(tenant()):
        for key, invalidate in enumerate(
            (
                lambda key: cache.invalidate("departments", key),
                lambda key: cache.invalidate_namespace("departments"),
                lambda key: cache.invalidate_tenant(),
            )
        ):
            started.clear()
            release.clear()
            reader = asyncio.create_task(cache.get_or_load("departments", key, slow_old_value))
            await started.wait()
            await invalidate(key)  # a write committed while the reader was loading
            fresh = cache.get_or_load("departments", key, new_value)
            assert await asyncio.wait_for(fresh, timeout=2) == "new"
            release.set()
            assert await reader == "old"  # its caller gets it; the cache does not keep it
            assert await cache.get_or_load("departments", key, slow_old_value) == "new"


# -- sessions -------------------------------------------------------------------------------
async def test_a_session_round_trips_and_unknown_ids_find_nothing(backend: Backend) -> None:
    """A created session is found by its id, in its tenant; a random id finds nothing."""
    sessions = backend.sessions()
    with tenant_scope(tenant()) as ctx:
        assert ctx is not None
        created = await sessions.create("ada", {"role": "admin"})
        found = await sessions.get(created.id)
        assert found is not None
        assert (found.user_id, found.data, found.tenant_id) == ("ada", {"role": "admin"}, ctx.id)
        assert len(created.id) == 43
        assert await sessions.get(secrets.token_urlsafe(32)) is None
        assert await sessions.get("not a session id") is None
        saved = await sessions.save(found, {"role": "admin", "theme": "dark"})
        assert saved is not None
        again = await sessions.get(created.id)
        assert again is not None
        assert again.data == {"role": "admin", "theme": "dark"}


async def test_a_session_from_another_tenant_is_rejected_and_logged(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """Tenant A's session id presented on tenant B is refused, and the attempt is logged."""
    sessions = backend.sessions()
    acme, globex = tenant(), tenant()
    session = await sessions.create("ada", tenant=acme)
    with (
        caplog.at_level(logging.WARNING, logger="tenantry.sessions"),
        pytest.raises(SessionTenantMismatchError),
    ):
        await sessions.get(session.id, tenant=globex)
    assert any(
        str(acme.id) in record.getMessage() and str(globex.id) in record.getMessage()
        for record in caplog.records
    )
    assert session.id not in caplog.text  # the log never holds a usable session id
    assert await sessions.get(session.id, tenant=acme) is not None  # still fine at home


async def test_sessions_end_when_idle(backend: Backend) -> None:
    """An unused session ends after ``idle_ttl``; each use slides the deadline."""
    sessions = backend.sessions(idle_ttl=0.6, absolute_ttl=60)
    with tenant_scope(tenant()):
        used, idle = await sessions.create("ada"), await sessions.create("grace")
        for _ in range(4):
            await asyncio.sleep(0.2)
            assert await sessions.get(used.id) is not None
        assert await sessions.get(idle.id) is None


async def test_sessions_end_at_their_absolute_expiry_however_used(backend: Backend) -> None:
    """A session in constant use still ends ``absolute_ttl`` after it was created."""
    sessions = backend.sessions(idle_ttl=0.5, absolute_ttl=0.8)
    with tenant_scope(tenant()):
        session = await sessions.create("ada")
        assert session.expires_at == pytest.approx(session.created_at + 0.8)
        alive: list[float] = []
        dead: list[float] = []
        while (elapsed := time.time() - session.created_at) < 1.1:
            found = await sessions.get(session.id)
            (alive if found is not None else dead).append(elapsed)
            await asyncio.sleep(0.1)
    assert alive
    assert dead
    assert max(alive) < 0.8 + 0.05  # Redis' own TTL ends it; a few ms of clock slack
    assert min(dead) > 0.8 - 0.05
    assert all(a < d for a in alive for d in dead)


async def test_rotation_on_login_replaces_the_id_and_keeps_the_data(backend: Backend) -> None:
    """Logging in issues a new id with the old session's data; the old id is dead."""
    sessions = backend.sessions()
    with tenant_scope(tenant()):
        anonymous = await sessions.create("anonymous", {"cart": [1, 2]})
        logged_in = await sessions.rotate(anonymous.id, "ada")
        assert logged_in.id != anonymous.id
        assert (logged_in.user_id, logged_in.data) == ("ada", {"cart": [1, 2]})
        assert await sessions.get(anonymous.id) is None
        assert await sessions.get(logged_in.id) is not None
        fresh = await sessions.rotate(None, "grace", {"role": "member"})
        assert fresh.data == {"role": "member"}


async def test_log_out_everywhere_per_user_and_per_tenant(backend: Backend) -> None:
    """Logging a user out everywhere ends only their sessions; a tenant-wide logout ends
    every session of that tenant and none of another's."""
    sessions = backend.sessions()
    acme, globex = tenant(), tenant()
    ada = [await sessions.create("ada", tenant=acme) for _ in range(3)]
    grace = await sessions.create("grace", tenant=acme)
    ada_elsewhere = await sessions.create("ada", tenant=globex)
    await sessions.logout_user("ada", tenant=acme)
    for session in ada:
        assert await sessions.get(session.id, tenant=acme) is None
    assert await sessions.get(grace.id, tenant=acme) is not None
    assert await sessions.get(ada_elsewhere.id, tenant=globex) is not None
    after = await sessions.create("ada", tenant=acme)  # a new login works at once
    assert await sessions.get(after.id, tenant=acme) is not None

    await sessions.logout_tenant(acme)
    assert await sessions.get(grace.id, tenant=acme) is None
    assert await sessions.get(after.id, tenant=acme) is None
    assert await sessions.get(ada_elsewhere.id, tenant=globex) is not None
    await sessions.destroy(ada_elsewhere.id, tenant=globex)
    assert await sessions.get(ada_elsewhere.id, tenant=globex) is None


# -- rate limits ----------------------------------------------------------------------------
async def test_a_burst_is_admitted_then_refused_with_retry_after(backend: Backend) -> None:
    """GCRA: ``burst`` requests at once, the next refused until one emission interval."""
    limiter = backend.limiter(TierLimits(rate=2, burst=5))
    who = tenant()
    decisions = [await limiter.acquire(who) for _ in range(6)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False]
    assert [d.remaining for d in decisions[:5]] == [4, 3, 2, 1, 0]
    for admitted in decisions[:5]:  # the middleware's ASGI form says the same
        assert admitted.raw_headers() == [
            (name.lower().encode(), value.encode()) for name, value in admitted.headers()
        ]
    refused = decisions[5]
    assert refused.reason == "rate"
    assert 0 < refused.retry_after <= 0.5
    headers = dict(refused.headers())
    assert headers["RateLimit-Limit"] == "5"
    assert headers["RateLimit-Remaining"] == "0"
    assert headers["Retry-After"] == "1"
    assert int(headers["RateLimit-Reset"]) in (2, 3)
    await asyncio.sleep(refused.retry_after + 0.05)
    assert (await limiter.acquire(who)).allowed


async def server_view(backend: Backend, conn: Any) -> dict[str, str]:
    """The server's ``CLIENT LIST`` entry for the limiter connection ``conn``, asked on the
    node it talks to (only there: the same local port may be in use towards another node)."""
    client: Any = backend.client
    address = conn.local_address
    if is_cluster(client):
        nodes = [client.get_node(host=conn.address.host, port=conn.address.port)]
    else:
        nodes = [None]
    for node in nodes:
        if node is None:
            listing = await client.execute_command("CLIENT", "LIST")
        else:
            listing = await client.execute_command("CLIENT", "LIST", target_nodes=node)
        text = listing.decode() if isinstance(listing, bytes) else str(listing)
        for line in text.splitlines():
            fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
            if fields.get("addr") == address:
                return fields
    raise AssertionError(f"no server knows a client at {address}")


async def test_one_check_is_one_round_trip(backend: Backend) -> None:
    """A rate-limit check is one command (an EVALSHA) in one write: the limiter counts one
    command and one write, the server received exactly those bytes on the limiter's
    connection, and names EVALSHA as its last command."""
    limiter = backend.limiter(TierLimits(rate=100, burst=100, concurrency=5, quota=1000))
    who = tenant()
    await limiter.acquire(who)  # connects; the script is loaded on first use
    [conn] = limiter.pipeline.connections  # the node that owns the tenant's slot
    stats = limiter.pipeline.stats
    before = await server_view(backend, conn)
    writes, commands, sent = stats.batches, stats.commands, stats.bytes
    decision = await limiter.acquire(who)
    after = await server_view(backend, conn)
    assert decision.allowed
    assert (stats.batches - writes, stats.commands - commands) == (1, 1)
    assert int(after["tot-net-in"]) - int(before["tot-net-in"]) == stats.bytes - sent > 0
    assert after["cmd"] == "evalsha"


async def test_concurrent_checks_share_round_trips_and_stay_exact(backend: Backend) -> None:
    """200 checks at once travel in a few pipelined batches, and exactly ``burst`` of them
    are admitted: batching changes the round trips, not the decisions."""
    limiter = backend.limiter(TierLimits(rate=0.001, burst=37, concurrency=1000))
    who = tenant()
    decisions = await asyncio.gather(*(limiter.acquire(who) for _ in range(200)))
    assert sum(d.allowed for d in decisions) == 37
    assert limiter.pipeline.commands == 200
    assert limiter.pipeline.batches < 20
    for decision in decisions:
        limiter.release(decision)  # queued, not awaited
    await limiter.drain()
    inflight = backend.keys.internal("_rl", "api:inflight", who)
    assert await backend.client.zcard(inflight) == 0


async def test_quota_refuses_once_used_up(backend: Backend) -> None:
    """A window quota admits ``quota`` requests and refuses the rest until the window ends."""
    limiter = backend.limiter(TierLimits(rate=1000, burst=1000, quota=3, quota_window=3600))
    who = tenant()
    decisions = [await limiter.acquire(who) for _ in range(5)]
    assert [d.allowed for d in decisions] == [True, True, True, False, False]
    assert decisions[3].reason == "quota"
    assert 0 < decisions[3].retry_after <= 3600


async def test_concurrency_cap_counts_requests_in_flight(backend: Backend) -> None:
    """At most ``concurrency`` requests hold a slot; a released slot admits the next."""
    limiter = backend.limiter(TierLimits(rate=1000, burst=1000, concurrency=2))
    who = tenant()
    first, second = await limiter.acquire(who), await limiter.acquire(who)
    third = await limiter.acquire(who)
    assert (first.allowed, second.allowed, third.allowed) == (True, True, False)
    assert third.reason == "concurrency"
    limiter.release(first)
    assert (await limiter.acquire(who)).allowed


async def test_a_leaked_concurrency_slot_is_reclaimed(backend: Backend) -> None:
    """Slots never given back (a crashed worker) are reclaimed after the lease."""
    limiter = backend.limiter(
        TierLimits(rate=1000, burst=1000, concurrency=1), concurrency_lease=0.3
    )
    who = tenant()
    assert (await limiter.acquire(who)).allowed
    assert not (await limiter.acquire(who)).allowed
    await asyncio.sleep(0.4)
    assert (await limiter.acquire(who)).allowed


async def test_refusals_consume_nothing(backend: Backend) -> None:
    """A request refused by one limit takes nothing from the others."""
    limiter = backend.limiter(TierLimits(rate=1000, burst=1000, concurrency=1, quota=2))
    who = tenant()
    held = await limiter.acquire(who)
    for _ in range(5):
        assert (await limiter.acquire(who)).reason == "concurrency"
    limiter.release(held)
    assert (await limiter.acquire(who)).allowed  # the quota's second request, not its sixth


async def test_limits_are_per_tenant(backend: Backend) -> None:
    """One tenant using up its limit leaves every other tenant's untouched."""
    limiter = backend.limiter(TierLimits(rate=1, burst=3))
    noisy, quiet = tenant(), tenant()
    for _ in range(10):
        await limiter.acquire(noisy)
    assert not (await limiter.acquire(noisy)).allowed
    assert [(await limiter.acquire(quiet)).allowed for _ in range(3)] == [True] * 3


async def test_tier_limits_are_overridden_by_the_catalog_attribute(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """``attributes.rate_limit`` overrides the tier's limits; a malformed one is logged
    once and ignored."""
    limiter = backend.limiter(TierLimits(rate=1, burst=2))
    generous = tenant(rate_limit={"burst": 6, "rate": 50})
    broken = tenant(rate_limit={"burst": "lots"})
    assert limiter.limits_for(generous) == TierLimits(rate=50, burst=6)
    assert [(await limiter.acquire(generous)).allowed for _ in range(7)] == [True] * 6 + [False]
    with caplog.at_level(logging.WARNING, logger="tenantry.ratelimit"):
        for _ in range(3):
            assert limiter.limits_for(broken) == TierLimits(rate=1, burst=2)
            await limiter.acquire(broken)
    assert len([r for r in caplog.records if broken.slug in r.getMessage()]) == 1


async def test_limits_follow_the_tier(backend: Backend) -> None:
    """Each tier has its own defaults."""
    tiers = MappingProxyType(
        {"free": TierLimits(rate=1, burst=1), "enterprise": TierLimits(rate=1, burst=4)}
    )
    limiter = backend.tiered_limiter(RateLimitSettings(tiers=tiers))
    free, enterprise = tenant("free"), tenant("enterprise")
    assert [(await limiter.acquire(free)).allowed for _ in range(2)] == [True, False]
    assert [(await limiter.acquire(enterprise)).allowed for _ in range(5)] == [True] * 4 + [False]


# -- local token reservation (tenants without a concurrency cap) ------------------------------
async def test_reserved_tokens_admit_requests_without_round_trips(backend: Backend) -> None:
    """Without a concurrency cap a process reserves a batch of tokens in one check and
    admits from it: 1000 requests cost a few dozen round trips, each admitted request
    still carries the ``RateLimit-*`` headers, and Redis counted every token taken."""
    limits = TierLimits(rate=1_000_000, burst=1_000_000, quota=10**9, quota_window=3600)
    limiter = backend.limiter(limits)
    assert limiter.reserve_batch(limits) == 1000
    who = tenant()
    decisions = [await limiter.acquire(who) for _ in range(1000)]
    assert all(d.allowed and not d.degraded for d in decisions)
    assert all(d.lease is None for d in decisions)
    assert limiter.pipeline.commands <= 1000 // 40
    names = [name for name, _ in decisions[-1].headers()]
    assert names == ["RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"]
    await limiter.drain()
    quota = backend.keys.internal("_rl", "api:quota", who)
    counted = int(await backend.client.hget(quota, "n"))
    assert 1000 <= counted <= 1000 + limiter.reserve_batch(limits)


async def test_reservation_is_sized_from_the_limits(backend: Backend) -> None:
    """A tenant with a concurrency cap, or a batch below 2, is checked on every request;
    ``reserve=0`` turns reservation off."""
    limiter = backend.limiter(TierLimits(rate=1000, burst=2000))
    assert limiter.reserve_batch(TierLimits(rate=1000, burst=2000)) == 100
    assert limiter.reserve_batch(TierLimits(rate=100_000, burst=200_000)) == 1000  # at most
    assert limiter.reserve_batch(TierLimits(rate=100, burst=200)) == 10
    assert limiter.reserve_batch(TierLimits(rate=100, burst=20)) == 5
    assert limiter.reserve_batch(TierLimits(rate=10, burst=20)) == 1  # none: below 2
    assert limiter.reserve_batch(TierLimits(rate=1000, burst=2000, concurrency=5)) == 0
    off = backend.limiter(TierLimits(rate=1000, burst=2000), reserve=0)
    assert off.reserve_batch(TierLimits(rate=1000, burst=2000)) == 0
    who = tenant()
    for _ in range(5):
        assert (await off.acquire(who)).allowed
    assert off.pipeline.commands == 5


async def test_processes_reserving_together_never_exceed_the_limit_plus_their_batches(
    backend: Backend,
) -> None:
    """Four limiters (four processes, each its own connection and tokens) hammer one
    tenant for 0.6 s: together they admit no more than GCRA's ``burst + rate * elapsed``
    plus one batch per process (the documented slack), and refuse the rest with ``rate``."""
    limits = TierLimits(rate=200, burst=40)
    limiters = [backend.limiter(limits) for _ in range(4)]
    batch = limiters[0].reserve_batch(limits)
    assert batch == 10
    who = tenant()
    admitted: list[int] = [0]
    refused: list[RateDecision] = []

    async def worker(limiter: RateLimiter, stop: float) -> None:
        while time.monotonic() < stop:
            decision = await limiter.acquire(who)
            if decision.allowed:
                admitted[0] += 1
            else:
                refused.append(decision)
                await asyncio.sleep(0)

    start = time.monotonic()
    stop = start + 0.6
    await asyncio.gather(*(worker(lim, stop) for lim in limiters for _ in range(8)))
    elapsed = time.monotonic() - start
    assert admitted[0] <= limits.burst + limits.rate * elapsed + len(limiters) * batch
    assert admitted[0] >= limits.burst  # the burst itself is never lost
    assert refused
    assert {d.reason for d in refused} == {"rate"}
    assert all(d.retry_after > 0 and d.remaining == 0 for d in refused)


async def test_reservations_never_exceed_the_quota(backend: Backend) -> None:
    """Tokens are counted in Redis when reserved: three processes together admit at most
    ``quota`` requests, then every one is refused with ``quota``."""
    limits = TierLimits(rate=1000, burst=2000, quota=250, quota_window=3600)  # batches of 100
    limiters = [backend.limiter(limits) for _ in range(3)]
    who = tenant()
    decisions = [await limiters[i % 3].acquire(who) for i in range(400)]
    admitted = sum(d.allowed for d in decisions)
    assert 250 - 3 * limiters[0].reserve_batch(limits) <= admitted <= 250
    assert {d.reason for d in decisions if not d.allowed} == {"quota"}
    assert not (await limiters[0].acquire(who)).allowed


async def test_unspent_reserved_tokens_expire(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tokens not spent ``RESERVE_TTL`` s after their reservation are dropped: the next
    request reserves again (one more round trip) instead of spending them."""
    monkeypatch.setattr(ratelimit, "RESERVE_TTL", 0.2)
    limiter = backend.limiter(TierLimits(rate=1_000_000, burst=1_000_000))
    who = tenant()
    assert (await limiter.acquire(who)).allowed
    assert (await limiter.acquire(who)).allowed
    assert limiter.pipeline.commands == 1
    await asyncio.sleep(0.3)
    assert (await limiter.acquire(who)).allowed
    assert limiter.pipeline.commands == 2


async def test_a_limit_change_drops_reserved_tokens(backend: Backend) -> None:
    """Tokens reserved under old limits are not spent under new ones: a tenant whose
    catalog override now sets a concurrency cap is checked (and capped) at once."""
    limiter = backend.limiter(TierLimits(rate=1_000_000, burst=1_000_000))
    who = tenant()
    assert (await limiter.acquire(who)).allowed  # reserves a batch
    capped = replace(who, attributes={"rate_limit": {"concurrency": 1}})
    held = await limiter.acquire(capped)
    assert held.allowed
    assert held.lease is not None
    refused = await limiter.acquire(capped)
    assert (refused.allowed, refused.reason) == (False, "concurrency")


# -- leased concurrency slots (tenants with a cap) --------------------------------------------
def inflight_key(backend: Backend, who: TenantContext) -> str:
    return backend.keys.internal("_rl", "api:inflight", who.id)


async def test_leased_slots_admit_capped_requests_without_round_trips(backend: Backend) -> None:
    """With a cap of 40 a process leases slots by tens (with its tokens): 300 requests cost
    a few dozen round trips, each carries the ``RateLimit-*`` headers, and Redis counts the
    leased slots as in flight; ``drain`` gives the idle ones back."""
    limits = TierLimits(rate=1_000_000, burst=1_000_000, concurrency=40)
    limiter = backend.limiter(limits)
    assert (limiter.reserve_batch(limits), limiter.lease_size(limits)) == (1000, 10)
    who = tenant()
    for _ in range(300):
        decision = await limiter.acquire(who)
        assert decision.allowed
        assert not decision.degraded
        assert decision.lease is None
        assert decision.slot is not None
        limiter.release(decision)
    assert limiter.pipeline.commands <= 300 // 10
    names = [name for name, _ in decision.headers()]
    assert names == ["RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"]
    assert 1 <= await backend.client.zcard(inflight_key(backend, who)) <= 10 + 1
    await limiter.drain()
    assert await backend.client.zcard(inflight_key(backend, who)) == 0


async def test_lease_size_follows_the_cap(backend: Backend) -> None:
    """A quarter of the cap, at most 100; a cap below 8 (a lease below 2) keeps the check
    per request."""
    limiter = backend.limiter(TierLimits(rate=1000, burst=2000))
    assert limiter.lease_size(TierLimits(rate=1000, burst=2000, concurrency=200)) == 50
    assert limiter.lease_size(TierLimits(rate=1000, burst=2000, concurrency=8)) == 2
    assert limiter.reserve_batch(TierLimits(rate=1000, burst=2000, concurrency=8)) == 100
    assert limiter.reserve_batch(TierLimits(rate=1000, burst=2000, concurrency=7)) == 0
    assert limiter.lease_size(TierLimits(rate=1000, burst=2000)) == 0
    small = TierLimits(rate=1000, burst=2000, concurrency=7)
    checked = backend.limiter(small)
    who = tenant()
    decision = await checked.acquire(who)
    assert decision.lease is not None
    assert decision.slot is None
    checked.release(decision)


async def test_processes_leasing_slots_never_exceed_the_cap(backend: Backend) -> None:
    """Four limiters (four processes) hammer one capped tenant with requests held a few
    milliseconds: at no moment are more than ``concurrency`` requests admitted and in flight
    together, Redis never counts more, and the excess is refused with ``concurrency``."""
    limits = TierLimits(rate=1_000_000, burst=1_000_000, concurrency=12)
    limiters = [backend.limiter(limits) for _ in range(4)]
    assert limiters[0].lease_size(limits) == 3
    who = tenant()
    key = inflight_key(backend, who)
    state = {"now": 0, "peak": 0, "admitted": 0, "redis_peak": 0}
    refused: list[RateDecision] = []

    async def worker(limiter: RateLimiter, stop: float, n: int) -> None:
        while time.monotonic() < stop:
            decision = await limiter.acquire(who)
            if not decision.allowed:
                refused.append(decision)
                await asyncio.sleep(0.001)
                continue
            state["now"] += 1
            state["admitted"] += 1
            state["peak"] = max(state["peak"], state["now"])
            try:
                await asyncio.sleep(0.001 * (n % 4))
            finally:
                state["now"] -= 1
                limiter.release(decision)

    async def watch(stop: float) -> None:
        while time.monotonic() < stop:
            state["redis_peak"] = max(state["redis_peak"], await backend.client.zcard(key))
            await asyncio.sleep(0.002)

    stop = time.monotonic() + 0.8
    await asyncio.gather(watch(stop), *(worker(lim, stop, n) for lim in limiters for n in range(6)))
    assert state["peak"] <= limits.concurrency
    assert state["redis_peak"] <= limits.concurrency
    assert state["admitted"] > 100
    assert refused
    assert {d.reason for d in refused} == {"concurrency"}
    assert all(d.retry_after > 0 for d in refused)
    assert sum(lim.pipeline.commands for lim in limiters) < state["admitted"] + len(refused)


async def test_idle_leased_slots_are_given_back(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Slots a process leased and no longer uses go back to Redis ``LEASE_IDLE`` s after
    its last request: another process can then hold the whole cap."""
    monkeypatch.setattr(ratelimit, "LEASE_IDLE", 0.1)
    limits = TierLimits(rate=1_000_000, burst=1_000_000, concurrency=8)
    first, second = backend.limiter(limits), backend.limiter(limits)
    who = tenant()
    limiter_release = await first.acquire(who)
    first.release(limiter_release)
    assert await backend.client.zcard(inflight_key(backend, who)) == 2  # a lease of 2
    held = [await second.acquire(who) for _ in range(8)]
    assert [d.allowed for d in held] == [True] * 6 + [False] * 2  # under-admission
    assert {d.reason for d in held[6:]} == {"concurrency"}
    await asyncio.sleep(0.3)
    assert await backend.client.zcard(inflight_key(backend, who)) == 6  # second's requests
    more = [await second.acquire(who) for _ in range(4)]
    assert [d.allowed for d in more] == [True] * 2 + [False] * 2
    for decision in [*held, *more]:
        second.release(decision)


async def test_a_vanished_process_frees_its_leased_slots_after_the_lease(
    backend: Backend,
) -> None:
    """A process that dies holding leased slots (never gives them back) loses them after
    ``concurrency_lease`` s, like any request's slot: the cap is whole again."""
    limits = TierLimits(rate=1_000_000, burst=1_000_000, concurrency=8)
    crashed = backend.limiter(limits, concurrency_lease=0.4)
    survivor = backend.limiter(limits, concurrency_lease=0.4)
    who = tenant()
    held = [await crashed.acquire(who) for _ in range(3)]
    assert all(d.allowed for d in held)
    for reserve in list(crashed._leasing):  # as if the process were gone: nothing runs
        assert reserve.timer is not None
        reserve.timer.cancel()
    crashed._leasing.clear()
    leaked = await backend.client.zcard(inflight_key(backend, who))
    assert 3 <= leaked <= 3 + 2
    got = [await survivor.acquire(who) for _ in range(8)]
    assert sum(d.allowed for d in got) == 8 - leaked
    for decision in got:
        survivor.release(decision)
    await asyncio.sleep(0.6)
    await survivor.drain()  # its own idle slots go back; the dead one's have expired
    assert await backend.client.zcard(inflight_key(backend, who)) == 0
    again = [await survivor.acquire(who) for _ in range(9)]
    assert [d.allowed for d in again] == [True] * 8 + [False]


async def test_a_limit_change_drops_leased_slots(backend: Backend) -> None:
    """Slots leased under old limits go back when the limits change (those backing
    requests in flight when they end), and the new cap is enforced against everything
    Redis still counts."""
    limiter = backend.limiter(TierLimits(rate=1_000_000, burst=1_000_000, concurrency=40))
    who = tenant()
    key = inflight_key(backend, who)
    running = await limiter.acquire(who)
    assert running.slot is not None
    assert await backend.client.zcard(key) == 10  # a lease of 10, one slot in use
    old_members = set(await backend.client.zrange(key, 0, -1))
    changed = replace(who, attributes={"rate_limit": {"concurrency": 8}})
    fresh = await limiter.acquire(changed)  # retires the old lease, leases under cap 8
    assert fresh.allowed
    assert fresh.slot is not None
    assert fresh.slot is not running.slot
    await limiter.drain()
    members = set(await backend.client.zrange(key, 0, -1))
    assert len(members & old_members) == 1  # only the running request's slot is left
    limiter.release(running)
    await limiter.drain()
    assert not set(await backend.client.zrange(key, 0, -1)) & old_members
    held = [fresh, *[await limiter.acquire(changed) for _ in range(8)]]
    assert [d.allowed for d in held] == [True] * 8 + [False]
    for decision in held:
        limiter.release(decision)


async def test_a_large_cap_leases_in_chunks(backend: Backend) -> None:
    """A cap in the thousands: a process holding 1,500 requests leases (and gives back)
    its slots in one script run each, chunked within Lua's limits."""
    limits = TierLimits(rate=1_000_000, burst=1_000_000, concurrency=4000)
    limiter = backend.limiter(limits)
    assert limiter.lease_size(limits) == 100
    who = tenant()
    held = [await limiter.acquire(who) for _ in range(1500)]
    assert all(d.allowed for d in held)
    assert all(d.slot is not None for d in held)
    assert 1500 <= await backend.client.zcard(inflight_key(backend, who)) <= 1500 + 100
    for decision in held:
        limiter.release(decision)
    await limiter.drain()
    assert await backend.client.zcard(inflight_key(backend, who)) == 0
