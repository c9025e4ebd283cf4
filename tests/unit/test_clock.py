"""Timestamps as the read models store them: RFC 3339 text and exact epoch microseconds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from ledger.clock import epoch_us, stored_moment


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-30T12:00:00+00:00",
        "2026-11-30T12:00:00.000001+00:00",
        "1970-01-01T00:00:00+00:00",
        "1969-12-31T23:59:59.999999+00:00",
        "2026-11-30T12:00:00.123456+05:30",
        "2026-11-30T12:00:00Z",
        "2026-11-30T12:00:00",
    ],
)
def test_a_stored_moment_is_its_round_trip_and_its_microseconds(text: str) -> None:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:  # naive text: epoch_us reads it as local time, as timestamp() does
        expected_us = int(moment.timestamp()) * 1_000_000 + moment.microsecond
    else:
        expected_us = (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)

    assert stored_moment(text) == (moment.isoformat(), expected_us)
    assert stored_moment(text) == (moment.isoformat(), epoch_us(moment))  # remembered: same


def test_moments_before_the_epoch_and_across_offsets_order_by_their_microseconds() -> None:
    india = timezone(timedelta(hours=5, minutes=30))
    early = datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)
    late = datetime(1970, 1, 1, 5, 30, 0, 1, tzinfo=india)  # 1970-01-01T00:00:00.000001Z

    assert stored_moment(early.isoformat())[1] == -1
    assert stored_moment(late.isoformat())[1] == 1
