"""Per-tenant rate limits, quotas and concurrency caps, in one Lua script.

One ``EVALSHA`` checks, atomically and on Redis' clock (per request, or per batch of
requests: see the reservation below):

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

**Local token reservation.** Waiting for a check costs a request far more than the check's
own CPU: its handler resumes one event-loop round later, behind whatever else is running
(measured in ``bench/cache.py``: ~100-150 µs of CPU per cached read). So a process takes a
small batch of tokens in one check (the same script: ``cost`` must conform, then up to
``batch`` in all are taken, as many as conform now and fit in the quota) and admits the
next requests from it without a round trip, refilling in the background when half is
spent; requests that find none wait for that one refill. The batch is
``RateLimitSettings.reserve`` seconds of the tenant's sustained ``rate``, at most a
quarter of ``burst`` and at most 1,000; a batch below 2 (the free tier's defaults, say)
means a check per request. Tokens are consumed in Redis when reserved, so the quota is
never exceeded and a burst admitted at once is never larger than ``burst``; what changes
is *when* a reserved token is spent: across ``P`` processes, any interval admits at most
``P x batch`` more than GCRA alone would (tokens reserved earlier, spent in it), and
reserved tokens that go unspent are lost to the tenant (``RateLimit-Remaining`` is the
count Redis reported at the last reservation plus the tokens still held). Tokens left
unspent ``RESERVE_TTL`` s after the last reservation, or held under limits that have since
changed, are dropped.

**Leased concurrency slots** (tenants with a cap). Only Redis knows how many of a tenant's
requests are in flight, so a process also leases slots of the cap by the batch, in the
same check as its tokens: the slots it holds are members ``<holder>0 .. <holder>n-1`` of
the tenant's in-flight set, counted like any request's slot, stamped with Redis' time at
every lease and reclaimed after ``concurrency_lease`` s like the slot of a crashed request
(so a dead process's lease frees itself). A request is admitted locally when the process
holds a token and fewer requests in flight than slots; a lease asks for ``lease`` slots
beyond the requests in flight (a quarter of the cap, at most ``LEASE_MAX``), and starts in
the background when no more than half of them are idle. A lease keeps every slot the
process may be using while it is under way and grows to what is free, never beyond: **the
cap is never exceeded across processes** (slots are counted in Redis before they are
handed out; a slot is only used locally for ``concurrency_lease / 2`` s after the lease
that renewed it; as before, a request running longer than ``concurrency_lease`` with no
lease renewing its slot meanwhile loses it). What it costs is **under-admission**: a
request may get a 429 while another process holds idle leased slots, at most ``2 x lease``
per process (past that, requests ending give the excess back at once) and only until it
has had no request for ``LEASE_IDLE`` s, when it gives back every idle slot; it does so
too when the tenant's limits change (the slots of requests still running go back as they
end) and at :meth:`RateLimiter.drain` and shutdown. A cap below 8 (a lease below 2) keeps
the check per request, as does ``reserve=0``. When Redis fails, slots and tokens already
held are used (never more), then requests fail open or closed as with every check; a lease
whose reply was lost leaves at most the slots it asked for in Redis until the next lease
clears them or they expire. (A lease uses ``ZMSCORE``: Redis 6.2 or Valkey.)

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
from time import monotonic as _monotonic
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
RESERVE_MAX = 1000  # tokens one process takes at once, at most
RESERVE_TTL = 1.0  # seconds after the last reservation when unspent tokens are dropped
LEASE_MAX = 100  # concurrency slots one process leases beyond its requests in flight, at most
LEASE_IDLE = 0.5  # seconds without a request after which leased idle slots are given back
OVERRIDE_ATTRIBUTE = "rate_limit"
_COST_ONE_NO_LEASE = pack_args((1, ""))

# KEYS: gcra, quota, in-flight.  ARGV: emission interval us, burst, quota, quota window us,
# concurrency, lease us, cost, lease id[, want[, keep, target, bound, need]].
# -> {allowed, reason, remaining, retry_after_ms, reset_ms[, granted, slots]}
# ``want`` (a reservation): once ``cost`` passes every check, take up to ``want`` in all, as
# many as conform now; ``granted`` says how many were taken. With a concurrency cap a
# reservation also leases slots: the lease id is then the process's member prefix, its
# members ``<prefix>0 .. <prefix>(bound-1)`` may be in the set; whatever the checks decide,
# it ends up holding exactly ``slots = min(max(keep, target), free)`` of them (renewed: they
# expire like any other in-flight entry), ``free`` being the cap minus everyone else's
# entries; the request itself is refused for ``concurrency`` when ``slots < need``.
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
local slots = -1
if conc > 0 and ARGV[10] then
  -- a slot lease: renew/grow/shrink this process's members, counted like any request's
  local keep, target, bound = tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[12])
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', string.format('%.0f', now - lease))
  local own = 0
  for first = 0, bound - 1, 500 do  -- in chunks: unpack() has a limit
    local names = {}
    for i = first, math.min(bound, first + 500) - 1 do names[#names + 1] = ARGV[8] .. i end
    local scores = redis.call('ZMSCORE', KEYS[3], unpack(names))
    for i = 1, #names do if scores[i] then own = own + 1 end end
  end
  local free = conc - (redis.call('ZCARD', KEYS[3]) - own)
  if free < 0 then free = 0 end
  slots = math.min(math.max(keep, target), free)
  local score = string.format('%.0f', now)
  for first = 0, slots - 1, 500 do
    local add = {}
    for i = first, math.min(slots, first + 500) - 1 do
      add[#add + 1] = score
      add[#add + 1] = ARGV[8] .. i
    end
    redis.call('ZADD', KEYS[3], unpack(add))
  end
  if slots > 0 then
    redis.call('PEXPIRE', KEYS[3], string.format('%.0f', math.ceil(lease / 1000)))
  end
  for first = slots, bound - 1, 500 do
    local gone = {}
    for i = first, math.min(bound, first + 500) - 1 do gone[#gone + 1] = ARGV[8] .. i end
    redis.call('ZREM', KEYS[3], unpack(gone))
  end
end
if quota > 0 then
  index = math.floor(now / window)
  window_end = (index + 1) * window
  local q = redis.call('HMGET', KEYS[2], 'w', 'n')
  if q[1] and tonumber(q[1]) == index then used = tonumber(q[2]) end
  if used + cost > quota then
    return {0, 2, 0, math.ceil((window_end - now) / 1000), math.ceil((window_end - now) / 1000),
            0, slots}
  end
end
if slots >= 0 then
  if slots < tonumber(ARGV[13]) then return {0, 3, 0, 1000, 1000, 0, slots} end
elseif conc > 0 then
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
  return {0, 1, 0, math.ceil((allow_at - now) / 1000), math.ceil((tat - now) / 1000), 0, slots}
end
local want = tonumber(ARGV[9] or '0')
if want > cost and (conc == 0 or slots >= 0) then
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
if conc > 0 and slots < 0 then
  redis.call('ZADD', KEYS[3], string.format('%.0f', now), ARGV[8])
  redis.call('PEXPIRE', KEYS[3], string.format('%.0f', math.ceil(lease / 1000)))
end
return {1, 0, math.floor((now - allow_at) / emission), 0, math.ceil((new_tat - now) / 1000),
        cost, slots}
"""


