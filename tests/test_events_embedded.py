"""The embedded default: with no Kafka, consumers read the outbox as the log, through the
same handler API, with the inbox, retries and dead-letter queue."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection

from hr_example import HR_SCHEMA
from tenantry import (
    Platform,
    Settings,
    current_tenant,
    run_in_executor,
    tenant_scope,
    wrap,
)
from tenantry.catalog import Tenant
from tenantry.events import Event, EventHandlers, NewEvent, OutboxLogConsumer
from tenantry.events.envelope import Envelope, uuid7
from tenantry.events.pglog import prune
from tests.events_helpers import (
    effect_counts,
    effects,
    ensure_effects_table,
    family,
    publish_numbered,
    record_effect,
    recording,
    running,
    wait_for,
)

MakeTenant = Callable[..., Awaitable[Tenant]]


def _consumer(platform: Platform, group: str, handlers: EventHandlers) -> OutboxLogConsumer:
    consumer = platform.events.consumer(group, handlers)
    assert isinstance(consumer, OutboxLogConsumer)
    return consumer


async def test_handlers_run_once_per_event_in_the_events_tenant(
    platform: Platform, make_tenant: MakeTenant
) -> None:
    """Events of two tenants reach the handler once each, in order per tenant, with the
    tenant bound to the context, also after a hop to a thread (run_in_executor, wrap)."""
    await ensure_effects_table(platform)
    a, b = await make_tenant("emb"), await make_tenant("emb")
    kind = f"{family()}.created"
    group = f"g-{family()}"
    handlers = EventHandlers(group)

    @handlers.on(kind)
    async def handle(event: Event, conn: AsyncConnection[Any]) -> None:
        in_thread = await run_in_executor(None, lambda: current_tenant().id)
        box: list[UUID] = []
        thread = threading.Thread(target=wrap(lambda: box.append(current_tenant().id)))
        thread.start()
        thread.join()
        assert box == [in_thread]
        await record_effect(
            conn,
            group,
            event,
            seen_tenant=current_tenant().id,
            thread_tenant=in_thread,
            n=event.payload["n"],
        )

    ids = await publish_numbered(platform, a, kind, 5) + await publish_numbered(
        platform, b, kind, 5
    )
    ids += await publish_numbered(platform, a, kind, 5, start=5)
    async with running(_consumer(platform, group, handlers).run):
        await wait_for(lambda: _count(platform, group, 15), what="15 effects")
    rows = await effects(platform, group)
    assert sorted(r["event_id"] for r in rows) == sorted(ids)
    for row in rows:
        assert row["seen_tenant"] == row["thread_tenant"] == row["tenant_id"]
    assert [r["n"] for r in rows if r["tenant_id"] == a.id] == list(range(10))
    assert [r["n"] for r in rows if r["tenant_id"] == b.id] == list(range(5))


async def _count(platform: Platform, group: str, n: int) -> bool:
    return sum((await effect_counts(platform, group)).values()) >= n


async def test_redelivery_has_no_second_effect(platform: Platform, make_tenant: MakeTenant) -> None:
    """Rewinding the group's position replays every event; the inbox skips them all."""
    await ensure_effects_table(platform)
    tenant = await make_tenant("emb")
    kind = f"{family()}.created"
    group = f"g-{family()}"
    handlers = recording(group, kind)

    ids = await publish_numbered(platform, tenant, kind, 10)
    consumer = _consumer(platform, group, handlers)
    async with running(consumer.run):
        await wait_for(lambda: _count(platform, group, 10), what="10 effects")
    async with platform.db.transaction() as conn:
        await conn.execute(
            "UPDATE tenantry.consumer_offsets SET txid = '0', seq = 0 WHERE consumer = %s",
            (group,),
        )
    replay = _consumer(platform, group, handlers)
    async with running(replay.run):
        await wait_for(
            lambda: _at_least(replay.processor.stats["duplicate"], 10), what="10 duplicates"
        )
    assert await effect_counts(platform, group) == dict.fromkeys(ids, 1)


