"""Per-tenant rate limits, quotas and concurrency caps, in one Lua script.

One ``EVALSHA`` per request checks, atomically and on Redis' clock:

* a **quota**: at most ``quota`` requests per ``quota_window`` (fixed windows aligned to the
  epoch, so 86400 is UTC days);
* a **concurrency cap**: at most ``concurrency`` requests in flight (a sorted set of
  leases; a lease not given back within ``concurrency_lease`` seconds is reclaimed, so a
  crashed worker cannot leak slots);
* a **rate limit** by GCRA (the generic cell rate algorithm): ``rate`` requests per second
  sustained, bursts up to ``burst``. The state is one timestamp per tenant.

Nothing is consumed unless every check passes. Checks (and the release of in-flight
slots, which no request waits for) are auto-pipelined over a lean connection of the
limiter's own (:mod:`._pipeline`): the checks concurrent requests issue in the same
event-loop tick share one write and one round trip, and each check still costs at most
one. All three keys carry the tenant's hash tag, so the script runs on one cluster node.
Limits come from the tenant's tier (:class:`~tenantry.settings.RateLimitSettings`),
overridden by the catalog attribute ``rate_limit`` (e.g. ``{"rate": 500, "burst": 1000}``).

**Local token reservation** (tenants without a concurrency cap). Waiting for a check
costs a request far more than the check's own CPU: its handler resumes one event-loop
round later, behind whatever else is running (measured in ``bench/cache.py``: ~100-150 µs
of CPU per cached read). So a process takes a small batch of tokens in one check (the
same script: ``cost`` must conform, then up to ``batch`` in all are taken, as many as
conform now and fit in the quota) and admits the next requests from it without a round
trip, refilling in the background when half is spent; requests that find none wait for
that one refill. The batch is ``RateLimitSettings.reserve`` seconds of the tenant's
sustained ``rate``, at most a quarter of ``burst`` and at most 100; a batch below 2 (the
free tier's defaults, say) means a check per request. Tokens are consumed in Redis when
reserved, so the quota is never exceeded and a burst admitted at once is never larger than
``burst``; what changes is *when* a reserved token is spent: across ``P`` processes, any
interval admits at most ``P x batch`` more than GCRA alone would (tokens reserved
earlier, spent in it), and reserved tokens that go unspent are lost to the tenant
(``RateLimit-Remaining`` is the count Redis reported at the last reservation plus the
tokens still held). Tokens left unspent ``RESERVE_TTL`` s after the last reservation, or
held under limits that have since changed, are dropped. A tenant with a concurrency cap is
checked on every request: its in-flight slots are only known to Redis.

When Redis is unavailable the limiter fails open (lets requests through) or closed
(:class:`RateLimitUnavailableError`, HTTP 503), per ``RateLimitSettings.fail_open``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import count
from typing import Any
from uuid import UUID

from tenantry.cache._pipeline import AutoPipeline
from tenantry.cache._resp import pack_args
from tenantry.cache.client import RedisClient
from tenantry.cache.degradation import RedisGuard
from tenantry.cache.errors import RateLimitUnavailableError, RedisUnavailableError
from tenantry.cache.keys import KeyBuilder
from tenantry.context import TenantContext
from tenantry.errors import ConfigurationError
from tenantry.settings import RateLimitSettings, TierLimits

logger = logging.getLogger("tenantry.ratelimit")

REASONS = {1: "rate", 2: "quota", 3: "concurrency"}
RESERVE_MAX = 100  # tokens one process takes at once, at most
RESERVE_TTL = 1.0  # seconds after the last reservation when unspent tokens are dropped
OVERRIDE_ATTRIBUTE = "rate_limit"
_COST_ONE_NO_LEASE = pack_args((1, ""))

# KEYS: gcra, quota, in-flight.  ARGV: emission interval us, burst, quota, quota window us,
# concurrency, lease us, cost, lease id[, want].
# -> {allowed, reason, remaining, retry_after_ms, reset_ms[, granted]}
# ``want`` (a reservation, only without a concurrency cap): once ``cost`` passes every check,
# take up to ``want`` in all, as many as conform now; ``granted`` says how many were taken.
_CHECK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local emission = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local quota = tonumber(ARGV[3])
local window = tonumber(ARGV[4])
local conc = tonumber(ARGV[5])
local lease = tonumber(ARGV[6])
local cost = tonumber(ARGV[7])
local index, used, window_end = 0, 0, 0
if quota > 0 then
  index = math.floor(now / window)
  window_end = (index + 1) * window
  local q = redis.call('HMGET', KEYS[2], 'w', 'n')
  if q[1] and tonumber(q[1]) == index then used = tonumber(q[2]) end
  if used + cost > quota then
    return {0, 2, 0, math.ceil((window_end - now) / 1000), math.ceil((window_end - now) / 1000)}
  end
end
if conc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', string.format('%.0f', now - lease))
  if redis.call('ZCARD', KEYS[3]) >= conc then
    return {0, 3, 0, 1000, 1000}
  end
end
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + emission * cost
local allow_at = new_tat - emission * burst
if allow_at > now then
  return {0, 1, 0, math.ceil((allow_at - now) / 1000), math.ceil((tat - now) / 1000)}
end
local want = tonumber(ARGV[9] or '0')
if want > cost and conc == 0 then
  -- a reservation: also take what else conforms now, up to want (and the quota left)
  local extra = math.min(want - cost, math.floor((now - allow_at) / emission))
  if quota > 0 then extra = math.min(extra, quota - used - cost) end
  if extra > 0 then
    cost = cost + extra
    new_tat = tat + emission * cost
    allow_at = new_tat - emission * burst
  end
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX',
           string.format('%.0f', math.ceil((new_tat - now) / 1000) + 1))
if quota > 0 then
  redis.call('HSET', KEYS[2], 'w', string.format('%.0f', index),
             'n', string.format('%.0f', used + cost))
  redis.call('PEXPIREAT', KEYS[2], string.format('%.0f', math.ceil(window_end / 1000) + 1000))
end
if conc > 0 then
  redis.call('ZADD', KEYS[3], string.format('%.0f', now), ARGV[8])
  redis.call('PEXPIRE', KEYS[3], string.format('%.0f', math.ceil(lease / 1000)))
end
return {1, 0, math.floor((now - allow_at) / emission), 0, math.ceil((new_tat - now) / 1000),
        cost}
"""


