"""The embedded default: consumers read the outbox itself as the log, no broker needed.

A consumer group's position is a row of ``tenantry.consumer_offsets``: the
``(txid, seq)`` of the last event it has processed. It reads events in ``(txid, seq)``
order, and only those written by transactions older than the oldest one of this database
still running: a transaction that commits late has a txid above every position already
passed, so nothing is ever skipped (transactions in other databases of the cluster are
left out, so a long one there does not stall the log). One member
of a group reads at a time (a session advisory lock, released by PostgreSQL if the
process dies); others wait as hot standbys. It wakes on ``LISTEN tenantry_outbox``.

Delivery is at least once (a crash after handling, before the position is saved, replays
the batch) and the inbox makes the effects exactly once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from tenantry.db import Database
from tenantry.events._loop import keep_running
from tenantry.events.envelope import Envelope
from tenantry.events.processor import EventProcessor
from tenantry.events.schema import CONSUMER_LOCK, OUTBOX_CHANNEL

logger = logging.getLogger("tenantry.events.pglog")

_READ = (
    # The horizon: the oldest transaction still running at this statement's snapshot,
    # leaving out those known to run in another database of the cluster (they cannot write
    # this outbox; a long one elsewhere must not stall the log). Transactions that ended
    # since, or whose database is not visible to this role, count: that is only cautious.
    "WITH snap AS (SELECT pg_current_snapshot() AS s), "
    "elsewhere AS (SELECT backend_xid::text::bigint AS x FROM pg_stat_activity "
    "WHERE datname IS DISTINCT FROM current_database() AND backend_xid IS NOT NULL), "
    "horizon AS (SELECT coalesce(min(r.x), min(pg_snapshot_xmax(snap.s))) AS h "
    "FROM snap LEFT JOIN LATERAL (SELECT x FROM pg_snapshot_xip(snap.s) AS x "
    "WHERE (x::text::bigint & 4294967295) NOT IN (SELECT x FROM elsewhere)) r ON true) "
    "SELECT txid::text AS txid, seq, event_id, tenant_id, tier, type, subject, "
    "schema_version, occurred_at, traceparent, payload FROM tenantry.outbox, horizon "
    "WHERE (txid, seq) > (%s::xid8, %s) AND txid < horizon.h "
    "ORDER BY txid, seq LIMIT %s"
)


class OutboxLogConsumer:
    """One member of a consumer group reading the outbox as its log."""

    def __init__(
        self,
        db: Database,
        processor: EventProcessor,
        *,
        batch_size: int = 500,
        idle_seconds: float = 1.0,
        cell: str | None = None,
        retention_seconds: float | None = None,
        prune_every: float = 300.0,
    ) -> None:
        self.db = db
        self.processor = processor
        self.group = processor.consumer
        self.batch_size = batch_size
        self.idle_seconds = idle_seconds
        self.cell = cell
        self.retention_seconds = retention_seconds
        self.prune_every = prune_every
        self._pruned_at = 0.0
        self.source = f"/tenantry/{db.cell(cell).name}"
        self.active = asyncio.Event()
        """Set while this member holds the group's lock and reads."""

    async def run(self) -> None:
        """Consume until cancelled; reconnects after a database outage."""
        await keep_running(self._run, what=f"consumer {self.group}", active=self.active)

    async def _run(self) -> None:
        url = self.db.cell(self.cell).owner_url
        async with await AsyncConnection[Any].connect(
            url,
            autocommit=True,
            application_name=f"tenantry-consume:{self.group}"[:63],
            keepalives=1,
            keepalives_idle=10,
            keepalives_interval=3,
            keepalives_count=3,
        ) as conn:
            await conn.execute(
                "INSERT INTO tenantry.consumer_offsets (consumer) VALUES (%s) "
                "ON CONFLICT DO NOTHING",
                (self.group,),
            )
            await conn.execute(
                "SELECT pg_advisory_lock(%s, hashtext(%s))", (CONSUMER_LOCK, self.group)
            )
            await conn.execute(f"LISTEN {OUTBOX_CHANNEL}")
            self.active.set()
            cur = await conn.execute(
                "SELECT txid::text, seq FROM tenantry.consumer_offsets WHERE consumer = %s",
                (self.group,),
            )
            row = await cur.fetchone()
            assert row is not None
            position: tuple[str, int] = (row[0], row[1])
            woken = False
            while True:
                await self._maybe_prune()
                got = await self._batch(conn, position)
                if got is not None:
                    position = got[0]
                    if got[1] >= self.batch_size:
                        continue
                # Rows of a transaction that started before an older one still running
                # become readable when that one ends: look again soon after a wake-up.
                timeout = 0.05 if woken and got is None else self.idle_seconds
                woken = False
                async for _ in conn.notifies(timeout=timeout, stop_after=1):
                    woken = True

    async def _maybe_prune(self) -> None:
        # The group's active member applies the log's retention now and then.
        if self.retention_seconds is None:
            return
        now = time.monotonic()
        if now - self._pruned_at < self.prune_every:
            return
        self._pruned_at = now
        removed = await prune(self.db, retention_seconds=self.retention_seconds, cell=self.cell)
        if removed:
            logger.info("pruned %d event(s) past retention from the outbox log", removed)

    async def _batch(
        self, conn: AsyncConnection[Any], position: tuple[str, int]
    ) -> tuple[tuple[str, int], int] | None:
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(_READ, (position[0], position[1], self.batch_size))
            rows = await cur.fetchall()
        if not rows:
            return None
        envelopes = [
            Envelope(
                id=row["event_id"],
                tenant_id=row["tenant_id"],
                tier=row["tier"],
                type=row["type"],
                schema_version=row["schema_version"],
                occurred_at=row["occurred_at"],
                payload=row["payload"],
                traceparent=row["traceparent"],
                subject=row["subject"],
                source=self.source,
            )
            for row in rows
        ]
        await self.processor.process_batch(envelopes)
        last = (rows[-1]["txid"], rows[-1]["seq"])
        await conn.execute(
            "UPDATE tenantry.consumer_offsets SET txid = %s::xid8, seq = %s, updated_at = now() "
            "WHERE consumer = %s",
            (last[0], last[1], self.group),
        )
        return last, len(rows)

    async def position(self) -> tuple[int, int] | None:
        """The group's committed position ``(txid, seq)``, or ``None`` before its first
        run."""
        async with self.db.transaction(cell=self.cell, readonly=True) as conn:
            cur = await conn.execute(
                "SELECT txid::text, seq FROM tenantry.consumer_offsets WHERE consumer = %s",
                (self.group,),
            )
            row = await cur.fetchone()
        return None if row is None else (int(row[0]), row[1])


async def lag(db: Database, group: str, cell: str | None = None) -> int:
    """How many outbox events the group has not processed yet."""
    async with db.transaction(cell=cell, readonly=True) as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM tenantry.outbox o, tenantry.consumer_offsets c "
            "WHERE c.consumer = %s AND (o.txid, o.seq) > (c.txid, c.seq)",
            (group,),
        )
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def prune(db: Database, *, retention_seconds: float, cell: str | None = None) -> int:
    """Delete outbox rows older than ``retention_seconds`` that every consumer group has
    passed (the embedded log's retention); returns how many went."""
    async with db.transaction(cell=cell) as conn:
        cur = await conn.execute(
            "DELETE FROM tenantry.outbox o WHERE o.occurred_at < now() - make_interval(secs => %s) "
            "AND NOT EXISTS (SELECT FROM tenantry.consumer_offsets c "
            "WHERE (c.txid, c.seq) < (o.txid, o.seq))",
            (retention_seconds,),
        )
    return cur.rowcount
