"""HTTP errors: the one place tenantry errors become status codes and JSON bodies.

Every error response has the same shape::

    {"error": {"code": "tenant_not_found", "message": "..."}}
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

from tenantry.cache.errors import (
    RateLimitUnavailableError,
    SessionTenantMismatchError,
    SessionUnavailableError,
)
from tenantry.catalog.errors import (
    InvalidTenantIdentifierError,
    TenantExistsError,
    TenantNotFoundError,
    TenantStateError,
)
from tenantry.errors import TenantryError
from tenantry.flags.errors import (
    FlagExistsError,
    FlagNotFoundError,
    FlagVersionConflictError,
    InvalidFlagError,
)


class HTTPProblem(TenantryError):
    """An error that already knows its HTTP status and machine-readable code."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers
        self.extra = extra

    def response(self) -> JSONResponse:
        """The JSON response for this problem."""
        return problem_response(
            self.status, self.code, self.message, headers=self.headers, **self.extra
        )


def problem_response(
    status: int, code: str, message: str, *, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    """A JSON error response in tenantry's shape."""
    return JSONResponse(
        {"error": {"code": code, "message": message, **extra}}, status_code=status, headers=headers
    )


_STATUS: list[tuple[type[TenantryError], int, str]] = [
    (InvalidTenantIdentifierError, 400, "invalid_tenant_identifier"),
    (TenantNotFoundError, 404, "tenant_not_found"),
    (TenantExistsError, 409, "tenant_exists"),
    (TenantStateError, 409, "tenant_state_conflict"),
    (SessionTenantMismatchError, 403, "session_tenant_mismatch"),
    (SessionUnavailableError, 503, "session_store_unavailable"),
    (RateLimitUnavailableError, 503, "rate_limiter_unavailable"),
    (InvalidFlagError, 422, "invalid_flag"),
    (FlagNotFoundError, 404, "flag_not_found"),
    (FlagExistsError, 409, "flag_exists"),
    (FlagVersionConflictError, 409, "flag_version_conflict"),
]


def problem_for(exc: TenantryError) -> HTTPProblem:
    """Map a tenantry error to its HTTP problem (500 ``internal_error`` when unknown)."""
    if isinstance(exc, HTTPProblem):
        return exc
    for kind, status, code in _STATUS:
        if isinstance(exc, kind):
            return HTTPProblem(status, code, str(exc))
    return HTTPProblem(500, "internal_error", "internal error")
