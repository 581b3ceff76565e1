"""Helpers the database tests share: a throwaway table in ``public`` and a row count."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from tenantry import Platform


@asynccontextmanager
async def scratch_table(
    platform: Platform, prefix: str, columns: str, *, grant: str | None = None
) -> AsyncIterator[str]:
    """``public.<prefix>_<random>`` with ``columns``, dropped afterwards; ``grant`` (e.g.
    ``"SELECT, INSERT"``) is given to the application role."""
    name = f"public.{prefix}_{secrets.token_hex(4)}"
    async with platform.db.transaction() as conn:
        await conn.execute(f"CREATE TABLE {name} ({columns})")
        if grant:
            await conn.execute(f"GRANT {grant} ON {name} TO {platform.settings.database.app_role}")
    try:
        yield name
    finally:
        async with platform.db.transaction() as conn:
            await conn.execute(f"DROP TABLE {name}")


async def count_rows(platform: Platform, table: str) -> int:
    """Rows in ``table``, read as the owner."""
    async with platform.db.transaction() as conn:
        cur = await conn.execute(f"SELECT count(*) FROM {table}")
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])
