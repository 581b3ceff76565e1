"""Transactions that tenantry opens and closes itself, on autocommit connections.

:func:`run_transaction` sends the opening statement (plain ``BEGIN`` or the tenant-binding
``BEGIN; SET LOCAL ...``), yields the connection, then sends ``COMMIT`` or
``ROLLBACK``. Nested ``conn.transaction()`` blocks inside become savepoints.

Code running inside may ask for a ``NOTIFY`` right after the commit
(:func:`notify_after_commit`): it leaves in the same message as ``COMMIT`` but runs as a
transaction of its own. Why not inside: PostgreSQL serializes the commits of all
transactions that notify (a cluster-wide lock from ``NOTIFY``'s pre-commit step until the
commit's WAL flush), so one that notifies inside waits for every other notifying commit's
disk flush in turn; a notify-only transaction writes no WAL and holds that lock for
microseconds.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import re
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from psycopg import AsyncConnection, Error, OperationalError, sql
from psycopg import errors as pg_errors
from psycopg.pq import TransactionStatus
from psycopg_pool import AsyncConnectionPool

from tenantry.db.errors import TransactionAbortedError

logger = logging.getLogger("tenantry.db")


@dataclass(frozen=True, slots=True)
class Prepared:
    """A statement to open transactions with (``run_transaction(..., first=...)``) that
    each connection prepares once (``PREPARE``) and then runs by name (``EXECUTE``).

    A statement sent as text is parsed and planned again every time. For a statement that
    is costly to plan and runs in every transaction (the relay's claim, the consumers' inbox
    claim) that costs the server more than the round trip saved by sending it with
    ``BEGIN``: the relay's claim took 1.24 ms of server CPU per round as text, 0.41 ms by
    name. ``statement`` uses ``$1``, ``$2``... for ``args``, which :meth:`bind` sets (they
    are quoted into the ``EXECUTE``). A name stands for one statement in a process: it is
    what tells a connection that already prepared it. A connection whose ``search_path``
    differs from the previous use (tenant transactions) has PostgreSQL parse it again; its
    names must therefore be schema-qualified."""

    name: str
    statement: str
    args: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        if not _STATEMENT_NAME.fullmatch(self.name):
            raise ValueError(
                f"not a usable statement name: {self.name!r} (lower-case letters, digits and "
                "underscores, at most 63)"
            )

    def bind(self, *args: Any) -> Prepared:
        """This statement with ``args`` for its parameters."""
        return replace(self, args=args)

    def prepare_sql(self) -> str:
        """``PREPARE name AS statement``."""
        return f"PREPARE {self.name} AS {self.statement}"

    def execute_sql(self) -> str:
        """``EXECUTE name(args...)``, the arguments quoted in."""
        if not self.args:
            return f"EXECUTE {self.name}"
        values = ", ".join(sql.Literal(a).as_string(None) for a in self.args)
        return f"EXECUTE {self.name}({values})"


# A name that needs no quoting (so none is done per transaction).
_STATEMENT_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


# The names each connection has prepared (a connection that is closed and dropped leaves).
_prepared: weakref.WeakKeyDictionary[AsyncConnection[Any], set[str]] = weakref.WeakKeyDictionary()


async def _open_with(
    conn: AsyncConnection[Any], begin: str, first: str | Prepared
) -> list[tuple[Any, ...]]:
    """Send ``begin`` and ``first`` as one message; the rows of ``first``."""
    if isinstance(first, str):
        cur = await conn.execute(f"{begin}; {first}")
    else:
        known = _prepared.setdefault(conn, set())
        for retry in (True, False):
            if first.name not in known:
                with contextlib.suppress(pg_errors.DuplicatePreparedStatement):
                    await conn.execute(first.prepare_sql())
                known.add(first.name)
            try:
                cur = await conn.execute(f"{begin}; {first.execute_sql()}")
                break
            except pg_errors.InvalidSqlStatementName:
                # Deallocated behind tenantry's back (DISCARD ALL, DEALLOCATE): prepare it
                # again, once.
                known.discard(first.name)
                await conn.execute("ROLLBACK")
                if not retry:
                    raise
    while cur.nextset():  # the results of BEGIN and SET LOCAL come first
        pass
    return await cur.fetchall() if cur.description is not None else []


@dataclass(slots=True)
class _Open:
    """A transaction :func:`run_transaction` has open, and what to say after its commit."""

    conn: AsyncConnection[Any]
    notify: set[str] = field(default_factory=set)
    xid: str | None = None
    first: list[tuple[Any, ...]] | None = None


_current: contextvars.ContextVar[_Open | None] = contextvars.ContextVar(
    "tenantry_transaction", default=None
)


def current_transaction() -> AsyncConnection[Any] | None:
    """The connection of the innermost transaction this task opened, or ``None``.

    What lets ``platform.events.publish(...)`` join the caller's transaction without being
    handed the connection: the event commits, or rolls back, with the business write.
    """
    open_ = _current.get()
    return open_.conn if open_ is not None else None


def first_rows(conn: AsyncConnection[Any]) -> list[tuple[Any, ...]]:
    """The rows of the statement that opened ``conn``'s transaction along with ``BEGIN``
    (``run_transaction(..., first=...)``). Raises :class:`LookupError` if ``conn`` is not
    the innermost transaction this task opened, or it was opened without one."""
    open_ = _current.get()
    if open_ is None or open_.conn is not conn or open_.first is None:
        raise LookupError("this transaction was not opened with a first statement")
    return open_.first


def notify_after_commit(
    conn: AsyncConnection[Any], channel: str, *, xid: str | None = None
) -> bool:
    """Have ``NOTIFY channel`` sent right after ``conn``'s transaction commits: ``COMMIT``
    and ``NOTIFY`` leave as one message, and the ``NOTIFY`` runs as a transaction of its
    own (nothing is sent if the transaction rolls back or its commit fails). ``False`` if
    ``conn`` is not the innermost transaction :func:`run_transaction` has open in this
    task: the caller must then notify inside the transaction itself.

    ``xid`` is the transaction's id (``pg_current_xact_id()``), if the caller has it: should
    that message fail, it tells a failed commit (raised) from a commit that stood and a
    notification that did not (the notification queue full: logged, not raised, because
    the notification is a wake-up, not data; listeners must also look on their own now and
    then, as tenantry's relays and outbox consumers do). With no ``xid``, any failure is
    raised, as a lost connection during ``COMMIT`` would be.
    """
    if not channel or len(channel.encode()) > _MAX_IDENTIFIER:
        raise ValueError(f"not a usable channel name: {channel!r}")
    open_ = _current.get()
    if open_ is None or open_.conn is not conn:
        return False
    open_.notify.add(channel)
    open_.xid = open_.xid or xid
    return True


_MAX_IDENTIFIER = 63
# What follows COMMIT in the same message, one statement per channel (tests may swap it).
_AFTER_COMMIT = "NOTIFY {}"


@functools.lru_cache(maxsize=64)
def _commit_then(template: str, channels: tuple[str, ...]) -> str:
    """``COMMIT`` and the statements after it, composed once per set of channels."""
    after = (sql.SQL(template).format(sql.Identifier(c)).as_string(None) for c in channels)
    return "; ".join(("COMMIT", *after))


async def _commit(open_: _Open) -> None:
    conn = open_.conn
    if not open_.notify:
        await conn.execute("COMMIT")
        return
    statement = _commit_then(_AFTER_COMMIT, tuple(sorted(open_.notify)))
    try:
        # No parameters: one simple-query message. PostgreSQL stops at the first statement
        # that fails, so an error is either the commit's (nothing committed) or a
        # notification's (committed): only the transaction's status can tell which.
        await conn.execute(statement)
    except Error as exc:
        if open_.xid is None or not await _committed(conn, open_.xid):
            raise
        logger.warning(
            "committed, but could not notify %s afterwards (listeners catch up on their own): %s",
            ", ".join(sorted(open_.notify)),
            exc,
        )


async def _committed(conn: AsyncConnection[Any], xid: str) -> bool:
    try:
        cur = await conn.execute("SELECT pg_xact_status(%s::xid8)", (xid,))
        row = await cur.fetchone()
    except Error:
        return False  # the connection is gone: the outcome stays unknown, so raise
    return row is not None and row[0] == "committed"


@asynccontextmanager
async def run_transaction(
    pool: AsyncConnectionPool[AsyncConnection[Any]],
    begin: str,
    *,
    first: str | Prepared | None = None,
) -> AsyncIterator[AsyncConnection[Any]]:
    """Borrow a connection, run ``begin``, yield, then commit (or roll back on error).

    ``first``: a statement to run in the transaction right after ``begin``, in the same
    message, so it costs no round trip of its own; its rows are :func:`first_rows`. SQL
    text (no parameters) is planned anew each time; a :class:`Prepared` statement is
    prepared once per connection. If it fails, the transaction is rolled back and its
    error raised.
    """
    async with pool.connection() as conn:
        rows: list[tuple[Any, ...]] | None = None
        if first is None:
            await conn.execute(begin)
        else:
            # If it fails, the pool's connection block rolls the transaction back.
            rows = await _open_with(conn, begin, first)
        open_ = _Open(conn, first=rows)
        token = _current.set(open_)
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
            await _commit(open_)