@dataclass(frozen=True, slots=True)
class RateDecision:
    """The outcome of one check: allowed or not, why, and what to tell the client.

    ``reason`` is ``"rate"``, ``"quota"`` or ``"concurrency"`` for a refusal. ``degraded``
    means Redis was unavailable and the limiter failed open. A decision holding a
    ``lease`` must be given back with :meth:`RateLimiter.release`.
    """

    allowed: bool
    limit: int
    remaining: int
    reset_after: float
    retry_after: float = 0.0
    reason: str | None = None
    lease: tuple[bytes, str] | None = None
    degraded: bool = False

    def headers(self) -> list[tuple[str, str]]:
        """``RateLimit-Limit/Remaining/Reset`` (and ``Retry-After`` on a refusal)."""
        if self.degraded:
            return []
        out = [
            ("RateLimit-Limit", str(self.limit)),
            ("RateLimit-Remaining", str(max(0, self.remaining))),
            ("RateLimit-Reset", str(math.ceil(self.reset_after))),
        ]
        if not self.allowed:
            out.append(("Retry-After", str(max(1, math.ceil(self.retry_after)))))
        return out

    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        """:meth:`headers` of an admitted request, ASGI-ready (lower-case, bytes): built
        on every request, so built directly."""
        if self.degraded:
            return []
        return [
            (b"ratelimit-limit", b"%d" % self.limit),
            (b"ratelimit-remaining", b"%d" % max(0, self.remaining)),
            (b"ratelimit-reset", b"%d" % math.ceil(self.reset_after)),
        ]


class _Reserve:
    """The tokens one process holds for one tenant (see the module docstring)."""

    __slots__ = ("batch", "expires", "limit", "low", "refill", "remaining", "reset_at", "tokens")

    def __init__(self, batch: int, limit: int) -> None:
        self.batch = batch
        self.low = batch // 2  # a background refill starts when this many are left
        self.limit = limit
        self.tokens = 0
        self.expires = 0.0  # monotonic time when unspent tokens are dropped
        self.remaining = 0  # what Redis reported at the last reservation
        self.reset_at = 0.0  # monotonic time when the tenant's bucket is full again
        self.refill: asyncio.Task[RateDecision | None] | None = None

    def admit(self, now: float) -> RateDecision:
        """Spend one token held (the caller checked there is one)."""
        self.tokens -= 1
        return RateDecision(
            True,
            self.limit,
            min(self.limit, self.remaining + self.tokens),
            max(0.0, self.reset_at - now),
        )


@dataclass(frozen=True, slots=True)
class _Plan:
    """A tenant's limits, as the script's command prefix (built once per tenant)."""

    tier: str
    override: Any  # held, so its identity stays unique while the plan is cached
    limits: TierLimits
    command: tuple[Any, ...]
    packed: bytes  # ``command`` as RESP, announcing the two per-call arguments to come
    inflight: bytes
    reserve: _Reserve | None = None  # local tokens, when reservation applies
    reserve_packed: bytes = b""  # ``command`` announcing three arguments (a reservation)