async def test_a_lane_records_its_events_in_the_inbox_at_once_and_skips_copies(
    platform: Platform, make_tenant: MakeTenant
) -> None:
    """One tenant's batch (one transaction, one inbox statement): an event handled before,
    a second copy of an event in the same batch and an event with no handler are each
    skipped, and every other event has its effect exactly once, in order."""
    await ensure_effects_table(platform)
    tenant = await make_tenant("lane")
    kind = f"{family()}.created"
    group = f"g-{family()}"
    handlers = EventHandlers(group)
    seen: list[UUID] = []

    @handlers.on(kind)
    async def handle(event: Event, conn: AsyncConnection[Any]) -> None:
        seen.append(event.id)
        await record_effect(conn, group, event)

    def envelope(event_type: str) -> Envelope:
        return Envelope(
            id=uuid7(),
            tenant_id=tenant.id,
            tier=tenant.tier.value,
            type=event_type,
            schema_version=1,
            occurred_at=datetime.now(UTC),
            payload={},
        )

    old, first, second = (envelope(kind) for _ in range(3))
    unknown = envelope(f"{family()}.unhandled")
    processor = platform.events.consumer(group, handlers).processor
    assert await processor.process_batch([old]) == ["handled"]
    outcomes = await processor.process_batch([first, old, unknown, first, second])
    assert outcomes == ["handled", "duplicate", "ignored", "duplicate", "handled"]
    assert seen == [old.id, first.id, second.id]
    assert await effect_counts(platform, group) == {old.id: 1, first.id: 1, second.id: 1}


async def _at_least(value: int, n: int) -> bool:
    return value >= n


async def test_a_poison_event_is_dead_lettered_and_the_rest_flows(
    platform: Platform, make_tenant: MakeTenant
) -> None:
    """A handler that always fails for one event is tried max_attempts times, then the
    event lands in the dead-letter table with its error and attempt count; the same
    tenant's later events and another tenant's events are all handled."""
    await ensure_effects_table(platform)
    a, b = await make_tenant("emb"), await make_tenant("emb")
    kind = f"{family()}.created"
    group = f"g-{family()}"
    handlers = EventHandlers(group)
    attempts: list[int] = []

    @handlers.on(kind)
    async def handle(event: Event, conn: AsyncConnection[Any]) -> None:
        if event.payload["n"] == 2 and event.tenant.id == a.id:
            attempts.append(event.attempt)
            await record_effect(conn, group, event)  # rolled back with the failure
            raise ValueError("cannot digest n=2")
        await record_effect(conn, group, event, n=event.payload["n"])

    ids_a = await publish_numbered(platform, a, kind, 5)
    ids_b = await publish_numbered(platform, b, kind, 5)
    async with running(_consumer(platform, group, handlers).run):
        await wait_for(lambda: _count(platform, group, 9), what="9 effects")
        await wait_for(lambda: _dead(platform, group, 1), what="a dead letter")
    counts = await effect_counts(platform, group)
    assert counts == {i: 1 for i in ids_a + ids_b if i != ids_a[2]}
    assert attempts == [1, 2, 3]
    async with platform.db.transaction() as conn:
        cur = await conn.execute(
            "SELECT event_id, tenant_id, attempts, error, envelope FROM tenantry.dead_letters "
            "WHERE consumer = %s",
            (group,),
        )
        rows = await cur.fetchall()
    assert len(rows) == 1
    event_id, tenant_id, tries, error, envelope = rows[0]
    assert (event_id, tenant_id, tries) == (ids_a[2], a.id, 3)
    assert error == "ValueError: cannot digest n=2"
    assert envelope["payload"] == {"n": 2}
    assert envelope["type"] == kind


async def _dead(platform: Platform, group: str, n: int) -> bool:
    async with platform.db.transaction() as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM tenantry.dead_letters WHERE consumer = %s", (group,)
        )
        row = await cur.fetchone()
    return row is not None and row[0] >= n


async def test_a_transaction_that_commits_late_is_not_skipped(
    platform: Platform, make_tenant: MakeTenant
) -> None:
    """An event written by a transaction that started first but commits after later
    events were consumed is still delivered (the log reads below the oldest running
    transaction)."""
    await ensure_effects_table(platform)
    tenant = await make_tenant("emb")
    kind = f"{family()}.created"
    group = f"g-{family()}"
    handlers = recording(group, kind)

    other = await make_tenant("emb")
    release = asyncio.Event()
    published: list[UUID] = []

    async def slow() -> None:
        with tenant_scope(other.context()):
            async with platform.db.tenant_transaction():
                published.extend(
                    await platform.events.publish_many([NewEvent(kind, {"slow": True})])
                )
                await release.wait()

    slow_task = asyncio.create_task(slow())
    await asyncio.sleep(0.2)
    fast = await publish_numbered(platform, tenant, kind, 3)
    async with running(_consumer(platform, group, handlers).run):
        await asyncio.sleep(0.5)
        release.set()
        await slow_task
        await wait_for(lambda: _count(platform, group, 4), what="4 effects")
    assert await effect_counts(platform, group) == dict.fromkeys(fast + published, 1)


