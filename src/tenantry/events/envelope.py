"""The event envelope and how it travels: outbox columns, Kafka headers, topics.

An event's identity and tenant context travel *beside* its payload, the way CloudEvents'
Kafka binding in binary mode carries them: the record value is the JSON payload, the
record key is the tenant id (so one tenant's events share a partition and stay in order)
and the envelope is in headers:

=====================  ====================================================
header                 value (UTF-8)
=====================  ====================================================
``ce_specversion``     ``1.0``
``ce_id``              event id, a UUIDv7 (time-ordered)
``ce_type``            event type, ``<family>.<name>`` (``employee.hired``)
``ce_source``          ``/tenantry/<cell>``: the database the event was written in
``ce_time``            when it happened, RFC 3339 in UTC
``ce_subject``         the ``key`` given to ``publish`` (absent when none)
``ce_tenantid``        the tenant's id
``ce_tenanttier``      the tenant's tier
``ce_schemaversion``   version of the payload's schema (an integer)
``traceparent``        W3C trace context of the publishing code (absent when none)
``content-type``       ``application/json``
=====================  ====================================================
"""

from __future__ import annotations

import functools
import json
import os
import re
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from tenantry.events.errors import InvalidEventError

SPEC_VERSION = "1.0"
CONTENT_TYPE = "application/json"
H_SPECVERSION = "ce_specversion"
H_ID = "ce_id"
H_TYPE = "ce_type"
H_SOURCE = "ce_source"
H_TIME = "ce_time"
H_SUBJECT = "ce_subject"
H_TENANT = "ce_tenantid"
H_TIER = "ce_tenanttier"
H_SCHEMA_VERSION = "ce_schemaversion"
H_TRACEPARENT = "traceparent"
H_CONTENT_TYPE = "content-type"

_TYPE = re.compile(r"^[a-z][a-z0-9_-]{0,62}(\.[a-z0-9_-]{1,63}){1,4}$")


def validate_type(event_type: str) -> str:
    """Check an event type (``<family>.<name>``, lower case) and return its family."""
    if not isinstance(event_type, str) or not _TYPE.match(event_type):
        raise InvalidEventError(
            f"event type {event_type!r} must look like 'family.name' (lower case letters, "
            "digits, '-' and '_'), e.g. 'employee.hired'"
        )
    return event_type.split(".", 1)[0]


def topic_for(prefix: str, event_type: str) -> str:
    """The Kafka topic of an event type: one per family, ``<prefix><family>``."""
    return prefix + validate_type(event_type)


class _UUID7:
    """RFC 9562 UUIDv7: 48-bit Unix milliseconds, then a 12-bit counter (monotonic within
    a millisecond in this process), then random bits."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = 0
        self._counter = 0

    def __call__(self) -> UUID:
        with self._lock:
            ms = time.time_ns() // 1_000_000
            if ms <= self._last_ms:
                self._counter += 1
                if self._counter > 0xFFF:  # 4096 ids in one millisecond: borrow the next
                    self._last_ms += 1
                    self._counter = 0
                ms = self._last_ms
            else:
                self._last_ms = ms
                self._counter = 0
            counter = self._counter
        tail = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
        value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | counter << 64 | 0b10 << 62 | tail
        return UUID(int=value)


uuid7 = _UUID7()
"""A new time-ordered event id."""


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with microseconds, as ``ce_time`` and the audit hash spell it."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def format_epoch(seconds: float) -> bytes:
    """:func:`format_time` (in ASCII bytes, a header's value) of the moment ``seconds``
    after the Unix epoch, as PostgreSQL's ``date_part('epoch', ...)`` gives it (a float8
    holds microseconds exactly enough to get them back until long after 2100). Each second
    is formatted once for all its events."""
    micros = round(seconds * 1_000_000)
    return b"%s.%06dZ" % (_utc_second(micros // 1_000_000), micros % 1_000_000)


@functools.lru_cache(maxsize=64)
def _utc_second(whole: int) -> bytes:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)).encode()


@dataclass(frozen=True, slots=True)
class Envelope:
    """One event as it travels: identity, tenant context and JSON payload."""

    id: UUID
    tenant_id: UUID
    tier: str
    type: str
    schema_version: int
    occurred_at: datetime
    payload: Any
    traceparent: str | None = None
    subject: str | None = None
    source: str = "/tenantry/default"

    @property
    def family(self) -> str:
        """The part of the type before the first dot: it names the topic."""
        return self.type.split(".", 1)[0]

    def headers(self) -> list[tuple[str, bytes]]:
        """Kafka record headers (CloudEvents binary mode plus tenant context)."""
        headers = [
            (H_SPECVERSION, SPEC_VERSION.encode()),
            (H_ID, str(self.id).encode()),
            (H_TYPE, self.type.encode()),
            (H_SOURCE, self.source.encode()),
            (H_TIME, format_time(self.occurred_at).encode()),
            (H_TENANT, str(self.tenant_id).encode()),
            (H_TIER, self.tier.encode()),
            (H_SCHEMA_VERSION, str(self.schema_version).encode()),
            (H_CONTENT_TYPE, CONTENT_TYPE.encode()),
        ]
        if self.subject is not None:
            headers.append((H_SUBJECT, self.subject.encode()))
        if self.traceparent:
            headers.append((H_TRACEPARENT, self.traceparent.encode()))
        return headers

    def key(self) -> bytes:
        """The Kafka record key: the tenant id."""
        return str(self.tenant_id).encode()

    def value(self) -> bytes:
        """The Kafka record value: the payload as compact JSON."""
        return json.dumps(self.payload, separators=(",", ":")).encode()

    @classmethod
    def from_record(cls, headers: list[tuple[str, bytes]] | None, value: bytes | None) -> Envelope:
        """Rebuild an envelope from a Kafka record's headers and value.

        Raises :class:`InvalidEventError` when a required header is missing or malformed
        (such a record cannot be bound to a tenant and goes to the dead-letter queue).
        """
        found = {name: raw.decode("utf-8", "replace") for name, raw in headers or ()}
        try:
            return cls(
                id=UUID(found[H_ID]),
                tenant_id=UUID(found[H_TENANT]),
                tier=found.get(H_TIER, ""),
                type=found[H_TYPE],
                schema_version=int(found.get(H_SCHEMA_VERSION) or 1),
                occurred_at=datetime.fromisoformat(found[H_TIME]),
                payload=json.loads(value) if value else None,
                traceparent=found.get(H_TRACEPARENT) or None,
                subject=found.get(H_SUBJECT),
                source=found.get(H_SOURCE, ""),
            )
        except (KeyError, ValueError) as exc:
            raise InvalidEventError(f"record is not a tenantry event: {exc!r}") from None


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the current OpenTelemetry context, if there is one."""
    try:
        from opentelemetry import propagate
    except ImportError:  # pragma: no cover - opentelemetry-api is a dependency today
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")
