"""The database facade: cells, and the two kinds of transaction tenantry code opens."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from psycopg import AsyncConnection

from tenantry.context import TenantContext, current_tenant
from tenantry.db.binding import PLAIN_BEGIN, READONLY_BEGIN, SNAPSHOT_BEGIN, begin_statement
from tenantry.db.cell import Cell
from tenantry.db.errors import UnknownCellError
from tenantry.db.transaction import Prepared, run_transaction
from tenantry.settings import DatabaseSettings


class Database:
    """Connection pools per cell, and tenant-bound / control-plane transactions."""

    def __init__(self, settings: DatabaseSettings) -> None:
        self.settings = settings
        self.default_cell = settings.cell
        # Called with the tenant and the seconds each tenant transaction took (metrics).
        self.on_transaction: Callable[[TenantContext, float], None] | None = None
        self.cells: dict[str, Cell] = {
            settings.cell: Cell(
                settings.cell,
                owner_url=settings.url,
                app_url=settings.resolved_app_url(),
                min_size=settings.pool_min,
                max_size=settings.pool_max,
            )
        }

    async def open(self) -> None:
        """Open every cell's pools."""
        for cell in self.cells.values():
            await cell.open()

    async def close(self) -> None:
        """Close every cell's pools."""
        for cell in self.cells.values():
            await cell.close()

    def cell(self, name: str | None = None) -> Cell:
        """The cell called ``name`` (the default cell when ``None``)."""
        try:
            return self.cells[name or self.default_cell]
        except KeyError:
            raise UnknownCellError(
                f"no cell {name!r} is configured in this process (known: {sorted(self.cells)})"
            ) from None

    @asynccontextmanager
    async def tenant_transaction(
        self,
        ctx: TenantContext | None = None,
        *,
        readonly: bool = False,
        snapshot: bool = False,
        first: str | Prepared | None = None,
    ) -> AsyncIterator[AsyncConnection[Any]]:
        """A transaction bound to a tenant, as the application role.

        ``ctx`` defaults to the tenant bound to the current context; with none bound this
        raises :class:`~tenantry.errors.NoTenantContextError` before touching the database.
        Unqualified table names resolve to the tenant's schema, and row-level security
        admits only the tenant's rows. ``snapshot`` opens a REPEATABLE READ, read-only
        transaction (consistent exports). ``first``: a statement (SQL text with its values
        quoted in, or a :class:`~tenantry.db.transaction.Prepared` one) sent with the
        opening message, its rows read with :func:`tenantry.db.transaction.first_rows` (see
        :func:`~tenantry.db.transaction.run_transaction`).
        """
        ctx = ctx or current_tenant()
        begin = SNAPSHOT_BEGIN if snapshot else READONLY_BEGIN if readonly else PLAIN_BEGIN
        observe = self.on_transaction
        start = time.perf_counter()
        try:
            async with run_transaction(
                self.cell(ctx.cell).app_pool, begin_statement(ctx, begin), first=first
            ) as conn:
                yield conn
        finally:
            if observe is not None:
                observe(ctx, time.perf_counter() - start)

    @asynccontextmanager
    async def transaction(
        self,
        *,
        cell: str | None = None,
        owner: bool = True,
        readonly: bool = False,
        first: str | Prepared | None = None,
    ) -> AsyncIterator[AsyncConnection[Any]]:
        """A transaction with no tenant bound: control-plane work (owner role by default).

        With ``owner=False`` it runs as the application role with no tenant, which row-level
        security answers with an error or no rows: useful to prove the safety net holds.
        ``first``: as for :meth:`tenant_transaction`.
        """
        target = self.cell(cell)
        pool = target.owner_pool if owner else target.app_pool
        begin = READONLY_BEGIN if readonly else PLAIN_BEGIN
        async with run_transaction(pool, begin, first=first) as conn:
            yield conn
