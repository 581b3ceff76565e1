"""The parts of tenantry.cache that need no tenant data: URL parsing and the client factory,
the key builder, settings, and the devstack's Valkey cluster."""

from __future__ import annotations

import subprocess
import sys
from uuid import UUID

import pytest
from redis.asyncio import ConnectionPool, Redis, RedisCluster
from redis.utils import HIREDIS_AVAILABLE

from tenantry import NoTenantContextError, TenantContext, tenant_scope
from tenantry.cache import (
    InvalidCacheKeyError,
    KeyBuilder,
    create_redis_client,
    parse_redis_url,
)
from tenantry.errors import ConfigurationError
from tenantry.settings import (
    DEFAULT_TIER_LIMITS,
    RateLimitSettings,
    RedisSettings,
    Settings,
    TierLimits,
)

TENANT = TenantContext(
    id=UUID("3f1e5791-2948-4abc-8412-6fdc0bd3f3a7"), slug="acme", tier="pro", schema="t_acme"
)


# -- URLs and the client factory ------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "cluster", "nodes", "node_url"),
    [
        ("redis://cache:6380/2", False, [("cache", 6380)], "redis://cache:6380/2"),
        ("rediss://u:p%40ss@cache/0", False, [("cache", 6379)], "rediss://u:p%40ss@cache:6379/0"),
        ("redis+cluster://a:7101", True, [("a", 7101)], "redis://a:7101"),
        (
            "redis://a:7101,b:7102,c",
            True,
            [("a", 7101), ("b", 7102), ("c", 6379)],
            "redis://a:7101",
        ),
        ("rediss+cluster://:pw@[::1]:7000", True, [("::1", 7000)], "rediss://:pw@[::1]:7000"),
    ],
)
def test_one_url_names_a_node_or_a_cluster(
    url: str, cluster: bool, nodes: list[tuple[str, int]], node_url: str
) -> None:
    """A seed list or a ``+cluster`` scheme means a cluster; credentials are kept."""
    endpoint = parse_redis_url(url)
    assert endpoint.cluster is cluster
    assert list(endpoint.nodes) == nodes
    assert endpoint.node_url(0) == node_url


@pytest.mark.parametrize(
    "url",
    [
        "http://cache:6379",
        "redis://",
        "redis://cache:notaport",
        "redis://cache:70000",
        "redis+cluster://a:7101/3",
        "redis://a:1,b:2/1",
    ],
)
def test_malformed_urls_are_configuration_errors(url: str) -> None:
    """A URL the factory cannot use fails with a message naming REDIS_URL."""
    with pytest.raises(ConfigurationError, match="REDIS_URL"):
        parse_redis_url(url)


async def test_a_single_node_client_is_pooled_and_parses_with_hiredis(redis_url: str) -> None:
    """One node: a bounded pool, short timeouts, and the hiredis reply parser."""
    assert HIREDIS_AVAILABLE
    client = create_redis_client(RedisSettings(url=redis_url, max_connections=7))
    try:
        assert isinstance(client, Redis)
        pool = client.connection_pool
        assert isinstance(pool, ConnectionPool)
        assert pool.max_connections == 7 + 8  # headroom over the guard's bound
        assert pool.connection_kwargs["socket_timeout"] == 0.5
        assert await client.ping()
        connection = await pool.get_connection()
        try:
            assert "Hiredis" in type(connection._parser).__name__
        finally:
            await pool.release(connection)
    finally:
        await client.aclose()


async def test_a_seed_list_client_discovers_the_whole_cluster(redis_cluster_url: str) -> None:
    """From the seeds, the cluster client finds three masters covering every slot."""
    client = create_redis_client(RedisSettings(url=redis_cluster_url))
    try:
        assert isinstance(client, RedisCluster)
        await client.initialize()
        primaries = client.get_primaries()
        assert len(primaries) == 3
        for node in primaries:
            connection = node.acquire_connection()
            try:
                assert "Hiredis" in type(connection._parser).__name__
            finally:
                node.release(connection)
    finally:
        await client.aclose()


# -- keys -----------------------------------------------------------------------------------
def test_keys_follow_the_tenant_hash_tag_layout() -> None:
    """``t:{<tenant_id>}:<namespace>:<key>``, after an optional deployment prefix."""
    keys = KeyBuilder()
    assert keys.key("departments", 7, TENANT) == f"t:{{{TENANT.id}}}:departments:7"
    assert (
        KeyBuilder("prod:").key("a.b-c_d", "x:y", TENANT) == f"prod:t:{{{TENANT.id}}}:a.b-c_d:x:y"
    )
    with tenant_scope(TENANT):
        assert keys.key("departments", "list") == f"t:{{{TENANT.id}}}:departments:list"
    assert keys.platform("session-owner", "abc") == "p:session-owner:abc"


def test_keys_need_a_tenant() -> None:
    """With no tenant bound and none given, building a key fails closed."""
    with pytest.raises(NoTenantContextError):
        KeyBuilder().key("departments", 1)


@pytest.mark.parametrize("namespace", ["", "_gen", "Departments", "a:b", "a b", "x" * 65, "é"])
def test_product_namespaces_cannot_collide_with_tenantrys_own(namespace: str) -> None:
    """Product namespaces are lower-case words; ``_`` names are reserved for tenantry."""
    with pytest.raises(InvalidCacheKeyError):
        KeyBuilder().key(namespace, 1, TENANT)


def test_internal_namespaces_start_with_an_underscore() -> None:
    """tenantry's own namespaces cannot be spelled like a product namespace."""
    assert KeyBuilder().internal("_lock", "k", TENANT).endswith(":_lock:k")
    with pytest.raises(InvalidCacheKeyError):
        KeyBuilder().internal("lock", "k", TENANT)


