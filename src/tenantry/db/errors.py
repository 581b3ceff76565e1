"""Database-layer errors."""

from __future__ import annotations

from tenantry.errors import TenantryError


class DatabaseError(TenantryError):
    """Base class for tenantry's own database-layer errors (driver errors pass through)."""


class TransactionAbortedError(DatabaseError):
    """The transaction hit an error that was caught inside it, so it cannot commit."""


class UnknownCellError(DatabaseError):
    """A tenant is placed on a cell this process has no connection pool for."""


class DatabaseUnavailableError(DatabaseError):
    """PostgreSQL could not be reached with the configured URL."""
