"""The root of tenantry's exception family.

Each capability keeps its own errors in its own ``errors.py``; they all derive from
:class:`TenantryError`, so ``except TenantryError`` catches anything tenantry raises on
purpose. Messages say what happened and what to do about it.
"""

from __future__ import annotations


class TenantryError(Exception):
    """Base class of every error tenantry raises deliberately."""


class ConfigurationError(TenantryError):
    """Settings are missing or malformed; the message names the variable to fix."""


class NoTenantContextError(TenantryError):
    """Tenant-scoped work was attempted with no tenant bound to the current context."""
