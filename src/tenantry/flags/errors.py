"""Errors about feature flags and their definitions.

Evaluation never raises: a missing flag, a wrong type or a broken definition comes back
as the caller's default with an error reason. These errors are for the control plane
(creating and changing flags) only.
"""

from __future__ import annotations

from tenantry.errors import TenantryError


class FlagError(TenantryError):
    """Base class for feature-flag errors."""


class InvalidFlagError(FlagError):
    """A flag key, value, rule or constraint is malformed; the message names the field."""


class FlagNotFoundError(FlagError):
    """No flag has the given key."""


class FlagExistsError(FlagError):
    """A flag with this key already exists; change it with ``set`` instead."""


class FlagVersionConflictError(FlagError):
    """The flag changed since the version the caller read; re-read it and retry."""
