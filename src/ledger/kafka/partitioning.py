"""Which partition a key goes to, and which relay share owns a partition.

The partition of a key is the one kafka-python's default partitioner picks (murmur2 of the key
bytes, as the Java client does), computed by that partitioner itself, so a relay that passes
`partition=` explicitly sends each account's events exactly where the client would have.

A share is one of `count` disjoint parts of a topic's partitions: share k owns every partition p
with p % count == k. Together the shares cover every partition once; an account's events all
fall in one partition, hence in one share, which keeps their order.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from kafka.partitioner.default import DefaultPartitioner

from ledger import limits

_PARTITIONER = DefaultPartitioner()


class _TopicShape:
    """The part of kafka-python's cluster metadata its partitioner reads: one topic's partitions."""

    def __init__(self, topic: str, partitions: int) -> None:
        self._topic = topic
        self._partitions = set(range(partitions))

    def topics(self) -> set[str]:
        return {self._topic}

    def partitions_for_topic(self, topic: str) -> set[int]:
        return self._partitions

    def available_partitions_for_topic(self, topic: str) -> set[int]:
        return self._partitions


@lru_cache(maxsize=limits.relay_partition_cache_max)
def partition_for_key(key: bytes, partitions: int) -> int:
    """The partition kafka-python's default partitioner picks for `key` among `partitions`."""
    if partitions < 1:
        raise ValueError(f"a topic has at least one partition, got {partitions}")
    # Murmur2 in pure Python costs about 10 µs a key; accounts repeat, so the cache pays.
    partition: int = _PARTITIONER.partition(
        "topic", key, key, None, None, _TopicShape("topic", partitions)
    )
    return partition


@dataclass(frozen=True)
class Share:
    """Share `index` of `count` of a topic of `partitions` partitions."""

    index: int
    count: int
    partitions: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"no share {self.index} of {self.count}")
        if self.partitions < 1:
            raise ValueError(f"a topic has at least one partition, got {self.partitions}")

    def owns(self, partition: int) -> bool:
        """Whether this share publishes to `partition`."""
        return partition % self.count == self.index

    def owned_partitions(self) -> tuple[int, ...]:
        """The partitions this share owns (none when there are more shares than partitions)."""
        return tuple(range(self.index, self.partitions, self.count))

    def partition_if_owned(self, key: bytes) -> int | None:
        """The partition of `key` if this share owns it; None if another share does."""
        partition = partition_for_key(key, self.partitions)
        return partition if partition % self.count == self.index else None
