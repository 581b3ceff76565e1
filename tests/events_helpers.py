"""Helpers for the events tests: countable handler effects and a consumer run in the
background until a condition holds."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection, Notify

from tenantry import Platform, tenant_scope
from tenantry.catalog import Tenant
from tenantry.events import Event, EventHandlers, NewEvent

EFFECTS_DDL = """
CREATE TABLE IF NOT EXISTS public.event_effects (
    consumer    text NOT NULL,
    event_id    uuid NOT NULL,
    tenant_id   uuid NOT NULL,
    seen_tenant uuid,
    thread_tenant uuid,
    n           integer,
    at          timestamptz NOT NULL DEFAULT clock_timestamp()
);
GRANT SELECT, INSERT ON public.event_effects TO tenantry_app;
"""


def family() -> str:
    """A fresh event family, so that tests sharing the session's outbox do not meet."""
    return f"probe{secrets.token_hex(4)}"


async def ensure_effects_table(platform: Platform) -> None:
    """Create the effects table (idempotent)."""
    async with platform.db.transaction() as conn:
        await conn.execute("SELECT pg_advisory_xact_lock(4242)")
        await conn.execute(EFFECTS_DDL)


def recording(group: str, kind: str) -> EventHandlers:
    """Handlers for ``group`` that record one effect per ``kind`` event, and nothing else."""
    handlers = EventHandlers(group)

    @handlers.on(kind)
    async def handle(event: Event, conn: AsyncConnection[Any]) -> None:
        await record_effect(conn, group, event)

    return handlers


async def record_effect(conn: AsyncConnection[Any], group: str, event: Event, **extra: Any) -> None:
    """One handler effect, in the handler's transaction."""
    await conn.execute(
        "INSERT INTO public.event_effects (consumer, event_id, tenant_id, seen_tenant, "
        "thread_tenant, n) VALUES (%s, %s, %s, %s, %s, %s)",
        (
            group,
            event.id,
            event.tenant.id,
            extra.get("seen_tenant"),
            extra.get("thread_tenant"),
            extra.get("n"),
        ),
    )


async def effects(platform: Platform, group: str) -> list[dict[str, Any]]:
    """Every effect recorded for ``group``, in order."""
    async with platform.db.transaction() as conn:
        cur = await conn.execute(
            "SELECT event_id, tenant_id, seen_tenant, thread_tenant, n FROM public.event_effects "
            "WHERE consumer = %s ORDER BY at",
            (group,),
        )
        names = [c.name for c in cur.description or ()]
        return [dict(zip(names, row, strict=True)) for row in await cur.fetchall()]


async def effect_counts(platform: Platform, group: str) -> dict[UUID, int]:
    """How many times each event's effect happened."""
    counts: dict[UUID, int] = {}
    for row in await effects(platform, group):
        counts[row["event_id"]] = counts.get(row["event_id"], 0) + 1
    return counts


async def wait_for(
    check: Callable[[], Awaitable[bool]], *, seconds: float = 30.0, what: str = "condition"
) -> None:
    """Poll ``check`` until it holds (fails the test after ``timeout`` seconds)."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running(runner: Callable[[], Awaitable[None]]) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``runner()`` as a background task for the duration of the block."""
    task = asyncio.create_task(runner())  # type: ignore[arg-type]
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def publish_numbered(
    platform: Platform, tenant: Tenant, kind: str, n: int, start: int = 0, *, keyed: bool = False
) -> list[UUID]:
    """Publish events ``{"n": start}`` .. ``{"n": start + n - 1}`` for ``tenant`` in one
    transaction (``keyed``: each with key ``k<n>``); their ids."""
    with tenant_scope(tenant.context()):
        async with platform.db.tenant_transaction():
            return await platform.events.publish_many(
                NewEvent(kind, {"n": i}, key=f"k{i}" if keyed else None)
                for i in range(start, start + n)
            )


async def heard(conn: AsyncConnection[Any], seconds: float) -> list[Notify]:
    """The notifications ``conn`` (listening) receives within ``seconds``."""
    return [note async for note in conn.notifies(timeout=seconds)]
