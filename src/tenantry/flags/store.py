"""Flags in the control plane: ``tenantry.flags`` (current versions) and
``tenantry.flag_versions`` (the audit history: who, when, before and after).

Every change runs in one transaction that bumps the version, appends the history row and
``NOTIFY tenantry_flags, '<key>'``; PostgreSQL delivers the notification at commit, to
every listening process. The application role may read ``tenantry.flags`` (to load
snapshots) and nothing else here.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from psycopg import AsyncConnection, sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from tenantry.catalog.bootstrap import run_bootstrap_script
from tenantry.flags.compiler import BrokenFlag
from tenantry.flags.errors import FlagExistsError, InvalidFlagError
from tenantry.flags.model import Flag, FlagChange

FLAGS_CHANNEL = "tenantry_flags"

FLAGS_DDL = """
CREATE TABLE IF NOT EXISTS tenantry.flags (
    key         text PRIMARY KEY CHECK (key ~ '^[a-z][a-z0-9._-]{0,63}$'),
    version     integer NOT NULL CHECK (version > 0),
    definition  jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    updated_by  text NOT NULL
);
CREATE TABLE IF NOT EXISTS tenantry.flag_versions (
    key         text NOT NULL,
    version     integer NOT NULL,
    action      text NOT NULL,
    actor       text NOT NULL,
    at          timestamptz NOT NULL DEFAULT now(),
    before      jsonb,
    after       jsonb NOT NULL,
    PRIMARY KEY (key, version)
);
"""

_SELECT = "SELECT key, version, definition, updated_at, updated_by FROM tenantry.flags"


async def bootstrap_flags(conn: AsyncConnection[Any], *, app_role: str) -> None:
    """Create the flag tables if missing and let ``app_role`` read current flags.

    ``conn`` is an owner connection in autocommit mode, after the control plane's own
    bootstrap (schema ``tenantry`` exists); serialised by the same advisory lock.
    """
    await run_bootstrap_script(
        conn,
        sql.SQL(FLAGS_DDL)  # a constant: no input in it
        + sql.SQL("GRANT SELECT ON tenantry.flags TO {role};").format(
            role=sql.Identifier(app_role)
        ),
    )


def _flag(row: dict[str, Any]) -> Flag | BrokenFlag:
    try:
        return Flag.from_definition(
            row["key"],
            row["definition"],
            version=row["version"],
            updated_at=row["updated_at"],
            updated_by=row["updated_by"],
        )
    except InvalidFlagError as exc:
        return BrokenFlag(
            row["key"], row["version"], f"stored definition is invalid: {exc}", row["definition"]
        )


class FlagStore:
    """Reads and writes of the flag tables; every method takes the connection to use."""

    async def load_all(self, conn: AsyncConnection[Any]) -> list[Flag | BrokenFlag]:
        """Every flag, by key (a full snapshot)."""
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(_SELECT + " ORDER BY key")
            return [_flag(row) for row in await cur.fetchall()]

    async def load(
        self, conn: AsyncConnection[Any], keys: Collection[str]
    ) -> list[Flag | BrokenFlag]:
        """The flags with these keys (absent keys are simply missing from the result)."""
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(_SELECT + " WHERE key = ANY(%s)", (list(keys),))
            return [_flag(row) for row in await cur.fetchall()]

    async def get(
        self, conn: AsyncConnection[Any], key: str, *, for_update: bool = False
    ) -> Flag | BrokenFlag | None:
        """One flag, optionally locked for the rest of the transaction."""
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                _SELECT + " WHERE key = %s" + (" FOR UPDATE" if for_update else ""), (key,)
            )
            row = await cur.fetchone()
        return _flag(row) if row else None

    async def insert(self, conn: AsyncConnection[Any], flag: Flag, actor: str) -> Flag:
        """Store a new flag at version 1 (audited, notified)."""
        definition = flag.definition()
        cur = await conn.execute(
            "INSERT INTO tenantry.flags (key, version, definition, updated_by) "
            "VALUES (%s, 1, %s, %s) ON CONFLICT (key) DO NOTHING RETURNING updated_at",
            (flag.key, Jsonb(definition), actor),
        )
        row = await cur.fetchone()
        if row is None:
            raise FlagExistsError(
                f"flag {flag.key!r} exists; change it with 'tenantry flags set {flag.key}'"
            )
        await self._audit(conn, flag.key, 1, "create", actor, None, definition)
        return Flag.from_definition(
            flag.key, definition, version=1, updated_at=row[0], updated_by=actor
        )

    async def update(
        self,
        conn: AsyncConnection[Any],
        before: dict[str, Any] | None,
        flag: Flag,
        *,
        action: str,
        actor: str,
    ) -> Flag:
        """Store the next version of a flag the caller locked (audited, notified)."""
        definition = flag.definition()
        cur = await conn.execute(
            "UPDATE tenantry.flags SET version = version + 1, definition = %s, "
            "updated_at = now(), updated_by = %s WHERE key = %s RETURNING version, updated_at",
            (Jsonb(definition), actor, flag.key),
        )
        row = await cur.fetchone()
        assert row is not None, "update() needs a row locked with get(for_update=True)"
        version, updated_at = row
        await self._audit(conn, flag.key, version, action, actor, before, definition)
        return Flag.from_definition(
            flag.key, definition, version=version, updated_at=updated_at, updated_by=actor
        )

    async def history(
        self, conn: AsyncConnection[Any], key: str, *, limit: int = 50
    ) -> list[FlagChange]:
        """A flag's changes, newest first."""
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT key, version, action, actor, at, before, after "
                "FROM tenantry.flag_versions WHERE key = %s ORDER BY version DESC LIMIT %s",
                (key, limit),
            )
            return [FlagChange(**row) for row in await cur.fetchall()]

    async def _audit(
        self,
        conn: AsyncConnection[Any],
        key: str,
        version: int,
        action: str,
        actor: str,
        before: dict[str, Any] | None,
        after: dict[str, Any],
    ) -> None:
        await conn.execute(
            "INSERT INTO tenantry.flag_versions (key, version, action, actor, before, after) "
            "VALUES (%s, %s, %s, %s, %s, %s)",
            (key, version, action, actor, None if before is None else Jsonb(before), Jsonb(after)),
        )
        await conn.execute("SELECT pg_notify(%s, %s)", (FLAGS_CHANNEL, key))
