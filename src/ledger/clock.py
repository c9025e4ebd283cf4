"""The one injected clock: every timestamp the ledger records comes from here."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
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


def epoch_us(moment: datetime) -> int:
    """A timezone-aware moment as whole microseconds since the Unix epoch (exact, no float)."""
    return int(moment.timestamp()) * 1_000_000 + moment.microsecond
