"""The outbox relay: committed events from PostgreSQL to Kafka, none lost.

Each round claims a batch in one transaction: ``DELETE ... RETURNING`` the oldest rows
``FOR UPDATE SKIP LOCKED``, produces them with an idempotent producer (``acks=all``, record
key = tenant id, envelope in headers), waits until Kafka acknowledged every record, and
only then commits the delete. A relay that dies mid-batch (SIGKILL, lost broker) rolls
back: the rows are claimed again and sent again, so delivery is at least once and the
consumers' inbox makes it exactly once in effect.

A claim looks at the oldest ``relay_batch`` rows of the outbox (its window), whatever the
backlog behind them. Under a backlog a round is pipelined: when a claim found its window
full, the next claim (up to
:data:`CLAIMS_PER_ROUND` in the round) goes to the server at once, in the same
transaction, and runs there while this process builds and produces the full claim's
records and Kafka acknowledges them, so the database, the relay and the broker work at
the same time instead of taking turns. One commit then covers them all, after every
record of the round was acknowledged.

Several relays may run at once: a relay only takes rows of tenant shards it holds a
transaction-scoped advisory lock on (``pg_try_advisory_xact_lock``), so one tenant's
events are never in flight in two relays at the same time and reach Kafka in order. Of a
window, each relay takes the rows of the shards it locked, the others the rest.
The relay sleeps on ``LISTEN tenantry_outbox`` (every publishing transaction notifies at
commit) and drains in back-to-back rounds while claims find their window full. While
events trickle in, a round starts at most every ``EventsSettings.relay_interval`` (10 ms
by default) and takes what came meanwhile: at 1,000 single-event transactions a second, a
round on every wake-up cost the relay, its database connection, the broker and a consumer
1.23-1.29 cores of the benchmark machine's two, paced 0.79-0.89 (``bench/events.py``; see
the README).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import inspect
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from operator import itemgetter
from typing import Any

from confluent_kafka import Producer
from psycopg import AsyncConnection

from tenantry.db import Database
from tenantry.db.transaction import Prepared, first_rows
from tenantry.events._loop import keep_running
from tenantry.events.envelope import (
    CONTENT_TYPE,
    H_CONTENT_TYPE,
    H_ID,
    H_SCHEMA_VERSION,
    H_SOURCE,
    H_SPECVERSION,
    H_SUBJECT,
    H_TENANT,
    H_TIER,
    H_TIME,
    H_TRACEPARENT,
    H_TYPE,
    SPEC_VERSION,
    format_epoch,
)
from tenantry.events.errors import KafkaUnavailableError
from tenantry.events.kafka import DeliveryTracker, TopicAdmin, flush_all, producer_config
from tenantry.events.schema import OUTBOX_CHANNEL, RELAY_LOCK
from tenantry.settings import EventsSettings

logger = logging.getLogger("tenantry.events.relay")

Header = tuple[str, str | bytes | None]
Record = tuple[str, bytes, bytes, list[Header]]
"""A Kafka record: topic, key, value, headers."""
_SPEC_HEADER: Header = (H_SPECVERSION, SPEC_VERSION.encode())
_CONTENT_HEADER: Header = (H_CONTENT_TYPE, CONTENT_TYPE.encode())
CLAIMS_PER_ROUND = 4
"""Claims one relay transaction makes at most under a backlog (each of ``relay_batch``
rows): enough to keep the database claiming while Kafka acknowledges, few enough that a
failed round re-sends little."""

_CLAIM = (
    # A claim looks at the oldest ``relay_batch`` rows (its window) and takes those of the
    # tenant shards it could lock, so its work is bounded by the batch, not the backlog.
    # (Asking for the oldest rows of the locked shards instead had PostgreSQL read and sort
    # the whole outbox for each claim: 19.3 ms per claim of 5,000 with 30,000 waiting,
    # 38.3 ms with 100,000; the window: 11.0 / 11.5 ms.)
    # The shard locks are taken once, before any row is claimed: a relay that skipped a
    # tenant's row because another relay held its shard must not take that tenant's
    # later rows in the same statement, after the other one committed. Only the shards of
    # the window are tried, not all SHARDS of them: each advisory lock costs the server a
    # lock-table entry taken and released, and a round that found a few events used to pay
    # for 64 (0.12 ms of server CPU per claim).
    "WITH oldest AS MATERIALIZED (SELECT seq, shard FROM tenantry.outbox ORDER BY seq LIMIT %s), "
    "held AS MATERIALIZED (SELECT w.shard FROM (SELECT DISTINCT shard FROM oldest) w "
    "WHERE pg_try_advisory_xact_lock(%s, w.shard)) "
    "DELETE FROM tenantry.outbox WHERE seq = ANY(ARRAY("
    "SELECT seq FROM tenantry.outbox WHERE seq = ANY(ARRAY("
    "SELECT seq FROM oldest WHERE shard IN (SELECT shard FROM held))) "
    "FOR UPDATE SKIP LOCKED)) "
    # Header values come back as text, formatted by PostgreSQL (cheaper than in Python),
    # but for the time: under a backlog the relay waits on its claims, and the database's
    # ``to_char`` (and ``extract``, which computes in numeric) took longer than the relay
    # formatting it from a float8 (``format_epoch``). The last column is the window's
    # size: a full window means more rows may be waiting.
    "RETURNING seq, event_id::text, tenant_id::text, tier, type, topic, subject, "
    "schema_version::text, date_part('epoch', occurred_at), traceparent, payload::text, "
    "(SELECT count(*) FROM oldest)"
)

_SEQ, _TIER, _OCCURRED, _WINDOW = itemgetter(0), itemgetter(3), itemgetter(8), itemgetter(11)
"""A claimed row's ``seq``, ``tier``, occurred-at (seconds since the epoch) and its
claim's window size."""

