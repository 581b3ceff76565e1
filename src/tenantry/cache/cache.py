"""Tenant-scoped cache-aside with stampede protection and O(1) invalidation.

Every entry lives at ``t:{<tenant_id>}:<namespace>:<key>`` and is stored with the
*generation stamp* current when its value was read from the source: the tenant's
generation and the namespace's. A read (one ``EVALSHA``) returns the entry only if its
stamp still matches, so bumping a generation (one ``INCR``) invalidates a whole namespace
or a whole tenant at once, in any cluster, without ``KEYS`` or ``FLUSHDB``, and leaves
every other tenant alone. Stale entries simply age out with their TTL.

On a miss the same script takes a short lease on the key: one caller recomputes while
the others, in any process, wait for its value. Within one process concurrent misses on
a key also share one Redis round trip. A value is stored only if its lease is still held;
invalidating a key deletes the lease, and a lease taken under older generations is taken
over by the next caller, so a recompute that raced with a write never caches what the
write replaced, and callers after the write do not wait for it.

When Redis is unavailable the loader is simply called (cache bypassed); invalidations
that could not be recorded are replayed, tenant-wide, once Redis is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any, ParamSpec, Protocol, TypeVar
from uuid import UUID

from tenantry.cache.client import RedisClient
from tenantry.cache.degradation import RedisGuard
from tenantry.cache.errors import InvalidCacheKeyError, RedisUnavailableError
from tenantry.cache.keys import NAMESPACE, KeyBuilder, KeyPart, TenantRef, tenant_id_of
from tenantry.settings import CacheSettings

P = ParamSpec("P")
T = TypeVar("T")
logger = logging.getLogger("tenantry.cache")

MAX_PENDING_TENANTS = 100_000

# KEYS: entry, tenant generation, namespace generation, lease.  ARGV: lease token ('' for
# no lease), lease ms. -> {1, value} | {0, stamp, got_lease}
# A lease is "<token>|<stamp>": one taken under older generations is computing a value that
# is already stale, so a caller under the current generations takes it over.
_LOOKUP = """
local stamp = (redis.call('GET', KEYS[2]) or '0') .. ':'
              .. (redis.call('GET', KEYS[3]) or '0') .. ':'
