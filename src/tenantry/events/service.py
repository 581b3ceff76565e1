"""``platform.events``: publishing, the audit trail, and consumers and relays built from
the platform's settings (Kafka when configured, the outbox log otherwise)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any
from uuid import UUID

from psycopg import AsyncConnection

from tenantry.catalog import TenantDirectory
from tenantry.context import TenantContext, current_tenant
from tenantry.db import Database
from tenantry.events.audit import AuditTrail
from tenantry.events.handlers import EventHandlers, HandlerRunner, call_handler
from tenantry.events.outbox import EventPublisher, NewEvent
from tenantry.events.pglog import OutboxLogConsumer
from tenantry.events.processor import (
    DeadLetterSink,
    EventProcessor,
    PostgresDeadLetters,
    RetryPolicy,
)
from tenantry.settings import EventsSettings

logger = logging.getLogger("tenantry.events")

if TYPE_CHECKING:
    from tenantry.events.consumer import KafkaEventConsumer
    from tenantry.events.relay import OutboxRelay


class Events:
    """The events capability of one platform."""

    def __init__(self, db: Database, directory: TenantDirectory, settings: EventsSettings) -> None:
        self.db = db
        self.directory = directory
        self.settings = settings
        self.publisher = EventPublisher(topic_prefix=settings.topic_prefix)
        self.audit = AuditTrail(db)
        self.run_handler: HandlerRunner = call_handler
        """How handlers are invoked; observability replaces it to wrap each call."""
        self.observe_outbox_lags: Callable[[str, Sequence[float]], None] | None = None
        """Told (tier, seconds of each event) per relay round, for the events of each tier
        it moved to Kafka (observability)."""
        self._background: dict[str, EventHandlers] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.consumers: list[OutboxLogConsumer | KafkaEventConsumer] = []

    @property
    def embedded(self) -> bool:
        """Whether no Kafka is configured (consumers read the outbox as the log)."""
        return self.settings.kafka_bootstrap is None

    async def publish(
        self,
        type: str,
        payload: Any,
        *,
        key: str | None = None,
        schema_version: int = 1,
        conn: AsyncConnection[Any] | None = None,
    ) -> UUID:
        """Publish an event in the current tenant-bound transaction (see
        :meth:`EventPublisher.publish`)."""
        return await self.publisher.publish(
            type, payload, key=key, schema_version=schema_version, conn=conn
        )

    async def publish_many(
        self, events: Iterable[NewEvent], *, conn: AsyncConnection[Any] | None = None
    ) -> list[UUID]:
        """Publish several events in one round trip."""
        return await self.publisher.publish_many(events, conn=conn)

    async def publish_alone(
        self, events: Iterable[NewEvent], *, tenant: TenantContext | None = None
    ) -> list[UUID]:
        """Publish events that go with no business write, in a transaction of their own
        (committed when this returns), in one round trip. ``tenant`` defaults to the one
        bound to the current context."""
        ctx = tenant or current_tenant()
        return await self.publisher.publish_alone(self.db.cell(ctx.cell).app_pool, ctx, events)

    def processor(
        self,
        group: str,
        handlers: EventHandlers,
        *,
        dead_letters: DeadLetterSink | None = None,
    ) -> EventProcessor:
        """The shared processing pipeline for consumer group ``group``."""
        return EventProcessor(
            self.db,
            self.directory,
            handlers,
            consumer=group,
            dead_letters=dead_letters or PostgresDeadLetters(self.db, group),
            retry=RetryPolicy(
                self.settings.max_attempts, self.settings.backoff, self.settings.max_backoff
            ),
            concurrency=self.settings.concurrency,
            run_handler=self.run_handler,
        )

    def consumer(
        self, group: str, handlers: EventHandlers
    ) -> OutboxLogConsumer | KafkaEventConsumer:
        """A consumer for ``group``: from Kafka when configured, else from the outbox.

        Either way the handlers are the same; ``await consumer.run()`` consumes until
        cancelled.
        """
        if self.embedded:
            return OutboxLogConsumer(
                self.db,
                self.processor(group, handlers),
                batch_size=self.settings.consumer_batch,
                retention_seconds=self.settings.log_retention,
            )
        from tenantry.events.consumer import KafkaEventConsumer

        return KafkaEventConsumer(self, group, handlers)

    def relay(self) -> OutboxRelay:
        """The outbox relay to Kafka (needs ``TENANTRY_KAFKA_BOOTSTRAP``)."""
        from tenantry.events.relay import OutboxRelay

        relay = OutboxRelay(self.db, self.settings)
        relay.observe_lags = self.observe_outbox_lags
        return relay

    def add_consumer(self, group: str, handlers: EventHandlers) -> None:
        """Run ``group``'s handlers inside this process while the platform runs, when
        ``consume_in_app`` is on (the embedded default); otherwise ``tenantry consume``
        runs them."""
        self._background[group] = handlers

    async def start(self) -> None:
        """Start the consumers added with :meth:`add_consumer` (if they run in-app)."""
        if not self.settings.consume_in_app:
            return
        for group, handlers in self._background.items():
            consumer = self.consumer(group, handlers)
            self.consumers.append(consumer)
            self._tasks.append(asyncio.create_task(consumer.run(), name=f"tenantry-{group}"))

    async def stop(self) -> None:
        """Stop the in-process consumers."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        self.consumers.clear()
