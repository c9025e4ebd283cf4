"""Outage or not: the one place that tells a failure worth waiting out from one to isolate.

An outage (the database or the broker unreachable, a lock held too long) says nothing about the
message being handled: the whole batch is retried with back-off until the dependency is back.
Anything else that fails a batch (a data error from the database, an encoding error, a producer
refusing a record, an exception while preparing one message) may be one message's fault: the
consumer narrows the batch down to that message and dead-letters it, so no message can stall a
partition. A version conflict (IntegrityError) is neither: it has its own path (reload, retry).
"""

from __future__ import annotations

import kafka.errors as kafka_errors
from eventsourcing.persistence import InterfaceError, OperationalError

from ledger.kafka.clients import MessageRefused, ProducerFailed
from ledger.persistence.database import DatabaseUnavailable

_OUTAGES: tuple[type[BaseException], ...] = (
    # eventsourcing's wrappers of the drivers' connection-level errors (psycopg and sqlite3).
    OperationalError,
    InterfaceError,
    # Our own adapter's: a lost PostgreSQL connection or a SQLite lock held too long.
    DatabaseUnavailable,
    # The broker unreachable, or silent for longer than a request may wait.
    kafka_errors.KafkaConnectionError,
    kafka_errors.BrokerNotAvailableError,
    kafka_errors.KafkaTimeoutError,
    kafka_errors.NodeNotReadyError,
    kafka_errors.RequestTimedOutError,
    # A batch the producer could not deliver through rebuilt producers (not one it refused).
    ProducerFailed,
)


def is_outage(error: BaseException) -> bool:
    """Whether `error` means a dependency is unreachable (retry the batch) rather than bad data."""
    if isinstance(error, MessageRefused):
        return False
    return isinstance(error, _OUTAGES)
