"""Errors of :mod:`tenantry.cache`: keys, cache-aside, sessions and rate limits.

They map to HTTP only in :mod:`tenantry.web.errors`.
"""

from __future__ import annotations

from tenantry.errors import TenantryError


class CacheError(TenantryError):
    """Base class of everything :mod:`tenantry.cache` raises deliberately."""


class InvalidCacheKeyError(CacheError, ValueError):
    """A namespace or key cannot be used; the message says which rule it breaks."""


class RedisUnavailableError(CacheError):
    """Redis did not answer (or is known to be down and was not asked).

    The cache answers this by calling the loader directly; callers of the lower-level
    operations decide for themselves.
    """


class SessionUnavailableError(RedisUnavailableError):
    """The session store cannot be reached (HTTP 503): sessions need Redis."""


class SessionTenantMismatchError(CacheError):
    """A session created for one tenant was presented on another (HTTP 403)."""


class RateLimitUnavailableError(RedisUnavailableError):
    """Redis is down and rate limiting is configured to fail closed (HTTP 503)."""
