"""Relay shares: which partition a key goes to, and which share owns it (pure, no I/O)."""

from __future__ import annotations

import pytest
from kafka.partitioner.default import murmur2

from ledger.kafka.partitioning import Share, partition_for_key
from ledger.persistence.relay_positions import RelayConfiguration, share_position_name

KEYS = [f"ACC-{n}".encode() for n in range(500)] + [b"", b"A", "Zoë-7".encode()]


@pytest.mark.parametrize("partitions", [1, 2, 3, 4, 7, 16])
def test_a_key_goes_where_murmur2_puts_it(partitions: int) -> None:
    # The Java client's rule; tests/integration checks it against a real producer's choice.
    for key in KEYS:
        assert partition_for_key(key, partitions) == (murmur2(key) & 0x7FFFFFFF) % partitions


@pytest.mark.parametrize(("shares", "partitions"), [(1, 4), (2, 4), (3, 4), (4, 4), (3, 8), (5, 3)])
def test_shares_are_disjoint_and_cover_every_partition(shares: int, partitions: int) -> None:
    owned = [Share(index, shares, partitions).owned_partitions() for index in range(shares)]
    flat = [partition for part in owned for partition in part]
    assert sorted(flat) == list(range(partitions))
    for index, part in enumerate(owned):
        assert all(partition % shares == index for partition in part)


def test_every_key_belongs_to_exactly_one_share() -> None:
    shares = [Share(index, 3, 4) for index in range(3)]
    for key in KEYS:
        owners = [share for share in shares if share.partition_if_owned(key) is not None]
        assert len(owners) == 1
        assert owners[0].partition_if_owned(key) == partition_for_key(key, 4)


def test_a_share_is_one_of_its_count() -> None:
    with pytest.raises(ValueError):
        Share(2, 2, 4)
    with pytest.raises(ValueError):
        Share(0, 1, 0)


def test_position_names_name_the_share_and_the_configuration() -> None:
    assert RelayConfiguration(2, 4).position_names() == [
        "outbox:ledger.events:share-0-of-2:partitions-4",
        "outbox:ledger.events:share-1-of-2:partitions-4",
    ]
    assert share_position_name(0, 1, 8) == "outbox:ledger.events:share-0-of-1:partitions-8"
