"""``notify_after_commit``: a wake-up sent right after a tenantry transaction commits, in the
same round trip, as a transaction of its own (a transaction that notifies inside would
hold PostgreSQL's cluster-wide notify lock through its WAL flush). Real PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from psycopg import AsyncConnection

from tenantry import Platform
from tenantry.db import transaction
from tenantry.db.transaction import notify_after_commit
from tests.db_helpers import count_rows, scratch_table
from tests.events_helpers import heard


@pytest.fixture
async def listener(database_url: str) -> AsyncIterator[tuple[AsyncConnection[Any], str]]:
    channel = f"tn_{secrets.token_hex(4)}"
    conn = await AsyncConnection.connect(database_url, autocommit=True)
    await conn.execute(f"LISTEN {channel}")
    try:
        yield conn, channel
    finally:
        await conn.close()


@pytest.fixture
async def table(platform: Platform) -> AsyncIterator[str]:
    async with scratch_table(
        platform, "notify_probe", "x int UNIQUE DEFERRABLE INITIALLY DEFERRED"
    ) as name:
        yield name


async def test_listeners_hear_once_after_the_commit_and_see_its_writes(
    platform: Platform, listener: tuple[AsyncConnection[Any], str], table: str
) -> None:
    conn, channel = listener
    async with platform.db.transaction() as tx:
        await tx.execute(f"INSERT INTO {table} VALUES (1)")
        assert notify_after_commit(tx, channel)
        assert notify_after_commit(tx, channel)  # asked twice, said once
        assert await heard(conn, 0.3) == []  # nothing while the transaction is open
        sender = tx.info.backend_pid
    notes = await heard(conn, 2.0)
    assert [(n.channel, n.pid) for n in notes] == [(channel, sender)]
    assert await count_rows(platform, table) == 1


async def test_a_rollback_or_a_failed_commit_says_nothing(
    platform: Platform, listener: tuple[AsyncConnection[Any], str], table: str
) -> None:
    conn, channel = listener

    async def business_error() -> None:
        async with platform.db.transaction() as tx:
            await tx.execute(f"INSERT INTO {table} VALUES (1)")
            notify_after_commit(tx, channel)
            raise RuntimeError("rule broken")

    with pytest.raises(RuntimeError):
        await business_error()
    # A deferred unique constraint fails at COMMIT itself: the error reaches the caller
    # (nothing was committed) and the notification queued behind it is never sent.
    async with platform.db.transaction() as tx:
        await tx.execute(f"INSERT INTO {table} VALUES (7)")

    async def fails_at_commit() -> None:
        async with platform.db.transaction() as tx:
            await tx.execute(f"INSERT INTO {table} VALUES (8), (7)")
            notify_after_commit(tx, channel)

    with pytest.raises(psycopg.errors.UniqueViolation):
        await fails_at_commit()
    assert await heard(conn, 1.0) == []
    assert await count_rows(platform, table) == 1


async def test_a_notification_that_fails_after_a_commit_that_stood(
    platform: Platform,
    table: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The statement after COMMIT fails (PostgreSQL refuses an empty channel name, from its
    notification code, as it would refuse a notification with its queue full). Given the
    transaction's id, tenantry sees the commit stood: a warning, no error. Without it, the
    outcome is unknown to tenantry and the error is raised (as for a connection lost
    during COMMIT); the row is committed either way."""
    monkeypatch.setattr(
        transaction, "_AFTER_COMMIT", "SELECT pg_notify('', '') FROM (SELECT 1 AS {}) AS x"
    )
    with caplog.at_level(logging.WARNING, logger="tenantry.db"):
        async with platform.db.transaction() as tx:
            await tx.execute(f"INSERT INTO {table} VALUES (1)")
            cur = await tx.execute("SELECT pg_current_xact_id()::text")
            row = await cur.fetchone()
            assert row is not None
            notify_after_commit(tx, "anything", xid=row[0])
        assert tx.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert await count_rows(platform, table) == 1
    assert any("committed, but could not notify" in r.getMessage() for r in caplog.records)

    async def without_xid() -> None:
        async with platform.db.transaction() as tx:
            await tx.execute(f"INSERT INTO {table} VALUES (2)")
            notify_after_commit(tx, "anything")

    with pytest.raises(psycopg.errors.InvalidParameterValue):
        await without_xid()
    assert await count_rows(platform, table) == 2


async def test_only_the_innermost_open_transaction_of_the_task_takes_a_request(
    platform: Platform, database_url: str
) -> None:
    async with await AsyncConnection.connect(database_url, autocommit=True) as own:
        assert not notify_after_commit(own, "anything")  # not a tenantry transaction
        async with platform.db.transaction() as outer:
            async with platform.db.transaction() as inner:
                assert not notify_after_commit(outer, "anything")
                assert notify_after_commit(inner, "anything")
                with pytest.raises(ValueError, match="channel"):
                    notify_after_commit(inner, "")

            async def elsewhere() -> bool:  # a task started inside shares the transaction
                return notify_after_commit(outer, "anything")

            assert await asyncio.create_task(elsewhere())
