"""The HR events: what the API publishes, and the consumer that keeps projections.

Hiring, transfers, departures and leave decisions are published in the transaction that
makes them (``platform.events.publish``), so an event exists exactly when the change
committed. The ``hr`` consumer group turns them into two projections of each tenant's own
schema: the headcount of every department and an activity feed per employee. It runs
inside the API process by default (no broker: it reads the outbox) or as
``tenantry consume hr_example.events:build_handlers`` next to a Kafka relay.
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection

from tenantry import Platform
from tenantry.events import Event, EventHandlers

GROUP = "hr"
EMPLOYEE_HIRED = "employee.hired"
EMPLOYEE_TRANSFERRED = "employee.transferred"
EMPLOYEE_LEFT = "employee.left"
LEAVE_REQUESTED = "leave.requested"
LEAVE_APPROVED = "leave.approved"
DEPARTMENTS_CACHE = "departments"


async def _bump(conn: AsyncConnection[Any], department_id: int, delta: int) -> None:
    await conn.execute(
        "INSERT INTO department_headcounts (department_id, headcount) VALUES (%s, %s) "
        "ON CONFLICT (department_id) DO UPDATE SET "
        "headcount = department_headcounts.headcount + EXCLUDED.headcount, updated_at = now()",
        (department_id, delta),
    )


async def _feed(conn: AsyncConnection[Any], event: Event, employee_id: int, summary: str) -> None:
    await conn.execute(
        "INSERT INTO activity (event_id, employee_id, kind, summary, occurred_at) "
        "VALUES (%s, %s, %s, %s, %s)",
        (event.id, employee_id, event.type, summary, event.occurred_at),
    )


def build_handlers(platform: Platform) -> EventHandlers:
    """The ``hr`` consumer's handlers (headcounts and the activity feed)."""
    handlers = EventHandlers(GROUP)

    def refresh_departments(event: Event) -> None:
        # Department reads are cached: drop them once the new headcount is committed.
        async def invalidate() -> None:
            await platform.cache.invalidate_namespace(DEPARTMENTS_CACHE)

        event.after_commit(invalidate)

    @handlers.on(EMPLOYEE_HIRED)
    async def hired(event: Event, conn: AsyncConnection[Any]) -> None:
        p = event.payload
        await _bump(conn, p["department_id"], 1)
        await _feed(conn, event, p["employee_id"], f"hired as {p.get('title') or 'employee'}")
        refresh_departments(event)

    @handlers.on(EMPLOYEE_TRANSFERRED)
    async def transferred(event: Event, conn: AsyncConnection[Any]) -> None:
        p = event.payload
        await _bump(conn, p["from_department_id"], -1)
        await _bump(conn, p["to_department_id"], 1)
        await _feed(
            conn,
            event,
            p["employee_id"],
            f"moved from department {p['from_department_id']} to {p['to_department_id']}",
        )
        refresh_departments(event)

    @handlers.on(EMPLOYEE_LEFT)
    async def left(event: Event, conn: AsyncConnection[Any]) -> None:
        p = event.payload
        await _bump(conn, p["department_id"], -1)
        await _feed(conn, event, p["employee_id"], "left the company")
        refresh_departments(event)

    @handlers.on(LEAVE_REQUESTED)
    async def leave_requested(event: Event, conn: AsyncConnection[Any]) -> None:
        p = event.payload
        await _feed(
            conn,
            event,
            p["employee_id"],
            f"asked for {p['kind']} leave {p['starts_on']} to {p['ends_on']}",
        )

    @handlers.on(LEAVE_APPROVED)
    async def leave_approved(event: Event, conn: AsyncConnection[Any]) -> None:
        p = event.payload
        await _feed(
            conn,
            event,
            p["employee_id"],
            f"{p['kind']} leave {p['starts_on']} to {p['ends_on']} approved",
        )

    return handlers
