"""Consuming from Kafka: records to envelopes, the shared pipeline, offsets after effects.

A poll takes up to ``consumer_batch`` records; the batch is processed (tenants
concurrently, each tenant in order, see :mod:`tenantry.events.processor`) and only then
are the offsets committed. A consumer killed mid-batch leaves its offsets where they
were; the group's next owner of the partition replays the batch and the inbox skips what
was already handled. Dead letters go to ``<prefix><group>.dlq`` with the original key,
value and headers plus ``dlq_error``, ``dlq_attempts`` and ``dlq_consumer``.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

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
        try:
            consumer.subscribe(self.topics, on_assign=assigned)
            while True:
                messages = await loop.run_in_executor(
                    executor, _fetch, consumer, self.settings.consumer_batch
                )
                if not messages:
                    continue
                await self._handle(messages)
                try:
                    await loop.run_in_executor(executor, _commit, consumer, _handled(messages))
                except KafkaException as exc:  # a rebalance took the partitions
                    logger.warning("consumer %s could not commit: %s", self.group, exc)
        finally:
            self.active.clear()
            await loop.run_in_executor(executor, consumer.close)
            executor.shutdown(wait=False)

    async def _handle(self, messages: list[Message]) -> None:
        envelopes: list[Envelope] = []
        for message in messages:
            error = message.error()
            if error is not None:
                if error.fatal():
                    raise KafkaException(error)
                logger.warning("consumer %s: %s", self.group, error)
                continue
            headers = _headers(message)
            try:
                envelopes.append(Envelope.from_record(headers, message.value()))
            except InvalidEventError as exc:
                await self.dead_letters.send_raw(
                    message.key(),
                    message.value(),
                    headers,
                    str(exc),
                    0,
                )
        if envelopes:
            await self.processor.process_batch(envelopes)


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


def _handled(messages: list[Message]) -> list[TopicPartition]:
    """The offsets to commit after ``messages`` were handled: per partition, the one after
    the last handled record."""
    last: dict[tuple[str, int], int] = {}
    for message in messages:
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        if topic is None or partition is None or offset is None or offset < 0:
            continue
        key = (topic, partition)
        last[key] = max(offset, last.get(key, -1))
    return [TopicPartition(topic, part, offset + 1) for (topic, part), offset in last.items()]


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
