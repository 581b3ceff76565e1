"""What application code writes: handlers, registered by event type."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol
from uuid import UUID

from psycopg import AsyncConnection

from tenantry.context import TenantContext
from tenantry.events.envelope import validate_type


@dataclass(frozen=True, slots=True)
class Event:
    """An event as a handler sees it: the tenant is already bound to the context."""

    id: UUID
    type: str
    tenant: TenantContext
    payload: Any
    schema_version: int
    occurred_at: datetime
    subject: str | None = None
    traceparent: str | None = None
    attempt: int = 1
    _after_commit: list[Callable[[], Awaitable[None]]] = field(
        default_factory=list, compare=False, repr=False
    )

    def after_commit(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Run ``callback`` once the handler's transaction has committed (cache
        invalidation, say: before the commit a reader could re-cache the old rows)."""
        self._after_commit.append(callback)


class EventHandler(Protocol):
    """``async def handler(event, conn)``: ``conn`` is in a transaction bound to the
    event's tenant, which also records the event in the inbox. Raise to fail (retried,
    then dead-lettered); return to succeed."""

    def __call__(self, event: Event, conn: AsyncConnection[Any], /) -> Awaitable[None]: ...


HandlerRunner = Callable[[EventHandler, Event, AsyncConnection[Any]], Awaitable[None]]
"""How a handler is invoked: the hook observability wraps (spans, metrics)."""


async def call_handler(handler: EventHandler, event: Event, conn: AsyncConnection[Any]) -> None:
    """The default :data:`HandlerRunner`: just call it."""
    await handler(event, conn)


class EventHandlers:
    """A registry of handlers by event type: one consumer application's subscriptions.

    ``group`` names the consumer group (its position in the log, its inbox rows and its
    dead letters); ``tenantry consume`` uses it unless told otherwise.
    """

    def __init__(self, group: str | None = None) -> None:
        self.group = group
        self._handlers: dict[str, EventHandler] = {}

    def on(self, *types: str) -> Callable[[EventHandler], EventHandler]:
        """Decorator: handle events of these types."""

        def register(handler: EventHandler) -> EventHandler:
            for event_type in types:
                self.add(event_type, handler)
            return handler

        return register

    def add(self, event_type: str, handler: EventHandler) -> None:
        """Register ``handler`` for ``event_type`` (one handler per type)."""
        validate_type(event_type)
        if event_type in self._handlers:
            raise ValueError(f"a handler for {event_type!r} is already registered")
        self._handlers[event_type] = handler

    def get(self, event_type: str) -> EventHandler | None:
        """The handler of ``event_type``, if any."""
        return self._handlers.get(event_type)

    @property
    def types(self) -> frozenset[str]:
        """Every handled event type."""
        return frozenset(self._handlers)

    @property
    def families(self) -> frozenset[str]:
        """The families (topics) the handled types belong to."""
        return frozenset(t.split(".", 1)[0] for t in self._handlers)
