"""How `ledger bench` shares partitions among worker processes."""

from __future__ import annotations

import pytest

from ledger.bench.ingest import split_partitions


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
