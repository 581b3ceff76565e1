"""Each tenant's audit trail: a hash chain of every event the tenant published.

Entry *n* stores ``hash = sha256(hash(n-1) || tenant|event id|type|schema version|
occurred-at|payload)`` (the first entry chains from 32 zero bytes), and
``tenantry.audit_heads`` holds the position and hash of the last entry. Both are written
at the publishing transaction's commit, by the deferred trigger ``tenantry.chain_audit`` on
the outbox, in commit order between transactions. Changing an entry breaks its
hash; deleting one leaves a gap (or a head that points past the end); moving entries
breaks the links between neighbours. :meth:`AuditTrail.verify` recomputes everything in
Python, independently of the SQL that wrote it, and names each entry that fails.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg.rows import dict_row

from tenantry.db import Database
from tenantry.events.envelope import format_time

GENESIS = bytes(32)


def entry_digest(
    prev: bytes,
    tenant_id: UUID,
    event_id: UUID,
    type: str,
    schema_version: int,
    occurred_at: datetime,
    payload_text: str,
) -> bytes:
    """The hash of one audit entry (``payload_text`` is PostgreSQL's ``jsonb::text``)."""
    text = "|".join(
        (
            str(tenant_id),
            str(event_id),
            type,
            str(schema_version),
            format_time(occurred_at),
            payload_text,
        )
    )
    return hashlib.sha256(prev + text.encode()).digest()


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One entry of a tenant's audit trail."""

    position: int
    event_id: UUID
    type: str
    schema_version: int
    occurred_at: datetime
    payload: Any
    prev_hash: bytes
    hash: bytes
    recorded_at: datetime

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view."""
        return {
            "position": self.position,
            "event_id": str(self.event_id),
            "type": self.type,
            "schema_version": self.schema_version,
            "occurred_at": self.occurred_at.isoformat(),
            "payload": self.payload,
            "hash": self.hash.hex(),
        }


@dataclass(frozen=True, slots=True)
class AuditProblem:
    """Something wrong at one position of the chain."""

    position: int
    kind: str  # "altered", "missing", "reordered", "truncated"
    message: str


@dataclass(frozen=True, slots=True)
class AuditReport:
    """The result of verifying one tenant's chain."""

    tenant_id: UUID
    entries: int
    head_position: int
    problems: list[AuditProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether the chain is intact."""
        return not self.problems


class AuditTrail:
    """Reads and verifies tenants' audit chains (control-plane work, owner role)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def entries(
        self, tenant_id: UUID, *, after: int = 0, limit: int = 100, cell: str | None = None
    ) -> list[AuditEntry]:
        """A tenant's entries after position ``after``, oldest first."""
        async with (
            self.db.transaction(cell=cell, readonly=True) as conn,
            conn.cursor(row_factory=dict_row) as cur,
        ):
            await cur.execute(
                "SELECT position, event_id, type, schema_version, occurred_at, payload, "
                "prev_hash, hash, recorded_at FROM tenantry.audit_log "
                "WHERE tenant_id = %s AND position > %s ORDER BY position LIMIT %s",
                (tenant_id, after, limit),
            )
            return [AuditEntry(**row) for row in await cur.fetchall()]

    async def verify(self, tenant_id: UUID, *, cell: str | None = None) -> AuditReport:
        """Recompute a tenant's whole chain and report every broken entry."""
        async with self.db.transaction(cell=cell, readonly=True) as conn:
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            cur = await conn.execute(
                "SELECT position, hash FROM tenantry.audit_heads WHERE tenant_id = %s",
                (tenant_id,),
            )
            head = await cur.fetchone()
            cur = await conn.execute(
                "SELECT position, event_id, type, schema_version, occurred_at, payload::text, "
                "prev_hash, hash FROM tenantry.audit_log WHERE tenant_id = %s ORDER BY position",
                (tenant_id,),
            )
            rows = await cur.fetchall()
        head_position, head_hash = (head[0], bytes(head[1])) if head else (0, GENESIS)
        problems: list[AuditProblem] = []
        position_of = {bytes(row[7]): row[0] for row in rows}
        expected_position, expected_prev = 1, GENESIS
        for position, event_id, kind, version, occurred, payload, prev, stored in rows:
            prev, stored = bytes(prev), bytes(stored)
            if position != expected_position:
                missing = (
                    f"entry {expected_position} is missing"
                    if position == expected_position + 1
                    else f"entries {expected_position}-{position - 1} are missing"
                )
                problems.append(AuditProblem(expected_position, "missing", missing + " (deleted)"))
            elif prev != expected_prev:
                source = position_of.get(prev)
                where = f"it follows entry {source}" if source else "its predecessor is unknown"
                problems.append(
                    AuditProblem(
                        position,
                        "reordered",
                        f"entry {position} does not follow entry {position - 1}: {where} "
                        "(entries reordered or replaced)",
                    )
                )
            recomputed = entry_digest(prev, tenant_id, event_id, kind, version, occurred, payload)
            if recomputed != stored:
                problems.append(
                    AuditProblem(
                        position,
                        "altered",
                        f"entry {position} (event {event_id}) was altered: its content does "
                        "not match its hash",
                    )
                )
            expected_position, expected_prev = position + 1, stored
        last = rows[-1][0] if rows else 0
        if head_position > last:
            problems.append(
                AuditProblem(
                    last + 1,
                    "truncated",
                    f"entries {last + 1}-{head_position} are missing: the chain's head is at "
                    f"{head_position} (deleted from the end)",
                )
            )
        elif head_position == last and rows and head_hash != bytes(rows[-1][7]):
            problems.append(
                AuditProblem(last, "altered", f"entry {last} does not match the chain's head")
            )
        elif head_position < last:
            problems.append(
                AuditProblem(
                    head_position + 1,
                    "altered",
                    f"entries after {head_position} were added outside publishing",
                )
            )
        return AuditReport(tenant_id, len(rows), head_position, problems)
