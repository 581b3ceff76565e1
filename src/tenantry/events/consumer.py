"""Consuming from Kafka: records to envelopes, the shared pipeline, offsets after effects.

Records are dealt out to **tenant lanes** as they arrive: one task per tenant with work,
taking that tenant's queued records in order, a batch at a time (one transaction while
none fails, see :mod:`tenantry.events.processor`); up to ``concurrency`` lanes run at
once. The poll loop keeps fetching meanwhile (at most four polls' worth of records in
flight), so an event waits for its own tenant's earlier events, never for a slow tenant's
batch. A tenant's records all live in one partition (the key is the tenant), so a lane
sees them in log order.

A record's offset is committed only once it and every record before it in its partition
have been handled (per partition, the end of the contiguous handled prefix): at most
every ``EventsSettings.commit_interval`` while records flow, whenever a poll finds none,
and when the consumer stops. A consumer killed mid-handler leaves its offsets behind its
effects; the group's next owner of the partition replays from there and the inbox skips
what was already handled. A lane's infrastructure failure (the database gone) stops the
consumer, which rejoins from the committed offsets. Dead letters go to
``<prefix><group>.dlq`` with the original key, value and headers plus ``dlq_error``,
``dlq_attempts`` and ``dlq_consumer``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any
from uuid import UUID

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from tenantry.events._loop import keep_running
from tenantry.events.envelope import Envelope
from tenantry.events.errors import InvalidEventError
from tenantry.events.handlers import EventHandlers
from tenantry.events.kafka import (
    DeliveryTracker,
    TopicAdmin,
    consumer_config,
    flush_all,
    producer_config,
)
from tenantry.events.processor import EventProcessor

if TYPE_CHECKING:
    from tenantry.events.service import Events

logger = logging.getLogger("tenantry.events.consumer")


def dead_letter_topic(prefix: str, group: str) -> str:
    """The dead-letter topic of a consumer group."""
    return f"{prefix}{group}.dlq"


class KafkaDeadLetters:
    """Dead letters produced to the group's DLQ topic (and acknowledged before the
    original's offset is committed)."""

    def __init__(self, producer: Producer, topic: str, group: str) -> None:
        self.producer = producer
        self.topic = topic
        self.group = group

    async def send(self, envelope: Envelope, error: str, attempts: int) -> None:
        """Produce the dead letter and wait for Kafka's acknowledgement."""
        await self.send_raw(envelope.key(), envelope.value(), envelope.headers(), error, attempts)

    async def send_raw(
        self,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]],
        error: str,
        attempts: int,
    ) -> None:
        """Dead-letter a record as it came (one that is not even a valid event, say)."""
        tracker = DeliveryTracker()
        self.producer.produce(
            self.topic,
            key=key,
            value=value,
            headers=[
                *headers,
                ("dlq_error", error.encode()),
                ("dlq_attempts", str(attempts).encode()),
                ("dlq_consumer", self.group.encode()),
            ],
            on_delivery=tracker,
        )
        await asyncio.to_thread(flush_all, self.producer, tracker, 60.0)


