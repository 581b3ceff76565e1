"""SQLAlchemy 2 integration: ORM sessions bound to a tenant.

The engine runs in AUTOCOMMIT at the driver level so that tenantry opens each
transaction itself with the tenant-binding ``BEGIN; SET LOCAL ...`` — one round
trip, exactly like :meth:`tenantry.db.Database.tenant_transaction`. Every transaction the
session starts (including after a ``session.commit()`` inside the block) is bound to the
same tenant, through the session's ``after_begin`` event.

Usage::

    engine = create_tenant_engine(settings.database.resolved_app_url())
    async with tenant_session(engine) as session:   # tenant from the current context
        session.add(Department(name="R&D"))
    # committed here; rolled back if the block raised
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from psycopg.pq import TransactionStatus
from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import Session, SessionTransaction

from tenantry.context import TenantContext, current_tenant
from tenantry.db.binding import begin_statement


def create_tenant_engine(url: str, **kwargs: Any) -> AsyncEngine:
    """An async engine (psycopg 3 driver) suitable for :func:`tenant_session`.

    ``url`` may be a plain ``postgresql://`` URL; it is switched to the psycopg dialect.
    Use the application role's URL so row-level security applies.
    """
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    kwargs.setdefault("isolation_level", "AUTOCOMMIT")
    kwargs.setdefault("pool_pre_ping", False)
    return create_async_engine(url, **kwargs)


@asynccontextmanager
async def tenant_session(
    engine: AsyncEngine, ctx: TenantContext | None = None, **session_kwargs: Any
) -> AsyncIterator[AsyncSession]:
    """An :class:`AsyncSession` whose every transaction is bound to ``ctx``.

    ``ctx`` defaults to the current tenant (fails closed with none bound). The block's
    work is committed on normal exit and rolled back on error.
    """
    ctx = ctx or current_tenant()
    opening = begin_statement(ctx)
    session_kwargs.setdefault("expire_on_commit", False)
    session = AsyncSession(bind=engine, **session_kwargs)

    def bind_tenant(
        sync_session: Session, transaction: SessionTransaction, connection: Connection
    ) -> None:
        driver = connection.connection.driver_connection
        if driver is None:  # pragma: no cover - only for a detached connection
            raise RuntimeError("tenant_session: the connection has no driver connection")
        dbapi = connection.connection.dbapi_connection
        if dbapi is None:  # pragma: no cover
            raise RuntimeError("tenant_session: no DBAPI connection")
        if driver.info.transaction_status == TransactionStatus.IDLE:
            # SQLAlchemy's greenlet-adapted DBAPI cursor: a sync call from inside the event.
            cursor = dbapi.cursor()
            try:
                cursor.execute(opening)
            finally:
                cursor.close()

    event.listen(session.sync_session, "after_begin", bind_tenant)
    try:
        async with session:
            try:
                yield session
                await session.commit()
            except BaseException:
                await session.rollback()
                raise
    finally:
        event.remove(session.sync_session, "after_begin", bind_tenant)
