"""Publishing: events join the caller's tenant-bound transaction.

``publish`` writes the event to the outbox in the transaction that makes the business
write, in one round trip (one call of ``tenantry.publish_events``); when that transaction
commits, a deferred trigger appends the event to the tenant's audit chain (so the chain's
head is locked only while it commits). Outbox and chain commit together or not at all: a
rolled-back transaction (or savepoint) publishes nothing, and a committed one cannot lose
its events, whatever happens to Kafka or to the process afterwards.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from psycopg import AsyncClientCursor, AsyncConnection
from psycopg.pq import TransactionStatus
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from tenantry.context import TenantContext, current_tenant
from tenantry.db.binding import begin_statement
from tenantry.db.transaction import current_transaction, notify_after_commit
from tenantry.events.envelope import current_traceparent, topic_for, uuid7
from tenantry.events.errors import InvalidEventError, NoTransactionError
from tenantry.events.schema import OUTBOX_CHANNEL

_PUBLISH = "SELECT tenantry.publish_events(%s, %s, %s, %s)"
# In a transaction tenantry commits itself, the wake-up is sent right after COMMIT instead
# (see tenantry.db.transaction.notify_after_commit): append only.
_APPEND = "SELECT tenantry.append_events(%s, %s, %s, %s)"


@dataclass(frozen=True, slots=True)
class NewEvent:
    """One event for :meth:`EventPublisher.publish_many`."""

    type: str
    payload: Any
    key: str | None = None
    schema_version: int = 1


class EventPublisher:
    """Writes events to the outbox of the transaction's database."""

    def __init__(self, *, topic_prefix: str) -> None:
        self.topic_prefix = topic_prefix

    async def publish(
        self,
        type: str,
        payload: Any,
        *,
        key: str | None = None,
        schema_version: int = 1,
        conn: AsyncConnection[Any] | None = None,
    ) -> UUID:
        """Publish one event in the current tenant-bound transaction; returns its id.

        ``type`` is ``<family>.<name>`` (the family names the Kafka topic); ``payload`` is
        anything JSON can encode; ``key`` names what the event is about (carried as
        ``ce_subject``; the record key is always the tenant). ``conn`` defaults to the
        innermost transaction opened with ``platform.db.tenant_transaction()``.
        """
        ids = await self.publish_many([NewEvent(type, payload, key, schema_version)], conn=conn)
        return ids[0]

    async def publish_many(
        self, events: Iterable[NewEvent], *, conn: AsyncConnection[Any] | None = None
    ) -> list[UUID]:
        """Publish several events, in order, in one round trip; returns their ids."""
        batch: Sequence[NewEvent] = list(events)
        if not batch:
            return []
        conn = conn or current_transaction()
        if conn is None:
            raise NoTransactionError(
                "publish() needs a transaction: call it inside "
                "'async with platform.db.tenant_transaction() as conn' (or pass conn=)"
            )
        tenant = current_tenant()
        ids, documents = self._documents(batch)
        quiet = current_transaction() is conn
        try:
            # One JSON document for the batch: far cheaper to encode than typed arrays.
            cur = await conn.execute(
                _APPEND if quiet else _PUBLISH,
                (tenant.tier, datetime.now(UTC), current_traceparent(), Jsonb(documents)),
            )
        except TypeError as exc:  # json.dumps on something JSON cannot encode
            raise InvalidEventError(f"event payload is not JSON-serialisable: {exc}") from None
        if quiet:
            row = await cur.fetchone()
            notify_after_commit(conn, OUTBOX_CHANNEL, xid=row[0] if row else None)
        return ids

    async def publish_alone(
        self,
        pool: AsyncConnectionPool[AsyncConnection[Any]],
        tenant: TenantContext,
        events: Iterable[NewEvent],
    ) -> list[UUID]:
        """Publish ``events`` for ``tenant`` in a transaction of their own, committed when
        this returns: ``BEGIN``, the tenant binding, the publish and ``COMMIT`` leave as one
        message, so it costs one round trip where a transaction opened for it would cost
        three. ``pool`` holds application-role connections of the tenant's cell."""
        batch: Sequence[NewEvent] = list(events)
        if not batch:
            return []
        ids, documents = self._documents(batch)
        params = (tenant.tier, datetime.now(UTC), current_traceparent(), Jsonb(documents))
        async with pool.connection() as conn:
            cur = AsyncClientCursor(conn)  # client-side binding: one simple-query message
            try:
                begin = begin_statement(tenant).replace("%", "%%")
                await cur.execute(f"{begin}; {_PUBLISH}; COMMIT", params)
            except TypeError as exc:
                raise InvalidEventError(f"event payload is not JSON-serialisable: {exc}") from None
            finally:
                if not conn.closed and conn.info.transaction_status != TransactionStatus.IDLE:
                    await conn.execute("ROLLBACK")
        return ids

    def _documents(self, batch: Sequence[NewEvent]) -> tuple[list[UUID], list[dict[str, Any]]]:
        """The events' ids (time-ordered) and the JSON documents ``publish_events`` takes."""
        ids = [uuid7() for _ in batch]
        documents: list[dict[str, Any]] = []
        for event_id, event in zip(ids, batch, strict=True):
            if event.key is not None and not isinstance(event.key, str):
                raise InvalidEventError(f"event key must be a string, got {event.key!r}")
            if isinstance(event.schema_version, bool) or not isinstance(event.schema_version, int):
                raise InvalidEventError("schema_version must be an integer")
            documents.append(
                {
                    "id": str(event_id),
                    "type": event.type,
                    "topic": topic_for(self.topic_prefix, event.type),
                    "subject": event.key,
                    "version": event.schema_version,
                    "payload": event.payload,
                }
            )
        return ids, documents
