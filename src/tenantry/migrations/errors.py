"""Errors of schema migrations."""

from __future__ import annotations

from tenantry.errors import TenantryError


class MigrationError(TenantryError):
    """Base class of the migration errors tenantry raises on purpose."""


class MigrationScriptError(MigrationError):
    """A migration script folder cannot be turned into one ordered chain."""


class ControlPlaneMigrationError(MigrationError):
    """A control-plane migration step failed; no tenant was touched."""
