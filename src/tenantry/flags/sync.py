"""Keeps a process's flag snapshot current: ``LISTEN tenantry_flags`` plus reloads.

One dedicated connection (as the application role) listens; each notification names a
changed flag, which is reloaded on the same connection and swapped into the evaluator, a
few milliseconds after the writer's commit. ``LISTEN`` is issued *before* the full load,
so nothing committed in between is missed. Every ``resync_seconds`` without news the
whole snapshot is reloaded, which also proves the connection is alive.

If the database goes away, the evaluator keeps serving the last snapshot; the listener
retries every ``reconnect_seconds`` and reloads everything once it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from psycopg import AsyncConnection

from tenantry.flags.evaluator import FlagEvaluator
from tenantry.flags.store import FLAGS_CHANNEL, FlagStore

logger = logging.getLogger("tenantry.flags")


class FlagSync:
    """The LISTEN/NOTIFY listener that feeds a :class:`FlagEvaluator`."""

    def __init__(
        self,
        url: str,
        store: FlagStore,
        evaluator: FlagEvaluator,
        *,
        reconnect_seconds: float = 1.0,
        resync_seconds: float = 30.0,
    ) -> None:
        self.url = url
        self.store = store
        self.evaluator = evaluator
        self.reconnect_seconds = reconnect_seconds
        self.resync_seconds = resync_seconds
        self.listening = asyncio.Event()
        self.last_sync: float | None = None
        """``time.monotonic()`` of the last successful (re)load, ``None`` before the first."""
        self._task: asyncio.Task[None] | None = None

    async def start(self, wait_seconds: float = 30.0) -> None:
        """Start listening; returns once the first snapshot is loaded."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="tenantry-flags")
        await asyncio.wait_for(self.listening.wait(), timeout=wait_seconds)

    async def stop(self) -> None:
        """Stop listening (the snapshot stays as it is)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.listening.clear()

    async def _run(self) -> None:
        while True:
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep serving the last snapshot; retry shortly
                if self.listening.is_set():
                    logger.warning(
                        "flag listener lost its connection, serving the last snapshot: %s", exc
                    )
                self.listening.clear()
                await asyncio.sleep(self.reconnect_seconds)

    async def _listen(self) -> None:
        async with await AsyncConnection[Any].connect(
            self.url,
            autocommit=True,
            connect_timeout=5,
            application_name="tenantry-flags",
            # A vanished server (no RST) must not leave us waiting forever.
            keepalives=1,
            keepalives_idle=10,
            keepalives_interval=3,
            keepalives_count=3,
        ) as conn:
            await conn.execute(f"LISTEN {FLAGS_CHANNEL}")
            await self._reload_all(conn)
            self.listening.set()
            while True:
                keys = {
                    note.payload
                    async for note in conn.notifies(timeout=self.resync_seconds, stop_after=1)
                }
                if keys:
                    self.evaluator.apply(keys, await self.store.load(conn, keys))
                    self.last_sync = time.monotonic()
                else:
                    await self._reload_all(conn)

    async def _reload_all(self, conn: AsyncConnection[Any]) -> None:
        self.evaluator.replace(await self.store.load_all(conn))
        self.last_sync = time.monotonic()
