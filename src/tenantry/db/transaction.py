"""Transactions that tenantry opens and closes itself, on autocommit connections.

:func:`run_transaction` sends the opening statement (plain ``BEGIN`` or the tenant-binding
``BEGIN; SET LOCAL ...``), yields the connection, then sends ``COMMIT`` or
``ROLLBACK``. Nested ``conn.transaction()`` blocks inside become savepoints.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from psycopg import AsyncConnection, OperationalError
from psycopg.pq import TransactionStatus
from psycopg_pool import AsyncConnectionPool

from tenantry.db.errors import TransactionAbortedError

_current: contextvars.ContextVar[AsyncConnection[Any] | None] = contextvars.ContextVar(
    "tenantry_transaction", default=None
)


def current_transaction() -> AsyncConnection[Any] | None:
    """The connection of the innermost transaction this task opened, or ``None``.

    What lets ``platform.events.publish(...)`` join the caller's transaction without being
    handed the connection: the event commits, or rolls back, with the business write.
    """
    return _current.get()


@asynccontextmanager
async def run_transaction(
    pool: AsyncConnectionPool[AsyncConnection[Any]], begin: str
) -> AsyncIterator[AsyncConnection[Any]]:
    """Borrow a connection, run ``begin``, yield, then commit (or roll back on error)."""
    async with pool.connection() as conn:
        await conn.execute(begin)
        token = _current.set(conn)
        try:
            yield conn
        except BaseException:
            if not conn.closed and conn.info.transaction_status != TransactionStatus.IDLE:
                # If the connection is gone the pool discards it; the original error stands.
                with contextlib.suppress(OperationalError):
                    await conn.execute("ROLLBACK")
            raise
        finally:
            # A framework may close the block in another context (a copy): nothing to undo.
            with contextlib.suppress(ValueError):
                _current.reset(token)
        status = conn.info.transaction_status
        if status == TransactionStatus.INERROR:
            await conn.execute("ROLLBACK")
            raise TransactionAbortedError(
                "the transaction was aborted by an error that was caught inside it; nothing "
                "was committed. Use a savepoint (async with conn.transaction()) around "
                "statements whose errors you want to handle"
            )
        if status != TransactionStatus.IDLE:
            await conn.execute("COMMIT")