class KafkaEventConsumer:
    """One member of a consumer group reading the handlers' topics from Kafka."""

    def __init__(self, events: Events, group: str, handlers: EventHandlers) -> None:
        bootstrap = events.settings.kafka_bootstrap
        assert bootstrap is not None
        self.bootstrap = bootstrap
        self.settings = events.settings
        self.group = group
        self.handlers = handlers
        self.topics = sorted(self.settings.topic_prefix + f for f in handlers.families)
        self.dlq_topic = dead_letter_topic(self.settings.topic_prefix, group)
        self.producer = Producer(producer_config(bootstrap, **{"client.id": f"dlq-{group}"}))
        self.dead_letters = KafkaDeadLetters(self.producer, self.dlq_topic, group)
        self.processor = events.processor(group, handlers, dead_letters=self.dead_letters)
        self.admin = TopicAdmin(bootstrap, partitions=self.settings.topic_partitions)
        self.active = asyncio.Event()
        """Set once the consumer has joined its group and received partitions."""

    async def run(self) -> None:
        """Consume until cancelled; after a failure, rejoin from the committed offsets."""
        await keep_running(self._run, what=f"consumer {self.group}", active=self.active)

    async def _run(self) -> None:
        await self.admin.ensure([*self.topics, self.dlq_topic])
        executor = ThreadPoolExecutor(1, thread_name_prefix=f"kafka-{self.group}")
        loop = asyncio.get_running_loop()

        def assigned(_consumer: Consumer, partitions: list[Any]) -> None:
            if partitions:
                loop.call_soon_threadsafe(self.active.set)

        consumer = Consumer(consumer_config(self.bootstrap, self.group))
        flight = _InFlight()
        lanes = _Lanes(self.processor, flight, self.settings.consumer_batch)
        most = 4 * self.settings.consumer_batch
        interval = self.settings.commit_interval
        next_commit = 0.0

        def revoked(consumer: Consumer, partitions: list[Any]) -> None:
            # In the poll's thread, while the event loop runs the lanes: let the records of
            # the partitions leaving us finish, commit their offsets, and only then let the
            # new owner start (so a tenant is never handled by two members at once).
            keys = {(p.topic, p.partition) for p in partitions}
            if lanes.closed or not keys:
                return
            future = asyncio.run_coroutine_threadsafe(lanes.hand_over(keys), loop)
            try:
                offsets = future.result(timeout=_HAND_OVER_SECONDS)
                if offsets:
                    consumer.commit(offsets=offsets, asynchronous=False)
            except Exception as exc:  # the new owner replays; the inbox absorbs it
                future.cancel()
                logger.warning(
                    "consumer %s: partitions handed over unfinished: %s", self.group, exc
                )

        try:
            consumer.subscribe(self.topics, on_assign=assigned, on_revoke=revoked)
            async with asyncio.TaskGroup() as group:
                lanes.group = group
                while True:
                    if flight.count >= most:
                        await lanes.room(most)
                    messages = await loop.run_in_executor(
                        executor, _fetch, consumer, self.settings.consumer_batch
                    )
                    for message, envelope in await self._decode(messages):
                        position = _position(message)
                        if position is None:
                            continue
                        flight.add(position)
                        if envelope is None:  # dead-lettered as it came
                            flight.done(position)
                        else:
                            lanes.deal(envelope, position)
                    # Commit at most every commit_interval while records flow, and
                    # whenever a poll comes back empty. One commit per poll is an
                    # OffsetCommit request (a write to __consumer_offsets) per handful of
                    # records at low rates: about half of the broker's CPU, measured.
                    now = loop.time()
                    if messages and now < next_commit:
                        continue
                    next_commit = now + interval
                    offsets = flight.committable()
                    if offsets:
                        try:
                            await loop.run_in_executor(executor, _commit, consumer, offsets)
                        except KafkaException as exc:  # a rebalance took the partitions
                            logger.warning("consumer %s could not commit: %s", self.group, exc)
        finally:
            lanes.closed = True
            self.active.clear()
            with contextlib.suppress(Exception):  # what is handled by now (else: replayed)
                await loop.run_in_executor(executor, _commit, consumer, flight.committable())
            await loop.run_in_executor(executor, consumer.close)
            executor.shutdown(wait=False)

    async def _decode(self, messages: list[Message]) -> list[tuple[Message, Envelope | None]]:
        """Each record with its envelope, or ``None`` once a record that is not a valid
        event has been dead-lettered as it came."""
        out: list[tuple[Message, Envelope | None]] = []
        for message in messages:
            error = message.error()
            if error is not None:
                if error.fatal():
                    raise KafkaException(error)
                logger.warning("consumer %s: %s", self.group, error)
                continue
            headers = _headers(message)
            try:
                out.append((message, Envelope.from_record(headers, message.value())))
            except InvalidEventError as exc:
                await self.dead_letters.send_raw(
                    message.key(),
                    message.value(),
                    headers,
                    str(exc),
                    0,
                )
                out.append((message, None))
        return out


_HAND_OVER_SECONDS = 30.0
"""How long a rebalance waits for the records of the partitions leaving this member."""

_Position = tuple[str, int, int]
"""(topic, partition, offset) of a record."""


def _position(message: Message) -> _Position | None:
    topic, partition, offset = message.topic(), message.partition(), message.offset()
    if topic is None or partition is None or offset is None or offset < 0:
        return None
    return topic, partition, offset