class RateLimiter:
    """Checks and counts requests per tenant (see the module docstring)."""

    def __init__(
        self,
        redis: RedisClient,
        *,
        guard: RedisGuard | None = None,
        keys: KeyBuilder | None = None,
        settings: RateLimitSettings | None = None,
        bucket: str = "api",
        pipeline: AutoPipeline | None = None,
    ) -> None:
        self.redis = redis
        self.guard = guard or RedisGuard()
        self.keys = keys or KeyBuilder()
        self.settings = settings or RateLimitSettings()
        self.bucket = bucket
        self.pipeline = pipeline or AutoPipeline(redis, self.guard)
        self._sha = self.pipeline.script(_CHECK)
        self._plans: dict[UUID, _Plan] = {}
        self._lease_prefix = secrets.token_hex(6)
        self._lease_ids = count()
        self._warned: set[tuple[UUID, str]] = set()
        self._refills: set[asyncio.Task[RateDecision | None]] = set()

    def limits_for(self, tenant: TenantContext) -> TierLimits:
        """The tier's limits with the tenant's ``rate_limit`` attribute applied.

        A malformed override is logged (once) and ignored: a typo in the catalog must not
        take a tenant offline.
        """
        return self._plan(tenant).limits

    def _plan(self, tenant: TenantContext) -> _Plan:
        override = tenant.attributes.get(OVERRIDE_ATTRIBUTE)
        plan = self._plans.get(tenant.id)
        # A catalog change brings a new attributes object: identity is the cheap test.
        if plan is not None and plan.tier == tenant.tier and plan.override is override:
            return plan
        limits = self.settings.tiers.get(tenant.tier) or self.settings.tiers.get("free")
        if limits is None:
            raise ConfigurationError(f"no rate limits are configured for tier {tenant.tier!r}")
        if override is not None:
            limits = self._apply(tenant, limits, override)
        keys = [
            self.keys.internal("_rl", self.bucket, tenant.id).encode(),
            self.keys.internal("_rl", f"{self.bucket}:quota", tenant.id).encode(),
            self.keys.internal("_rl", f"{self.bucket}:inflight", tenant.id).encode(),
        ]
        args = (
            max(1, round(1_000_000 / limits.rate)),
            limits.burst,
            limits.quota,
            limits.quota_window * 1_000_000,
            limits.concurrency,
            max(1, int(self.settings.concurrency_lease * 1_000_000)),
        )
        # Pre-packed: the per-request work is appending the cost and the lease id.
        command = ("EVALSHA", self._sha, b"3", *keys, *(str(a).encode() for a in args))
        batch = self.reserve_batch(limits)
        plan = _Plan(
            tier=tenant.tier,
            override=override,
            limits=limits,
            command=command,
            packed=b"*%d\r\n" % (len(command) + 2) + pack_args(command),
            inflight=keys[2],
            reserve=_Reserve(batch, limits.burst) if batch >= 2 else None,
            reserve_packed=b"*%d\r\n" % (len(command) + 3) + pack_args(command),
        )
        if len(self._plans) >= 100_000:
            self._plans.clear()
        self._plans[tenant.id] = plan
        return plan

    def reserve_batch(self, limits: TierLimits) -> int:
        """How many tokens one process reserves at once for a tenant with ``limits``
        (below 2: none, every request is checked in Redis)."""
        if limits.concurrency or self.settings.reserve <= 0:
            return 0
        return int(min(limits.rate * self.settings.reserve, limits.burst / 4, RESERVE_MAX))

    def _apply(self, tenant: TenantContext, limits: TierLimits, override: Any) -> TierLimits:
        try:
            if not isinstance(override, Mapping):
                raise ConfigurationError("the rate_limit attribute must be an object")
            return limits.merged(override)
        except ConfigurationError as exc:
            marker = (tenant.id, str(exc))
            if len(self._warned) >= 10_000:
                self._warned.clear()
            if marker not in self._warned:
                self._warned.add(marker)
                logger.warning(
                    "ignoring tenant %s's rate_limit override (%s); using its tier's limits",
                    tenant.slug,
                    exc,
                )
            return limits

    async def acquire(self, tenant: TenantContext, *, cost: int = 1) -> RateDecision:
        """Check and count one request (one round trip at most; none while this process
        holds reserved tokens for the tenant)."""
        plan = self._plan(tenant)
        reserve = plan.reserve
        if reserve is not None and cost == 1:
            now = time.monotonic()
            if reserve.tokens > 0 and now < reserve.expires:
                if reserve.tokens <= reserve.low + 1 and reserve.refill is None:
                    self._refill(plan, reserve)
                return reserve.admit(now)
            return await self._acquire_reserved(plan, reserve)
        burst, concurrency = plan.limits.burst, plan.limits.concurrency
        if concurrency:
            lease_id = f"{self._lease_prefix}:{next(self._lease_ids)}"
            tail = pack_args((cost, lease_id))
        else:
            lease_id = ""
            tail = _COST_ONE_NO_LEASE if cost == 1 else pack_args((cost, lease_id))
        try:
            reply = await self.pipeline.call_packed(
                plan.packed + tail, (*plan.command, cost, lease_id)
            )
        except RedisUnavailableError as exc:
            if self.settings.fail_open:
                return RateDecision(True, burst, burst, 0.0, degraded=True)
            raise RateLimitUnavailableError(
                "rate limiting is unavailable and configured to fail closed; retry shortly"
            ) from exc
        allowed, reason, remaining, retry_ms, reset_ms = reply[:5]  # integers, as Lua returns
        return RateDecision(
            allowed=allowed == 1,
            limit=burst,
            remaining=remaining,
            reset_after=reset_ms / 1000,
            retry_after=retry_ms / 1000,
            reason=REASONS.get(reason),
            lease=(plan.inflight, lease_id) if allowed == 1 and concurrency else None,
        )

    async def _acquire_reserved(self, plan: _Plan, reserve: _Reserve) -> RateDecision:
        """No token held: wait for a reservation (one round trip, shared by every request
        that finds none meanwhile)."""
        while True:
            now = time.monotonic()
            if now >= reserve.expires:
                reserve.tokens = 0
            if reserve.tokens > 0:
                return reserve.admit(now)
            refill = reserve.refill or self._refill(plan, reserve)
            try:
                refused = await asyncio.shield(refill)
            except RedisUnavailableError as exc:
                if self.settings.fail_open:
                    burst = plan.limits.burst
                    return RateDecision(True, burst, burst, 0.0, degraded=True)
                raise RateLimitUnavailableError(
                    "rate limiting is unavailable and configured to fail closed; retry shortly"
                ) from exc
            if refused is not None and reserve.tokens == 0:
                return refused

    def _refill(self, plan: _Plan, reserve: _Reserve) -> asyncio.Task[RateDecision | None]:
        task = asyncio.create_task(self._reserve(plan, reserve), name="tenantry-rate-reserve")
        reserve.refill = task
        self._refills.add(task)
        task.add_done_callback(self._refilled)
        return task

    def _refilled(self, task: asyncio.Task[RateDecision | None]) -> None:
        self._refills.discard(task)
        if not task.cancelled():
            task.exception()  # waiters re-raise it; nobody else must be warned about it

    async def _reserve(self, plan: _Plan, reserve: _Reserve) -> RateDecision | None:
        """Take up to a batch of tokens; ``None`` once taken, else the refusal."""
        try:
            want = max(1, reserve.batch - reserve.tokens)
            reply = await self.pipeline.call_packed(
                plan.reserve_packed + pack_args((1, "", want)), (*plan.command, 1, "", want)
            )
        finally:
            reserve.refill = None
        allowed, reason, remaining, retry_ms, reset_ms = reply[:5]
        now = time.monotonic()
        if allowed != 1:
            return RateDecision(
                allowed=False,
                limit=plan.limits.burst,
                remaining=remaining,
                reset_after=reset_ms / 1000,
                retry_after=retry_ms / 1000,
                reason=REASONS.get(reason),
            )
        reserve.tokens += int(reply[5])
        reserve.expires = now + RESERVE_TTL
        reserve.remaining = remaining
        reserve.reset_at = now + reset_ms / 1000
        return None

    def release(self, decision: RateDecision) -> None:
        """Give back a decision's in-flight slot (a no-op without one).

        Nobody waits for it: the ``ZREM`` leaves with the next batch. If Redis is down
        meanwhile the lease simply expires.
        """
        if decision.lease is not None:
            self.pipeline.send("ZREM", *decision.lease)

    async def drain(self) -> None:
        """Wait until every slot given back so far, and every reservation under way, has
        reached Redis."""
        while self._refills:
            await asyncio.gather(*self._refills, return_exceptions=True)
        await self.pipeline.drain()

    async def close(self) -> None:
        """Drain, then close the limiter's own connections (at shutdown)."""
        await self.pipeline.close()
