"""Kafka mode against a real broker: the relay's records as a plain Kafka consumer sees
them, tenantry's consumers end to end, the DLQ topic, and two relays at once."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any
from uuid import UUID

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from psycopg import AsyncConnection

from hr_example import HR_SCHEMA
from tenantry import Platform, Settings, current_tenant, run_in_executor
from tenantry.catalog import Tenant
from tenantry.events import Event, EventHandlers
from tenantry.events import relay as relay_module
from tenantry.events.consumer import KafkaEventConsumer, _InFlight
from tenantry.events.envelope import format_time
from tenantry.events.errors import KafkaUnavailableError
from tenantry.events.kafka import TopicAdmin, producer_config
from tenantry.events.relay import CLAIMS_PER_ROUND, OutboxRelay
from tenantry.events.schema import RELAY_LOCK
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
OFFSETS_PARTITIONS = 8  # offsets.topic.num.partitions of the devstack broker


@pytest.fixture
async def kafka_platform(
    settings: Settings, kafka_bootstrap: str, topic_prefix: str, platform: Platform
) -> AsyncIterator[Platform]:
    """A platform on the session's database in Kafka mode, with a topic prefix of its own."""
    events = replace(
        settings.events,
        kafka_bootstrap=kafka_bootstrap,
        topic_prefix=topic_prefix,
        topic_partitions=3,
        consume_in_app=False,
    )
    kafka = Platform(replace(settings, events=events), HR_SCHEMA)
    await kafka.start(listen=False)
    await ensure_effects_table(kafka)
    try:
        yield kafka
    finally:
        await kafka.stop()


async def _publish(
    platform: Platform, tenant: Tenant, kind: str, n: int, start: int = 0
) -> list[UUID]:
    return await publish_numbered(platform, tenant, kind, n, start, keyed=True)


