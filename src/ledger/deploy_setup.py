"""`python -m ledger.deploy_setup`: create the topics and the schema once, for a deployment.

Workers never create tables (several processes creating them at once can fail on PostgreSQL),
so a deployment runs this first, as `ledger run` does on a single machine. Preparations of one
database are serialized (see `ledger.persistence.schema_lock`), so any number may run at once.
"""

from __future__ import annotations

import sqlite3
import threading

import eventsourcing.persistence as es
import psycopg
import structlog
from kafka.errors import KafkaError

from ledger import limits, read_models
from ledger.kafka.broker import resolve_bootstrap
from ledger.kafka.topics import ensure_topics
from ledger.logging import configure_logging
from ledger.persistence.database import DatabaseUnavailable
from ledger.persistence.urls import DatabaseTarget, parse_database_url
from ledger.settings import Settings, load_settings

log = structlog.get_logger(__name__)

RETRYABLE_START_ERRORS: tuple[type[Exception], ...] = (
    DatabaseUnavailable,
    psycopg.OperationalError,
    psycopg.IntegrityError,
    psycopg.InternalError,
    sqlite3.OperationalError,
    es.OperationalError,
    es.IntegrityError,
    es.InternalError,
    es.InterfaceError,
    KafkaError,
)
"""An outage (database or broker unreachable, a lock waited on too long) or a race of catalog
updates with something outside our schema lock: worth another try. Anything else (a permission
refused, a bad URL) fails the start at once."""


def prepare_database(target: DatabaseTarget) -> None:
    """Create every table the workers and queries use: event store, positions, read models."""
    read_models.prepare(target)


def prepare_deployment(bootstrap: str, settings: Settings) -> None:
    """Create the topics (explicit partition counts) and every table, once."""
    ensure_topics(bootstrap, settings.partitions)
    prepare_database(parse_database_url(settings.database_url))


def prepare_deployment_patiently(
    bootstrap: str, settings: Settings, stop: threading.Event | None = None
) -> bool:
    """`prepare_deployment`, retried with back-off through outages; False if `stop` came first.

    Gives up after `limits.start_attempts_max` tries by raising the last error.
    """
    stop = stop or threading.Event()
    delay_s = limits.backoff_initial_s
    attempt = 1
    while True:
        try:
            prepare_deployment(bootstrap, settings)
            return True
        except RETRYABLE_START_ERRORS as error:
            if attempt >= limits.start_attempts_max:
                log.error(
                    "start failed: giving up",
                    attempt=attempt,
                    error_type=type(error).__name__,
                    error=str(error),
                )
                raise
            log.warning(
                "start failed: retrying",
                attempt=attempt,
                attempts_max=limits.start_attempts_max,
                retry_in_s=delay_s,
                error_type=type(error).__name__,
                error=str(error),
            )
        if stop.wait(delay_s):
            return False
        attempt += 1
        delay_s = min(delay_s * 2, limits.backoff_max_s)


def main() -> None:
    """Create topics and schema for the configured broker and database."""
    settings = load_settings()
    configure_logging(settings.log_format, settings.log_level)
    prepare_deployment_patiently(
        resolve_bootstrap(settings.kafka_bootstrap, settings.broker_port), settings
    )


if __name__ == "__main__":
    main()
