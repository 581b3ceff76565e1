"""The retry loop shared by the long-running event workers (relay, consumers)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

logger = logging.getLogger("tenantry.events")


async def keep_running(
    step: Callable[[], Awaitable[None]], *, what: str, active: asyncio.Event, pause: float = 1.0
) -> None:
    """Run ``step`` until cancelled; when it fails (database or broker gone), clear
    ``active``, log, and start it again after ``pause`` seconds."""
    while True:
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            active.clear()
            logger.warning("%s interrupted, retrying in %.0f s: %s", what, pause, exc)
            await asyncio.sleep(pause)
