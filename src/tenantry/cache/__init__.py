"""Redis for hot data, sessions and limits: tenant-scoped keys, cache-aside with O(1)
invalidation, server-side sessions, per-tenant rate limits, quotas and concurrency caps,
and graceful degradation when Redis is down.

``Platform`` builds one of each from the settings (``platform.cache``,
``platform.sessions``, ``platform.rate_limiter``); they share one client and one
:class:`RedisGuard`.
"""

from tenantry.cache.cache import CacheStats, JsonSerializer, Serializer, TenantCache
from tenantry.cache.client import (
    RedisClient,
    RedisEndpoint,
    create_redis_client,
    is_cluster,
    parse_redis_url,
)
from tenantry.cache.degradation import RedisGuard
from tenantry.cache.errors import (
    CacheError,
    InvalidCacheKeyError,
    RateLimitUnavailableError,
    RedisUnavailableError,
    SessionTenantMismatchError,
    SessionUnavailableError,
)
from tenantry.cache.keys import KeyBuilder
from tenantry.cache.ratelimit import RateDecision, RateLimiter
from tenantry.cache.sessions import Session, SessionStore

__all__ = [
    "CacheError",
    "CacheStats",
    "InvalidCacheKeyError",
    "JsonSerializer",
    "KeyBuilder",
    "RateDecision",
    "RateLimitUnavailableError",
    "RateLimiter",
    "RedisClient",
    "RedisEndpoint",
    "RedisGuard",
    "RedisUnavailableError",
    "Serializer",
    "Session",
    "SessionStore",
    "SessionTenantMismatchError",
    "SessionUnavailableError",
    "TenantCache",
    "create_redis_client",
    "is_cluster",
    "parse_redis_url",
]
