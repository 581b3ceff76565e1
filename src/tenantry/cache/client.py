"""The Redis client factory: one URL for a single node or a Redis Cluster.

* ``redis://[user:password@]host:port/db`` or ``rediss://`` (TLS): one node, through a
  bounded connection pool.
* ``redis+cluster://host:port[,host:port...]`` (or ``rediss+cluster://``), or any URL whose
  host part is a comma-separated seed list: a Redis Cluster, discovered from the seeds.

Replies are parsed by hiredis (``redis[hiredis]`` is a dependency; redis-py picks it up by
itself). Commands are bounded by ``socket_timeout`` and retried once, at once, on a fresh
connection (a pooled socket may have died with a server restart); never with redis-py's
default backoff, which would make a request wait seconds for a server that is down.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias
from urllib.parse import urlsplit

from redis.asyncio import ConnectionPool, Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.connection import SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from tenantry.errors import ConfigurationError
from tenantry.settings import RedisSettings

RedisClient: TypeAlias = Redis | RedisCluster
"""What :func:`create_redis_client` returns: a single-node or a cluster client."""

_SCHEMES = ("redis", "rediss")


@dataclass(frozen=True, slots=True)
class RedisEndpoint:
    """A parsed Redis URL: single node or cluster seeds, and the shared connection options."""

    scheme: str
    cluster: bool
    nodes: tuple[tuple[str, int], ...]
    userinfo: str = ""
    path: str = ""
    query: str = ""

    def node_url(self, index: int = 0) -> str:
        """A plain single-node URL for one of the nodes (credentials and options kept)."""
        host, port = self.nodes[index]
        netloc = (self.userinfo + "@" if self.userinfo else "") + _join_host(host, port)
        return f"{self.scheme}://{netloc}{self.path}" + (f"?{self.query}" if self.query else "")


def parse_redis_url(url: str) -> RedisEndpoint:
    """Parse a single-node or cluster URL (see the module docstring)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    cluster = scheme.endswith("+cluster")
    scheme = scheme.removesuffix("+cluster")
    if scheme not in _SCHEMES:
        raise ConfigurationError(
            f"REDIS_URL must start with redis://, rediss://, redis+cluster:// or "
            f"rediss+cluster://, got {url.split('://', 1)[0]!r}"
        )
    userinfo, _, hosts = parts.netloc.rpartition("@")
    seeds = [seed.strip() for seed in hosts.split(",") if seed.strip()]
    if not seeds:
        raise ConfigurationError("REDIS_URL names no host")
    nodes = tuple(_split_host(seed) for seed in seeds)
    cluster = cluster or len(nodes) > 1
    if cluster and parts.path.strip("/") not in ("", "0"):
        raise ConfigurationError(
            "a Redis Cluster has only database 0; drop the /<db> from REDIS_URL"
        )
    return RedisEndpoint(scheme, cluster, nodes, userinfo, parts.path, parts.query)


def create_redis_client(settings: RedisSettings) -> RedisClient:
    """A pooled client for ``settings.url``: :class:`~redis.asyncio.Redis` for one node,
    :class:`~redis.asyncio.RedisCluster` for a cluster. Nothing connects until first use."""
    if not settings.url:
        raise ConfigurationError("REDIS_URL is not set")
    endpoint = parse_redis_url(settings.url)
    options: dict[str, Any] = {
        "socket_timeout": settings.socket_timeout or None,
        "socket_connect_timeout": settings.connect_timeout or None,
        "retry": Retry(NoBackoff(), 1),
    }
    if endpoint.cluster:
        kwargs: dict[str, Any] = dict(parse_url(endpoint.node_url(0)))
        if kwargs.pop("connection_class", None) is SSLConnection:
            kwargs["ssl"] = True
        kwargs.pop("host", None)
        kwargs.pop("port", None)
        kwargs.pop("db", None)
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in endpoint.nodes],
            max_connections=settings.max_connections + 8,
            **kwargs,
            **options,
        )
    # tenantry's calls queue in their RedisGuard (max_connections in flight), so the pool
    # never runs dry for them; the headroom is for direct calls (health checks).
    pool = ConnectionPool.from_url(
        endpoint.node_url(0), max_connections=settings.max_connections + 8, **options
    )
    return Redis.from_pool(pool)


def is_cluster(client: RedisClient) -> bool:
    """Whether ``client`` talks to a Redis Cluster."""
    return isinstance(client, RedisCluster)


def _split_host(seed: str) -> tuple[str, int]:
    if seed.startswith("["):
        host, _, rest = seed[1:].partition("]")
        port = rest.removeprefix(":")
    else:
        host, _, port = seed.rpartition(":") if ":" in seed else (seed, "", "")
    if not host:
        raise ConfigurationError(f"REDIS_URL has an empty host in {seed!r}")
    try:
        number = int(port) if port else 6379
    except ValueError:
        raise ConfigurationError(f"REDIS_URL has a bad port in {seed!r}") from None
    if not 0 < number < 65536:
        raise ConfigurationError(f"REDIS_URL has a bad port in {seed!r}")
    return host, number


def _join_host(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
