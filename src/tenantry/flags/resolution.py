"""What an evaluation returns: the value, and why (the reason) — never an exception.

Reasons and error codes use OpenFeature's spellings, so the provider hands them through
unchanged; ``RULE_MATCH`` is the one non-standard reason (the spec allows any string).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


class Reason(enum.StrEnum):
    """Why an evaluation produced its value (see the README's precedence order)."""

    TARGET = "TARGETING_MATCH"
    """The tenant is an explicit target of the flag."""
    RULE = "RULE_MATCH"
    """A rule's tiers / rings / constraints matched the tenant."""
    ROLLOUT = "SPLIT"
    """A rule with a percentage rollout matched and the tenant's bucket is inside it."""
    DEFAULT = "DEFAULT"
    """Nothing matched: the flag's default."""
    DISABLED = "DISABLED"
    """The flag is killed: everyone gets its default."""
    ERROR = "ERROR"
    """The caller's default, because of ``error_code``."""


class ErrorCode(enum.StrEnum):
    """Why an evaluation fell back to the caller's default."""

    FLAG_NOT_FOUND = "FLAG_NOT_FOUND"
    TYPE_MISMATCH = "TYPE_MISMATCH"
    TARGETING_KEY_MISSING = "TARGETING_KEY_MISSING"
    INVALID_CONTEXT = "INVALID_CONTEXT"
    PARSE_ERROR = "PARSE_ERROR"
    GENERAL = "GENERAL"


@dataclass(frozen=True, slots=True, eq=False)
class Resolution:
    """The result of evaluating one flag for one tenant.

    Successful results are built once per flag version and shared by every evaluation that
    ends the same way, which is why this is immutable.
    """

    key: str
    value: Any
    reason: Reason
    variant: str | None = None
    rule: str | None = None
    version: int = 0
    error_code: ErrorCode | None = None
    error_message: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the value came from the flag (not from an error fallback)."""
        return self.error_code is None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view."""
        return {
            "key": self.key,
            "value": self.value,
            "reason": self.reason.value,
            "variant": self.variant,
            "rule": self.rule,
            "version": self.version,
            "error_code": self.error_code.value if self.error_code else None,
            "error_message": self.error_message,
        }


def error_resolution(
    key: str, default: Any, code: ErrorCode, message: str, version: int = 0
) -> Resolution:
    """The caller's default, with the reason it had to be used."""
    return Resolution(
        key, default, Reason.ERROR, version=version, error_code=code, error_message=message
    )