class _InFlight:
    """The records taken from Kafka and not yet handled, per partition, in offset order;
    what may be committed (per partition, the end of the handled prefix)."""

    def __init__(self) -> None:
        self.count = 0
        self._open: dict[tuple[str, int], dict[int, bool]] = {}
        self._commit: dict[tuple[str, int], int] = {}

    def add(self, position: _Position) -> None:
        topic, partition, offset = position
        self._open.setdefault((topic, partition), {})[offset] = False
        self.count += 1

    def done(self, position: _Position) -> None:
        topic, partition, offset = position
        key = (topic, partition)
        records = self._open[key]
        records[offset] = True
        self.count -= 1
        # Offsets were added in increasing order and dicts keep insertion order.
        while records:
            first = next(iter(records))
            if not records[first]:
                break
            del records[first]
            self._commit[key] = first + 1

    def committable(self) -> list[TopicPartition]:
        """The offsets to commit now (each partition's once), then forgotten."""
        offsets = [TopicPartition(t, p, offset) for (t, p), offset in self._commit.items()]
        self._commit.clear()
        return offsets

    def _commit_of(self, keys: set[tuple[str, int]]) -> list[tuple[str, int]]:
        return [key for key in keys if key in self._commit]

    def busy(self, keys: set[tuple[str, int]]) -> bool:
        """Whether any record of these partitions is still in flight."""
        return any(self._open.get(key) for key in keys)

    def release(self, keys: set[tuple[str, int]]) -> list[TopicPartition]:
        """Forget these (idle) partitions; their offsets still to commit."""
        offsets = [
            TopicPartition(t, p, self._commit.pop((t, p)))
            for t, p in keys
            if (t, p) in self._commit
        ]
        for key in keys:
            self._open.pop(key, None)
        return offsets


class _Lanes:
    """One task per tenant with queued records, each taking its tenant's records in order,
    a batch at a time; at most the processor's ``concurrency`` of them handling at once."""

    def __init__(self, processor: EventProcessor, flight: _InFlight, batch: int) -> None:
        self.processor = processor
        self.flight = flight
        self.batch = batch
        self.group: asyncio.TaskGroup | None = None
        self._queues: dict[UUID, list[tuple[Envelope, _Position]]] = {}
        self._gate = asyncio.Semaphore(processor.concurrency)
        self._progress = asyncio.Event()
        self.closed = False

    def deal(self, envelope: Envelope, position: _Position) -> None:
        """Queue a record on its tenant's lane (starting the lane if it is idle)."""
        queue = self._queues.get(envelope.tenant_id)
        if queue is not None:
            queue.append((envelope, position))
            return
        self._queues[envelope.tenant_id] = [(envelope, position)]
        assert self.group is not None
        self.group.create_task(self._lane(envelope.tenant_id))

    async def room(self, most: int) -> None:
        """Wait until fewer than ``most`` records are in flight."""
        while self.flight.count >= most:
            self._progress.clear()
            await self._progress.wait()

    async def hand_over(self, keys: set[tuple[str, int]]) -> list[TopicPartition]:
        """Wait until no record of these partitions is in flight; their final offsets."""
        while self.flight.busy(keys):
            self._progress.clear()
            await self._progress.wait()
        return self.flight.release(keys)

    async def _lane(self, tenant: UUID) -> None:
        queue = self._queues[tenant]
        while queue:
            taken = queue[: self.batch]
            del queue[: len(taken)]
            async with self._gate:
                await self.processor.process_batch([envelope for envelope, _ in taken])
            for _, position in taken:
                self.flight.done(position)
            self._progress.set()
        # No await since the queue was last seen empty: deal() cannot have added to it.
        del self._queues[tenant]


def _fetch(consumer: Consumer, most: int) -> list[Message]:
    # consume(n, timeout) waits for n records or the timeout, whichever comes first: at
    # low rates that is the timeout, in latency. Wait for one record instead, then take
    # whatever else is already fetched, up to a batch, without waiting.
    first = consumer.poll(0.2)
    if first is None:
        return []
    return [first, *consumer.consume(most - 1, 0)] if most > 1 else [first]


def _headers(message: Message) -> list[tuple[str, bytes]]:
    raw = message.headers() or []
    pairs = raw.items() if isinstance(raw, dict) else raw
    return [
        (name, value.encode() if isinstance(value, str) else value or b"") for name, value in pairs
    ]


def _commit(consumer: Consumer, offsets: list[TopicPartition]) -> None:
    # Explicit offsets, never "the current positions": an asynchronous commit of positions
    # is built when the request leaves, and by then the next poll may have moved them past
    # records whose effects are not committed (a SIGKILL then loses that batch).
    # Asynchronous: the next poll need not wait for the broker's answer. A lost commit
    # means a replay, which the inbox absorbs.
    if not offsets:
        return
    try:
        consumer.commit(offsets=offsets, asynchronous=True)
    except KafkaException as exc:
        error = exc.args[0] if exc.args else None
        if isinstance(error, KafkaError) and error.code() == KafkaError._NO_OFFSET:
            return  # nothing consumed since the last commit
        raise