async def test_two_members_of_a_group_share_the_work_without_duplicates(
    platform: Platform, make_tenant: MakeTenant
) -> None:
    """Two members of one group: one reads (the other stands by); killing the active one
    hands over with no event lost or handled twice."""
    await ensure_effects_table(platform)
    tenant = await make_tenant("emb")
    kind = f"{family()}.created"
    group = f"g-{family()}"
    handlers = recording(group, kind)

    first, second = _consumer(platform, group, handlers), _consumer(platform, group, handlers)
    ids = await publish_numbered(platform, tenant, kind, 5)
    async with running(first.run):
        await wait_for(lambda: _count(platform, group, 5), what="5 effects")
        async with running(second.run):
            await asyncio.sleep(0.3)
            assert not second.active.is_set()
    ids += await publish_numbered(platform, tenant, kind, 5, start=5)
    async with running(second.run):
        await wait_for(lambda: _count(platform, group, 10), what="10 effects")
    assert await effect_counts(platform, group) == dict.fromkeys(ids, 1)


async def test_the_log_keeps_events_until_every_group_passed_them_and_retention_ran_out(
    settings: Settings, make_database: Callable[[str], str]
) -> None:
    """Pruning removes only events older than the retention that every consumer group has
    already processed; a group still behind keeps them."""
    platform = Platform(settings.with_database_url(make_database("tenantry_prune")), HR_SCHEMA)
    await platform.start(listen=False)
    try:
        tenant = await platform.tenants.create("prune-me")
        ids = await publish_numbered(platform, tenant, f"{family()}.created", 3)
        async with platform.db.transaction() as conn:
            await conn.execute(
                "UPDATE tenantry.outbox SET occurred_at = occurred_at - interval '2 days'"
            )
            await conn.execute(
                "INSERT INTO tenantry.consumer_offsets (consumer) VALUES ('behind'), ('ahead')"
            )
            await conn.execute(
                "UPDATE tenantry.consumer_offsets SET txid = (SELECT max(txid) FROM "
                "tenantry.outbox), seq = (SELECT max(seq) FROM tenantry.outbox) "
                "WHERE consumer = 'ahead'"
            )

        async def left() -> int:
            async with platform.db.transaction() as conn:
                cur = await conn.execute(
                    "SELECT count(*) FROM tenantry.outbox WHERE event_id = ANY(%s)", (ids,)
                )
                row = await cur.fetchone()
            return int(row[0]) if row else -1

        assert await prune(platform.db, retention_seconds=86_400) == 0
        assert await left() == 3  # 'behind' has not read them
        async with platform.db.transaction() as conn:
            await conn.execute("DELETE FROM tenantry.consumer_offsets WHERE consumer = 'behind'")
        assert await prune(platform.db, retention_seconds=10 * 86_400) == 0
        assert await left() == 3  # not old enough for a 10-day retention
        assert await prune(platform.db, retention_seconds=86_400) == 3
        assert await left() == 0
    finally:
        await platform.stop()


async def test_a_long_transaction_in_another_database_does_not_stall_the_log(
    platform: Platform, make_tenant: MakeTenant, make_database: Callable[[str], str]
) -> None:
    """A transaction left open in another database of the cluster (it holds an xid) does
    not hold events back: only this database's running transactions bound the log."""
    await ensure_effects_table(platform)
    tenant = await make_tenant("emb")
    kind = f"{family()}.created"
    group = f"g-{family()}"
    handlers = recording(group, kind)

    async with await AsyncConnection.connect(make_database("tenantry_other")) as other:
        await other.execute("SELECT pg_current_xact_id()")  # BEGIN implied: holds an xid
        ids = await publish_numbered(platform, tenant, kind, 3)
        async with running(_consumer(platform, group, handlers).run):
            await wait_for(lambda: _count(platform, group, 3), seconds=10, what="3 effects")
        await other.rollback()
    assert await effect_counts(platform, group) == dict.fromkeys(ids, 1)
