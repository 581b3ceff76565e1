"""Errors about publishing and consuming events."""

from __future__ import annotations

from tenantry.errors import TenantryError


class EventError(TenantryError):
    """Base class for event errors."""


class InvalidEventError(EventError):
    """An event's type or payload is malformed; the message says what to fix."""


class NoTransactionError(EventError):
    """``publish`` was called outside a tenant-bound transaction.

    Events are written to the outbox in the caller's transaction, so that they commit or
    roll back with the business write; open one with ``platform.db.tenant_transaction()``.
    """


class KafkaUnavailableError(EventError):
    """Kafka could not be reached or refused a request; the message names the broker."""


class AuditTrailNotFoundError(EventError):
    """No tenant has the given slug or id."""
