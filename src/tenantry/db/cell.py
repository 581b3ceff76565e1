"""A cell: one PostgreSQL database with its two connection pools.

The *owner* pool runs DDL and control-plane writes; the *app* pool serves tenant traffic as
a role that owns nothing and cannot bypass row-level security. Connections are in
autocommit mode: tenantry opens and closes every transaction itself (see
:mod:`tenantry.db.transaction`), which is what lets the tenant context ride along with
``BEGIN`` at no extra cost.
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection, OperationalError
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool

from tenantry.db.errors import DatabaseUnavailableError


async def _configure(conn: AsyncConnection[Any]) -> None:
    # Pools hand out autocommit connections; transactions are opened explicitly.
    await conn.set_autocommit(True)


class RecentFirstPool(AsyncConnectionPool[AsyncConnection[Any]]):
    """A psycopg pool that lends its most recently returned idle connection first.

    psycopg_pool lends the idle connection that has waited longest, so a process at light
    or sequential load spreads its requests round robin over every connection it ever
    opened, and each request meets a server backend whose caches went cold since its last
    turn. Lending the most recent one (what pgbouncer, node-postgres, Rails and Npgsql do)
    keeps the same one or two backends on the work and leaves the rest idle at the bottom,
    where the pool's ``max_idle`` shrinking closes them first. Measured on a sign-up from
    the warm pool alternating with a one-row commit, 300 of each (see the README).

    Only the choice changes: the pool's own bookkeeping, waiting clients, checks and
    shrinking are psycopg_pool's. ``tests/test_db_pool.py`` pins the order, so an upgrade
    that changes the hook fails there rather than silently going back to round robin.
    """

    async def _get_ready_connection(
        self,
        timeout: float | None,  # noqa: ASYNC109 (psycopg_pool's signature)
    ) -> AsyncConnection[Any] | None:
        # Under the pool's lock. The base class takes from the left of its deque and
        # returns connections to the right: bring the newest to the left first.
        if len(self._pool) > 1:
            self._pool.rotate(1)
        return await super()._get_ready_connection(timeout)


class Cell:
    """One database (a PostgreSQL cluster in production) that tenants are placed on."""

    def __init__(
        self,
        name: str,
        *,
        owner_url: str,
        app_url: str,
        min_size: int = 1,
        max_size: int = 10,
    ) -> None:
        self.name = name
        self.owner_url = owner_url
        self.app_url = app_url
        self.owner_pool: AsyncConnectionPool[AsyncConnection[Any]] = RecentFirstPool(
            owner_url,
            min_size=1,
            max_size=max(2, max_size // 2),
            kwargs={"application_name": f"tenantry-owner:{name}"},
            configure=_configure,
            open=False,
            name=f"{name}-owner",
        )
        self.app_pool: AsyncConnectionPool[AsyncConnection[Any]] = RecentFirstPool(
            app_url,
            min_size=min_size,
            max_size=max_size,
            kwargs={"application_name": f"tenantry:{name}"},
            configure=_configure,
            open=False,
            name=f"{name}-app",
        )

    async def check_reachable(self) -> None:
        """Fail fast, with a readable message, when the owner URL cannot connect."""
        try:
            conn = await AsyncConnection.connect(self.owner_url, connect_timeout=5)
        except OperationalError as exc:
            info = conninfo_to_dict(self.owner_url)
            where = (
                f"{info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"
            )
            raise DatabaseUnavailableError(
                f"cannot connect to PostgreSQL at {where} ({str(exc).strip().splitlines()[0]}); "
                "is it running? 'make up' starts an embedded one, or set DATABASE_URL"
            ) from exc
        await conn.close()

    async def open(self) -> None:
        """Open both pools, waiting (up to 30 s) for their first connections."""
        await self.owner_pool.open(wait=True, timeout=30.0)
        await self.app_pool.open(wait=True, timeout=30.0)

    async def close(self) -> None:
        """Close both pools."""
        await self.app_pool.close()
        await self.owner_pool.close()
