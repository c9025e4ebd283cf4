"""The one injected clock: every timestamp the ledger records comes from here."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Protocol


class Clock(Protocol):
    """Something that tells the time, always timezone-aware UTC."""

    def now(self) -> datetime:
        """The current time."""
        ...


class SystemClock:
    """The wall clock."""

    def now(self) -> datetime:
        """The current UTC time."""
        return datetime.now(UTC)


class FixedClock:
    """A clock that moves only when told to: for tests and deterministic replays."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("FixedClock needs a timezone-aware start")
        self._now = start.astimezone(UTC)

    def now(self) -> datetime:
        """The time this clock was set to."""
        return self._now

    def advance(self, delta: timedelta) -> None:
        """Move the clock forward."""
        if delta < timedelta(0):
            raise ValueError("a clock never goes back")
        self._now += delta


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def epoch_us(moment: datetime) -> int:
    """A moment as whole microseconds since the Unix epoch (exact: integer arithmetic, no float;
    a naive moment is local time, as `datetime.timestamp` reads it)."""
    if moment.tzinfo is None:
        moment = moment.astimezone()
    return (moment - _EPOCH) // _MICROSECOND


@lru_cache(maxsize=256)
def stored_moment(text: str) -> tuple[str, int]:
    """A stored event's timestamp text as RFC 3339 (`datetime.isoformat()`) and as epoch
    microseconds. Remembered: the ingest stamps a whole batch with one recording time, so a
    read model meets the same text for every event of a batch (parsing it, with its offset's
    timezone, cost the projections 8% of their CPU)."""
    moment = datetime.fromisoformat(text)
    return moment.isoformat(), epoch_us(moment)
