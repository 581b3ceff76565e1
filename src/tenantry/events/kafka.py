"""Kafka clients, configured the one way tenantry uses them (confluent-kafka/librdkafka).

Why confluent-kafka rather than aiokafka: ``bench/events.py`` measures both clients'
raw producer rate on the same records and broker; librdkafka batches and compresses in
C threads, so the Python side only enqueues (see the README, "Events", for the figures).
Its calls that block (``flush``, ``consume``, ``commit``) run in a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from tenantry.events.errors import KafkaUnavailableError

logger = logging.getLogger("tenantry.events.kafka")


def producer_config(bootstrap: str, **overrides: Any) -> dict[str, Any]:
    """An idempotent producer: ``acks=all``, retries without duplicates or reordering
    within a partition, small lingering so batches fill under load.

    Only failed deliveries are reported (``delivery.report.only.error``): tenantry waits
    for acknowledgements with ``flush`` and only needs to know what failed, and a callback
    per acknowledged record made the thread that flushes take the GIL from the relay's
    event loop once per record (relay drains of 30,000 events, ten in-process alternating
    pairs, twice: 1.055x and 1.079x the events/s with successes left unreported)."""
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 2,
        "batch.num.messages": 10_000,
        "queue.buffering.max.messages": 500_000,
        "compression.type": "lz4",
        "message.timeout.ms": 120_000,
        "client.id": "tenantry-relay",
        "delivery.report.only.error": True,
    }
    config.update(overrides)
    return config


def consumer_config(bootstrap: str, group: str, **overrides: Any) -> dict[str, Any]:
    """A consumer that commits only what it has processed, from the earliest record of a
    partition it has no position in.

    ``fetch.wait.max.ms`` bounds only how long the broker holds a fetch that finds nothing:
    a record produced meanwhile answers it at once. Measured on the devstack broker, a
    record every 50 ms: 10 ms cost the broker ~10.5 % of a core per consumer, 100 ms
    ~4.4 % (the idle broker alone: 3-4 %), and records arrived as fast (p50 1.3 ms)."""
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
        "client.id": f"tenantry-consume-{group}",
        "fetch.wait.max.ms": 100,
        "session.timeout.ms": 10_000,
        "heartbeat.interval.ms": 1_000,
    }
    config.update(overrides)
    return config


class TopicAdmin:
    """Creates topics that do not exist yet (once per process per topic)."""

    def __init__(self, bootstrap: str, *, partitions: int, replication: int = 1) -> None:
        self.admin = AdminClient({"bootstrap.servers": bootstrap})
        self.partitions = partitions
        self.replication = replication
        self._known: set[str] = set()

    async def ensure(self, topics: Iterable[str]) -> None:
        """Create the missing ones among ``topics``; existing topics are left alone."""
        missing = sorted(set(topics) - self._known)
        if not missing:
            return
        await asyncio.to_thread(self._create, missing)
        self._known.update(missing)

    async def drop(self, prefix: str) -> list[str]:
        """Delete every topic whose name starts with ``prefix`` (a test's or a benchmark's
        own ``topic_prefix``, say); returns their names. A broker keeps the partitions of
        every topic until it is deleted, and each costs it memory and work."""
        if not prefix:
            raise ValueError("an empty prefix would name every topic")
        return await asyncio.to_thread(self._drop, prefix)

    def _drop(self, prefix: str) -> list[str]:
        names = sorted(t for t in self.admin.list_topics(timeout=30).topics if t.startswith(prefix))
        if not names:
            return []
        futures = self.admin.delete_topics(names, operation_timeout=30, request_timeout=30)
        # A topic deleted meanwhile is as good as deleted here.
        _await_topics(futures, "delete", benign=KafkaError.UNKNOWN_TOPIC_OR_PART)
        self._known.difference_update(names)
        return names

    def _create(self, topics: list[str]) -> None:
        futures = self.admin.create_topics(
            [
                NewTopic(t, num_partitions=self.partitions, replication_factor=self.replication)
                for t in topics
            ],
            operation_timeout=30,
            request_timeout=30,
        )
        for topic in _await_topics(futures, "create", benign=KafkaError.TOPIC_ALREADY_EXISTS):
            logger.info("created topic %s (%d partitions)", topic, self.partitions)


def _await_topics(futures: dict[str, Any], verb: str, *, benign: int) -> list[str]:
    """Wait for an admin operation on topics; the topics it did (a ``benign`` error code
    counts as nothing to do). Any other error raises :class:`KafkaUnavailableError`."""
    done: list[str] = []
    for topic, future in futures.items():
        try:
            future.result()
        except KafkaException as exc:
            error = exc.args[0]
            if isinstance(error, KafkaError) and error.code() == benign:
                continue
            raise KafkaUnavailableError(f"could not {verb} topic {topic!r}: {error}") from exc
        done.append(topic)
    return done


class DeliveryTracker:
    """A produce call's ``on_delivery``: remembers the first failed delivery (successful
    ones are not reported, see :func:`producer_config`)."""

    def __init__(self) -> None:
        self.failed: KafkaError | None = None

    def __call__(self, error: KafkaError | None, _message: Any) -> None:
        if error is not None and self.failed is None:
            self.failed = error


def flush_all(producer: Producer, tracker: DeliveryTracker, deadline_seconds: float) -> None:
    """Block (in a worker thread) until every queued record is delivered or failed, or
    ``deadline_seconds`` passed; raises :class:`KafkaUnavailableError` on any failure."""
    remaining = producer.flush(deadline_seconds)
    if tracker.failed is not None:
        raise KafkaUnavailableError(f"Kafka refused a record: {tracker.failed}")
    if remaining:
        raise KafkaUnavailableError(
            f"{remaining} record(s) not acknowledged by Kafka within {deadline_seconds:.0f} s"
        )
