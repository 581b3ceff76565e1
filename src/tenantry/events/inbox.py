"""The inbox: "this consumer has handled this event", written in the handler's transaction.

A redelivered event (a crash before the offset was committed, a rebalance, a second
relay's duplicate) finds its row and is skipped, so the handler's effects happen once.
When two deliveries race, the second ``INSERT`` waits for the first transaction and then
finds the row (or, if the first rolled back, takes over).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection

from tenantry.db.transaction import Prepared

_CLAIM = Prepared(
    "tenantry_inbox_claim",
    "INSERT INTO tenantry.inbox (consumer, event_id) SELECT $1::text, unnest($2::uuid[]) "
    "ON CONFLICT (consumer, event_id) DO NOTHING RETURNING event_id",
)


def claim_statement(consumer: str, event_ids: Sequence[UUID]) -> Prepared:
    """The statement that records ``event_ids`` as handled by ``consumer``, prepared, its
    values bound, to ride in the message that opens the handler's transaction
    (``tenant_transaction(ctx, first=...)``) instead of taking a round trip of its own.
    Its rows are the ids newly recorded (an id missing from them was handled before, or
    appears earlier in ``event_ids``)."""
    if not event_ids:
        raise ValueError("no event ids to claim")
    if not all(isinstance(event_id, UUID) for event_id in event_ids):
        raise TypeError("event ids must be UUIDs")
    return _CLAIM.bind(consumer, "{" + ",".join(map(str, event_ids)) + "}")


async def handled(conn: AsyncConnection[Any], consumer: str, event_id: UUID) -> bool:
    """Whether ``consumer`` has handled the event (in ``conn``'s tenant)."""
    cur = await conn.execute(
        "SELECT 1 FROM tenantry.inbox WHERE consumer = %s AND event_id = %s",
        (consumer, event_id),
    )
    return await cur.fetchone() is not None
