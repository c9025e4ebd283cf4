"""One line per broker outage: a logging filter for the Kafka client's own reconnect noise.

While a broker is down, kafka-python logs an error for every connection attempt, metadata
refresh, fetch and heartbeat of every client in the process: dozens of lines a minute that
say one thing. This filter lets the first connection error through, counts the client's error
lines that follow, and ends the outage with one summary line when a connection succeeds again
(the client's `Connected` line) or, failing that, once the client has been quiet for
`limits.kafka_outage_quiet_s`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import structlog

from ledger import limits

KAFKA_LOGGER = "kafka"

CONNECTION_ERROR_MARKERS: tuple[str, ...] = (
    "KafkaConnectionError",
    "ECONNREFUSED",
    "socket disconnected",
    "Connection lost",
    "Connection failed",
    "Unable to bootstrap",
    "Bootstrap failed",
    "NodeNotReadyError",
    "timed out",
)
"""Words of kafka-python 3.0's error lines that mean the broker cannot be reached."""


def is_kafka_record(record: logging.LogRecord) -> bool:
    """Whether the record comes from kafka-python's loggers."""
    return record.name == KAFKA_LOGGER or record.name.startswith(KAFKA_LOGGER + ".")


def is_connection_error(record: logging.LogRecord) -> bool:
    """Whether a Kafka client error line says the broker cannot be reached."""
    message = record.getMessage()
    return any(marker in message for marker in CONNECTION_ERROR_MARKERS)


def is_connected(record: logging.LogRecord) -> bool:
    """Whether a Kafka client line says a connection to a broker succeeded."""
    message = record.getMessage()
    return message.endswith(": Connected") or message.startswith("Bootstrap complete")


class KafkaOutageFilter(logging.Filter):
    """Passes the Kafka client's errors, but only the first of each outage; summarises the rest.

    Kafka client lines below ERROR never pass (they are read only for the sign of a successful
    connection); lines from other loggers always pass. Safe to share between threads.
    """

    def __init__(
        self,
        *,
        quiet_s: float = limits.kafka_outage_quiet_s,
        clock: Callable[[], float] = time.monotonic,
        report: Callable[[str, float, int], None] | None = None,
    ) -> None:
        """`report(summary, outage_s, suppressed)` logs the summary (default: a structlog line)."""
        super().__init__()
        self._quiet_s = quiet_s
        self._clock = clock
        self._report = report or _log_summary
        self._lock = threading.Lock()
        self._started_at: float | None = None
        self._last_error_at = 0.0
        self._suppressed = 0

    @property
    def in_outage(self) -> bool:
        """Whether an outage has been reported and not yet ended."""
        return self._started_at is not None

    def filter(self, record: logging.LogRecord) -> bool:
        """Whether the record is written."""
        if not is_kafka_record(record):
            return True
        now = self._clock()
        summaries: list[tuple[str, float, int]] = []
        with self._lock:
            if self._started_at is not None and now - self._last_error_at >= self._quiet_s:
                summaries.append(self._end(now, reachable=False))
            if record.levelno < logging.ERROR:
                if self._started_at is not None and is_connected(record):
                    summaries.append(self._end(now, reachable=True))
                passes = False
            elif self._started_at is not None:
                self._suppressed += 1
                self._last_error_at = now
                passes = False
            else:
                if is_connection_error(record):
                    self._started_at = now
                    self._last_error_at = now
                    self._suppressed = 0
                passes = True
        # Reported outside the lock: the summary goes through the same handlers (and filter).
        for summary in summaries:
            self._report(*summary)
        return passes

    def _end(self, now: float, *, reachable: bool) -> tuple[str, float, int]:
        """Close the outage in hand and say what its summary line is."""
        started_at = self._started_at if self._started_at is not None else now
        if reachable:
            outage_s = now - started_at
            summary = (
                f"broker reachable again after {outage_s:.0f} s,"
                f" {self._suppressed} client errors suppressed"
            )
        else:
            outage_s = self._last_error_at - started_at
            summary = (
                f"no broker errors for {self._quiet_s:.0f} s after an outage of"
                f" {outage_s:.0f} s, {self._suppressed} client errors suppressed"
            )
        suppressed = self._suppressed
        self._started_at = None
        self._suppressed = 0
        return summary, round(outage_s, 3), suppressed


def _log_summary(summary: str, outage_s: float, suppressed: int) -> None:
    """The default report: a structured warning, so it pairs with the outage's first line."""
    structlog.get_logger("ledger.kafka.outage").warning(
        summary, outage_s=outage_s, suppressed_errors=suppressed
    )
