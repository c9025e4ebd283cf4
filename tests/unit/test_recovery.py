"""The recovery decisions of a consumer, driven by a fake consumer: no broker, no clock.

Tansu never answers OFFSET_OUT_OF_RANGE and has one broker, so what only Apache Kafka does (an
out-of-range fetch reset to the earliest offset, a coordinator that moves and a rebalance that
drags on) is exercised here, on the decisions themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kafka import TopicPartition
from kafka.errors import IllegalStateError

from ledger.kafka.clients import close_consumer
from ledger.kafka.recovery import (
    Healthy,
    Keep,
    StallWatchdog,
    StartOver,
    Wedged,
    check_position,
    safe_highwaters,
)

TOPIC = "payments.inbound"
TIMEOUT_S = 20.0


def tp(partition: int) -> TopicPartition:
    return TopicPartition(TOPIC, partition)


@dataclass
class FakeConsumer:
    """The part of a KafkaConsumer the decisions read, with Kafka's behaviours scripted."""

    highwaters: dict[int, int | None] = field(default_factory=dict)
    positions: dict[int, int] = field(default_factory=dict)
    revoked_while_reading: set[int] = field(default_factory=set)
    """Partitions the IO thread takes away between `assignment()` and `highwater()`."""

    def assignment(self) -> set[TopicPartition]:
        return {tp(p) for p in self.highwaters}

    def highwater(self, partition: TopicPartition) -> int | None:
        if partition.partition in self.revoked_while_reading:
            raise IllegalStateError("Partition is not assigned")
        return self.highwaters[partition.partition]

    def fetch_out_of_range(self, partition: int, log_start: int, log_end: int) -> None:
        """What kafka-python does on OFFSET_OUT_OF_RANGE with auto_offset_reset='earliest'."""
        self.positions[partition] = log_start
        self.highwaters[partition] = log_end


def verdict_at(watchdog: StallWatchdog, now: float, applied: int, log_end: int) -> object:
    return watchdog.check(now, applied={0: applied}, log_ends={0: log_end})


# check_position -------------------------------------------------------------------------------


def test_a_partition_within_its_log_carries_on() -> None:
    assert check_position(stored_position=10, highwater=10) == Keep()
    assert check_position(stored_position=3, highwater=10) == Keep()


def test_nothing_known_yet_is_no_reason_to_start_over() -> None:
    assert check_position(stored_position=None, highwater=4) == Keep()
    assert check_position(stored_position=10, highwater=None) == Keep()


def test_a_stored_position_beyond_the_end_starts_over() -> None:
    # Tansu after a restart: the fetch at 10 sends nothing, the high watermark says 2.
    decision = check_position(stored_position=10, highwater=2)
    assert isinstance(decision, StartOver)
    assert "10" in decision.reason and "2" in decision.reason


def test_kafka_out_of_range_reset_below_the_stored_position_starts_over() -> None:
    # Apache Kafka answers OFFSET_OUT_OF_RANGE for a fetch at 10 on a truncated log of 4;
    # kafka-python resets to the earliest offset (0). Without starting over, offsets 0-3 of the
    # new log would be dropped as "already applied" (they are below the stored position 10).
    consumer = FakeConsumer(highwaters={0: None, 1: 7}, positions={0: 10})
    consumer.fetch_out_of_range(0, log_start=0, log_end=4)
    highwaters = safe_highwaters(consumer, [0, 1], TOPIC)
    assert consumer.positions[0] < 10
    assert isinstance(check_position(stored_position=10, highwater=highwaters[0]), StartOver)
    assert check_position(stored_position=7, highwater=highwaters[1]) == Keep()


def test_high_watermarks_of_partitions_revoked_meanwhile_are_skipped() -> None:
    consumer = FakeConsumer(highwaters={0: 5, 1: None, 2: 9}, revoked_while_reading={2})
    assert safe_highwaters(consumer, [0, 1, 2, 3], TOPIC) == {0: 5}


# StallWatchdog --------------------------------------------------------------------------------


def test_a_caught_up_consumer_is_never_wedged() -> None:
    watchdog = StallWatchdog(TIMEOUT_S)
    for now in range(0, 200, 5):
        assert verdict_at(watchdog, now, applied=7, log_end=7) == Healthy()


def test_lag_with_no_records_for_the_timeout_is_a_wedge() -> None:
    # The reported case: partitions assigned, the log end beyond what was applied, no fetch.
    watchdog = StallWatchdog(TIMEOUT_S)
    assert verdict_at(watchdog, 100, applied=0, log_end=2) == Healthy()
    assert verdict_at(watchdog, 100 + TIMEOUT_S - 1, applied=0, log_end=2) == Healthy()
    verdict = verdict_at(watchdog, 100 + TIMEOUT_S, applied=0, log_end=2)
    assert isinstance(verdict, Wedged)
    assert "[0]" in verdict.reason


def test_records_arriving_keep_a_lagging_consumer_healthy() -> None:
    # A long backlog: lag all along, but records keep coming.
    watchdog = StallWatchdog(TIMEOUT_S)
    for step in range(20):
        watchdog.delivered()
        assert verdict_at(watchdog, step * 5.0, applied=step * 100, log_end=10_000) == Healthy()