def _read_all(bootstrap: str, topic: str, expected: int, seconds: float = 30.0) -> list[Any]:
    """Read a topic from the beginning with a plain confluent_kafka.Consumer."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"plain-{secrets.token_hex(4)}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    records: list[Any] = []
    try:
        deadline = time.monotonic() + seconds
        while len(records) < expected:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                records.append(message)
            if time.monotonic() > deadline:
                break
    finally:
        consumer.close()
    return records


async def test_a_plain_kafka_consumer_finds_key_and_headers_as_documented(
    kafka_platform: Platform, kafka_bootstrap: str, make_tenant: MakeTenant
) -> None:
    """The relay produces each event to its family's topic with the tenant id as key, the
    JSON payload as value and the CloudEvents-style headers of the README."""
    tenant = await make_tenant("kfk", tier="enterprise")
    fam = family()
    kind = f"{fam}.hired"
    ids = await _publish(kafka_platform, tenant, kind, 3)
    relay = kafka_platform.events.relay()
    assert await relay.relay_batch() >= 3
    topic = kafka_platform.settings.events.topic_prefix + fam
    records = await asyncio.to_thread(_read_all, kafka_bootstrap, topic, 3)
    assert len(records) == 3
    written = {
        e.event_id: e.occurred_at for e in await kafka_platform.events.audit.entries(tenant.id)
    }
    for i, (record, event_id) in enumerate(zip(records, ids, strict=True)):
        assert record.key() == str(tenant.id).encode()
        assert json.loads(record.value()) == {"n": i}
        headers = {name: value.decode() for name, value in record.headers()}
        assert headers["ce_specversion"] == "1.0"
        assert headers["ce_id"] == str(event_id)
        assert headers["ce_type"] == kind
        assert headers["ce_source"] == "/tenantry/default"
        assert headers["ce_time"] == format_time(written[event_id])  # e.g. ...:07.123456Z
        assert headers["ce_subject"] == f"k{i}"
        assert headers["ce_tenantid"] == str(tenant.id)
        assert headers["ce_tenanttier"] == "enterprise"
        assert headers["ce_schemaversion"] == "1"
        assert headers["content-type"] == "application/json"
        assert "traceparent" not in headers  # no active trace when published
    async with kafka_platform.db.transaction() as conn:
        cur = await conn.execute("SELECT count(*) FROM tenantry.outbox WHERE type = %s", (kind,))
        assert await cur.fetchone() == (0,)  # relayed rows leave the outbox


async def test_kafka_consumer_handles_each_event_once_in_its_tenant(
    kafka_platform: Platform, make_tenant: MakeTenant
) -> None:
    """Relay + tenantry consumer: every event's effect exactly once, each tenant's in
    order, the tenant bound inside the handler and in a worker thread; a poison event goes
    to the DLQ topic with its reason while everything else is handled."""
    a, b = await make_tenant("kfk"), await make_tenant("kfk")
    kind = f"{family()}.created"
    group = f"g-{family()}"
    handlers = EventHandlers(group)

    @handlers.on(kind)
    async def handle(event: Event, conn: AsyncConnection[Any]) -> None:
        if event.tenant.id == a.id and event.payload["n"] == 3:
            raise RuntimeError("poison")
        in_thread = await run_in_executor(None, lambda: current_tenant().id)
        await record_effect(
            conn,
            group,
            event,
            seen_tenant=current_tenant().id,
            thread_tenant=in_thread,
            n=event.payload["n"],
        )

    ids = await _publish(kafka_platform, a, kind, 10) + await _publish(kafka_platform, b, kind, 10)
    consumer = kafka_platform.events.consumer(group, handlers)
    assert isinstance(consumer, KafkaEventConsumer)
    relay = kafka_platform.events.relay()
    async with running(relay.run), running(consumer.run):
        await wait_for(lambda: _count(kafka_platform, group, 19), what="19 effects")
        await wait_for(lambda: _value(consumer.processor.stats["dead-lettered"], 1), what="DLQ")
    rows = await effects(kafka_platform, group)
    assert await effect_counts(kafka_platform, group) == {i: 1 for i in ids if i != ids[3]}
    for row in rows:
        assert row["seen_tenant"] == row["thread_tenant"] == row["tenant_id"]
    assert [r["n"] for r in rows if r["tenant_id"] == a.id] == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    assert [r["n"] for r in rows if r["tenant_id"] == b.id] == list(range(10))
    dlq = consumer.dlq_topic
    records = await asyncio.to_thread(
        _read_all, kafka_platform.settings.events.kafka_bootstrap or "", dlq, 1
    )
    assert len(records) == 1
    headers = {name: value.decode() for name, value in records[0].headers()}
    assert headers["ce_id"] == str(ids[3])
    assert headers["dlq_error"] == "RuntimeError: poison"
    assert headers["dlq_attempts"] == "3"
    assert headers["ce_tenantid"] == str(a.id)


async def _count(platform: Platform, group: str, n: int) -> bool:
    return sum((await effect_counts(platform, group)).values()) >= n


async def _value(value: int, n: int) -> bool:
    return value >= n


async def _drain(relay: OutboxRelay) -> None:
    while await relay.relay_batch():
        pass


async def test_a_backlog_is_relayed_in_pipelined_rounds_in_order(
    kafka_platform: Platform, kafka_bootstrap: str, make_tenant: MakeTenant
) -> None:
    """Under a backlog one round (one transaction) makes CLAIMS_PER_ROUND full claims,
    each while Kafka acknowledges the last, and says a backlog is left; what is left comes
    in the next round, and the tenant's records are in publishing order."""
    tenant = await make_tenant("kfk")
    fam = family()
    kind = f"{fam}.tick"
    relay = OutboxRelay(kafka_platform.db, replace(kafka_platform.settings.events, relay_batch=5))
    await _drain(relay)  # rows other tests left behind
    ids = await _publish(kafka_platform, tenant, kind, 5 * CLAIMS_PER_ROUND + 3)
    assert await relay.relay_batch() == 5 * CLAIMS_PER_ROUND
    assert relay.backlog  # its last window was full: the next round comes at once
    assert await relay.relay_batch() == 3
    assert not relay.backlog
    assert await relay.relay_batch() == 0
    topic = kafka_platform.settings.events.topic_prefix + fam
    records = await asyncio.to_thread(_read_all, kafka_bootstrap, topic, len(ids))
    assert [UUID(dict(r.headers())["ce_id"].decode()) for r in records] == ids


