"""Graceful degradation: every Redis call goes through a :class:`RedisGuard`.

When Redis stops answering, the guard marks it down for ``retry_interval`` seconds.
During that time calls fail at once with :class:`RedisUnavailableError` instead of waiting
on a socket timeout, so a dead Redis costs requests nothing; then a single call probes
it, and the first success brings everything back. No restart is needed.

The outage is logged as one warning per ``warn_interval`` (with the number of degraded
calls since the last one), never once per request, and its end as one info line.

Only unavailability is absorbed: connection errors, timeouts, cluster-down and slot
errors. A script or type error is a bug and propagates.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis import exceptions as redis_errors

from tenantry.cache.errors import RedisUnavailableError

T = TypeVar("T")
logger = logging.getLogger("tenantry.cache")

UNAVAILABLE: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.ClusterError,
    redis_errors.RedisClusterException,
    redis_errors.TryAgainError,
    OSError,
    asyncio.TimeoutError,
)
"""Errors that mean "Redis cannot serve this now", as opposed to a bug."""


class RedisGuard:
    """Runs Redis calls; remembers when Redis is down; logs outages once per interval.

    ``max_in_flight`` bounds concurrent calls (the cluster client refuses, rather than
    queues, calls beyond its pool size; a burst must wait here instead).
    """

    def __init__(
        self,
        *,
        retry_interval: float = 1.0,
        warn_interval: float = 30.0,
        max_in_flight: int = 64,
        name: str = "Redis",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.retry_interval = retry_interval
        self.warn_interval = warn_interval
        self.name = name
        self._clock = clock
        self._slots = asyncio.Semaphore(max(1, max_in_flight))
        self._down_since: float | None = None
        self._retry_at = 0.0
        self._probing = False
        self._last_warning: float | None = None
        self._degraded = 0
        self.outages = 0

    @property
    def available(self) -> bool:
        """Whether Redis is believed reachable (``False`` during an outage)."""
        return self._down_since is None

    async def run(self, call: Callable[[], Awaitable[T]], what: str = "call") -> T:
        """Await ``call()``; raise :class:`RedisUnavailableError` if Redis is down or fails."""
        probe = self.admit(what) if self._down_since is not None else False
        try:
            async with self._slots:
                result = await call()
        except UNAVAILABLE as exc:
            raise self.failure(exc, what) from exc
        finally:
            if probe:
                self._probing = False
        if self._down_since is not None:
            self._recovered()
        return result

    # The three steps of :meth:`run`, for callers that drive their own connection (the
    # rate limiter's pipelined path) and cannot afford a coroutine per call.
    def admit(self, what: str = "call") -> bool:
        """Raise :class:`RedisUnavailableError` during an outage, except for one probe per
        ``retry_interval``: returns ``True`` for that probe, which must end with
        :meth:`succeeded` or :meth:`failure` (and :meth:`end_probe`)."""
        if self._down_since is None:
            return False
        if self._probing or self._clock() < self._retry_at:
            self._degraded += 1
            raise RedisUnavailableError(f"{self.name} is unavailable; {what} skipped")
        self._probing = True
        return True

    def end_probe(self) -> None:
        """The probe admitted by :meth:`admit` is over (whatever its outcome)."""
        self._probing = False

    def succeeded(self) -> None:
        """A call went through: ends an outage if one was recorded."""
        if self._down_since is not None:
            self._recovered()

    def failure(self, exc: BaseException, what: str = "call") -> RedisUnavailableError:
        """Record that Redis failed ``what`` with ``exc``; returns the error to raise."""
        self._failed(exc, what)
        return RedisUnavailableError(f"{self.name} is unavailable ({what}): {exc}")

    def _failed(self, exc: BaseException, what: str) -> None:
        now = self._clock()
        self._degraded += 1
        if self._down_since is None:
            self._down_since = now
            self.outages += 1
        self._retry_at = now + self.retry_interval
        if self._last_warning is None or now - self._last_warning >= self.warn_interval:
            logger.warning(
                "%s is unavailable (%s during %s); serving without it: cache bypassed, "
                "rate limits per their fail mode, sessions answer 503. %d call(s) degraded "
                "since the last warning; next warning in %.0f s at the earliest",
                self.name,
                type(exc).__name__,
                what,
                self._degraded,
                self.warn_interval,
            )
            self._last_warning = now
            self._degraded = 0

    def _recovered(self) -> None:
        assert self._down_since is not None
        logger.info(
            "%s is reachable again after %.1f s; %d call(s) were degraded",
            self.name,
            self._clock() - self._down_since,
            self._degraded,
        )
        # _last_warning is kept: a flapping Redis still warns at most once per interval.
        self._down_since = None
        self._degraded = 0
