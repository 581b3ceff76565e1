"""Structured JSON logs: every line of a request, event or job names its tenant.

:func:`configure_logging` sets up structlog *and* the standard library's logging (which
tenantry's modules, uvicorn and most libraries use) to render through the same processor
chain, so one process writes one format. Each line gets the bound tenant (``tenant_id``,
``tenant_slug``, ``tier``, from :mod:`tenantry.context`) and correlation (``request_id``,
``trace_id``, from :mod:`tenantry.observability.correlation`) without the caller passing
them, and goes through :class:`Redactor` last, so a secret logged by mistake is replaced
before it is written.

Logging is configured per process (it is process-wide by nature): the edges (app
factory, CLI) call :func:`configure_logging` once; calling it again replaces the
previous configuration.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Iterable, MutableMapping
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii as _quote
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from tenantry.context import TenantContext, current_tenant_or_none
from tenantry.observability.correlation import current_correlation
from tenantry.settings import LogSettings

REDACTED = "[REDACTED]"
_HANDLER_NAME = "tenantry"
# A bearer credential, a JWT anywhere in a string, a password in a URL's userinfo.
_SECRET_VALUES = re.compile(
    r"(?P<bearer>(?i:bearer)\s+[A-Za-z0-9._~+/=-]{8,})"
    r"|(?P<jwt>eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*)"
    r"|(?P<url>(?<=://)[^:/@\s]+:[^@\s/]+(?=@))"
)


def _scrub_match(match: re.Match[str]) -> str:
    if match.group("bearer"):
        return "Bearer " + REDACTED
    if match.group("url"):
        return match.group("url").split(":", 1)[0] + ":" + REDACTED
    return REDACTED


class Redactor:
    """A structlog processor that removes secrets from an event before it is rendered.

    A field is redacted, at any depth, when its name (lowercased, ``-`` read as ``_``)
    is one of ``keys`` or ends with ``_<key>`` (``db_password``, ``csrf_token``). In every
    other string, bearer credentials, JWTs and URL passwords are replaced.
    """

    def __init__(self, keys: Iterable[str]) -> None:
        names = sorted({key.strip().lower().replace("-", "_") for key in keys if key.strip()})
        self._pattern = (
            re.compile(r"^(?:.*_)?(?:" + "|".join(re.escape(n) for n in names) + r")$")
            if names
            else None
        )
        self._verdicts: dict[str, bool] = {}

    def is_sensitive(self, key: str) -> bool:
        """Whether a field called ``key`` is always redacted."""
        verdict = self._verdicts.get(key)
        if verdict is None:
            norm = key.lower().replace("-", "_")
            verdict = bool(self._pattern and self._pattern.match(norm))
            if len(self._verdicts) < 4096:  # field names are few; do not grow without end
                self._verdicts[key] = verdict
        return verdict

    def scrub(self, value: Any) -> Any:
        """``value`` with secrets removed (dicts and lists walked, strings scrubbed)."""
        if isinstance(value, str):
            return _SECRET_VALUES.sub(_scrub_match, value) if value else value
        if isinstance(value, dict):
            return {
                k: REDACTED if isinstance(k, str) and self.is_sensitive(k) else self.scrub(v)
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [self.scrub(item) for item in value]
        return value

    def __call__(self, logger: WrappedLogger, method: str, event: EventDict) -> EventDict:
        for key, value in event.items():
            if self.is_sensitive(key):
                event[key] = REDACTED
            elif isinstance(value, str | dict | list | tuple):
                event[key] = self.scrub(value)
        return event


def add_tenant_and_correlation(logger: WrappedLogger, method: str, event: EventDict) -> EventDict:
    """Add the bound tenant's and correlation's fields (explicit fields win)."""
    tenant = current_tenant_or_none()
    if tenant is not None and "tenant_id" not in event:
        event["tenant_id"] = str(tenant.id)
        event["tenant_slug"] = tenant.slug
        event["tier"] = tenant.tier
    correlation = current_correlation()
    if correlation is not None and "request_id" not in event:
        event["request_id"] = correlation.request_id
        event["trace_id"] = correlation.trace_id
    return event


class _StreamLogger:
    """What structlog writes rendered lines to: ``sys.stderr`` as it is *now* (so test
    capture works), or a fixed stream."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream

    def msg(self, message: str) -> None:
        stream = self._stream or sys.stderr
        stream.write(message + "\n")
        stream.flush()

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


