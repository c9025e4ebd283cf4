"""How `ledger bench` shares partitions among worker processes."""

from __future__ import annotations

import pytest

from ledger.bench.bare_producer import Outgoing, relay_topics, split_batches
from ledger.bench.ingest import split_partitions
from ledger.kafka.topics import LEDGER_EVENTS, LEDGER_NOTIFICATIONS


@pytest.mark.parametrize(
    ("partitions", "workers", "expected"),
    [
        ([0, 1, 2, 3], 1, [[0, 1, 2, 3]]),
        ([0, 1, 2, 3], 2, [[0, 2], [1, 3]]),
        ([3, 1, 0, 2], 3, [[0, 3], [1], [2]]),
        ([0, 1], 5, [[0], [1]]),  # never a worker without a partition
    ],
)
def test_split_partitions(partitions: list[int], workers: int, expected: list[list[int]]) -> None:
    shares = split_partitions(partitions, workers)
    assert shares == expected
    assert sorted(p for share in shares for p in share) == sorted(partitions)


def _message(sequence: int) -> Outgoing:
    return Outgoing(sequence, LEDGER_EVENTS, 0, b"A", b"{}", [("ce_sequence", b"%d" % sequence)])


def test_bare_producer_batches_end_where_the_relay_was_seen() -> None:
    """A batch ends at each relay position seen; messages after the last one form a batch."""
    messages = [_message(sequence) for sequence in (3, 4, 4, 7, 9, 12)]
    batches = split_batches(messages, [8, 4, 4, 10])
    assert [[m.sequence for m in batch] for batch in batches] == [[3, 4, 4], [7], [9], [12]]
    assert split_batches([], [5]) == []


def test_bare_producer_sends_to_every_topic_the_relay_does() -> None:
    topics = relay_topics()
    assert topics[0] == LEDGER_EVENTS and LEDGER_NOTIFICATIONS in topics
    assert len(set(topics)) == len(topics)
