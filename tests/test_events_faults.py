"""Fault tests against real processes: a relay SIGKILLed mid-batch, a consumer SIGKILLed
mid-handler, the broker killed mid-stream and restarted. Each asserts that every
committed event is delivered and that each handler effect happened exactly once."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import subprocess
import sys
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from uuid import UUID

import pytest

from hr_example import HR_SCHEMA
from tenantry import Platform, Settings
from tenantry.catalog import Tenant
from tenantry.devstack.kafka import KafkaService
from tenantry.events import EventHandlers
from tests import events_app
from tests.events_helpers import (
    effect_counts,
    ensure_effects_table,
    family,
    publish_numbered,
    running,
    wait_for,
)

MakeTenant = Callable[..., Awaitable[Tenant]]
ROOT = Path(__file__).resolve().parent.parent


async def _kafka_platform(
    settings: Settings, bootstrap: str, prefix: str, **events: object
) -> Platform:
    config = replace(
        settings.events,
        kafka_bootstrap=bootstrap,
        topic_prefix=prefix,
        topic_partitions=3,
        consume_in_app=False,
        **events,  # type: ignore[arg-type]
    )
    platform = Platform(replace(settings, events=config), HR_SCHEMA)
    await platform.start(listen=False)
    await ensure_effects_table(platform)
    return platform


@pytest.fixture
async def kafka_platform(
    settings: Settings, kafka_bootstrap: str, topic_prefix: str, platform: Platform
) -> AsyncIterator[Platform]:
    """A Kafka-mode platform on the session's database, with its own topic prefix."""
    kafka = await _kafka_platform(settings, kafka_bootstrap, topic_prefix)
    try:
        yield kafka
    finally:
        await kafka.stop()


def _spawn(platform: Platform, tmp: Path, *args: str, **env: str) -> subprocess.Popen[bytes]:
    events = platform.settings.events
    environment = {
        **os.environ,
        "DATABASE_URL": platform.settings.database.url,
        "TENANTRY_KAFKA_BOOTSTRAP": events.kafka_bootstrap or "",
        "TENANTRY_EVENTS_TOPIC_PREFIX": events.topic_prefix,
        "TENANTRY_EVENTS_TOPIC_PARTITIONS": str(events.topic_partitions),
        "TENANTRY_DATA_DIR": str(tmp),
        "PYTHONPATH": str(ROOT),
        **env,
    }
    with (tmp / f"{args[0]}-{secrets.token_hex(3)}.log").open("wb") as log:
        return subprocess.Popen(
            [str(Path(sys.executable).parent / "tenantry"), *args],
            env=environment,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)


async def _outbox_left(platform: Platform, kind: str) -> int:
    async with platform.db.transaction() as conn:
        cur = await conn.execute("SELECT count(*) FROM tenantry.outbox WHERE type = %s", (kind,))
        row = await cur.fetchone()
    return int(row[0]) if row else 0


def _handlers(group: str, kind: str) -> EventHandlers:
    os.environ["EVENTS_TEST_GROUP"], os.environ["EVENTS_TEST_TYPE"] = group, kind
    try:
        return events_app.build(None)  # type: ignore[arg-type]
    finally:
        del os.environ["EVENTS_TEST_GROUP"], os.environ["EVENTS_TEST_TYPE"]


async def _all_once(platform: Platform, group: str, ids: list[UUID]) -> bool:
    counts = await effect_counts(platform, group)
    return len(counts) >= len(ids)


async def test_relay_sigkilled_mid_batch_loses_nothing(
    kafka_platform: Platform, make_tenant: MakeTenant, tmp_path: Path
) -> None:
    """A relay killed while draining a backlog: its open batch rolls back, a second relay
    sends it (again), and the consumer's effects still happen once per event."""
    tenants = [await make_tenant("flt") for _ in range(3)]
    kind = f"{family()}.created"
    group = f"g-{family()}"
    ids: list[UUID] = []
    for i in range(5):
        for tenant in tenants:
            ids += await publish_numbered(kafka_platform, tenant, kind, 200, i * 200)
    # Rounds of CLAIMS_PER_ROUND claims of 100: several rounds, so one can be cut short.
    relay = _spawn(kafka_platform, tmp_path, "relay", TENANTRY_EVENTS_RELAY_BATCH="100")
    try:
        await wait_for(
            lambda: _below(kafka_platform, kind, len(ids)), seconds=60, what="relay started"
        )
    finally:
        _kill(relay)
    left = await _outbox_left(kafka_platform, kind)
    assert 0 < left < len(ids), "the relay should have been killed mid-stream"
    consumer = kafka_platform.events.consumer(group, _handlers(group, kind))
    async with running(kafka_platform.events.relay().run), running(consumer.run):
        await wait_for(lambda: _all_once(kafka_platform, group, ids), seconds=240, what="all")
        await asyncio.sleep(0.5)
    assert await effect_counts(kafka_platform, group) == dict.fromkeys(ids, 1)
    assert await _outbox_left(kafka_platform, kind) == 0


