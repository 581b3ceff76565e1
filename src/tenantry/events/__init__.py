"""Events: a transactional outbox relayed to Kafka (or read in place as the log), with the
tenant in every record, tenant-aware consumers, an inbox, a dead-letter queue and a
hash-chained audit trail per tenant."""

from tenantry.events.audit import AuditEntry, AuditProblem, AuditReport, AuditTrail
from tenantry.events.envelope import Envelope, topic_for, uuid7
from tenantry.events.errors import (
    AuditTrailNotFoundError,
    EventError,
    InvalidEventError,
    KafkaUnavailableError,
    NoTransactionError,
)
from tenantry.events.handlers import Event, EventHandler, EventHandlers, HandlerRunner
from tenantry.events.outbox import EventPublisher, NewEvent
from tenantry.events.pglog import OutboxLogConsumer
from tenantry.events.processor import EventProcessor, PostgresDeadLetters, RetryPolicy
from tenantry.events.schema import bootstrap_events
from tenantry.events.service import Events

__all__ = [
    "AuditEntry",
    "AuditProblem",
    "AuditReport",
    "AuditTrail",
    "AuditTrailNotFoundError",
    "Envelope",
    "Event",
    "EventError",
    "EventHandler",
    "EventHandlers",
    "EventProcessor",
    "EventPublisher",
    "Events",
    "HandlerRunner",
    "InvalidEventError",
    "KafkaUnavailableError",
    "NewEvent",
    "NoTransactionError",
    "OutboxLogConsumer",
    "PostgresDeadLetters",
    "RetryPolicy",
    "bootstrap_events",
    "topic_for",
    "uuid7",
]
