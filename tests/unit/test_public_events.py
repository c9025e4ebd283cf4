"""The public JSON's time: what the store holds, written as RFC 3339 text."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest

from ledger.public_events import occurred_at


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2026, 11, 30, 5, 2, 22, 957553, tzinfo=UTC),
        datetime(2026, 1, 1, tzinfo=UTC),  # no fraction written
        datetime(2026, 1, 1, 0, 0, 0, 5),  # naive
        datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-12))),
        datetime(2026, 6, 1, 12, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        datetime(2026, 6, 1, 12, tzinfo=timezone(timedelta(hours=-3, seconds=7))),
    ],
)
def test_a_stored_timestamp_reads_as_its_round_trip(moment: datetime) -> None:
    """As the store's mapper writes it (orjson); the text kept as is must equal the round trip."""
    stored = orjson.loads(orjson.dumps({"timestamp": moment}))["timestamp"]
    assert occurred_at({"timestamp": stored}) == datetime.fromisoformat(stored).isoformat()


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        ("2026-11-30T05:02:22Z", "2026-11-30T05:02:22+00:00"),
        ("2026-11-30T05:02:22.123+00:00", "2026-11-30T05:02:22.123000+00:00"),
        ("2026-11-30 05:02:22+00:00", "2026-11-30T05:02:22+00:00"),
    ],
)
def test_other_iso_text_is_normalised(stored: str, expected: str) -> None:
    assert occurred_at({"timestamp": stored}) == expected


def test_text_that_is_no_timestamp_is_refused() -> None:
    with pytest.raises(ValueError):
        occurred_at({"timestamp": "2026-13-01T05:02:22+00:00"})
