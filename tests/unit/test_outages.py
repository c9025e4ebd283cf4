"""Outage or bad data: the one classification the consumer's retry and isolation rely on."""

from __future__ import annotations

import sqlite3

import kafka.errors as kafka_errors
import pytest
from eventsourcing.persistence import (
    DataError,
    IntegrityError,
    InterfaceError,
    InternalError,
    OperationalError,
    ProgrammingError,
)

from ledger.kafka.clients import MessageRefused, ProducerFailed
from ledger.outages import is_outage
from ledger.persistence.database import DatabaseUnavailable


@pytest.mark.parametrize(
    "error",
    [
        OperationalError("server closed the connection unexpectedly"),
        InterfaceError("connection already closed"),
        DatabaseUnavailable("database is locked"),
        kafka_errors.KafkaConnectionError("connection refused"),
        kafka_errors.KafkaTimeoutError("flush timed out"),
        kafka_errors.NodeNotReadyError(),
        kafka_errors.RequestTimedOutError(),
        ProducerFailed("could not deliver 3 messages after 8 producer rebuilds"),
    ],
)
def test_outages_are_waited_out(error: Exception) -> None:
    assert is_outage(error)


@pytest.mark.parametrize(
    "error",
    [
        DataError('invalid byte sequence for encoding "UTF8": 0x00'),
        InternalError("tuple concurrently updated"),
        ProgrammingError("syntax error"),
        MessageRefused("Kafka refused the message: MessageSizeTooLargeError"),
        kafka_errors.MessageSizeTooLargeError(),
        UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"),
        ValueError("a bug while preparing one message"),
        sqlite3.DataError("string or blob too big"),
        IntegrityError("duplicate key"),
    ],
)
def test_everything_else_is_isolated(error: Exception) -> None:
    assert not is_outage(error)