async def test_a_relay_leaves_the_shards_another_relay_holds_and_locks_only_what_it_sees(
    kafka_platform: Platform, make_tenant: MakeTenant
) -> None:
    """While another relay holds one tenant's shard, a claim takes the other tenant's rows
    and none of the held shard's; it tries the locks of the shards its rows are in, not of
    all 64. Once the other relay is done, the held rows are claimed, in publishing order."""
    first = await make_tenant("kfk")
    second = await make_tenant("kfk")
    owner = kafka_platform.db.cell().owner_pool
    async with owner.connection() as conn:
        cur = await conn.execute(
            "SELECT hashtext(%s) & 63, hashtext(%s) & 63", (str(first.id), str(second.id))
        )
        shards = await cur.fetchone()
    assert shards is not None
    if shards[0] == shards[1]:  # one chance in 64: a third tenant has another shard
        second = await make_tenant("kfk")
    kind = f"{family()}.shard"
    relay = OutboxRelay(kafka_platform.db, replace(kafka_platform.settings.events, relay_batch=50))
    await _drain(relay)  # rows other tests left behind
    held_ids = await _publish(kafka_platform, first, kind, 3)
    free_ids = await _publish(kafka_platform, second, kind, 3)

    async def claim() -> tuple[list[UUID], int]:
        async with owner.connection() as conn, conn.transaction(force_rollback=True):
            rows = await relay.claim(conn)
            cur = await conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                "AND pid = pg_backend_pid() AND classid = %s",
                (RELAY_LOCK,),
            )
            locks = await cur.fetchone()
        return [UUID(row[1]) for row in rows], locks[0] if locks else -1

    async with owner.connection() as other, other.transaction():
        await other.execute(
            "SELECT pg_advisory_xact_lock(%s, hashtext(%s) & 63)", (RELAY_LOCK, str(first.id))
        )
        claimed, locks = await claim()
    assert claimed == free_ids
    assert locks == 1
    claimed, locks = await claim()
    assert claimed == held_ids + free_ids
    assert locks == 2


