"""The pipeline every consumer shares, whatever it reads from (Kafka or the outbox).

For each event: restore the tenant context from the envelope, open a transaction bound to
that tenant, record the event in the inbox (skip it if it is there: a redelivery), run the
handler, commit. A handler that raises is retried with exponential backoff, each attempt
in a fresh transaction; after ``max_attempts`` the event goes to the dead-letter queue
with the error and the attempt count, and processing goes on.

**DLQ policy.** A poison event holds up only its own tenant, and only for its retry budget
(``backoff`` doubling up to ``max_backoff``, ``max_attempts`` in all); other tenants'
events in the same batch are processed meanwhile. Once dead-lettered, the tenant's later
events are processed as usual (skip-and-continue, not stop-the-tenant): the dead letter
keeps everything needed to replay it.

Infrastructure failures (the database unreachable) are not the event's fault: they do not
count as attempts; they propagate, the consumer stops committing positions and resumes
from the last committed one.

Events of different tenants run concurrently (up to ``concurrency`` tenants at once);
one tenant's events run one after another, in log order. A tenant's events of one batch
share one transaction while none fails (one statement writes their inbox rows, then one
handler call per event, one BEGIN/COMMIT for all); if one fails, the transaction is
rolled back and the events are redone one transaction each, so the failure is retried
and dead-lettered alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from uuid import UUID

from psycopg import OperationalError
from psycopg.types.json import Jsonb
from psycopg_pool import PoolTimeout

from tenantry.catalog import TenantDirectory, TenantStatus
from tenantry.context import TenantContext, tenant_scope
from tenantry.db import Database
from tenantry.db.transaction import first_rows
from tenantry.events import inbox
from tenantry.events.envelope import Envelope, format_time
from tenantry.events.handlers import Event, EventHandlers, HandlerRunner, call_handler

logger = logging.getLogger("tenantry.events.consumer")

HANDLED, DUPLICATE, IGNORED, DEAD = "handled", "duplicate", "ignored", "dead-lettered"
_INFRASTRUCTURE = (OperationalError, PoolTimeout)


class DeadLetterSink(Protocol):
    """Where events that failed every attempt go (a Kafka topic, or a table)."""

    async def send(self, envelope: Envelope, error: str, attempts: int) -> None: ...


def envelope_json(envelope: Envelope) -> dict[str, Any]:
    """An envelope as JSON (what a dead letter keeps to replay the event)."""
    return {
        "id": str(envelope.id),
        "tenant_id": str(envelope.tenant_id),
        "tier": envelope.tier,
        "type": envelope.type,
        "schema_version": envelope.schema_version,
        "time": format_time(envelope.occurred_at),
        "subject": envelope.subject,
        "traceparent": envelope.traceparent,
        "source": envelope.source,
        "payload": envelope.payload,
    }


class PostgresDeadLetters:
    """Dead letters in ``tenantry.dead_letters`` (the embedded default's DLQ)."""

    def __init__(self, db: Database, consumer: str) -> None:
        self.db = db
        self.consumer = consumer

    async def send(self, envelope: Envelope, error: str, attempts: int) -> None:
        """Store the dead letter (owner role: control-plane work)."""
        async with self.db.transaction() as conn:
            await conn.execute(
                "INSERT INTO tenantry.dead_letters "
                "(consumer, event_id, tenant_id, type, attempts, error, envelope) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (
                    self.consumer,
                    envelope.id,
                    envelope.tenant_id,
                    envelope.type,
                    attempts,
                    error,
                    Jsonb(envelope_json(envelope)),
                ),
            )


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``max_attempts`` in all; the wait after attempt *n* is ``backoff * 2**(n-1)``,
    at most ``max_backoff`` seconds."""

    max_attempts: int = 3
    backoff: float = 0.05
    max_backoff: float = 2.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        return float(min(self.max_backoff, self.backoff * 2 ** (attempt - 1)))


class EventProcessor:
    """Runs one consumer application's handlers over envelopes, exactly once each."""

    def __init__(
        self,
        db: Database,
        directory: TenantDirectory,
        handlers: EventHandlers,
        *,
        consumer: str,
        dead_letters: DeadLetterSink,
        retry: RetryPolicy | None = None,
        concurrency: int = 16,
        run_handler: HandlerRunner = call_handler,
    ) -> None:
        self.db = db
        self.directory = directory
        self.handlers = handlers
        self.consumer = consumer
        self.dead_letters = dead_letters
        self.retry = retry or RetryPolicy()
        self.concurrency = concurrency
        self.run_handler = run_handler
        self.stats: Counter[str] = Counter()

    async def process_batch(self, envelopes: Sequence[Envelope]) -> list[str]:
        """Process a batch: tenants concurrently, each tenant's events in order.

        Returns each envelope's outcome, in input order. Raises on infrastructure failure
        (then nothing of the batch may be considered done).
        """
        lanes: dict[UUID, list[int]] = {}
        for index, envelope in enumerate(envelopes):
            lanes.setdefault(envelope.tenant_id, []).append(index)
        outcomes: list[str] = [""] * len(envelopes)
        gate = asyncio.Semaphore(self.concurrency)

        async def lane(indexes: list[int]) -> None:
            async with gate:
                done = await self._process_lane([envelopes[index] for index in indexes])
                for index, outcome in zip(indexes, done, strict=True):
                    outcomes[index] = outcome

        if len(lanes) == 1:
            await lane(next(iter(lanes.values())))
        else:
            async with asyncio.TaskGroup() as group:
                for indexes in lanes.values():
                    group.create_task(lane(indexes))
        return outcomes

    async def _process_lane(self, envelopes: list[Envelope]) -> list[str]:
        """One tenant's events, in order: all in one transaction when none fails (a few
        round trips per event fewer), else one at a time with retries."""
        if len(envelopes) == 1:
            return [await self.process(envelopes[0])]
        together = await self._together(envelopes)
        if isinstance(together, list):
            return together
        # Something failed: roll back to one transaction per event. The event that
        # failed has had its first attempt.
        failed_at, error = together if together is not None else (-1, None)
        return [
            await self.process(envelope, failed=error if i == failed_at else None)
            for i, envelope in enumerate(envelopes)
        ]

    async def _together(
        self, envelopes: list[Envelope]
    ) -> list[str] | tuple[int, Exception] | None:
        """Handle a tenant's events in one transaction. Returns the outcomes, or the
        index and error of the handler that failed, or ``None`` when it could not tell."""
        tenant = await self.directory.get(envelopes[0].tenant_id)
        if tenant is None or tenant.status == TenantStatus.DELETED:
            return None
        ctx = tenant.context()
        outcomes: list[str] = []
        events: list[Event] = []
        failure: tuple[int, Exception] | None = None
        wanted = [e.id for e in envelopes if self.handlers.get(e.type) is not None]
        # One statement records every handled event of the lane in the inbox; it rides in
        # the message that opens the transaction (no round trip of its own).
        claim = inbox.claim_statement(self.consumer, wanted) if wanted else None
        with tenant_scope(ctx):
            try:
                async with self.db.tenant_transaction(ctx, first=claim) as conn:
                    fresh = {row[0] for row in first_rows(conn)} if claim else set()
                    for index, envelope in enumerate(envelopes):
                        handler = self.handlers.get(envelope.type)
                        if handler is None:
                            outcomes.append(IGNORED)
                            continue
                        if envelope.id not in fresh:
                            outcomes.append(DUPLICATE)
                            continue
                        fresh.discard(envelope.id)  # a second copy in this lane is a duplicate
                        event = self._event(envelope, ctx, 1)
                        try:
                            await self.run_handler(handler, event, conn)
                        except _INFRASTRUCTURE:
                            raise
                        except Exception as exc:
                            failure = (index, exc)
                            raise
                        events.append(event)
                        outcomes.append(HANDLED)
            except _INFRASTRUCTURE:
                raise
            except Exception:
                return failure
            for event in events:
                for callback in event._after_commit:
                    await callback()
        self.stats.update(outcomes)
        return outcomes

    async def process(self, envelope: Envelope, *, failed: Exception | None = None) -> str:
        """Process one event (see the module's docstring); returns its outcome.

        ``failed``: the error of a first attempt already made (in a batch transaction).
        """
        handler = self.handlers.get(envelope.type)
        if handler is None:
            self.stats[IGNORED] += 1
            return IGNORED
        tenant = await self.directory.get(envelope.tenant_id)
        if tenant is None or tenant.status == TenantStatus.DELETED:
            await self._dead_letter(envelope, f"tenant {envelope.tenant_id} does not exist", 0)
            return DEAD
        ctx = tenant.context()
        with tenant_scope(ctx):
            attempt = 0
            pending = failed
            while True:
                attempt += 1
                if pending is None:
                    try:
                        outcome = await self._attempt(handler, envelope, ctx, attempt)
                    except _INFRASTRUCTURE:
                        raise
                    except Exception as exc:
                        pending = exc
                    else:
                        self.stats[outcome] += 1
                        return outcome
                error = f"{type(pending).__name__}: {pending}"
                pending = None
                if attempt >= self.retry.max_attempts:
                    logger.error(
                        "event %s (%s) failed %d times, sent to the dead-letter queue: %s",
                        envelope.id,
                        envelope.type,
                        attempt,
                        error,
                        extra=ctx.log_fields(),
                    )
                    await self._dead_letter(envelope, error, attempt)
                    return DEAD
                logger.warning(
                    "event %s (%s) failed (attempt %d of %d), retrying: %s",
                    envelope.id,
                    envelope.type,
                    attempt,
                    self.retry.max_attempts,
                    error,
                    extra=ctx.log_fields(),
                )
                await asyncio.sleep(self.retry.delay(attempt))

    def _event(self, envelope: Envelope, ctx: TenantContext, attempt: int) -> Event:
        return Event(
            id=envelope.id,
            type=envelope.type,
            tenant=ctx,
            payload=envelope.payload,
            schema_version=envelope.schema_version,
            occurred_at=envelope.occurred_at,
            subject=envelope.subject,
            traceparent=envelope.traceparent,
            attempt=attempt,
        )

    async def _attempt(
        self, handler: Any, envelope: Envelope, ctx: TenantContext, attempt: int
    ) -> str:
        event = self._event(envelope, ctx, attempt)
        claim = inbox.claim_statement(self.consumer, [envelope.id])
        async with self.db.tenant_transaction(ctx, first=claim) as conn:
            if not first_rows(conn):
                return DUPLICATE
            await self.run_handler(handler, event, conn)
        for callback in event._after_commit:
            await callback()
        return HANDLED

    async def _dead_letter(self, envelope: Envelope, error: str, attempts: int) -> None:
        await self.dead_letters.send(envelope, error, attempts)
        self.stats[DEAD] += 1
