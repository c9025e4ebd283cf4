"""What a projection is: a read model kept from the event store's log, in generations of tables.

A projection names its tables and event types and says how a batch of notifications changes its
tables; `ledger.generations` keeps each projection's live generation and position, and
`ledger.rebuild` builds a new generation aside and swaps it in. Generation N of a table `rm_x`
is the table `rm_x_gN`, so a rebuild never touches the tables that queries read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ledger.lazylog import get_logger

if TYPE_CHECKING:
    from eventsourcing.persistence import Notification

    from ledger.persistence.database import Cursor, Database

log = get_logger(__name__)

_decoded: ContextVar[dict[int, dict[str, Any]] | None] = ContextVar("decoded", default=None)


@contextmanager
def decoding_once() -> Iterator[None]:
    """Within the block, each notification is decoded once, whatever reads it (read models
    applied together to one batch share the decoded event, which none of them changes)."""
    token = _decoded.set({})
    try:
        yield
    finally:
        _decoded.reset(token)


def event_state(notification: Notification) -> dict[str, Any]:
    """The notification's stored event as plain data, upcast to its class's current version.

    Read-only: inside `decoding_once` every reader of the notification gets the same dict.
    """
    memo = _decoded.get()
    if memo is not None:
        state = memo.get(notification.id)
        if state is not None:
            return state
    # The mapper brings the domain: imported on first use, not on a query's path (and not in
    # the statement above: an import statement costs a microsecond every time it runs).
    decode = _current_state or _load_current_state()
    state = decode(notification.topic, notification.state)
    if memo is not None:
        memo[notification.id] = state
    return state


_current_state: Callable[[str, bytes], dict[str, Any]] | None = None


def _load_current_state() -> Callable[[str, bytes], dict[str, Any]]:
    global _current_state
    from ledger.persistence.mapper import current_state

    _current_state = current_state
    return current_state


@dataclass(frozen=True)
class Generation:
    """One set of a projection's tables: generation 3 of `rm_accounts` is `rm_accounts_g3`."""

    number: int

    def table(self, base: str) -> str:
        """The name of the base table `base` in this generation."""
        return f"{base}_g{self.number}"


class Projection(Protocol):
    """A read model: its name, tables, the event types it knows and how it applies a batch."""

    name: str
    tables: tuple[str, ...]
    """Base names; `Generation.table` gives each generation's own."""
    event_types: frozenset[str]
    """Public event type names this projection was written for (others are unknown to it)."""

    def create_statements(self, generation: Generation) -> Sequence[str]:
        """DDL creating the generation's tables (no secondary indexes)."""
        ...

    def index_statements(self, generation: Generation) -> Sequence[str]:
        """DDL creating the generation's secondary indexes (a rebuild adds them once loaded)."""
        ...

    def apply(
        self,
        database: Database,
        cursor: Cursor,
        generation: Generation,
        notifications: Sequence[Notification],
    ) -> None:
        """Write a batch of known events into the generation's tables in the open transaction."""
        ...


class UnknownEventType(Exception):
    """A rebuild met an event type its projection does not know: the model would be wrong."""

    def __init__(self, projection: str, type_name: str, position: int) -> None:
        super().__init__(
            f"projection {projection!r} does not know event type {type_name!r}"
            f" (at position {position}): rebuild refused"
        )
        self.projection = projection
        self.type_name = type_name
        self.position = position


_KNOWN_TOPICS: dict[frozenset[str], set[str]] = {}
"""Per set of event types (a projection's), the stored topics found to be of one of them: a
topic's name never changes while a process runs (`ledger.domain.event_names`), so each topic is
looked up once, not once per notification per read model."""


def known_events(
    projection: Projection, notifications: Sequence[Notification], *, strict: bool
) -> list[Notification]:
    """The notifications of types the projection knows; others are skipped, or refused if strict.

    A live run skips an unknown type with a warning (a newer writer may have added it); a rebuild
    (`strict`) stops, since a model built without it would be wrong without saying so.
    """
    known = _KNOWN_TOPICS.get(projection.event_types)
    if known is None:
        known = _KNOWN_TOPICS.setdefault(projection.event_types, set())
    if all(notification.topic in known for notification in notifications):
        return list(notifications)
    from ledger.domain.event_names import event_name  # the domain: not on a query's path

    kept: list[Notification] = []
    for notification in notifications:
        if notification.topic in known:
            kept.append(notification)
            continue
        try:
            type_name = event_name(notification.topic)
        except LookupError:
            type_name = notification.topic
        if type_name in projection.event_types:
            known.add(notification.topic)
            kept.append(notification)
            continue
        if strict:
            raise UnknownEventType(projection.name, type_name, notification.id)
        log.warning(
            "unknown event type skipped",
            projection=projection.name,
            type=type_name,
            topic=notification.topic,
            position=notification.id,
            originator_id=str(notification.originator_id),
        )
    return kept