async def test_a_claim_reads_its_window_of_the_outbox_not_the_whole_backlog(
    kafka_platform: Platform, make_tenant: MakeTenant
) -> None:
    """With 6 batches of 4 tenants waiting, no step of a claim's plan handles more rows
    than one batch (PostgreSQL used to read past it, up to the whole outbox sorted for each
    claim, so that draining a backlog cost its square); the claims then take everything,
    in publishing order."""
    tenants = [await make_tenant("kfk") for _ in range(4)]
    kind = f"{family()}.window"
    batch = 200
    relay = OutboxRelay(
        kafka_platform.db, replace(kafka_platform.settings.events, relay_batch=batch)
    )
    await _drain(relay)  # rows other tests left behind
    ids: list[UUID] = []
    for start in range(0, 6 * batch, batch // 2):  # 6 batches, the tenants' rows interleaved
        tenant = tenants[start // (batch // 2) % len(tenants)]
        ids += await _publish(kafka_platform, tenant, kind, batch // 2, start)
    owner = kafka_platform.db.cell().owner_pool
    async with owner.connection() as conn:
        await conn.execute("ANALYZE tenantry.outbox")  # the planner knows the backlog
        async with conn.transaction(force_rollback=True):
            cur = await conn.execute(
                "EXPLAIN (ANALYZE, FORMAT JSON) " + relay_module._CLAIM, relay._claim_values
            )
            explained = await cur.fetchone()
    assert explained is not None
    nodes = [explained[0][0]["Plan"]]
    handled = {}
    while nodes:
        node = nodes.pop()
        nodes += node.get("Plans", [])
        handled[node["Node Type"], node.get("Relation Name")] = max(
            handled.get((node["Node Type"], node.get("Relation Name")), 0),
            node["Actual Rows"] * node["Actual Loops"],
        )
    assert max(handled.values()) == batch, handled
    claimed: list[UUID] = []
    while True:
        async with kafka_platform.db.transaction() as conn:
            rows = await relay.claim(conn)
        if not rows:
            break
        assert len(rows) == batch
        claimed += [UUID(row[1]) for row in rows]
    assert claimed == ids


class _FailingRelay(OutboxRelay):
    """A relay whose Kafka acknowledgement fails for the ``fail_at``-th claim of a round
    (the records of the claims before it really go to Kafka)."""

    fail_at = 2

    async def send(self, records: list[Any]) -> Awaitable[None]:
        self.sends = getattr(self, "sends", 0) + 1
        self.collecting = gc.isenabled()
        if self.sends == self.fail_at:

            async def refused() -> None:
                raise KafkaUnavailableError("refused by the test")

            return refused()
        return await super().send(records)


async def test_a_round_that_fails_rolls_back_all_of_its_claims(
    kafka_platform: Platform, kafka_bootstrap: str, make_tenant: MakeTenant
) -> None:
    """When Kafka fails one claim of a pipelined round, every claim of the round goes back
    to the outbox (none is committed as relayed), and the next round sends them all."""
    tenant = await make_tenant("kfk")
    fam = family()
    kind = f"{fam}.tick"
    settings = replace(kafka_platform.settings.events, relay_batch=5)
    await _drain(OutboxRelay(kafka_platform.db, settings))
    ids = await _publish(kafka_platform, tenant, kind, 5 * CLAIMS_PER_ROUND)
    failing = _FailingRelay(kafka_platform.db, settings)
    with pytest.raises(KafkaUnavailableError):
        await failing.relay_batch()
    assert failing.sends == CLAIMS_PER_ROUND  # every claim was made before the failure
    assert not failing.collecting  # a round runs with the cyclic collector paused ...
    assert gc.isenabled()  # ... and turns it back on, failed or not
    assert failing.relayed == 0
    async with kafka_platform.db.transaction() as conn:
        cur = await conn.execute("SELECT count(*) FROM tenantry.outbox WHERE type = %s", (kind,))
        assert await cur.fetchone() == (len(ids),)
    assert await OutboxRelay(kafka_platform.db, settings).relay_batch() == len(ids)
    topic = kafka_platform.settings.events.topic_prefix + fam
    # The failed round's other claims did reach Kafka: they come twice, which the inbox
    # absorbs.
    sent = len(ids) + 5 * (CLAIMS_PER_ROUND - 1)
    records = await asyncio.to_thread(_read_all, kafka_bootstrap, topic, sent)
    assert len(records) == sent
    assert {UUID(dict(r.headers())["ce_id"].decode()) for r in records} == set(ids)


async def test_a_record_kafka_never_acknowledges_fails_its_round(
    kafka_platform: Platform, make_tenant: MakeTenant
) -> None:
    """Acknowledged records are not reported one by one, but a record that is not delivered
    is: with a broker that cannot be reached and a 0.5 s message timeout, the round raises
    and its events stay in the outbox."""
    tenant = await make_tenant("kfk")
    kind = f"{family()}.lost"
    settings = kafka_platform.settings.events
    await _drain(OutboxRelay(kafka_platform.db, settings))
    ids = await _publish(kafka_platform, tenant, kind, 3)
    nowhere = Producer(producer_config("127.0.0.1:1", **{"message.timeout.ms": 500}))
    assert producer_config("127.0.0.1:1")["delivery.report.only.error"] is True
    relay = OutboxRelay(kafka_platform.db, settings, producer=nowhere)
    with pytest.raises(KafkaUnavailableError, match="timed out"):
        await relay.relay_batch()
    async with kafka_platform.db.transaction() as conn:
        cur = await conn.execute("SELECT count(*) FROM tenantry.outbox WHERE type = %s", (kind,))
        assert await cur.fetchone() == (len(ids),)


async def test_two_relays_at_once_deliver_everything_in_tenant_order(
    kafka_platform: Platform, kafka_bootstrap: str, make_tenant: MakeTenant
) -> None:
    """Two relays drain one outbox together while events are published: every event
    reaches Kafka, and each tenant's events are in publishing order in its partition."""
    tenants = [await make_tenant("kfk") for _ in range(4)]
    fam = family()
    kind = f"{fam}.tick"
    # Rounds on every wake-up, of small claims: each relay is often between rounds.
    settings = replace(kafka_platform.settings.events, relay_batch=20, relay_interval=0.0)
    first = OutboxRelay(kafka_platform.db, settings)
    second = OutboxRelay(kafka_platform.db, settings)
    published: dict[UUID, list[UUID]] = {t.id: [] for t in tenants}
    async with running(first.run), running(second.run):
        for relay in (first, second):
            await asyncio.wait_for(relay.listening.wait(), 30)
        for round_ in range(10):
            for tenant in tenants:
                published[tenant.id] += await _publish(
                    kafka_platform, tenant, kind, 20, round_ * 20
                )
            await asyncio.sleep(0.01)  # waves apart: whichever relay is idle takes the next
        total = sum(len(v) for v in published.values())
        await wait_for(lambda: _value(first.relayed + second.relayed, total), what="relayed")
    assert first.relayed > 0
    assert second.relayed > 0
    topic = kafka_platform.settings.events.topic_prefix + fam
    records = await asyncio.to_thread(_read_all, kafka_bootstrap, topic, total)
    seen: dict[UUID, list[UUID]] = {t.id: [] for t in tenants}
    for record in records:
        headers = dict(record.headers())
        seen[UUID(record.key().decode())].append(UUID(headers["ce_id"].decode()))
    for tenant in tenants:
        assert seen[tenant.id] == published[tenant.id]


async def _trickle(
    platform: Platform, relay: OutboxRelay, tenant: Tenant, kind: str
) -> tuple[int, float]:
    """Publish 40 single-event transactions 25 ms apart while ``relay`` runs; the rounds it
    took to relay them all (checked), and the seconds from the first publish to the last
    event relayed."""
    await _drain(relay)  # rows other tests left behind
    async with running(relay.run):
        await asyncio.wait_for(relay.listening.wait(), 30)
        await asyncio.sleep(0.3)  # the first, empty round is over
        start = time.monotonic()
        for i in range(40):
            await _publish(platform, tenant, kind, 1, i)
            await asyncio.sleep(0.025)
        await wait_for(lambda: _value(relay.relayed, 40), what="relayed")
        seconds = time.monotonic() - start
    assert relay.relayed == 40
    return relay.rounds, seconds


async def test_a_relay_paces_its_rounds_while_events_trickle_in(
    kafka_platform: Platform, kafka_bootstrap: str, make_tenant: MakeTenant
) -> None:
    """Events that come one transaction at a time are relayed in rounds at most
    ``relay_interval`` apart, each taking what was committed meanwhile (in order); with no
    interval, each wake-up starts a round of its own."""
    tenant = await make_tenant("kfk")
    fam = family()
    kind = f"{fam}.tick"
    settings = kafka_platform.settings.events
    paced, seconds = await _trickle(
        kafka_platform,
        OutboxRelay(kafka_platform.db, replace(settings, relay_interval=0.25)),
        tenant,
        kind,
    )
    unpaced, _ = await _trickle(
        kafka_platform,
        OutboxRelay(kafka_platform.db, replace(settings, relay_interval=0.0)),
        tenant,
        f"{fam}.tock",
    )
    # At most one round per 0.25 s (wait_for looks every 50 ms: one more at most).
    assert 2 <= paced <= seconds / 0.25 + 2, (paced, seconds)
    assert unpaced >= 3 * paced, (unpaced, paced)
    topic = kafka_platform.settings.events.topic_prefix + fam
    records = await asyncio.to_thread(_read_all, kafka_bootstrap, topic, 80)
    numbers = [json.loads(r.value())["n"] for r in records]
    assert numbers == [*range(40), *range(40)]  # each run's events in publishing order


async def test_a_backlog_is_not_paced(kafka_platform: Platform, make_tenant: MakeTenant) -> None:
    """Full rounds follow each other at once, whatever ``relay_interval`` says: a relay
    that starts on a backlog drains it without waiting between rounds."""
    tenant = await make_tenant("kfk")
    kind = f"{family()}.tick"
    settings = replace(kafka_platform.settings.events, relay_batch=5, relay_interval=60.0)
    relay = OutboxRelay(kafka_platform.db, settings)
    await _drain(relay)
    await _publish(kafka_platform, tenant, kind, 3 * 5 * CLAIMS_PER_ROUND + 2)
    async with running(relay.run):
        await wait_for(
            lambda: _value(relay.relayed, 3 * 5 * CLAIMS_PER_ROUND + 2),
            seconds=30,
            what="the backlog relayed (well within one 60 s interval)",
        )
    assert relay.rounds == 4  # three rounds of full claims, then the rest


def _committed(bootstrap: str, group: str, topic: str) -> int:
    """How many records ``group`` has committed past, over ``topic``'s three partitions."""
    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        committed = probe.committed([TopicPartition(topic, p) for p in range(3)], timeout=10)
    finally:
        probe.close()
    return sum(max(tp.offset, 0) for tp in committed)


async def test_relayed_offsets_are_committed_only_after_handling(
    kafka_platform: Platform, kafka_bootstrap: str, make_tenant: MakeTenant
) -> None:
    """After a consumer stops, its group's committed offsets cover exactly the records it
    handled (nothing committed ahead of the effects)."""
    tenant = await make_tenant("kfk")
    fam = family()
    kind = f"{fam}.created"
    group = f"g-{family()}"
    handlers = recording(group, kind)

    await _publish(kafka_platform, tenant, kind, 7)
    await kafka_platform.events.relay().relay_batch()
    consumer = kafka_platform.events.consumer(group, handlers)
    async with running(consumer.run):
        await wait_for(lambda: _count(kafka_platform, group, 7), what="7 effects")
        await asyncio.sleep(0.5)
    assert (
        _committed(kafka_bootstrap, group, kafka_platform.settings.events.topic_prefix + fam) == 7
    )


def _offset_commits(bootstrap: str, group: str) -> int:
    """How many offset records the broker holds for ``group``'s partition of
    ``__consumer_offsets`` (each OffsetCommit writes one per partition it commits); other
    groups sharing that partition must be idle while this is compared."""
    java_hash = 0
    for char in group:  # Kafka places a group by abs(its Java String.hashCode())
        java_hash = (31 * java_hash + ord(char)) & 0xFFFFFFFF
    signed = java_hash - (1 << 32) if java_hash >= 1 << 31 else java_hash
    partition = (abs(signed) if signed != -(1 << 31) else 0) % OFFSETS_PARTITIONS
    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": f"probe-{group}"})
    try:
        _low, high = probe.get_watermark_offsets(
            TopicPartition("__consumer_offsets", partition), timeout=10
        )
    finally:
        probe.close()
    return int(high)


async def test_offsets_are_committed_at_intervals_while_records_flow(
    kafka_platform: Platform, kafka_bootstrap: str, make_tenant: MakeTenant
) -> None:
    """A steady trickle of records (one every few tens of ms, each poll finding some) is
    committed about once per ``commit_interval``, not once per poll; when the consumer
    stops, the group has committed exactly the records it handled."""
    tenant = await make_tenant("kfk")
    fam = family()
    kind = f"{fam}.created"
    group = f"g-{family()}"
    handlers = recording(group, kind)

    consumer = kafka_platform.events.consumer(group, handlers)
    assert isinstance(consumer, KafkaEventConsumer)
    consumer.settings = replace(consumer.settings, commit_interval=1.0)
    relay = kafka_platform.events.relay()
    await _publish(kafka_platform, tenant, kind, 1)
    await relay.relay_batch()
    async with running(consumer.run):
        await wait_for(lambda: _count(kafka_platform, group, 1), what="the first effect")
        before = await asyncio.to_thread(_offset_commits, kafka_bootstrap, group)
        started = time.monotonic()
        for i in range(40):
            await _publish(kafka_platform, tenant, kind, 1, 1 + i)
            await relay.relay_batch()
            await asyncio.sleep(0.02)
        await wait_for(lambda: _count(kafka_platform, group, 41), what="41 effects")
        flowing = time.monotonic() - started
        await asyncio.sleep(0.5)  # an empty poll commits the rest
        commits = await asyncio.to_thread(_offset_commits, kafka_bootstrap, group) - before
    # Once per second while records flow (~2-4 s here), once when they stop; one per poll
    # would be ~40.
    assert 1 <= commits <= flowing + 3
    assert (
        _committed(kafka_bootstrap, group, kafka_platform.settings.events.topic_prefix + fam) == 41
    )


async def test_a_slow_tenant_does_not_hold_up_the_others(
    kafka_platform: Platform, kafka_bootstrap: str, make_tenant: MakeTenant
) -> None:
    """Tenants have lanes of their own: while one tenant's handler is stuck, another
    tenant's later events are handled; the stuck tenant's offset is not committed past
    until its event is done, and then everything is."""
    slow, fast = await make_tenant("kfk"), await make_tenant("kfk")
    fam = family()
    kind = f"{fam}.created"
    group = f"g-{family()}"
    handlers = EventHandlers(group)
    release = asyncio.Event()

    @handlers.on(kind)
    async def handle(event: Event, conn: AsyncConnection[Any]) -> None:
        if event.tenant.id == slow.id:
            await release.wait()
        await record_effect(conn, group, event)

    await _publish(kafka_platform, slow, kind, 1)
    fast_ids = await _publish(kafka_platform, fast, kind, 5)
    await kafka_platform.events.relay().relay_batch()
    consumer = kafka_platform.events.consumer(group, handlers)
    async with running(consumer.run):
        await wait_for(lambda: _count(kafka_platform, group, 5), what="the fast tenant's 5")
        assert await effect_counts(kafka_platform, group) == dict.fromkeys(fast_ids, 1)
        release.set()
        await wait_for(lambda: _count(kafka_platform, group, 6), what="the slow tenant's")
        await asyncio.sleep(0.5)  # the next poll commits
    assert (
        _committed(kafka_bootstrap, group, kafka_platform.settings.events.topic_prefix + fam) == 6
    )


async def test_members_joining_and_leaving_keep_each_tenant_in_order_once(
    kafka_platform: Platform, make_tenant: MakeTenant
) -> None:
    """A second member joins mid-stream and the first leaves: partitions change hands
    (a member finishes and commits what it holds before it lets go), and every event's
    effect happens once, each tenant's in publishing order."""
    tenants = [await make_tenant("kfk") for _ in range(6)]
    kind = f"{family()}.created"
    group = f"g-{family()}"
    handlers = EventHandlers(group)

    @handlers.on(kind)
    async def handle(event: Event, conn: AsyncConnection[Any]) -> None:
        await asyncio.sleep(0.002)  # slow enough that records are in flight at a rebalance
        await record_effect(conn, group, event, n=event.payload["n"])

    async def publish_rounds(rounds: range) -> list[UUID]:
        ids: list[UUID] = []
        for r in rounds:
            for tenant in tenants:
                ids += await _publish(kafka_platform, tenant, kind, 5, start=5 * r)
            await asyncio.sleep(0.05)
        return ids

    first = kafka_platform.events.consumer(group, handlers)
    second = kafka_platform.events.consumer(group, handlers)
    relay = kafka_platform.events.relay()
    async with running(relay.run):
        first_task = asyncio.create_task(first.run())
        try:
            ids = await publish_rounds(range(0, 10))
            async with running(second.run):
                ids += await publish_rounds(range(10, 20))
                first_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await first_task
                ids += await publish_rounds(range(20, 30))
                await wait_for(
                    lambda: _count(kafka_platform, group, len(ids)),
                    what=f"{len(ids)} effects",
                    seconds=60,
                )
        finally:
            first_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await first_task
    assert await effect_counts(kafka_platform, group) == dict.fromkeys(ids, 1)
    assert first.processor.stats["handled"] > 0
    assert second.processor.stats["handled"] > 0
    rows = await effects(kafka_platform, group)
    for tenant in tenants:
        assert [r["n"] for r in rows if r["tenant_id"] == tenant.id] == list(range(150))


def test_offsets_are_committed_to_the_end_of_the_handled_prefix() -> None:
    """Per partition, the commit point is the first record not yet handled: records
    handled out of order (other tenants' lanes) do not move it past an unhandled one."""
    flight = _InFlight()
    for offset in range(5):
        flight.add(("t", 0, offset))
    flight.add(("t", 1, 7))
    flight.done(("t", 0, 1))
    flight.done(("t", 0, 2))
    assert flight.committable() == []
    flight.done(("t", 0, 0))
    assert [(tp.partition, tp.offset) for tp in flight.committable()] == [(0, 3)]
    assert flight.committable() == []  # each commit point is handed out once
    flight.done(("t", 1, 7))
    flight.done(("t", 0, 4))
    assert sorted((tp.partition, tp.offset) for tp in flight.committable()) == [(1, 8)]
    assert flight.busy({("t", 0)})
    assert not flight.busy({("t", 1)})
    flight.done(("t", 0, 3))
    assert [(tp.partition, tp.offset) for tp in flight.release({("t", 0)})] == [(0, 5)]
    assert flight.count == 0


async def test_drop_deletes_the_topics_of_a_prefix_and_only_those(kafka_bootstrap: str) -> None:
    """TopicAdmin.drop(prefix) deletes the topics named with that prefix; a topic of
    another prefix stays."""
    mine, other = f"t{secrets.token_hex(4)}.", f"t{secrets.token_hex(4)}."
    admin = TopicAdmin(kafka_bootstrap, partitions=1)
    await admin.ensure([mine + "a", mine + "b", other + "a"])
    try:
        assert await admin.drop(mine) == [mine + "a", mine + "b"]
        names = set(admin.admin.list_topics(timeout=10).topics)
        assert not any(name.startswith(mine) for name in names)
        assert other + "a" in names
        assert await admin.drop(mine) == []
    finally:
        await admin.drop(other)
    with pytest.raises(ValueError, match="empty prefix"):
        await admin.drop("")