_PREPARED_CLAIM = Prepared(
    "tenantry_relay_claim",
    _CLAIM.replace("%s", "$1", 1).replace("%s", "$2", 1),
)
"""The claim that opens a round, sent with ``BEGIN``: prepared, not planned anew each round
(as text it cost the server 1.24 ms of CPU per round, by name 0.41 ms)."""


class _Headers(dict[str, Header]):
    """The header of each value a field takes, built once: a relay sends the same few
    event types, tiers and schema versions over and over (up to ``limit`` values kept)."""

    def __init__(self, name: str, limit: int = 4096) -> None:
        super().__init__()
        self.name = name
        self.limit = limit

    def __missing__(self, value: str) -> Header:
        if len(self) >= self.limit:
            self.clear()
        header = self[value] = (self.name, value.encode())
        return header


def _add_occurred(occurred: dict[str, list[float]], rows: list[Any]) -> None:
    """Append each claimed row's occurred-at to its tier's list in ``occurred``."""
    tiers = set(map(_TIER, rows))
    if len(tiers) == 1:  # the common case, without a step per row in Python
        occurred.setdefault(tiers.pop(), []).extend(map(_OCCURRED, rows))
        return
    for row in rows:
        occurred.setdefault(_TIER(row), []).append(_OCCURRED(row))


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection for the block (left off if it already was).

    A relay round turns thousands of claimed rows into records: tens of thousands of small
    tuples and lists that stay alive to the round's commit. They set off one collection
    after another, each scanning more of them and freeing nothing (the relay makes no
    reference cycles). Paused for the round, the collector runs once it is back on, between
    rounds. A round that waits on an unreachable Kafka keeps it paused for up to
    ``producer_timeout``; the relay process makes next to no cyclic garbage meanwhile.
    Measured on ``bench/events.py``'s drain, six alternating pairs: 1.28x the events/s."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class OutboxRelay:
    """Moves committed events of one cell's outbox to Kafka."""

    def __init__(
        self,
        db: Database,
        settings: EventsSettings,
        *,
        cell: str | None = None,
        producer: Producer | None = None,
        idle_seconds: float = 5.0,
    ) -> None:
        if settings.kafka_bootstrap is None:
            raise KafkaUnavailableError("no Kafka is configured (TENANTRY_KAFKA_BOOTSTRAP)")
        self.db = db
        self.settings = settings
        self.cell = cell
        self._source: Header = (H_SOURCE, f"/tenantry/{db.cell(cell).name}".encode())
        self._types, self._tiers = _Headers(H_TYPE), _Headers(H_TIER)
        self._versions = _Headers(H_SCHEMA_VERSION)
        # The last ce_time built, and the occurred-at it is of (NaN equals no moment).
        self._time_of, self._time = math.nan, (H_TIME, b"")
        self.producer = producer or Producer(producer_config(settings.kafka_bootstrap))
        self.topics = TopicAdmin(settings.kafka_bootstrap, partitions=settings.topic_partitions)
        self.idle_seconds = idle_seconds
        self.relayed = 0
        self.rounds = 0
        """Rounds that moved at least one event."""
        self.listening = asyncio.Event()
        self.backlog = False
        """Whether the last claim found its window full: more events may be waiting, and
        the next round starts at once."""
        # Told (tier, each event's seconds from its write to Kafka's ack) per round and
        # tier (metrics).
        self.observe_lags: Callable[[str, Sequence[float]], None] | None = None

    async def run(self) -> None:
        """Relay until cancelled; after a database or Kafka failure, retry shortly."""
        try:
            await keep_running(self._run, what="relay", active=self.listening)
        finally:
            await asyncio.to_thread(self.producer.flush, 5.0)

    async def _run(self) -> None:
        async with await AsyncConnection[Any].connect(
            self.db.cell(self.cell).owner_url,
            autocommit=True,
            application_name="tenantry-relay",
            keepalives=1,
            keepalives_idle=10,
            keepalives_interval=3,
            keepalives_count=3,
        ) as listener:
            await listener.execute(f"LISTEN {OUTBOX_CHANNEL}")
            self.listening.set()
            loop = asyncio.get_running_loop()
            while True:
                started = loop.time()
                await self.relay_batch()
                if self.backlog:
                    continue  # the next round at once
                async for _ in listener.notifies(timeout=self.idle_seconds, stop_after=1):
                    pass
                # Woken (or timed out): let the interval since the last round's start run
                # out, so this round takes every event committed meanwhile.
                pause = started + self.settings.relay_interval - loop.time()
                if pause > 0:
                    await asyncio.sleep(pause)

    async def relay_batch(self) -> int:
        """Claim, produce and acknowledge one round (one transaction); returns how many
        events it moved. A round is one claim, or up to :data:`CLAIMS_PER_ROUND` claims
        while they find their window full, each made while Kafka acknowledges the previous
        one; :attr:`backlog` then tells whether the last one did.
        The round runs with the cyclic garbage collector paused (see :func:`gc_paused`)."""
        with gc_paused():
            return await self._round()

    async def _round(self) -> int:
        moved = 0
        occurred: dict[str, list[float]] = {}  # per tier, each moved event's occurred-at
        # The round's first claim rides in the message that opens its transaction.
        async with self.db.transaction(cell=self.cell, first=self._first_claim) as conn:
            acknowledged: list[Awaitable[None]] = []
            following: asyncio.Task[list[Any]] | None = None
            try:
                rows = self._claimed(first_rows(conn))
                self.backlog = self._window_full(rows)
                while rows:
                    if self.backlog and len(acknowledged) + 1 < CLAIMS_PER_ROUND:
                        # A full window: the next claim goes to the server now, and the
                        # server runs it while this one's records are built and produced
                        # (they are produced first: the order holds).
                        following = asyncio.ensure_future(self.claim(conn))
                        await asyncio.sleep(0)  # sent
                    await self.topics.ensure({row[5] for row in rows})
                    records = [self.record(row) for row in rows]
                    acknowledged.append(await self.send(records))
                    moved += len(rows)
                    if self.observe_lags is not None:
                        _add_occurred(occurred, rows)
                    # Freed now, while the server claims, not once the round is over.
                    records = rows = []
                    if following is None:
                        break
                    rows, following = await following, None  # Kafka sends meanwhile
                    self.backlog = self._window_full(rows)
                for done in acknowledged:
                    await done
            except KafkaUnavailableError:
                self.discard()  # the round rolls back and is claimed again
                raise
            finally:
                if following is not None:  # let it finish: the connection is then free
                    with contextlib.suppress(Exception):
                        await following
                for done in acknowledged:  # any not awaited: closed without a warning
                    if inspect.iscoroutine(done):
                        done.close()
        self.relayed += moved
        self.rounds += bool(moved)
        if self.observe_lags is not None and occurred:
            now = time.time()
            for tier, times in occurred.items():
                self.observe_lags(tier, [now - t for t in times])
        return moved

    async def claim(self, conn: AsyncConnection[Any]) -> list[Any]:
        """Take (delete, in ``conn``'s open transaction) the next batch, oldest first."""
        cur = await conn.execute(_CLAIM, self._claim_values)
        return self._claimed(await cur.fetchall())

    @property
    def _claim_values(self) -> tuple[int, int]:
        return (self.settings.relay_batch, RELAY_LOCK)

    @functools.cached_property
    def _first_claim(self) -> Prepared:
        """:meth:`claim`, prepared on each connection, to open a round with."""
        return _PREPARED_CLAIM.bind(*self._claim_values)

    def _window_full(self, rows: list[Any]) -> bool:
        """Whether the claim that took ``rows`` found its window full."""
        return bool(rows) and _WINDOW(rows[0]) >= self.settings.relay_batch

    @staticmethod
    def _claimed(rows: list[Any]) -> list[Any]:
        rows.sort(key=_SEQ)
        return rows

    def record(self, row: Any) -> Record:
        """The Kafka record of a claimed row: topic, key, value, headers."""
        (
            _,
            event_id,
            tenant_id,
            tier,
            event_type,
            topic,
            subject,
            version,
            occurred_at,
            traceparent,
            payload,
            _window,
        ) = row
        key = tenant_id.encode()
        if occurred_at != self._time_of:  # the events of one publishing call share it
            self._time_of = occurred_at
            self._time = (H_TIME, format_epoch(occurred_at))
        headers: list[Header] = [
            _SPEC_HEADER,
            (H_ID, event_id.encode()),
            self._types[event_type],
            self._source,
            self._time,
            (H_TENANT, key),
            self._tiers[tier],
            self._versions[version],
            _CONTENT_HEADER,
        ]
        if subject is not None:
            headers.append((H_SUBJECT, subject.encode()))
        if traceparent:
            headers.append((H_TRACEPARENT, traceparent.encode()))
        return topic, key, payload.encode(), headers

    async def deliver(self, records: list[Record]) -> None:
        """Produce ``records`` and return once Kafka acknowledged all of them (raises
        :class:`KafkaUnavailableError` otherwise, after dropping what is still queued)."""
        try:
            await (await self.send(records))
        except KafkaUnavailableError:
            self.discard()
            raise

    async def send(self, records: list[Record]) -> Awaitable[None]:
        """Hand ``records`` to the producer, which sends them in the background; returns
        what to await for Kafka's acknowledgement of all of them (it raises
        :class:`KafkaUnavailableError` if any failed or the wait ran out)."""
        tracker = DeliveryTracker()
        produce = self.producer.produce
        for topic, key, value, headers in records:
            while True:
                try:
                    produce(topic, value=value, key=key, headers=headers, on_delivery=tracker)
                    break
                except BufferError:  # local queue full: let deliveries drain
                    self.producer.poll(0.05)
        return asyncio.to_thread(flush_all, self.producer, tracker, self.producer_timeout)

    def discard(self) -> None:
        """Drop records still queued in the producer: their round failed and rolls back."""
        self.producer.purge()

    @property
    def producer_timeout(self) -> float:
        """How long one batch may wait for Kafka's acknowledgements (seconds)."""
        return 130.0

    async def close(self) -> None:
        """Deliver what is queued (bounded wait)."""
        await asyncio.to_thread(self.producer.flush, 10.0)