local value = redis.call('GET', KEYS[1])
if value and string.sub(value, 1, #stamp) == stamp then
  return {1, string.sub(value, #stamp + 1)}
end
if ARGV[1] == '' then return {0, stamp, 0} end
local holder = redis.call('GET', KEYS[4])
if not holder or string.sub(holder, -#stamp - 1) ~= '|' .. stamp then
  redis.call('SET', KEYS[4], ARGV[1] .. '|' .. stamp, 'PX', ARGV[2])
  return {0, stamp, 1}
end
return {0, stamp, 0}
"""
# KEYS: entry, lease.  ARGV: lease, stamped value, ttl ms.  Stores only under the lease.
_STORE = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('DEL', KEYS[2])
return 1
"""
# KEYS: lease.  ARGV: lease.  Gives a lease back after a failed recompute.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# KEYS: entry, tenant generation, namespace generation.  ARGV: value, ttl ms.
_PUT = """
local stamp = (redis.call('GET', KEYS[2]) or '0') .. ':'
              .. (redis.call('GET', KEYS[3]) or '0') .. ':'
redis.call('SET', KEYS[1], stamp .. ARGV[1], 'PX', ARGV[2])
return 1
"""


class Serializer(Protocol):
    """How values become bytes in Redis and back (extension point; JSON by default)."""

    def dumps(self, value: Any) -> bytes:
        """Encode ``value``."""

    def loads(self, data: bytes) -> Any:
        """Decode what :meth:`dumps` produced."""


class JsonSerializer:
    """Compact JSON; dates, UUIDs, decimals and pydantic models become JSON values."""

    def dumps(self, value: Any) -> bytes:
        """Encode ``value`` as UTF-8 JSON."""
        return json.dumps(value, separators=(",", ":"), default=_json_default).encode()

    def loads(self, data: bytes) -> Any:
        """Decode JSON."""
        return json.loads(data)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, UUID | Decimal):
        return str(value)
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    raise TypeError(f"cannot cache a {type(value).__name__}: not JSON-serialisable")


@dataclass(slots=True)
class CacheStats:
    """Counters of one cache instance (since it was created)."""

    hits: int = 0
    misses: int = 0
    loads: int = 0
    bypassed: int = 0


class TenantCache:
    """Cache-aside for the current tenant's hot data (see the module docstring).

    With ``redis=None`` (Redis not configured) every read calls its loader: code written
    against the cache runs unchanged with or without Redis.
    """

    def __init__(
        self,
        redis: RedisClient | None,
        *,
        guard: RedisGuard | None = None,
        keys: KeyBuilder | None = None,
        settings: CacheSettings | None = None,
        serializer: Serializer | None = None,
    ) -> None:
        settings = settings or CacheSettings()
        self.redis = redis
        self.guard = guard or RedisGuard()
        self.keys = keys or KeyBuilder()
        self.default_ttl = settings.default_ttl
        self.lock_ttl = settings.lock_ttl
        self.serializer: Serializer = serializer or JsonSerializer()
        self.stats = CacheStats()
        self._inflight: dict[str, asyncio.Task[Any]] = {}
        self._pending: set[UUID] = set()
        if redis is not None:
            self._lookup = redis.register_script(_LOOKUP)
            self._store = redis.register_script(_STORE)
            self._release = redis.register_script(_RELEASE)
            self._put = redis.register_script(_PUT)

    # -- reads ------------------------------------------------------------------------------
    async def get_or_load(
        self,
        namespace: str,
        key: KeyPart,
        loader: Callable[[], Awaitable[Any]],
        *,
        ttl: float | None = None,
        tenant: TenantRef = None,
    ) -> Any:
        """The cached value of ``key``, or ``await loader()`` stored for ``ttl`` seconds.

        Values go through the serializer both ways, so a hit and a miss return the same
        shape (JSON data by default). Concurrent misses on one key, in this process or
        any other, run ``loader`` once.
        """
        tenant_id = tenant_id_of(tenant)
        entry = self.keys.key(namespace, key, tenant_id)
        if self.redis is None:
            return await self._bypass(loader)
        task = self._inflight.get(entry)
        if task is None:
            task = asyncio.create_task(
                self._fetch(namespace, key, entry, tenant_id, loader, ttl),
                name=f"tenantry-cache:{entry}",
            )
            self._inflight[entry] = task
            task.add_done_callback(functools.partial(self._landed, entry))
        return await asyncio.shield(task)

    def _landed(self, entry: str, task: asyncio.Task[Any]) -> None:
        if self._inflight.get(entry) is task:
            del self._inflight[entry]
        if not task.cancelled():
            task.exception()  # waiters re-raise it; nobody else must be warned about it

    async def _fetch(
        self,
        namespace: str,
        key: KeyPart,
        entry: str,
        tenant_id: UUID,
        loader: Callable[[], Awaitable[Any]],
        ttl: float | None,
    ) -> Any:
        await self._replay()
        lease = self.keys.internal("_lock", f"{namespace}:{key}", tenant_id)
        keys = [entry, *self._generations(namespace, tenant_id), lease]
        token = secrets.token_hex(8)
        lease_ms = max(1, int(self.lock_ttl * 1000))
        give_up = time.monotonic() + 2 * self.lock_ttl
        delay = 0.002
        while True:
            try:
                reply = await self.guard.run(
                    lambda: self._lookup(keys=keys, args=[token, lease_ms]), "cache read"
                )
            except RedisUnavailableError:
                return await self._bypass(loader)
            if reply[0] == 1:
                self.stats.hits += 1
                return self.serializer.loads(reply[1])
            stamp: bytes = reply[1]
            if reply[2] == 1:
                break
            # Another caller (another process) holds the lease: wait for its value.
            if time.monotonic() >= give_up:
                return await self._bypass(loader)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
        self.stats.misses += 1
        self.stats.loads += 1
        held = token.encode() + b"|" + stamp
        try:
            value = await loader()
        except BaseException:
            await self._quietly(
                lambda: self._release(keys=[lease], args=[held]), "cache lease release"
            )
            raise
        payload = self.serializer.dumps(value)
        ttl_ms = max(1, int((self.default_ttl if ttl is None else ttl) * 1000))
        await self._quietly(
            lambda: self._store(keys=[entry, lease], args=[held, stamp + payload, ttl_ms]),
            "cache write",
        )
        return self.serializer.loads(payload)

    async def _bypass(self, loader: Callable[[], Awaitable[Any]]) -> Any:
        self.stats.bypassed += 1
        return self.serializer.loads(self.serializer.dumps(await loader()))

    async def get(self, namespace: str, key: KeyPart, *, tenant: TenantRef = None) -> Any:
        """The cached value, or ``None`` on a miss (or when Redis is unavailable)."""
        tenant_id = tenant_id_of(tenant)
        entry = self.keys.key(namespace, key, tenant_id)
        if self.redis is None:
            return None
        keys = [entry, *self._generations(namespace, tenant_id), entry]
        try:
            reply = await self.guard.run(
                lambda: self._lookup(keys=keys, args=["", 0]), "cache read"
            )
        except RedisUnavailableError:
            return None
        return self.serializer.loads(reply[1]) if reply[0] == 1 else None

    async def set(
        self,
        namespace: str,
        key: KeyPart,
        value: Any,
        *,
        ttl: float | None = None,
        tenant: TenantRef = None,
    ) -> bool:
        """Store ``value`` (stamped with the current generations); ``False`` if Redis is down."""
        tenant_id = tenant_id_of(tenant)
        entry = self.keys.key(namespace, key, tenant_id)
        if self.redis is None:
            return False
        keys = [entry, *self._generations(namespace, tenant_id)]
        payload = self.serializer.dumps(value)
        ttl_ms = max(1, int((self.default_ttl if ttl is None else ttl) * 1000))
        try:
            await self.guard.run(
                lambda: self._put(keys=keys, args=[payload, ttl_ms]), "cache write"
            )
        except RedisUnavailableError:
            return False
        return True

    def cached(
        self,
        namespace: str,
        *,
        key: Callable[..., KeyPart] | None = None,
        ttl: float | None = None,
    ) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[Any]]]:
        """Decorate an async function so its results are cached per tenant.

        ``key`` receives the call's arguments and returns the cache key (default: the
        arguments joined by ``:``). The result must be serialisable; callers get it back
        as the serializer returns it (JSON data by default), hit or miss alike.
        """
        if not NAMESPACE.fullmatch(namespace):
            raise InvalidCacheKeyError(f"invalid cache namespace {namespace!r}")

        def decorate(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[Any]]:
            @functools.wraps(fn)
            async def wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                cache_key = key(*args, **kwargs) if key else _default_key(args, kwargs)
                return await self.get_or_load(
                    namespace, cache_key, lambda: fn(*args, **kwargs), ttl=ttl
                )

            return wrapper

        return decorate

    # -- invalidation -----------------------------------------------------------------------
    async def invalidate(self, namespace: str, key: KeyPart, *, tenant: TenantRef = None) -> None:
        """Drop one entry (and revoke any recompute of it in flight)."""
        tenant_id = tenant_id_of(tenant)
        entry = self.keys.key(namespace, key, tenant_id)
        lease = self.keys.internal("_lock", f"{namespace}:{key}", tenant_id)
        self._forget_inflight(entry, exact=True)
        if self.redis is not None:
            redis = self.redis
            await self._record(lambda: redis.delete(entry, lease), tenant_id)

    async def invalidate_namespace(self, namespace: str, *, tenant: TenantRef = None) -> None:
        """Drop every entry of one namespace of the tenant, in O(1)."""
        tenant_id = tenant_id_of(tenant)
        self._forget_inflight(self.keys.key(namespace, "", tenant_id))
        if self.redis is not None:
            redis, generation = self.redis, self._generations(namespace, tenant_id)[1]
            await self._record(lambda: redis.incr(generation), tenant_id)

    async def invalidate_tenant(self, tenant: TenantRef = None) -> None:
        """Drop every entry of the tenant, in O(1); other tenants keep theirs."""
        tenant_id = tenant_id_of(tenant)
        self._forget_inflight(self.keys.tenant_prefix(tenant_id))
        if self.redis is not None:
            redis, generation = self.redis, self._generations("", tenant_id)[0]
            await self._record(lambda: redis.incr(generation), tenant_id)

    def _generations(self, namespace: str, tenant_id: UUID) -> tuple[str, str]:
        return (
            self.keys.internal("_gen", "*", tenant_id),
            self.keys.internal("_gen", namespace, tenant_id),
        )

    def _forget_inflight(self, entry_or_prefix: str, *, exact: bool = False) -> None:
        # Callers arriving after an invalidation must not join a recompute that began
        # before it (its result would be what the write replaced).
        for entry in list(self._inflight):
            if entry == entry_or_prefix or (not exact and entry.startswith(entry_or_prefix)):
                del self._inflight[entry]

    async def _record(self, write: Callable[[], Awaitable[Any]], tenant_id: UUID) -> None:
        try:
            await self.guard.run(write, "cache invalidation")
        except RedisUnavailableError:
            # Entries may survive the outage (a partition, a replica promoted): invalidate
            # the whole tenant once Redis answers again.
            if len(self._pending) < MAX_PENDING_TENANTS:
                self._pending.add(tenant_id)
            else:
                logger.error(
                    "cache invalidation of tenant %s lost while Redis is down; its entries "
                    "may be stale until their TTL",
                    tenant_id,
                )
            return
        await self._replay()

    async def _replay(self) -> None:
        if not self._pending or self.redis is None or not self.guard.available:
            return
        pending, self._pending = list(self._pending), set()
        redis = self.redis
        for position, tenant_id in enumerate(pending):
            generation = self._generations("", tenant_id)[0]
            try:
                await self.guard.run(functools.partial(redis.incr, generation), "cache replay")
            except RedisUnavailableError:
                self._pending.update(pending[position:])
                return
        logger.info("replayed cache invalidations of %d tenant(s) after an outage", len(pending))

    async def _quietly(self, call: Callable[[], Awaitable[Any]], what: str) -> None:
        with contextlib.suppress(RedisUnavailableError):
            await self.guard.run(call, what)


def _default_key(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    parts = [str(arg) for arg in args]
    parts += [f"{name}={kwargs[name]}" for name in sorted(kwargs)]
    return ":".join(parts)
