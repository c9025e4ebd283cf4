"""Deciding, from observed facts only, whether a partition must start over and whether a Kafka
consumer is wedged and must be rebuilt.

No I/O here: the ingest consumer gathers the facts (its stored positions, what its
`KafkaConsumer` reports, the log ends a separate admin client reads) and acts on the answer, so
every path (including what only Apache Kafka does) is unit-tested without a broker.

Why a watchdog: after a broker restart kafka-python 3.0.12 can keep a consumer in the group
machinery without ever fetching again (docs/broker-restart.md has the evidence). Nothing inside
the consumer reports that state, so it is judged from outside: partitions whose log end is beyond
what was applied, and no record delivered for `limits.consumer_stall_timeout_s`; or a rebalance
that started (partitions revoked) and never finished within the same bound.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar

from kafka import TopicPartition

from ledger import limits


class ConsumerView(Protocol):
    """What the decisions read from a `KafkaConsumer` (a fake one in unit tests)."""

    def assignment(self) -> set[TopicPartition]:
        """The partitions the consumer holds now."""
        ...

    def highwater(self, partition: TopicPartition) -> int | None:
        """The last high watermark a fetch returned for `partition` (None before any)."""
        ...


@dataclass(frozen=True)
class Keep:
    """Carry on from where the partition stands."""


@dataclass(frozen=True)
class StartOver:
    """Read the partition again from its start, under a new tracking name."""

    reason: str


def check_position(*, stored_position: int | None, highwater: int | None) -> Keep | StartOver:
    """Whether a partition still follows on from what was stored for it.

    A stored position beyond the high watermark means the log behind it is gone (a topic
    recreated under the same id, or truncated). Tansu answers a fetch beyond the end with
    nothing, so the consumer would wait there forever; Apache Kafka answers OFFSET_OUT_OF_RANGE
    and kafka-python resets to the earliest offset, below the stored position, where the stored
    position would drop every record up to it as already applied. Either way: start over.
    """
    if stored_position is None or highwater is None:
        return Keep()
    if stored_position > highwater:
        return StartOver(f"stored position {stored_position} beyond the high watermark {highwater}")
    return Keep()


def safe_highwaters(
    consumer: ConsumerView, partitions: Iterable[int], topic: str
) -> dict[int, int]:
    """The known high watermarks of the partitions still assigned (a rebalance may race us)."""
    highwaters: dict[int, int] = {}
    assigned = consumer.assignment()
    for partition in partitions:
        topic_partition = TopicPartition(topic, partition)
        if topic_partition not in assigned:
            continue
        try:
            highwater = consumer.highwater(topic_partition)
        except Exception:  # unassigned between the two calls (kafka's IllegalStateError)
            continue
        if highwater is not None:
            highwaters[partition] = highwater
    return highwaters


_Partition = TypeVar("_Partition", int, TopicPartition)
"""How a watched partition is named: its number (one topic) or its (topic, partition)."""


@dataclass(frozen=True)
class Healthy:
    """Nothing to do."""


@dataclass(frozen=True)
class Wedged:
    """The consumer made no progress it should have made: rebuild it."""

    reason: str


class StallWatchdog:
    """Notices a consumer that stopped delivering records while its partitions lag.

    Feed it what happens (`delivered`, `rebalance_started`, `rebalance_finished`, `excused`) and
    ask `check` with the partitions' applied positions and log ends from time to time. Times are
    monotonic seconds, passed in.
    """

    def __init__(self, stall_timeout_s: float = limits.consumer_stall_timeout_s) -> None:
        """A watchdog that calls a consumer wedged after `stall_timeout_s` without progress."""
        self.stall_timeout_s = stall_timeout_s
        self._stalled_since: float | None = None
        self._rebalance_since: float | None = None

    @property
    def rebalancing(self) -> bool:
        """Whether a rebalance started (partitions revoked or lost) and has not finished."""
        return self._rebalance_since is not None

    def delivered(self) -> None:
        """The consumer handed over records: it is alive."""
        self._stalled_since = None

    def excused(self, now: float) -> None:
        """The worker itself was busy elsewhere (waiting for the database): restart the clocks."""
        self._stalled_since = None
        if self._rebalance_since is not None:
            self._rebalance_since = now

    def rebalance_started(self, now: float) -> None:
        """Partitions were revoked or lost: a rebalance is under way."""
        if self._rebalance_since is None:
            self._rebalance_since = now

    def rebalance_finished(self) -> None:
        """Partitions were assigned: the rebalance completed."""
        self._rebalance_since = None

    def reset(self) -> None:
        """Forget everything (a new consumer was built)."""
        self._stalled_since = None
        self._rebalance_since = None

    def check(
        self,
        now: float,
        *,
        applied: Mapping[_Partition, int | None],
        log_ends: Mapping[_Partition, int],
    ) -> Healthy | Wedged:
        """Judge the consumer.

        `applied`: each owned partition's position applied (stored), None for nothing yet.
        `log_ends`: partition log ends read independently of the consumer (may be incomplete or
        low: Tansu's ListOffsets can under-report, which only delays a verdict, never fakes one).
        """
        if (
            self._rebalance_since is not None
            and now - self._rebalance_since >= self.stall_timeout_s
        ):
            return Wedged(
                f"a rebalance started {now - self._rebalance_since:.0f} s ago and never finished"
            )
        lagging = sorted(
            partition
            for partition, position in applied.items()
            if partition in log_ends and log_ends[partition] > (position or 0)
        )
        if not lagging:
            self._stalled_since = None
            return Healthy()
        if self._stalled_since is None:
            self._stalled_since = now
            return Healthy()
        stalled_s = now - self._stalled_since
        if stalled_s >= self.stall_timeout_s:
            return Wedged(
                f"partitions {lagging} lag their log ends and no record came for {stalled_s:.0f} s"
            )
        return Healthy()
