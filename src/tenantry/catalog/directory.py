"""The in-process tenant directory: cached catalog lookups for request resolution.

Resolution must not cost a database round trip per request, so lookups are cached with a
TTL (positive and negative answers), bounded in size (hostile random slugs cannot grow it
without bound), single-flighted (a burst of misses for one key costs one query), and
invalidated across processes by ``LISTEN tenantry_catalog``, which every lifecycle change
notifies at commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection

from tenantry.catalog.models import Tenant
from tenantry.catalog.repository import TenantCatalog
from tenantry.catalog.schema import NOTIFY_CHANNEL
from tenantry.db import Database

logger = logging.getLogger("tenantry.directory")

_Key = tuple[str, str]


class TenantDirectory:
    """Cached tenant lookups by slug, id or custom domain."""

    def __init__(
        self,
        db: Database,
        catalog: TenantCatalog | None = None,
        *,
        ttl: float = 30.0,
        negative_ttl: float = 5.0,
        max_entries: int = 10_000,
    ) -> None:
        self.db = db
        self.catalog = catalog or TenantCatalog()
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.max_entries = max_entries
        self._entries: OrderedDict[_Key, tuple[float, Tenant | None]] = OrderedDict()
        self._inflight: dict[_Key, asyncio.Future[Tenant | None]] = {}
        self._listener: asyncio.Task[None] | None = None
        # Bumped by every invalidation: a lookup that started before one must not cache
        # the (possibly stale) row it read.
        self._generation = 0
        self.listening = asyncio.Event()

    # -- lookups --------------------------------------------------------------------------
    async def get(self, key: str | UUID) -> Tenant | None:
        """The tenant with this slug or uuid (already parsed/validated), or ``None``."""
        if isinstance(key, UUID):
            return await self._lookup(("id", str(key)), key)
        return await self._lookup(("slug", key), key)

    async def get_by_domain(self, host: str) -> Tenant | None:
        """The tenant owning the custom domain ``host``, or ``None``."""
        return await self._lookup(("host", host), host)

    async def _lookup(self, key: _Key, raw: str | UUID) -> Tenant | None:
        entry = self._entries.get(key)
        if entry is not None and entry[0] > time.monotonic():
            return entry[1]
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Tenant | None] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        generation = self._generation
        try:
            async with self.db.cell().app_pool.connection() as conn:
                if key[0] == "host":
                    tenant = await self.catalog.find_by_domain(conn, str(raw))
                else:
                    tenant = await self.catalog.find(conn, raw)
            if generation == self._generation:
                self._store(key, tenant)
            future.set_result(tenant)
            return tenant
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it, nobody else must
            raise
        finally:
            del self._inflight[key]

    def _store(self, key: _Key, tenant: Tenant | None) -> None:
        ttl = self.ttl if tenant is not None else self.negative_ttl
        self._entries[key] = (time.monotonic() + ttl, tenant)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    @property
    def generation(self) -> int:
        """A number that changes whenever any entry is invalidated (for derived caches)."""
        return self._generation

    # -- invalidation ---------------------------------------------------------------------
    def invalidate(self, tenant_id: UUID | None = None) -> None:
        """Forget a tenant's entries (and every negative entry); everything when ``None``."""
        self._generation += 1
        if tenant_id is None:
            self._entries.clear()
            return
        for key, (_, tenant) in list(self._entries.items()):
            if tenant is None or tenant.id == tenant_id:
                del self._entries[key]

    async def start(self) -> None:
        """Start listening for catalog changes from any process."""
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen(), name="tenantry-directory")
            await asyncio.wait_for(self.listening.wait(), timeout=30)

    async def stop(self) -> None:
        """Stop listening."""
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None

    async def _listen(self) -> None:
        url = self.db.cell().app_url
        while True:
            try:
                async with await AsyncConnection[Any].connect(url, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    self.invalidate()  # changes made while we were not listening
                    self.listening.set()
                    async for note in conn.notifies():
                        try:
                            self.invalidate(UUID(note.payload))
                        except ValueError:
                            self.invalidate()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep serving from the TTL cache; retry shortly
                self.listening.clear()
                logger.warning("tenant directory lost its catalog listener: %s", exc)
                await asyncio.sleep(1.0)
