"""Publishing: events join the business transaction, carry the tenant's envelope, are
audited in a hash chain, and the application role can append but never rewrite."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg
import pytest

from tenantry import Platform, tenant_scope
from tenantry.catalog import Tenant
from tenantry.events import InvalidEventError, NewEvent, NoTransactionError, outbox
from tenantry.events.envelope import format_epoch, format_time
from tenantry.events.schema import EVENTS_DDL
from tests.events_helpers import family, heard

MakeTenant = Callable[..., Awaitable[Tenant]]


async def _outbox(platform: Platform, event_type: str) -> list[dict[str, Any]]:
    async with platform.db.transaction() as conn:
        cur = await conn.execute(
            "SELECT event_id, tenant_id, tier, type, topic, subject, schema_version, "
            "occurred_at, traceparent, payload FROM tenantry.outbox WHERE type = %s ORDER BY seq",
            (event_type,),
        )
        names = [c.name for c in cur.description or ()]
        return [dict(zip(names, row, strict=True)) for row in await cur.fetchall()]


async def _chained_in_publish_order(platform: Platform, tenant: Tenant, ids: list[UUID]) -> None:
    """The tenant's chain holds exactly ``ids`` (payloads ``{"n": 0}``, ``{"n": 1}``...),
    in that order, and verifies."""
    entries = await platform.events.audit.entries(tenant.id, limit=len(ids) + 10)
    assert [(e.position, e.event_id, e.payload) for e in entries] == [
        (n + 1, event_id, {"n": n}) for n, event_id in enumerate(ids)
    ]
    report = await platform.events.audit.verify(tenant.id)
    assert report.ok, report.problems
    assert report.head_position == len(ids)


async def test_an_epoch_from_postgresql_formats_as_its_timestamp(platform: Platform) -> None:
    """``format_epoch`` (the relay's ``ce_time``) of PostgreSQL's ``date_part('epoch', t)``
    spells ``t`` as ``format_time`` does, to the microsecond, on second and day boundaries
    and from 1970 to 2100."""
    moments = [
        "1970-01-01 00:00:00+00",
        "1999-12-31 23:59:59.999999+00",
        "2026-11-27 11:28:07.000001+00",
        "2026-11-27 11:28:07.5+01",
        "2100-02-28 23:59:59.999999+00",
    ]
    async with platform.db.transaction() as conn:
        cur = await conn.execute(
            "SELECT t, date_part('epoch', t) FROM unnest(%s::timestamptz[]) t UNION ALL "
            "SELECT t, date_part('epoch', t) FROM generate_series('2026-11-27 11:00:00+00'"
            "::timestamptz, '2026-11-27 11:00:01+00', '7919 microseconds') t",
            (moments,),
        )
        rows = await cur.fetchall()
    assert len(rows) == len(moments) + 127
    assert [format_epoch(epoch).decode() for _, epoch in rows] == [format_time(t) for t, _ in rows]
    assert format_epoch(rows[1][1]) == b"1999-12-31T23:59:59.999999Z"


async def test_publish_writes_the_envelope_in_the_callers_transaction(
    platform: Platform, make_tenant: MakeTenant
) -> None:
    """An event published in a tenant transaction lands in the outbox with a time-ordered
    UUIDv7 id, the tenant's id and tier, its type, topic, schema version, time and payload."""
    tenant = await make_tenant("evt", tier="pro")
    kind = f"{family()}.created"
    before = datetime.now(UTC) - timedelta(seconds=1)
    with tenant_scope(tenant.context()):
        async with platform.db.tenant_transaction():
            first = await platform.events.publish(kind, {"n": 1}, key="emp-7")
            second = await platform.events.publish(kind, {"n": 2}, schema_version=3)
    rows = await _outbox(platform, kind)
    assert [row["event_id"] for row in rows] == [first, second]
    assert first.version == 7
    assert first < second
    row = rows[0]
    assert row["tenant_id"] == tenant.id
    assert row["tier"] == "pro"
    assert row["topic"] == "tenantry." + kind.split(".")[0]
    assert row["subject"] == "emp-7"
    assert row["payload"] == {"n": 1}
    assert row["schema_version"] == 1
    assert rows[1]["schema_version"] == 3
    assert before <= row["occurred_at"] <= datetime.now(UTC)


async def test_a_rolled_back_transaction_publishes_nothing(
    platform: Platform, make_tenant: MakeTenant
) -> None:
    """An error after publish rolls the event back with the business write, and leaves no
    audit entry either."""
    tenant = await make_tenant("evt")
    kind = f"{family()}.created"

    async def fail() -> None:
        async with platform.db.tenant_transaction():
            await platform.events.publish(kind, {"n": 1})
            raise RuntimeError("business rule failed")

    with tenant_scope(tenant.context()), pytest.raises(RuntimeError):
        await fail()
    assert await _outbox(platform, kind) == []
    assert await platform.events.audit.entries(tenant.id) == []


async def test_publish_needs_a_transaction_and_a_valid_event(
    platform: Platform, make_tenant: MakeTenant
) -> None:
    """Outside a transaction publish refuses; bad types, keys and payloads are refused
    before anything is written."""
    tenant = await make_tenant("evt")
    with tenant_scope(tenant.context()):
        with pytest.raises(NoTransactionError):
            await platform.events.publish("thing.created", {})
        async with platform.db.tenant_transaction():
            for bad in ("Thing.Created", "nodot", "a..b", "thing.", ""):
                with pytest.raises(InvalidEventError):
                    await platform.events.publish(bad, {})
            with pytest.raises(InvalidEventError):
                await platform.events.publish("thing.created", {"when": object()})
            with pytest.raises(InvalidEventError):
                await platform.events.publish("thing.created", {}, key=5)  # type: ignore[arg-type]


async def test_publish_many_keeps_order_in_one_round_trip(
    platform: Platform, make_tenant: MakeTenant
) -> None:
    """A batch is written in order, chained in order."""
    tenant = await make_tenant("evt")
    kind = f"{family()}.bulk"
    with tenant_scope(tenant.context()):
        async with platform.db.tenant_transaction():
            ids = await platform.events.publish_many(NewEvent(kind, {"i": i}) for i in range(50))
    rows = await _outbox(platform, kind)
    assert [row["event_id"] for row in rows] == ids
    assert [row["payload"]["i"] for row in rows] == list(range(50))
    entries = await platform.events.audit.entries(tenant.id, limit=100)
    assert [e.event_id for e in entries] == ids
    assert [e.position for e in entries] == list(range(1, 51))


async def test_publish_alone_commits_events_in_one_round_trip(
    platform: Platform, make_tenant: MakeTenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``publish_alone`` commits events that go with no business write in a transaction of
    their own, one message on the wire: in the outbox in order, chained in the tenant's
    audit trail after what the tenant published before, the chain intact. A payload JSON
    cannot encode raises and leaves nothing behind, and the connection goes back clean."""
    tenant = await make_tenant("evt", tier="enterprise")
    kind = f"{family()}.alone"
    with tenant_scope(tenant.context()):
        async with platform.db.tenant_transaction():
            first = await platform.events.publish(kind, {"i": -1})
        sent: list[str] = []

        class Counting(psycopg.AsyncClientCursor[Any]):
            async def execute(self, query: Any, params: Any = None, **kw: Any) -> Any:
                sent.append(self.mogrify(query, params))
                return await super().execute(query, params, **kw)

        monkeypatch.setattr(outbox, "AsyncClientCursor", Counting)
        ids = await platform.events.publish_alone(NewEvent(kind, {"i": i}) for i in range(3))
        monkeypatch.undo()
    other = await make_tenant("evt")
    more = await platform.events.publish_alone([NewEvent(kind, {"i": 3})], tenant=other.context())
    rows = await _outbox(platform, kind)
    assert [row["event_id"] for row in rows] == [first, *ids, *more]
    assert [row["tenant_id"] for row in rows] == [tenant.id] * 4 + [other.id]
    assert {row["tier"] for row in rows[:4]} == {"enterprise"}
    assert len(sent) == 1  # BEGIN, binding, publish, COMMIT: one simple-query message
    assert sent[0].startswith("BEGIN")
    assert sent[0].endswith("; COMMIT")
    entries = await platform.events.audit.entries(tenant.id, limit=10)
    assert [e.event_id for e in entries] == [first, *ids]
    assert (await platform.events.audit.verify(tenant.id)).ok
    with pytest.raises(InvalidEventError):
        await platform.events.publish_alone(
            [NewEvent(kind, {"bad": object()})], tenant=other.context()
        )
    assert [row["event_id"] for row in await _outbox(platform, kind)] == [first, *ids, *more]
    async with platform.db.cell(other.cell).app_pool.connection() as conn:
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert await platform.events.publish_alone([], tenant=other.context()) == []


async def test_the_app_role_can_publish_but_not_read_or_rewrite_events(
    platform: Platform, make_tenant: MakeTenant
) -> None:
    """The application role appends through the publishing function only: it cannot read
    the outbox, nor update or delete audit entries, nor publish with no tenant bound."""
    tenant = await make_tenant("evt")
    with tenant_scope(tenant.context()):
        async with platform.db.tenant_transaction():
            await platform.events.publish(f"{family()}.created", {"n": 1})
    for statement in (
        "SELECT count(*) FROM tenantry.outbox",
        "UPDATE tenantry.audit_log SET payload = '{}'",
        "DELETE FROM tenantry.audit_log",
        "UPDATE tenantry.audit_heads SET position = 0",
        "INSERT INTO tenantry.audit_log (tenant_id, position, event_id, type, schema_version, "
        "occurred_at, payload, prev_hash, hash) VALUES (gen_random_uuid(), 1, "
        "gen_random_uuid(), 'x.y', 1, now(), '{}', '', '')",
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            async with platform.db.tenant_transaction(tenant.context()) as conn:
                await conn.execute(statement)
    with pytest.raises(psycopg.DatabaseError, match="tenant-bound"):
        async with platform.db.transaction(owner=False) as conn:
            await conn.execute(
                "SELECT tenantry.publish_events('pro', now(), NULL, jsonb_build_array("
                "jsonb_build_object('id', gen_random_uuid(), 'type', 'x.y', 'topic', 't.x', "
                "'subject', NULL, 'version', 1, 'payload', '{}'::jsonb)))"
            )


async def test_concurrent_publishers_of_one_tenant_never_fork_its_chain(
    platform: Platform, make_tenant: MakeTenant
) -> None:
    """Twenty transactions of one tenant publishing at once take turns on the chain head:
    positions 1..N, each entry chained to the previous, and verify() finds it intact."""
    tenant = await make_tenant("evt")
    kind = f"{family()}.race"

    async def one(i: int) -> UUID:
        with tenant_scope(tenant.context()):
            async with platform.db.tenant_transaction():
                return await platform.events.publish(kind, {"i": i})

    ids = await asyncio.gather(*(one(i) for i in range(20)))
    entries = await platform.events.audit.entries(tenant.id, limit=100)
    assert sorted(e.event_id for e in entries) == sorted(ids)
    assert [e.position for e in entries] == list(range(1, 21))
    for previous, entry in itertools.pairwise(entries):
        assert entry.prev_hash == previous.hash
    report = await platform.events.audit.verify(tenant.id)
    assert report.ok, report.problems
    assert (report.entries, report.head_position) == (20, 20)


async def test_an_open_transaction_does_not_hold_up_its_tenants_other_publishers(
    platform: Platform, make_tenant: MakeTenant
) -> None:
    """The chain head is taken at commit, not at publish: while one transaction of a
    tenant has published and is still open, another transaction of the same tenant
    publishes and commits. Entries are in commit order, and the chain verifies."""
    tenant = await make_tenant("evt")
    kind = f"{family()}.open"
    published, finish = asyncio.Event(), asyncio.Event()

    async def slow() -> UUID:
        with tenant_scope(tenant.context()):
            async with platform.db.tenant_transaction():
                event_id = await platform.events.publish(kind, {"who": "slow"})
                published.set()
                await finish.wait()
        return event_id

    async def quick() -> UUID:
        with tenant_scope(tenant.context()):
            async with platform.db.tenant_transaction():
                return await platform.events.publish(kind, {"who": "quick"})

    slow_task = asyncio.create_task(slow())
    await published.wait()
    try:
        quick_id = await asyncio.wait_for(quick(), 10)
    finally:
        finish.set()
    slow_id = await slow_task
    entries = await platform.events.audit.entries(tenant.id, limit=10)
    assert [(e.position, e.event_id) for e in entries] == [(1, quick_id), (2, slow_id)]
    report = await platform.events.audit.verify(tenant.id)
    assert report.ok, report.problems


async def test_events_of_a_rolled_back_savepoint_stay_out_of_the_chain(
    platform: Platform, make_tenant: MakeTenant
) -> None:
    """A savepoint that rolls back takes its events with it, from the outbox and from the
    audit chain; the transaction's other events, single and batched, are chained in the
    order they were published."""
    tenant = await make_tenant("evt")
    kind = f"{family()}.sp"
    with tenant_scope(tenant.context()):
        async with platform.db.tenant_transaction() as conn:
            kept = [await platform.events.publish(kind, {"n": 0})]
            async with conn.transaction():
                await platform.events.publish(kind, {"n": "dropped"})
                raise psycopg.Rollback  # the savepoint rolls back, the transaction goes on
            kept += await platform.events.publish_many(NewEvent(kind, {"n": n}) for n in (1, 2))
            async with conn.transaction():
                kept.append(await platform.events.publish(kind, {"n": 3}))
    assert [row["event_id"] for row in await _outbox(platform, kind)] == kept
    await _chained_in_publish_order(platform, tenant, kept)


async def test_a_transaction_publishing_for_two_tenants_in_turn_chains_each(
    platform: Platform, make_tenant: MakeTenant
) -> None:
    """An owner transaction that binds one tenant, then another, then the first again
    appends each event to its own tenant's chain, after what the chain held before."""
    first, second = await make_tenant("evt"), await make_tenant("evt")
    kind = f"{family()}.turns"
    with tenant_scope(first.context()):
        async with platform.db.tenant_transaction():
            earlier = await platform.events.publish(kind, {"n": "earlier"})
    ids: list[UUID] = []
    async with platform.db.transaction() as conn:
        for n, tenant in enumerate((first, second, first)):
            await conn.execute("SELECT set_config('app.tenant_id', %s, true)", (str(tenant.id),))
            with tenant_scope(tenant.context()):
                ids.append(await platform.events.publish(kind, {"n": n}, conn=conn))
    chains = [await platform.events.audit.entries(t.id, limit=10) for t in (first, second)]
    assert [(e.position, e.event_id) for e in chains[0]] == [(1, earlier), (2, ids[0]), (3, ids[2])]
    assert [(e.position, e.event_id) for e in chains[1]] == [(1, ids[1])]
    for tenant in (first, second):
        report = await platform.events.audit.verify(tenant.id)
        assert report.ok, report.problems


async def test_each_publish_call_joins_the_chain_once_whatever_its_size(
    platform: Platform, make_tenant: MakeTenant
) -> None:
    """The chain is appended per publish call, not per event: only a call's first outbox
    row asks for it (``chain_rows``). A call of 600 events, a check of the deferred
    constraints in the middle of the transaction (which appends what came before) and calls
    after it: every event is in the chain exactly once, in publish order."""
    tenant = await make_tenant("evt")
    kind = f"{family()}.calls"
    with tenant_scope(tenant.context()):
        async with platform.db.tenant_transaction() as conn:
            ids = await platform.events.publish_many(NewEvent(kind, {"n": n}) for n in range(600))
            await conn.execute("SET CONSTRAINTS ALL IMMEDIATE")
            ids.append(await platform.events.publish(kind, {"n": 600}))
            ids += await platform.events.publish_many(
                NewEvent(kind, {"n": n}) for n in range(601, 604)
            )
    async with platform.db.transaction() as conn:
        cur = await conn.execute(
            "SELECT chain_rows FROM tenantry.outbox WHERE type = %s ORDER BY seq", (kind,)
        )
        marks = [row[0] for row in await cur.fetchall()]
    assert marks == [600, *[None] * 599, 1, 3, None, None]
    await _chained_in_publish_order(platform, tenant, ids)


async def test_bootstrap_replaces_a_per_event_chain_trigger(platform: Platform) -> None:
    """A database whose chain trigger fires for every outbox row (as created by earlier
    versions) gets the per-call trigger when the events schema is bootstrapped again. Run
    in a transaction that is rolled back, so the shared database is left as found."""
    query = (
        "SELECT pg_get_triggerdef(oid) FROM pg_trigger "
        "WHERE tgrelid = 'tenantry.outbox'::regclass AND tgname = 'outbox_audit_chain'"
    )
    async with (
        platform.db.cell().owner_pool.connection() as conn,
        conn.transaction(force_rollback=True),
    ):
        await conn.execute(
            "DROP TRIGGER outbox_audit_chain ON tenantry.outbox; "
            "CREATE CONSTRAINT TRIGGER outbox_audit_chain AFTER INSERT ON tenantry.outbox "
            "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION tenantry.chain_audit()"
        )
        [(before,)] = await (await conn.execute(query)).fetchall()
        await conn.execute(EVENTS_DDL.encode())
        [(after,)] = await (await conn.execute(query)).fetchall()
    assert "WHEN" not in before
    assert "WHEN ((new.chain_rows IS NOT NULL))" in after


async def _notes_from(conn: psycopg.AsyncConnection[Any], pid: int, seconds: float) -> int:
    return sum(note.pid == pid for note in await heard(conn, seconds))


async def test_publishers_wake_relays_after_their_commit_not_inside_it(
    platform: Platform, make_tenant: MakeTenant, database_url: str
) -> None:
    """In a tenantry transaction, ``publish`` calls ``append_events`` (no NOTIFY inside) and
    the wake-up follows the COMMIT in the same round trip (a notifying transaction would
    hold PostgreSQL's cluster-wide notify lock through its WAL flush, so publishers would
    commit one at a time). Any other client calls ``publish_events``, which wakes relays at
    its commit, as before; ``append_events`` alone says nothing."""
    tenant = await make_tenant("evt")
    kind = f"{family()}.woken"
    listener = await psycopg.AsyncConnection.connect(database_url, autocommit=True)
    owner = await psycopg.AsyncConnection.connect(database_url, autocommit=True)
    try:
        await listener.execute("LISTEN tenantry_outbox")
        with tenant_scope(tenant.context()):
            async with platform.db.tenant_transaction() as conn:
                pid = conn.info.backend_pid
                await platform.events.publish(kind, {"n": 1})
                cur = await owner.execute(
                    "SELECT query FROM pg_stat_activity WHERE pid = %s", (pid,)
                )
                seen = await cur.fetchone()
                assert seen is not None
                assert await _notes_from(listener, pid, 0.3) == 0
        assert await _notes_from(listener, pid, 2.0) == 1

        for function, woken in (("publish_events", 1), ("append_events", 0)):
            await owner.execute("BEGIN")
            await owner.execute("SELECT set_config('app.tenant_id', %s, true)", (str(tenant.id),))
            await owner.execute(
                f"SELECT tenantry.{function}('free', now(), NULL, "
                f"jsonb_build_array(jsonb_build_object('id', gen_random_uuid(), 'type', "
                f"%s::text, 'topic', 'x', 'version', 1, 'payload', '{{}}'::jsonb)))",
                (kind,),
            )
            await owner.execute("COMMIT")
            assert await _notes_from(listener, owner.info.backend_pid, 1.0) == woken
    finally:
        await listener.close()
        await owner.close()
    # pg_stat_activity showed the statement the app connection was last running: the
    # append, which does not notify.
    assert seen[0].startswith("SELECT tenantry.append_events("), seen[0]
    assert len(await _outbox(platform, kind)) == 3
