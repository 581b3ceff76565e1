"""Usage metering: requests, events, active users and storage, per tenant.

Requests are counted in memory on the hot path (a dict increment per request) and flushed
every ``flush_seconds`` into the control plane, one statement per flush whatever the number
of tenants (``tenantry.usage_daily``: requests per tenant and UTC day;
``tenantry.usage_active_users``: distinct authenticated subjects per tenant and day).
Events are not counted twice: every published event is already in its tenant's audit
chain (``tenantry.audit_log``), which the report counts. Storage is read when a report is
asked for: the size of every tenant schema
(``pg_total_relation_size`` of its tables, indexes and TOAST included), all tenants in
one query. Unlike metrics, usage covers every tenant, not just the labelled ones: it is
what billing reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, date, datetime
from typing import Any
from uuid import UUID

from psycopg.rows import dict_row

from tenantry.db import Database
from tenantry.settings import UsageSettings

logger = logging.getLogger("tenantry.usage")

USAGE_DDL = """
CREATE TABLE IF NOT EXISTS tenantry.usage_daily (
    tenant_id   uuid NOT NULL,
    day         date NOT NULL,
    requests    bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, day)
);
CREATE TABLE IF NOT EXISTS tenantry.usage_active_users (
    tenant_id   uuid NOT NULL,
    day         date NOT NULL,
    subject     text NOT NULL,
    PRIMARY KEY (tenant_id, day, subject)
);
"""

_FLUSH_COUNTS = """
INSERT INTO tenantry.usage_daily AS u (tenant_id, day, requests)
SELECT * FROM unnest(%s::uuid[], %s::date[], %s::bigint[])
ON CONFLICT (tenant_id, day) DO UPDATE SET requests = u.requests + EXCLUDED.requests
"""
_FLUSH_USERS = """
INSERT INTO tenantry.usage_active_users (tenant_id, day, subject)
SELECT * FROM unnest(%s::uuid[], %s::date[], %s::text[])
ON CONFLICT DO NOTHING
"""
_REPORT = """
WITH counts AS (
    SELECT tenant_id, sum(requests) AS requests
    FROM tenantry.usage_daily WHERE day >= %(since)s GROUP BY tenant_id
), events AS (
    SELECT tenant_id, count(*) AS events
    FROM tenantry.audit_log WHERE recorded_at >= %(since)s::date::timestamptz
    GROUP BY tenant_id
), users AS (
    SELECT tenant_id, count(DISTINCT subject) AS active_users
    FROM tenantry.usage_active_users WHERE day >= %(since)s GROUP BY tenant_id
), sizes AS (
    SELECT n.nspname AS schema_name, sum(pg_total_relation_size(c.oid)) AS bytes
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'm')
      AND n.nspname IN (SELECT schema_name FROM tenantry.tenants WHERE status <> 'deleted')
    GROUP BY n.nspname
)
SELECT t.id, t.slug, t.tier, t.status,
       coalesce(counts.requests, 0)::bigint AS requests,
       coalesce(events.events, 0)::bigint AS events,
       coalesce(users.active_users, 0)::bigint AS active_users,
       coalesce(sizes.bytes, 0)::bigint AS storage_bytes
FROM tenantry.tenants t
LEFT JOIN counts ON counts.tenant_id = t.id
LEFT JOIN events ON events.tenant_id = t.id
LEFT JOIN users ON users.tenant_id = t.id
LEFT JOIN sizes ON sizes.schema_name = t.schema_name
WHERE t.status <> 'deleted' AND (%(tenant)s::uuid IS NULL OR t.id = %(tenant)s::uuid)
ORDER BY t.slug
"""


def _today() -> date:
    return datetime.now(UTC).date()


class UsageRecorder:
    """Per-tenant usage counters, flushed to the control plane (see the module doc)."""

    def __init__(self, db: Database, settings: UsageSettings | None = None) -> None:
        self.db = db
        self.settings = settings or UsageSettings()
        self.enabled = self.settings.enabled
        self._requests: dict[UUID, int] = {}
        self._users: set[tuple[UUID, str]] = set()
        self._task: asyncio.Task[None] | None = None

    def request(self, tenant_id: UUID, subject: str | None = None) -> None:
        """Count one request of ``tenant_id`` (by ``subject``, when authenticated)."""
        self._requests[tenant_id] = self._requests.get(tenant_id, 0) + 1
        if subject:
            self._users.add((tenant_id, subject))

    async def flush(self) -> None:
        """Write the counts gathered since the last flush (two statements at most)."""
        requests, users = self._requests, self._users
        self._requests, self._users = {}, set()
        if not (requests or users):
            return
        day = _today()
        tenants = sorted(requests)
        try:
            async with self.db.transaction() as conn:
                if tenants:
                    await conn.execute(
                        _FLUSH_COUNTS,
                        (
                            tenants,
                            [day] * len(tenants),
                            [requests[t] for t in tenants],
                        ),
                    )
                if users:
                    pairs = sorted(users)
                    await conn.execute(
                        _FLUSH_USERS,
                        ([t for t, _ in pairs], [day] * len(pairs), [s for _, s in pairs]),
                    )
        except BaseException:
            # Put the counts back: they are retried at the next flush, not lost.
            for tid, n in requests.items():
                self._requests[tid] = self._requests.get(tid, 0) + n
            self._users |= users
            raise

    async def report(
        self, *, since: date | None = None, tenant_id: UUID | None = None
    ) -> list[dict[str, Any]]:
        """Usage since ``since`` (default: today, UTC) per tenant, storage as of now."""
        async with (
            self.db.transaction(readonly=True) as conn,
            conn.cursor(row_factory=dict_row) as cur,
        ):
            await cur.execute(_REPORT, {"since": since or _today(), "tenant": tenant_id})
            rows = await cur.fetchall()
        return [
            {
                "tenant_id": str(row["id"]),
                "slug": row["slug"],
                "tier": row["tier"],
                "status": row["status"],
                "requests": row["requests"],
                "events": row["events"],
                "active_users": row["active_users"],
                "storage_bytes": row["storage_bytes"],
            }
            for row in rows
        ]

    def start(self) -> None:
        """Flush every ``flush_seconds`` in the background."""

        async def loop() -> None:
            while True:
                await asyncio.sleep(self.settings.flush_seconds)
                try:
                    await self.flush()
                except Exception as exc:
                    logger.warning("could not flush usage counters (kept for later): %s", exc)

        if self._task is None and self.enabled:
            self._task = asyncio.create_task(loop(), name="tenantry-usage-flush")

    async def stop(self) -> None:
        """Stop the background flush and write what is left."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            await self.flush()
        except Exception as exc:
            logger.warning("could not flush usage counters at shutdown: %s", exc)