@dataclass(slots=True)
class RateDecision:
    """The outcome of one check: allowed or not, why, and what to tell the client.

    ``reason`` is ``"rate"``, ``"quota"`` or ``"concurrency"`` for a refusal. ``degraded``
    means Redis was unavailable and the limiter failed open. A decision holding a
    ``lease`` must be given back with :meth:`RateLimiter.release`. Treat it as read-only
    (it is not frozen only because one is built per request, and a frozen dataclass costs
    three times as much to build).
    """

    allowed: bool
    limit: int
    remaining: int
    reset_after: float
    retry_after: float = 0.0
    reason: str | None = None
    lease: tuple[bytes, str] | None = None
    degraded: bool = False
    slot: _Reserve | None = None  # a slot of a local lease, given back locally

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
    """The tokens (and, under a concurrency cap, the leased slots) one process holds for
    one tenant (see the module docstring)."""

    __slots__ = (
        "batch",
        "bound",
        "expires",
        "held",
        "holder",
        "inflight",
        "lease",
        "limit",
        "low",
        "refill",
        "remaining",
        "reset_at",
        "retired",
        "slot_low",
        "slots_until",
        "timer",
        "tokens",
        "used",
    )

    def __init__(self, batch: int, limit: int, lease: int = 0, holder: str = "") -> None:
        self.batch = batch
        self.low = batch // 2  # a background refill starts when this many are left
        self.limit = limit
        self.tokens = 0
        self.expires = 0.0  # monotonic time when unspent tokens are dropped
        self.remaining = 0  # what Redis reported at the last reservation
        self.reset_at = 0.0  # monotonic time when the tenant's bucket is full again
        self.refill: asyncio.Task[RateDecision | None] | None = None
        # Concurrency slots (``lease`` > 0: the tenant has a cap). Redis counts ``held``
        # members ``<holder>0..`` as in flight (at least: a lost reply may leave more, up to
        # ``bound``, until they expire); ``inflight`` of them back admitted requests.
        self.lease = lease  # idle slots leased beyond the requests in flight
        self.slot_low = lease // 2  # a background lease starts when this many are idle
        self.holder = holder
        self.held = 0
        self.inflight = 0
        self.bound = 0  # members 0..bound-1 may exist in Redis
        self.slots_until = 0.0  # monotonic time after which held slots are not used
        self.used = 0.0  # monotonic time of the last request
        self.retired = False  # the tenant's limits changed: give everything back
        self.timer: asyncio.TimerHandle | None = None

    def admit(self, now: float) -> RateDecision:
        """Spend one token held (the caller checked there is one, and a free slot if the
        tenant has a cap)."""
        self.tokens -= 1
        if self.lease:
            self.inflight += 1
            return RateDecision(
                True,
                self.limit,
                min(self.limit, self.remaining + self.tokens),
                max(0.0, self.reset_at - now),
                slot=self,
            )
        return RateDecision(
            True,
            self.limit,
            min(self.limit, self.remaining + self.tokens),
            max(0.0, self.reset_at - now),
        )

    def ready(self, now: float) -> bool:
        """A token held, unexpired, and (with a cap) a leased slot free."""
        if self.tokens <= 0 or now >= self.expires:
            return False
        return not self.lease or (self.inflight < self.held and now < self.slots_until)


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
    lease_packed: bytes = b""  # ``command`` announcing seven arguments (tokens and slots)


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
        self._plans: dict[int, _Plan] = {}  # by tenant id (as an int: a cheaper hash)
        self._lease_prefix = secrets.token_hex(6)
        self._lease_ids = count()
        self._warned: set[tuple[UUID, str]] = set()
        self._refills: set[asyncio.Task[RateDecision | None]] = set()
        self._holders = count()
        self._leasing: dict[_Reserve, _Plan] = {}  # reserves that may hold slots in Redis

    def limits_for(self, tenant: TenantContext) -> TierLimits:
        """The tier's limits with the tenant's ``rate_limit`` attribute applied.

        A malformed override is logged (once) and ignored: a typo in the catalog must not
        take a tenant offline.
        """
        return self._plan(tenant).limits

    def _plan(self, tenant: TenantContext) -> _Plan:
        override = tenant.attributes.get(OVERRIDE_ATTRIBUTE)
        plan = self._plans.get(tenant.id.int)
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
        lease = self.lease_size(limits) if batch >= 2 else 0
        reserve = None
        if plan is not None and plan.reserve is not None:
            if plan.limits == limits:  # a new attributes object, the same limits: keep it
                reserve = plan.reserve
            else:
                self._retire(plan, plan.reserve)
        if reserve is None and batch >= 2:
            holder = f"{self._lease_prefix}:r{next(self._holders)}:" if lease else ""
            reserve = _Reserve(batch, limits.burst, lease, holder)
        plan = _Plan(
            tier=tenant.tier,
            override=override,
            limits=limits,
            command=command,
            packed=b"*%d\r\n" % (len(command) + 2) + pack_args(command),
            inflight=keys[2],
            reserve=reserve,
            reserve_packed=b"*%d\r\n" % (len(command) + 3) + pack_args(command),
            lease_packed=b"*%d\r\n" % (len(command) + 7) + pack_args(command),
        )
        if len(self._plans) >= 100_000:
            for old in self._plans.values():
                if old.reserve is not None:
                    self._retire(old, old.reserve)
            self._plans.clear()
        self._plans[tenant.id.int] = plan
        return plan

    def reserve_batch(self, limits: TierLimits) -> int:
        """How many tokens one process reserves at once for a tenant with ``limits``
        (below 2: none, every request is checked in Redis; so is a tenant whose cap is too
        small to lease 2 slots at once)."""
        if self.settings.reserve <= 0 or (limits.concurrency and self.lease_size(limits) < 2):
            return 0
        return int(min(limits.rate * self.settings.reserve, limits.burst / 4, RESERVE_MAX))

    def lease_size(self, limits: TierLimits) -> int:
        """How many idle concurrency slots one process leases at once for a tenant with
        ``limits`` beyond its requests in flight (a quarter of the cap, at most
        ``LEASE_MAX``; 0 without a cap; below 2: no lease, every request is checked)."""
        if not limits.concurrency or self.settings.reserve <= 0:
            return 0
        return int(min(limits.concurrency // 4, LEASE_MAX))

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

    def admit_reserved(self, tenant: TenantContext) -> RateDecision | None:
        """Admit one request from the tokens (and leased slots) this process holds for
        ``tenant``, with no I/O at all; ``None`` when that cannot decide (nothing held, or
        no reservation for this tenant), and :meth:`acquire` must. The middleware's fast
        path: a plain call, not a coroutine, with :meth:`_plan` and :meth:`_Reserve.ready`
        inlined (it runs on every request)."""
        plan = self._plans.get(tenant.id.int)
        if (
            plan is None
            or plan.tier != tenant.tier
            or plan.override is not tenant.attributes.get(OVERRIDE_ATTRIBUTE)
        ):
            plan = self._plan(tenant)
        reserve = plan.reserve
        if reserve is None:
            return None
        now = _monotonic()
        reserve.used = now
        tokens = reserve.tokens
        if tokens <= 0 or now >= reserve.expires:
            return None
        if reserve.lease:
            if reserve.inflight >= reserve.held or now >= reserve.slots_until:
                return None
            if reserve.refill is None and (
                tokens <= reserve.low + 1 or reserve.held - reserve.inflight <= reserve.slot_low + 1
            ):
                self._refill(plan, reserve)
        elif reserve.refill is None and tokens <= reserve.low + 1:
            self._refill(plan, reserve)
        return reserve.admit(now)

    async def acquire(self, tenant: TenantContext, *, cost: int = 1) -> RateDecision:
        """Check and count one request (one round trip at most; none while this process
        holds reserved tokens for the tenant)."""
        if cost == 1:
            decision = self.admit_reserved(tenant)
            if decision is not None:
                return decision
        return await self.acquire_waiting(tenant, cost=cost)

    async def acquire_waiting(self, tenant: TenantContext, *, cost: int = 1) -> RateDecision:
        """:meth:`acquire` for a caller that has just tried :meth:`admit_reserved`: wait for
        the refill shared with other requests, or check in Redis."""
        plan = self._plan(tenant)
        if plan.reserve is not None and cost == 1:
            return await self._acquire_reserved(plan, plan.reserve)
        return await self._check(plan, cost)

    async def _check(self, plan: _Plan, cost: int) -> RateDecision:
        """One request checked (and counted) in Redis."""
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
        """No token (or slot) held: wait for a reservation (one round trip, shared by every
        request that finds none meanwhile)."""
        while True:
            if reserve.retired:  # the limits changed meanwhile: one check, not a lease
                return await self._check(plan, 1)
            now = time.monotonic()
            if now >= reserve.expires:
                reserve.tokens = 0
            if reserve.ready(now):
                return reserve.admit(now)
            refill = reserve.refill or self._refill(plan, reserve, waiting=True)
            try:
                refused = await asyncio.shield(refill)
            except RedisUnavailableError as exc:
                if self.settings.fail_open:
                    burst = plan.limits.burst
                    return RateDecision(True, burst, burst, 0.0, degraded=True)
                raise RateLimitUnavailableError(
                    "rate limiting is unavailable and configured to fail closed; retry shortly"
                ) from exc
            if refused is not None and not reserve.ready(time.monotonic()):
                return refused

    def _refill(
        self,
        plan: _Plan,
        reserve: _Reserve,
        *,
        waiting: bool = False,
        trim: bool = False,
        spare: int = 0,
    ) -> asyncio.Task[RateDecision | None]:
        if reserve.lease:
            coro = self._lease(plan, reserve, waiting=waiting, trim=trim, spare=spare)
        else:
            coro = self._reserve(plan, reserve)
        task = asyncio.create_task(coro, name="tenantry-rate-reserve")
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
        if reply[0] != 1:
            return _refusal(plan, reply)
        _credit(reserve, reply, time.monotonic())
        return None

    async def _lease(
        self, plan: _Plan, reserve: _Reserve, *, waiting: bool, trim: bool, spare: int
    ) -> RateDecision | None:
        """Take tokens and lease slots (or, ``trim``, give back the idle ones beyond
        ``spare``) in one check; ``None`` once done, else the refusal.

        The slots this process may be using while the check is in flight (``keep``) are
        kept whatever it decides; a trim stops using the idle ones before it is sent.
        """
        inflight = reserve.inflight
        if trim:
            cost = want = need = 0
            keep = target = min(reserve.held, inflight + spare)
            reserve.held = keep
        else:
            cost = 1 if waiting or reserve.tokens <= reserve.low + 1 else 0
            want = max(1, reserve.batch - reserve.tokens) if cost else 0
            keep = reserve.held
            target = inflight + reserve.lease
            need = inflight + 1 if waiting else 0
        bound = max(reserve.bound, keep, target)
        reserve.bound = bound
        self._leasing[reserve] = plan
        sent = time.monotonic()
        args = (cost, reserve.holder, want, keep, target, bound, need)
        try:
            reply = await self.pipeline.call_packed(
                plan.lease_packed + pack_args(args), (*plan.command, *args)
            )
        finally:
            reserve.refill = None
            self._idle_later(plan, reserve)
        slots = int(reply[6])
        # Redis now holds exactly ``slots`` members of ours (none beyond).
        reserve.held = reserve.bound = slots
        reserve.slots_until = sent + self.settings.concurrency_lease / 2
        now = time.monotonic()
        if reserve.retired:
            reserve.tokens = 0
            if reserve.bound > reserve.inflight:
                self._refill(plan, reserve, trim=True)
        if reply[0] != 1:
            return _refusal(plan, reply)
        if cost and not reserve.retired:
            _credit(reserve, reply, now)
        return None

    def _idle_later(self, plan: _Plan, reserve: _Reserve) -> None:
        """Check back in ``LEASE_IDLE`` s whether leased slots sit idle."""
        if reserve.timer is None and reserve.bound > 0:
            loop = asyncio.get_running_loop()
            reserve.timer = loop.call_later(LEASE_IDLE, self._idle, plan, reserve)

    def _idle(self, plan: _Plan, reserve: _Reserve) -> None:
        reserve.timer = None
        if reserve.bound <= 0 and reserve.inflight <= 0:
            self._leasing.pop(reserve, None)
            return
        if reserve.refill is None:
            idle = time.monotonic() - reserve.used >= LEASE_IDLE or reserve.retired
            if idle and reserve.bound > reserve.inflight:
                self._refill(plan, reserve, trim=True)
                return  # the trim checks back when done
        self._idle_later(plan, reserve)

    def _retire(self, plan: _Plan, reserve: _Reserve) -> None:
        """The tenant's limits changed: drop the tokens held, give back idle slots now and
        the others as their requests end."""
        reserve.retired = True
        reserve.tokens = 0
        if reserve.lease and reserve.bound > reserve.inflight and reserve.refill is None:
            self._refill(plan, reserve, trim=True)

    def release(self, decision: RateDecision) -> None:
        """Give back a decision's in-flight slot (a no-op without one).

        Nobody waits for it: the ``ZREM`` leaves with the next batch. If Redis is down
        meanwhile the lease simply expires. A slot of a local lease goes back to the
        lease (given back to Redis once idle).
        """
        reserve = decision.slot
        if reserve is not None:
            reserve.inflight -= 1
            # Requests ending leave their slots idle: past two leases, give back the excess.
            if reserve.held - reserve.inflight > 2 * reserve.lease and reserve.refill is None:
                plan = self._leasing.get(reserve)
                if plan is not None:
                    self._refill(plan, reserve, trim=True, spare=reserve.lease)
        elif decision.lease is not None:
            self.pipeline.send("ZREM", *decision.lease)

    async def return_leases(self) -> None:
        """Give back every leased slot no request is using (at shutdown and drain)."""
        for _ in range(3):
            pending = [(r, p) for r, p in self._leasing.items() if r.bound > r.inflight]
            if not pending:
                return
            for reserve, plan in pending:
                if reserve.refill is None:
                    self._refill(plan, reserve, trim=True)
            await asyncio.gather(*self._refills, return_exceptions=True)

    async def drain(self) -> None:
        """Wait until every slot given back so far, and every reservation under way, has
        reached Redis, and give back idle leased slots."""
        while self._refills:
            await asyncio.gather(*self._refills, return_exceptions=True)
        await self.return_leases()
        await self.pipeline.drain()

    async def close(self) -> None:
        """Drain (giving back leased slots), then close the limiter's own connections (at
        shutdown)."""
        await self.drain()
        for reserve in self._leasing:
            if reserve.timer is not None:
                reserve.timer.cancel()
                reserve.timer = None
        self._leasing.clear()
        await self.pipeline.close()


def _refusal(plan: _Plan, reply: list[Any]) -> RateDecision:
    """The decision of a reservation or lease the script refused."""
    _, reason, remaining, retry_ms, reset_ms = reply[:5]
    return RateDecision(
        allowed=False,
        limit=plan.limits.burst,
        remaining=remaining,
        reset_after=reset_ms / 1000,
        retry_after=retry_ms / 1000,
        reason=REASONS.get(reason),
    )


def _credit(reserve: _Reserve, reply: list[Any], now: float) -> None:
    """Add the tokens a reservation or lease granted (``reply[5]``) to ``reserve``."""
    reserve.tokens += int(reply[5])
    reserve.expires = now + RESERVE_TTL
    reserve.remaining = reply[2]
    reserve.reset_at = now + reply[4] / 1000