async def _below(platform: Platform, kind: str, total: int) -> bool:
    return await _outbox_left(platform, kind) < total


async def test_consumer_sigkilled_mid_handler_has_no_double_effect(
    kafka_platform: Platform, make_tenant: MakeTenant, tmp_path: Path
) -> None:
    """A consumer process killed while handlers run (uncommitted effects, uncommitted
    offsets): its replacement replays from the committed offsets; the inbox makes every
    effect happen exactly once."""
    tenants = [await make_tenant("flt") for _ in range(3)]
    kind = f"{family()}.created"
    group = f"g-{family()}"
    ids: list[UUID] = []
    for tenant in tenants:
        ids += await publish_numbered(kafka_platform, tenant, kind, 40)
    assert await kafka_platform.events.relay().relay_batch() == len(ids)
    slow = _spawn(
        kafka_platform,
        tmp_path,
        "consume",
        "tests.events_app:build",
        EVENTS_TEST_GROUP=group,
        EVENTS_TEST_TYPE=kind,
        EVENTS_TEST_SLEEP="0.1",
        TENANTRY_EVENTS_CONSUMER_BATCH="30",
    )
    try:
        await wait_for(lambda: _effects_at_least(kafka_platform, group, 10), seconds=60, what="10")
    finally:
        _kill(slow)
    done = sum((await effect_counts(kafka_platform, group)).values())
    assert done < len(ids), "the consumer should have been killed mid-stream"
    consumer = kafka_platform.events.consumer(group, _handlers(group, kind))
    async with running(consumer.run):
        await wait_for(lambda: _all_once(kafka_platform, group, ids), seconds=240, what="all")
        await asyncio.sleep(0.5)
    assert await effect_counts(kafka_platform, group) == dict.fromkeys(ids, 1)


async def _effects_at_least(platform: Platform, group: str, n: int) -> bool:
    return sum((await effect_counts(platform, group)).values()) >= n


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _start(broker: KafkaService) -> None:
    # KafkaService.start() leaves the broker running on purpose; its Popen handle going
    # away warns (ResourceWarning), which this suite turns into an error.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        broker.start()


@pytest.fixture
def private_broker(tmp_path: Path, kafka_bootstrap: str) -> Iterator[KafkaService]:
    """A broker of this test's own (another port and data folder), to kill and restart."""
    services = Path(os.environ.get("TENANTRY_SERVICES_DIR", ROOT / ".services")).absolute()
    broker = KafkaService(
        tmp_path / "kafka",
        port=_free_port(),
        controller_port=_free_port(),
        dist_dir=services / "kafka-dist",
    )
    _start(broker)
    try:
        yield broker
    finally:
        broker.kill()


async def test_broker_killed_mid_stream_and_restarted_loses_nothing(
    settings: Settings,
    platform: Platform,
    private_broker: KafkaService,
    make_tenant: MakeTenant,
) -> None:
    """Events published before, while and after the broker is down (SIGKILL, then a
    restart on the same data) are all handled, each effect exactly once."""
    kafka = await _kafka_platform(
        settings, private_broker.bootstrap_servers, f"t{secrets.token_hex(4)}.", relay_batch=100
    )
    try:
        tenants = [await make_tenant("flt") for _ in range(2)]
        kind = f"{family()}.created"
        group = f"g-{family()}"
        consumer = kafka.events.consumer(group, _handlers(group, kind))
        ids: list[UUID] = []
        async with running(kafka.events.relay().run), running(consumer.run):
            for tenant in tenants:
                ids += await publish_numbered(kafka, tenant, kind, 50)
            await wait_for(lambda: _effects_at_least(kafka, group, 1), seconds=60, what="flow")
            await asyncio.to_thread(private_broker.kill)
            for tenant in tenants:
                ids += await publish_numbered(kafka, tenant, kind, 50, 50)
            await asyncio.sleep(1.0)
            await asyncio.to_thread(_start, private_broker)
            for tenant in tenants:
                ids += await publish_numbered(kafka, tenant, kind, 50, 100)
            await wait_for(lambda: _all_once(kafka, group, ids), seconds=240, what="all")
            await asyncio.sleep(0.5)
        assert await effect_counts(kafka, group) == dict.fromkeys(ids, 1)
    finally:
        await kafka.stop()
