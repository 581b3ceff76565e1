"""Request and trace identifiers, carried like the tenant in a context variable.

The edge that starts a unit of work (HTTP middleware, event consumer, job runner) binds a
:class:`Correlation`; log lines, outgoing events and error reports read it. It sits beside
:mod:`tenantry.context` rather than inside ``TenantContext`` because it exists also when
no tenant does (an unknown tenant's 404 still has a request id).
"""

from __future__ import annotations

import contextvars
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from random import getrandbits

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


@dataclass(frozen=True, slots=True)
class Correlation:
    """The identifiers of the current unit of work.

    ``trace_id`` is the W3C trace id (32 hex digits): the active span's when tracing is
    on, else the caller's ``traceparent``'s, else a fresh one, so logs of one request can
    be joined with the traces and logs of the services around it either way.
    """

    request_id: str
    trace_id: str


_current: contextvars.ContextVar[Correlation | None] = contextvars.ContextVar(
    "tenantry_correlation", default=None
)


def current_correlation() -> Correlation | None:
    """The bound correlation, or ``None`` outside any request, event or job."""
    return _current.get()


def bind_correlation(value: Correlation | None) -> contextvars.Token[Correlation | None]:
    """Low-level: bind ``value``; give the token back to :func:`unbind_correlation`."""
    return _current.set(value)


def unbind_correlation(token: contextvars.Token[Correlation | None]) -> None:
    """Restore the binding that :func:`bind_correlation` replaced."""
    _current.reset(token)


@contextmanager
def correlation_scope(
    request_id: str | None = None, trace_id: str | None = None
) -> Iterator[Correlation]:
    """Bind a correlation for a ``with`` block (jobs, consumers); ids made up if missing."""
    value = Correlation(request_id or new_request_id(), trace_id or new_trace_id())
    token = _current.set(value)
    try:
        yield value
    finally:
        _current.reset(token)


def new_request_id() -> str:
    """A fresh request id (16 hex digits).

    Identifiers, not secrets: drawn like OpenTelemetry draws span and trace ids (the
    random module; no system call per request).
    """
    return f"{getrandbits(64):016x}"


def new_trace_id() -> str:
    """A fresh W3C trace id (32 hex digits, never the invalid all-zero id)."""
    return f"{getrandbits(128) or 1:032x}"


def clean_request_id(value: str | None) -> str | None:
    """``value`` when it is a safe request id to echo and log (``X-Request-ID``), else None."""
    if value and _REQUEST_ID.match(value):
        return value
    return None


def trace_id_of(traceparent: str | None) -> str | None:
    """The trace id of a W3C ``traceparent`` header, or ``None`` when it is malformed."""
    if not traceparent:
        return None
    match = _TRACEPARENT.match(traceparent.strip().lower())
    if match is None or match.group(1) == "0" * 32:
        return None
    return match.group(1)