class _StreamLoggerFactory:
    def __init__(self, stream: TextIO | None) -> None:
        self._stream = stream

    def __call__(self, *args: Any) -> _StreamLogger:
        return _StreamLogger(self._stream)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A handler that writes to the current ``sys.stderr`` (or a fixed stream)."""

    def __init__(self, stream: TextIO | None) -> None:
        super().__init__()
        self._fixed = stream
        self.name = _HANDLER_NAME

    @property
    def stream(self) -> TextIO:
        return self._fixed or sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:  # StreamHandler.__init__ assigns it
        pass


class AccessLog:
    """The access line of each HTTP request, rendered straight to JSON.

    The hot path of logging: the middleware hands over the request's values and this
    writes them, skipping structlog's processor chain (the fields are tenantry's own: only
    the path is scrubbed, in case it carries a token). The line is assembled from quoted
    strings, the tenant's fields rendered once per tenant and the timestamp's seconds once
    per second. With ``format=console`` lines go through structlog instead.
    """

    def __init__(self) -> None:
        self.level = logging.INFO
        self.json = True
        self.stream: TextIO | None = None
        self.redactor = Redactor(())
        self._fallback: Any = None
        self._tenants: dict[int, tuple[TenantContext, str]] = {}
        self._second = -1
        self._second_text = ""

    def configure(self, settings: LogSettings, stream: TextIO | None, redactor: Redactor) -> None:
        """Adopt a logging configuration (called by :func:`configure_logging`)."""
        self.level = _level(settings.level)
        self.json = settings.format == "json"
        self.stream = stream
        self.redactor = redactor
        self._fallback = None

    def write(self, fields: dict[str, Any], *, error: bool = False) -> None:
        """Write one access line (``error``: at level error, for 5xx)."""
        level = logging.ERROR if error else logging.INFO
        if level < self.level:
            return
        path = fields.get("path")
        if isinstance(path, str):
            fields["path"] = self.redactor.scrub(path)
        if not self.json:
            if self._fallback is None:
                self._fallback = structlog.get_logger("tenantry.access")
            (self._fallback.error if error else self._fallback.info)("request", **fields)
            return
        fields["event"] = "request"
        fields["level"] = "error" if error else "info"
        fields["logger"] = "tenantry.access"
        fields["timestamp"] = self._timestamp()
        (self.stream or sys.stderr).write(_dumps(fields) + "\n")

    def write_request(
        self,
        method: str,
        path: str,
        route: str,
        status: int,
        seconds: float,
        request_id: str,
        trace_id: str,
        tenant: TenantContext | None,
    ) -> None:
        """Write the access line of one request: the fields of :meth:`write`, in its
        order (``path`` never with the query string: it may carry secrets)."""
        error = status >= 500
        if (logging.ERROR if error else logging.INFO) < self.level:
            return
        if not self.json:
            fields: dict[str, Any] = {
                "method": method,
                "path": path,
                "route": route,
                "status": status,
                "duration_ms": round(seconds * 1000, 3),
                "request_id": request_id,
                "trace_id": trace_id,
            }
            if tenant is not None:
                fields.update(tenant.log_fields())
            self.write(fields, error=error)
            return
        tenant_part = ""
        if tenant is not None:
            cached = self._tenants.get(id(tenant))
            if cached is None or cached[0] is not tenant:
                if len(self._tenants) >= 1024:
                    self._tenants.clear()
                cached = self._tenants[id(tenant)] = (tenant, _tenant_json(tenant))
            tenant_part = cached[1]
        line = "".join(
            (
                '{"method": ',
                _quote(method),
                ', "path": ',
                _quote(self.redactor.scrub(path)),
                ', "route": ',
                _quote(route),
                ', "status": ',
                str(status),
                ', "duration_ms": ',
                repr(round(seconds * 1000, 3)),
                ', "request_id": ',
                _quote(request_id),
                ', "trace_id": ',
                _quote(trace_id),
                tenant_part,
                _ERROR_TAIL if error else _INFO_TAIL,
                ', "logger": "tenantry.access", "timestamp": "',
                self._timestamp(),
                '"}\n',
            )
        )
        (self.stream or sys.stderr).write(line)

    def _timestamp(self) -> str:
        """Now, UTC, ISO 8601 with a ``Z`` (what ``datetime.isoformat`` writes)."""
        now = time.time()
        second = int(now)
        micro = round((now - second) * 1e6)
        if micro >= 1_000_000:
            second, micro = second + 1, 0
        if second != self._second:
            self._second_text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._second = second
        return f"{self._second_text}.{micro:06d}Z" if micro else f"{self._second_text}Z"


_INFO_TAIL = ', "event": "request", "level": "info"'
_ERROR_TAIL = ', "event": "request", "level": "error"'


def _tenant_json(tenant: TenantContext) -> str:
    """The tenant's access-log fields as a JSON fragment (leading comma included)."""
    return "".join(
        f", {_quote(key)}: {_quote(value)}" for key, value in tenant.log_fields().items()
    )


