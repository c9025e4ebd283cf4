"""`later`: the later of two RFC 3339 timestamps, by time, whatever their offsets and shapes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from ledger.domain.protocol_events import later

offsets = st.sampled_from(
    [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))]
)
moments = st.builds(
    lambda moment, offset, micro: moment.replace(microsecond=micro).astimezone(offset),
    st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
    ),
    offsets,
    st.sampled_from([0, 0, 500_000, 123_456]),
)
shapes = st.sampled_from(["auto", "seconds", "milliseconds", "microseconds"])


@given(first=moments, second=moments, first_shape=shapes, second_shape=shapes)
def test_later_is_the_later_time(
    first: datetime, second: datetime, first_shape: str, second_shape: str
) -> None:
    a, b = first.isoformat(timespec=first_shape), second.isoformat(timespec=second_shape)
    chosen = datetime.fromisoformat(later(a, b))
    assert chosen == max(datetime.fromisoformat(a), datetime.fromisoformat(b))
    assert later(a, b) in (a, b)
