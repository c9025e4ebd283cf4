"""The Kafka client's reconnect noise: one line per outage, then one summary."""

from __future__ import annotations

import logging

from ledger.kafka.outage_log import KafkaOutageFilter

REFUSED = "<KafkaConnection node_id=1>: Connection lost: KafkaConnectionError: 111 ECONNREFUSED"


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def record(name: str, level: int, message: str) -> logging.LogRecord:
    """A log record as kafka-python's loggers make them."""
    return logging.LogRecord(name, level, __file__, 1, message, None, None)


def make_filter(clock: FakeClock) -> tuple[KafkaOutageFilter, list[tuple[str, float, int]]]:
    """A filter on the fake clock and the summaries it reports."""
    summaries: list[tuple[str, float, int]] = []
    outage_filter = KafkaOutageFilter(
        quiet_s=60.0,
        clock=clock,
        report=lambda summary, outage_s, suppressed: summaries.append(
            (summary, outage_s, suppressed)
        ),
    )
    return outage_filter, summaries


def test_first_connection_error_passes_repeats_are_counted_and_a_connection_ends_it() -> None:
    clock = FakeClock()
    outage_filter, summaries = make_filter(clock)

    assert outage_filter.filter(record("kafka.net.connection", logging.ERROR, REFUSED))
    assert outage_filter.in_outage
    passed = []
    for step in range(50):
        clock.now_s += 0.5
        name = ("kafka.net.manager", "kafka.cluster", "kafka.coordinator")[step % 3]
        passed.append(outage_filter.filter(record(name, logging.ERROR, f"failed: {REFUSED}")))
    assert not any(passed)
    assert summaries == []

    clock.now_s += 5.0
    connected = record("kafka.net.connection", logging.INFO, "<KafkaConnection 1>: Connected")
    assert not outage_filter.filter(connected)
    assert summaries == [
        ("broker reachable again after 30 s, 50 client errors suppressed", 30.0, 50)
    ]
    assert not outage_filter.in_outage

    # The next outage is reported again, once.
    assert outage_filter.filter(record("kafka.net.connection", logging.ERROR, REFUSED))
    assert not outage_filter.filter(record("kafka.net.connection", logging.ERROR, REFUSED))


def test_a_quiet_period_ends_an_outage_with_no_connection_seen() -> None:
    clock = FakeClock()
    outage_filter, summaries = make_filter(clock)
    assert outage_filter.filter(record("kafka.net.manager", logging.ERROR, f"failed: {REFUSED}"))
    clock.now_s += 10.0
    assert not outage_filter.filter(record("kafka.cluster", logging.ERROR, REFUSED))

    clock.now_s += 61.0
    assert outage_filter.filter(record("kafka.net.manager", logging.ERROR, f"failed: {REFUSED}"))
    assert summaries == [
        ("no broker errors for 60 s after an outage of 10 s, 1 client errors suppressed", 10.0, 1)
    ]
    assert outage_filter.in_outage  # the error that came after the quiet is a new outage


def test_other_lines_are_left_alone() -> None:
    clock = FakeClock()
    outage_filter, summaries = make_filter(clock)
    unrelated = record("kafka.coordinator", logging.ERROR, "LeaveGroup: UnknownMemberIdError")
    assert outage_filter.filter(unrelated)
    assert not outage_filter.in_outage
    assert outage_filter.filter(record("ledger.outbox", logging.INFO, "relay started"))
    assert outage_filter.filter(record("eventsourcing", logging.WARNING, REFUSED))
    # The Kafka client's lines below ERROR are read for a connection, never written.
    assert not outage_filter.filter(record("kafka.net.connection", logging.INFO, "x: Connected"))
    assert not outage_filter.filter(record("kafka.conn", logging.WARNING, "throttled"))
    assert summaries == []
