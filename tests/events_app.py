"""A consumer application for the fault tests, run by ``tenantry consume`` in a
subprocess: ``tests.events_app:build``. Its group and event type come from the
environment; each event's effect is a row in ``public.event_effects`` (in the handler's
transaction), and ``EVENTS_TEST_SLEEP`` seconds are spent inside the handler, so a SIGKILL
lands mid-handler."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from psycopg import AsyncConnection

from tenantry import Platform
from tenantry.events import Event, EventHandlers
from tests.events_helpers import record_effect


def build(platform: Platform) -> EventHandlers:
    """Handlers for ``$EVENTS_TEST_TYPE`` in group ``$EVENTS_TEST_GROUP``."""
    group = os.environ["EVENTS_TEST_GROUP"]
    pause = float(os.environ.get("EVENTS_TEST_SLEEP", "0"))
    handlers = EventHandlers(group)

    @handlers.on(os.environ["EVENTS_TEST_TYPE"])
    async def handle(event: Event, conn: AsyncConnection[Any]) -> None:
        await record_effect(conn, group, event, n=event.payload.get("n"))
        if pause:
            await asyncio.sleep(pause)

    return handlers