_dumps = json.JSONEncoder(ensure_ascii=True, default=str).encode
ACCESS_LOG = AccessLog()
"""The process's access log (logging is process-wide; see the module docstring)."""

# One list, refilled in place by configure_logging: structlog loggers cached on first use
# keep a reference to it, so a later configuration still reaches them.
_PROCESSORS: list[Processor] = []


def _level(name: str) -> int:
    level = logging.getLevelNamesMapping().get(name.upper())
    return level if level is not None else logging.INFO


def configure_logging(settings: LogSettings, *, stream: TextIO | None = None) -> None:
    """Route structlog and stdlib logging through tenantry's processors.

    Lines go to ``stream`` (default: the current ``sys.stderr``). Handlers that others
    installed on the root logger (pytest's, say) are left in place.
    """
    redactor = Redactor(settings.redact_keys)
    renderer: Processor = (
        structlog.dev.ConsoleRenderer(colors=False)
        if settings.format == "console"
        else structlog.processors.JSONRenderer()
    )
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    _PROCESSORS[:] = [
        structlog.contextvars.merge_contextvars,
        add_tenant_and_correlation,
        structlog.processors.add_log_level,
        timestamper,
        structlog.processors.format_exc_info,
        redactor,
        renderer,
    ]
    level = _level(settings.level)
    ACCESS_LOG.configure(settings, stream, redactor)
    structlog.configure(
        processors=_PROCESSORS,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=_StreamLoggerFactory(stream),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            add_tenant_and_correlation,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            timestamper,
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            redactor,
            renderer,
        ],
    )
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.name == _HANDLER_NAME]:
        root.removeHandler(handler)
    handler = _StderrHandler(stream)
    handler.setFormatter(formatter)
    root.addHandler(handler)
    root.setLevel(level)
    # uvicorn's loggers write through the root handler, in the same format; its access
    # log is replaced by tenantry's own access line (which knows the tenant).
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True


def get_logger(name: str | None = None, **initial: Any) -> Any:
    """A structlog logger (``logger.info("event", key=value)``)."""
    return structlog.get_logger(name, **initial)


def redact_mapping(
    values: MutableMapping[str, Any], keys: Iterable[str]
) -> MutableMapping[str, Any]:
    """``values`` with sensitive fields replaced, for code that logs a payload itself."""
    return Redactor(keys).scrub(dict(values))  # type: ignore[no-any-return]
