"""Tailing the event store's notification log in batches (for the outbox relay and projections)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Protocol

import structlog
from eventsourcing.persistence import (
    InterfaceError,
    Notification,
    OperationalError,
)

from ledger import limits
from ledger.persistence.database import DatabaseUnavailable
from ledger.persistence.event_store import EventStore

log = structlog.get_logger(__name__)


class BatchHandler(Protocol):
    """Something that processes notifications and records its own position atomically."""

    name: str

    def position(self) -> int:
        """The last notification id this handler has fully processed."""
        ...

    def handle(self, notifications: Sequence[Notification]) -> None:
        """Process a batch and record the last id as the new position."""
        ...


class ReportingHandler:
    """Wraps a batch handler to report the last notification id of every batch it handled."""

    def __init__(self, handler: BatchHandler, report: Callable[[int], None]) -> None:
        self.handler = handler
        self.report = report
        self.name = handler.name

    def position(self) -> int:
        """The wrapped handler's position."""
        return self.handler.position()

    def handle(self, notifications: Sequence[Notification]) -> None:
        """Let the wrapped handler process the batch, then report how far it got."""
        self.handler.handle(notifications)
        self.report(notifications[-1].id)


def run_tail(
    store: EventStore,
    handler: BatchHandler,
    stop: threading.Event,
    *,
    batch_max: int = limits.notification_batch_max,
    idle_s: float = limits.projection_idle_poll_s,
    until_caught_up: bool = False,
    until: Callable[[], bool] | None = None,
) -> int:
    """Feed the handler every notification after its position until stopped; returns the count.

    `until`, when given, is asked between batches; True ends the tail (the batch in hand done).
    """
    return run_tails(
        store,
        [handler],
        stop,
        batch_max=batch_max,
        idle_s=idle_s,
        until_caught_up=until_caught_up,
        until=until,
    )


def run_tails(
    store: EventStore,
    handlers: Sequence[BatchHandler],
    stop: threading.Event,
    *,
    batch_max: int = limits.notification_batch_max,
    idle_s: float = limits.projection_idle_poll_s,
    until_caught_up: bool = False,
    until: Callable[[], bool] | None = None,
) -> int:
    """Feed each handler every notification after its own position until stopped.

    Each handler keeps its own position; handlers standing at the same position share one read
    of the log per round. Returns the number of notifications handed over, over all handlers.
    `until`, when given, is asked between rounds; True ends the tail (the round in hand done).
    """
    recorder = store.process_recorder
    names = ", ".join(handler.name for handler in handlers)
    handled = 0
    backoff_s = limits.backoff_initial_s
    positions: list[int | None] = [None] * len(handlers)
    while not stop.is_set():
        if until is not None and until():
            break
        behind = False
        try:
            pages: dict[int, Sequence[Notification]] = {}
            for index, handler in enumerate(handlers):
                position = positions[index]
                if position is None:
                    # Read inside the retry: the database may be down at start or after an error.
                    position = positions[index] = handler.position()
                page = pages.get(position)
                if page is None:
                    page = pages[position] = recorder.select_notifications(
                        start=position, limit=batch_max, inclusive_of_start=False
                    )
                if page:
                    handler.handle(page)
                    positions[index] = page[-1].id
                    handled += len(page)
                behind = behind or len(page) >= batch_max
            backoff_s = limits.backoff_initial_s
        except (OperationalError, InterfaceError, DatabaseUnavailable) as error:
            log.warning("database unavailable, retrying", worker=names, error=str(error))
            stop.wait(backoff_s)
            backoff_s = min(backoff_s * 2, limits.backoff_max_s)
            positions = [None] * len(handlers)
            continue
        if not behind:
            if until_caught_up:
                break
            stop.wait(idle_s)
    return handled
