"""Rebuilding a projection aside: a new generation of tables, built while the live one serves.

The rebuild allocates a generation above every one in use, creates its tables, and tails the
whole log into them (its position in `ledger_projection_builds`), adds the secondary indexes and
catches up again. The swap is then one transaction: it locks the live row, applies what arrived
since, points the projection at the new generation and its position, and drops the old tables.
The live worker, waiting on that row, carries on from the swapped-in position. A rebuild that
meets an event type its projection does not know stops, and its tables are dropped.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog
from eventsourcing.persistence import Notification

from ledger import limits
from ledger.generations import Live, drop_generation, lock_live, set_live
from ledger.persistence.database import Cursor, Database
from ledger.persistence.event_store import EventStore
from ledger.projection import Generation, Projection, known_events
from ledger.tailing import BatchHandler, ReportingHandler, run_tail

log = structlog.get_logger(__name__)


class RebuildSuperseded(Exception):
    """Another rebuild of the same projection swapped in a newer generation first."""


class SwapBehind(Exception):
    """Invariant: a rebuild about to swap in reflects less of the log than the live model."""


@dataclass(frozen=True)
class Rebuilt:
    """What a rebuild did."""

    name: str
    generation: int
    replaced: int
    """The generation it replaced (its tables are dropped)."""
    events: int
    position: int


def _lock_build(database: Database, cursor: Cursor, name: str, generation: Generation) -> int:
    suffix = " FOR UPDATE" if database.kind == "postgresql" else ""
    cursor.execute(
        "SELECT position FROM ledger_projection_builds WHERE name = %s AND generation = %s"
        + suffix,
        (name, generation.number),
    )
    row = cursor.fetchone()
    if row is None:
        raise RebuildSuperseded(
            f"the rebuild of {name!r} (generation {generation.number}) was replaced by a newer one"
        )
    return int(row[0])


class BuildHandler:
    """Applies batches to a generation being built, refusing event types it does not know."""

    def __init__(self, database: Database, projection: Projection, generation: Generation) -> None:
        self.database = database
        self.projection = projection
        self.generation = generation
        self.name = f"{projection.name} rebuild"

    def position(self) -> int:
        """The last notification id the new generation reflects."""
        with self.database.read() as cursor:
            cursor.execute(
                "SELECT position FROM ledger_projection_builds WHERE name = %s AND generation = %s",
                (self.projection.name, self.generation.number),
            )
            row = cursor.fetchone()
        return int(row[0]) if row else 0

    def handle(self, notifications: Sequence[Notification]) -> None:
        """Apply a batch to the new generation and record its position, in one transaction."""
        with self.database.transaction() as cursor:
            position = _lock_build(self.database, cursor, self.projection.name, self.generation)
            fresh = [n for n in notifications if n.id > position]
            if not fresh:
                return
            self.apply_batch(cursor, fresh)
            cursor.execute(
                "UPDATE ledger_projection_builds SET position = %s"
                " WHERE name = %s AND generation = %s",
                (fresh[-1].id, self.projection.name, self.generation.number),
            )

    def apply_batch(self, cursor: Cursor, notifications: Sequence[Notification]) -> None:
        """Write a batch into the new generation in the open transaction (unknown types refused)."""
        known = known_events(self.projection, notifications, strict=True)
        if known:
            self.projection.apply(self.database, cursor, self.generation, known)


def rebuild_aside(
    database: Database,
    store: EventStore,
    projection: Projection,
    *,
    progress: Callable[[int], None] | None = None,
    batch_max: int = limits.notification_batch_max,
) -> Rebuilt:
    """Build a new generation of the projection from the whole log, then swap it in."""
    generation = _start(database, projection)
    log.info("rebuild started", projection=projection.name, generation=generation.number)
    builder = BuildHandler(database, projection, generation)
    tailed: BatchHandler = builder if progress is None else ReportingHandler(builder, progress)
    never = threading.Event()
    try:
        events = run_tail(store, tailed, never, batch_max=batch_max, until_caught_up=True)
        with database.transaction() as cursor:
            _lock_build(database, cursor, projection.name, generation)
            for statement in projection.index_statements(generation):
                cursor.execute(statement)
        # What arrived while the indexes were built, so that little is left for the swap.
        events += run_tail(store, tailed, never, batch_max=batch_max, until_caught_up=True)
        swapped_events, live, replaced = _swap(database, store, builder, batch_max)
    except BaseException:
        _abandon(database, projection, generation)
        raise
    log.info(
        "rebuild swapped in",
        projection=projection.name,
        generation=generation.number,
        replaced=replaced.number,
        position=live.position,
    )
    return Rebuilt(
        name=projection.name,
        generation=generation.number,
        replaced=replaced.number,
        events=events + swapped_events,
        position=live.position,
    )


def _start(database: Database, projection: Projection) -> Generation:
    """Allocate a generation above every one in use and create its tables (no indexes yet)."""
    with database.transaction() as cursor:
        # Locking the live row serialises this with other rebuilds' starts and swaps.
        live = lock_live(database, cursor, projection.name)
        cursor.execute(
            "SELECT MAX(generation) FROM ledger_projection_builds WHERE name = %s",
            (projection.name,),
        )
        building = cursor.fetchone()[0]
        generation = Generation(max(live.generation.number, int(building or 0)) + 1)
        # Tables a crash left behind under this number would be counted twice: start clean.
        drop_generation(cursor, projection, generation)
        for statement in projection.create_statements(generation):
            cursor.execute(statement)
        cursor.execute(
            "INSERT INTO ledger_projection_builds (name, generation, position) VALUES (%s, %s, 0)",
            (projection.name, generation.number),
        )
    return generation


def _swap(
    database: Database, store: EventStore, builder: BuildHandler, batch_max: int
) -> tuple[int, Live, Generation]:
    """Catch up and swap in, in one transaction; the events applied, the new live, the old one."""
    projection = builder.projection
    generation = builder.generation
    recorder = store.process_recorder
    with database.transaction() as cursor:
        if database.kind == "postgresql":
            # Waits for the reads under way and holds new ones until the commit, so no read
            # holds a table this drops (no lock-order deadlock); a read that started on the old
            # generation and finds its tables gone runs again (`read_live`).
            cursor.execute("LOCK TABLE ledger_projections IN ACCESS EXCLUSIVE MODE")
        old = lock_live(database, cursor, projection.name)
        position = _lock_build(database, cursor, projection.name, generation)
        if old.generation.number >= generation.number:
            raise RebuildSuperseded(
                f"{projection.name!r} is already at generation {old.generation.number}"
            )
        events = 0
        while True:
            batch = recorder.select_notifications(
                start=position, limit=batch_max, inclusive_of_start=False
            )
            if not batch:
                break
            builder.apply_batch(cursor, batch)
            position = batch[-1].id
            events += len(batch)
        if position < old.position:
            raise SwapBehind(
                f"rebuild of {projection.name!r} reached {position}, the live model {old.position}"
            )
        new = Live(generation, position)
        set_live(cursor, projection.name, new)
        # Rebuilds below this one were abandoned (a crash) or lost the race: their tables go too.
        cursor.execute(
            "SELECT generation FROM ledger_projection_builds WHERE name = %s AND generation < %s",
            (projection.name, generation.number),
        )
        for (stale,) in cursor.fetchall():
            drop_generation(cursor, projection, Generation(int(stale)))
        cursor.execute(
            "DELETE FROM ledger_projection_builds WHERE name = %s AND generation <= %s",
            (projection.name, generation.number),
        )
        drop_generation(cursor, projection, old.generation)
    return events, new, old.generation


def _abandon(database: Database, projection: Projection, generation: Generation) -> None:
    """Drop a rebuild's tables and its row after it failed or was stopped."""
    try:
        with database.transaction() as cursor:
            cursor.execute(
                "DELETE FROM ledger_projection_builds WHERE name = %s AND generation = %s",
                (projection.name, generation.number),
            )
            drop_generation(cursor, projection, generation)
    except Exception as error:
        # The rebuild's own error matters more; a later swap drops what is left.
        log.warning(
            "could not drop an abandoned rebuild",
            projection=projection.name,
            generation=generation.number,
            error=str(error),
        )
