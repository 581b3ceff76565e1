"""The cell's connection pools lend their most recently returned idle connection first
(:class:`tenantry.db.cell.RecentFirstPool`), against real PostgreSQL: the order is pinned
here because it rides on a psycopg_pool hook, and an upgrade that changed the hook would
otherwise go back to round robin without a sound."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection

from tenantry.db.cell import Cell, RecentFirstPool


async def _backend(conn: AsyncConnection[Any]) -> int:
    cur = await conn.execute("SELECT pg_backend_pid()")
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def test_the_most_recently_returned_connection_is_lent_first(database_url: str) -> None:
    pool = RecentFirstPool(database_url, min_size=3, max_size=3, open=False)
    await pool.open(wait=True)
    try:
        held = [await pool.getconn() for _ in range(3)]
        pids = [await _backend(conn) for conn in held]
        assert len(set(pids)) == 3
        for conn in held:  # returned in the order 0, 1, 2: 2 is the most recent
            await pool.putconn(conn)

        # Sequential use stays on one backend (round robin would visit all three).
        for _ in range(5):
            async with pool.connection() as conn:
                assert await _backend(conn) == pids[2]

        # Two at once: the two most recent; the oldest stays idle at the bottom.
        first, second = await pool.getconn(), await pool.getconn()
        assert [await _backend(first), await _backend(second)] == [pids[2], pids[1]]
        await pool.putconn(second)
        await pool.putconn(first)
        async with pool.connection() as conn:
            assert await _backend(conn) == pids[2]

        stats = pool.get_stats()
        assert stats["pool_available"] == 3
        assert stats.get("requests_errors", 0) == 0
    finally:
        await pool.close()


async def test_a_cell_uses_it_for_both_pools(database_url: str) -> None:
    cell = Cell("probe", owner_url=database_url, app_url=database_url)
    assert isinstance(cell.owner_pool, RecentFirstPool)
    assert isinstance(cell.app_pool, RecentFirstPool)