def test_long_keys_are_hashed_and_prefixes_cannot_hold_hash_tags() -> None:
    """Keys built from request input stay bounded; a prefix cannot move the hash tag."""
    long_key = KeyBuilder().key("search", "q" * 5000, TENANT)
    assert len(long_key) < 150
    assert long_key == KeyBuilder().key("search", "q" * 5000, TENANT)
    assert long_key != KeyBuilder().key("search", "q" * 4999, TENANT)
    with pytest.raises(InvalidCacheKeyError):
        KeyBuilder("{evil}")


# -- settings -------------------------------------------------------------------------------
def test_cache_session_and_rate_limit_settings_come_from_the_environment() -> None:
    """Every variable the README lists reaches its setting."""
    settings = Settings.from_env(
        {
            "REDIS_URL": "redis+cluster://a:1,b:2",
            "TENANTRY_REDIS_MAX_CONNECTIONS": "16",
            "TENANTRY_REDIS_TIMEOUT": "0.25",
            "TENANTRY_REDIS_KEY_PREFIX": "staging:",
            "TENANTRY_REDIS_RETRY_INTERVAL": "2",
            "TENANTRY_REDIS_WARN_INTERVAL": "60",
            "TENANTRY_CACHE_TTL": "120",
            "TENANTRY_CACHE_LOCK_TTL": "3",
            "TENANTRY_SESSION_COOKIE": "sid",
            "TENANTRY_SESSION_IDLE_TTL": "600",
            "TENANTRY_SESSION_ABSOLUTE_TTL": "7200",
            "TENANTRY_SESSION_COOKIE_SECURE": "false",
            "TENANTRY_RATE_LIMIT": "on",
            "TENANTRY_RATE_LIMIT_FAIL": "closed",
            "TENANTRY_RATE_LIMIT_FREE": "rate=2, burst=4",
            "TENANTRY_RATE_LIMIT_ENTERPRISE": "concurrency=0,quota=5000000,quota_window=2592000",
            "TENANTRY_RATE_LIMIT_LEASE": "15",
            "TENANTRY_RATE_LIMIT_RESERVE": "0.05",
        }
    )
    redis, cache, sessions, limits = (
        settings.redis,
        settings.cache,
        settings.sessions,
        settings.rate_limit,
    )
    assert (redis.max_connections, redis.socket_timeout, redis.connect_timeout) == (16, 0.25, 0.25)
    assert (redis.key_prefix, redis.retry_interval, redis.warn_interval) == ("staging:", 2, 60)
    assert (cache.default_ttl, cache.lock_ttl) == (120, 3)
    assert (sessions.cookie_name, sessions.idle_ttl, sessions.absolute_ttl) == ("sid", 600, 7200)
    assert sessions.cookie_secure is False
    assert (limits.enabled, limits.fail_open, limits.concurrency_lease) == (True, False, 15)
    assert limits.reserve == 0.05
    assert RateLimitSettings().reserve == 0.1
    assert limits.tiers["free"] == TierLimits(rate=2, burst=4, concurrency=10, quota=100_000)
    assert limits.tiers["pro"] == DEFAULT_TIER_LIMITS["pro"]
    enterprise = limits.tiers["enterprise"]
    assert (enterprise.concurrency, enterprise.quota, enterprise.quota_window) == (
        0,
        5_000_000,
        2_592_000,
    )


def test_the_defaults_fail_open_with_tier_limits() -> None:
    """Unconfigured: rate limiting on, failing open, free < pro < enterprise."""
    limits = Settings.from_env({}).rate_limit
    assert limits.enabled
    assert limits.fail_open
    rates = [limits.tiers[tier].rate for tier in ("free", "pro", "enterprise")]
    assert rates == sorted(rates)
    assert len(set(rates)) == 3


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TENANTRY_RATE_LIMIT_FAIL", "sideways"),
        ("TENANTRY_RATE_LIMIT_FREE", "rate=fast"),
        ("TENANTRY_RATE_LIMIT_FREE", "speed=3"),
        ("TENANTRY_RATE_LIMIT_PRO", "burst=0"),
        ("TENANTRY_RATE_LIMIT_PRO", "burst=2.5"),
        ("TENANTRY_RATE_LIMIT_PRO", "rate"),
        ("TENANTRY_REDIS_TIMEOUT", "soon"),
        ("TENANTRY_REDIS_TIMEOUT", "-1"),
        ("TENANTRY_RATE_LIMIT", "maybe"),
    ],
)
def test_bad_limit_settings_name_the_variable(name: str, value: str) -> None:
    """A malformed value fails at startup with the variable's name in the message."""
    with pytest.raises(ConfigurationError, match=name):
        Settings.from_env({name: value})


def test_overrides_accept_numbers_and_refuse_nonsense() -> None:
    """Catalog overrides are merged field by field and validated like the settings."""
    base = TierLimits(rate=10, burst=20)
    assert base.merged({"rate": 2.5, "concurrency": 3}) == TierLimits(
        rate=2.5, burst=20, concurrency=3
    )
    for bad in ({"burst": True}, {"burst": [1]}, {"rate": 0}, {"quota": -1}, {"nope": 1}):
        with pytest.raises(ConfigurationError):
            base.merged(bad)


# -- devstack -------------------------------------------------------------------------------
def test_scripts_services_reports_the_cluster(redis_cluster_url: str) -> None:
    """``scripts/services status valkey-cluster`` sees the running three-master cluster."""
    result = subprocess.run(
        [sys.executable, "-m", "tenantry.devstack", "status", "valkey-cluster"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"valkey-cluster: running at {redis_cluster_url}"