def test_a_stall_that_ends_restarts_the_clock() -> None:
    watchdog = StallWatchdog(TIMEOUT_S)
    verdict_at(watchdog, 0, applied=0, log_end=2)
    watchdog.delivered()
    assert verdict_at(watchdog, TIMEOUT_S, applied=0, log_end=5) == Healthy()
    assert verdict_at(watchdog, 2 * TIMEOUT_S - 1, applied=0, log_end=5) == Healthy()
    assert isinstance(verdict_at(watchdog, 2 * TIMEOUT_S, applied=0, log_end=5), Wedged)


def test_time_spent_waiting_for_the_database_is_excused() -> None:
    watchdog = StallWatchdog(TIMEOUT_S)
    verdict_at(watchdog, 0, applied=0, log_end=2)
    watchdog.rebalance_started(0)
    watchdog.excused(TIMEOUT_S - 1)
    assert verdict_at(watchdog, TIMEOUT_S + 1, applied=0, log_end=2) == Healthy()
    # The rebalance clock restarted at the excuse; it still runs out if nothing follows.
    assert isinstance(verdict_at(watchdog, 2 * TIMEOUT_S - 1, applied=0, log_end=2), Wedged)


def test_a_low_log_end_never_fakes_a_wedge() -> None:
    # Tansu's ListOffsets can report less than the real end; a low value only hides lag.
    watchdog = StallWatchdog(TIMEOUT_S)
    for now in range(0, 200, 5):
        assert verdict_at(watchdog, now, applied=500, log_end=453) == Healthy()


def test_partitions_without_a_known_log_end_are_not_judged() -> None:
    watchdog = StallWatchdog(TIMEOUT_S)
    for now in range(0, 200, 5):
        assert watchdog.check(now, applied={0: 3, 1: None}, log_ends={}) == Healthy()


def test_a_partition_never_applied_counts_from_zero() -> None:
    watchdog = StallWatchdog(TIMEOUT_S)
    watchdog.check(0, applied={1: None}, log_ends={1: 1})
    assert isinstance(watchdog.check(TIMEOUT_S, applied={1: None}, log_ends={1: 1}), Wedged)


def test_a_rebalance_that_never_finishes_is_a_wedge() -> None:
    # A coordinator that moved (Apache Kafka: NOT_COORDINATOR, or a broker gone for good) and a
    # join that never completes look the same from outside: partitions revoked, none assigned.
    watchdog = StallWatchdog(TIMEOUT_S)
    watchdog.rebalance_started(50)
    assert watchdog.check(50 + TIMEOUT_S - 1, applied={}, log_ends={}) == Healthy()
    assert isinstance(watchdog.check(50 + TIMEOUT_S, applied={}, log_ends={}), Wedged)


def test_a_rebalance_that_finishes_in_time_is_fine() -> None:
    watchdog = StallWatchdog(TIMEOUT_S)
    watchdog.rebalance_started(0)
    watchdog.rebalance_started(10)  # a second revoke inside the same rebalance keeps the start
    watchdog.rebalance_finished()
    assert watchdog.check(TIMEOUT_S * 3, applied={}, log_ends={}) == Healthy()


def test_a_rebalance_is_under_way_from_revoke_to_assign() -> None:
    watchdog = StallWatchdog(TIMEOUT_S)
    assert not watchdog.rebalancing
    watchdog.rebalance_started(0)
    assert watchdog.rebalancing
    watchdog.excused(5)
    assert watchdog.rebalancing
    watchdog.rebalance_finished()
    assert not watchdog.rebalancing


def test_reset_forgets_a_stall_and_a_rebalance() -> None:
    watchdog = StallWatchdog(TIMEOUT_S)
    watchdog.rebalance_started(0)
    verdict_at(watchdog, 0, applied=0, log_end=2)
    watchdog.reset()
    assert verdict_at(watchdog, TIMEOUT_S, applied=0, log_end=2) == Healthy()


# close_consumer -------------------------------------------------------------------------------


@dataclass
class FakeCoordinator:
    """kafka-python's coordinator as `close()` sees it: it leaves only a joined member."""

    member_id: str = "ledger-ingest-1"
    joined: bool = True

    def reset_generation(self) -> None:
        self.member_id, self.joined = "", False


@dataclass
class ClosingConsumer:
    _coordinator: FakeCoordinator = field(default_factory=FakeCoordinator)
    left_as: list[str] = field(default_factory=list)
    closed_with: list[dict[str, object]] = field(default_factory=list)

    def close(self, **kwargs: object) -> None:
        if self._coordinator.joined:  # what kafka-python's maybe_leave_group checks
            self.left_as.append(self._coordinator.member_id)
        self.closed_with.append(kwargs)


def test_closing_mid_rebalance_sends_no_leave_group() -> None:
    # Tansu keeps a leader that leaves between JoinGroup and SyncGroup for good: a member closed
    # in the middle of a rebalance must expire instead.
    consumer = ClosingConsumer()
    close_consumer(consumer, leave_group=False, timeout_ms=500)
    assert consumer.left_as == []
    assert consumer.closed_with == [{"autocommit": False, "timeout_ms": 500}]


def test_closing_a_stable_member_leaves_its_group() -> None:
    consumer = ClosingConsumer()
    close_consumer(consumer, leave_group=True, timeout_ms=500)
    assert consumer.left_as == ["ledger-ingest-1"]
