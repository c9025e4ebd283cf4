"""Where each projection stands: its live generation and position, and any rebuild's.

`ledger_projections` holds one row per projection: the generation of tables that queries read and
the position (notification id) that generation reflects. A live batch locks that row (FOR UPDATE
on PostgreSQL; SQLite's BEGIN IMMEDIATE already excludes every other writer), then writes its rows
into that generation and the new position in the same transaction. A rebuild's swap changes the
row under the same lock, so no batch can read one generation and write after the swap.
`ledger_projection_builds` holds one row per rebuild under way, with the position it has reached.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from ledger import limits
from ledger.lazylog import get_logger
from ledger.persistence.database import Cursor, Database, is_psycopg_error
from ledger.projection import Generation, Projection, decoding_once, known_events

if TYPE_CHECKING:
    from eventsourcing.persistence import Notification

log = get_logger(__name__)

T = TypeVar("T")

PROJECTIONS_DDL = (
    "CREATE TABLE IF NOT EXISTS ledger_projections (name TEXT PRIMARY KEY,"
    " generation INTEGER NOT NULL, position BIGINT NOT NULL)"
)
BUILDS_DDL = (
    "CREATE TABLE IF NOT EXISTS ledger_projection_builds (name TEXT NOT NULL,"
    " generation INTEGER NOT NULL, position BIGINT NOT NULL, PRIMARY KEY (name, generation))"
)
PREPARE_LOCK_KEY = 0x6C6564676572_01
"""PostgreSQL advisory lock serialising read-model schema preparation between processes."""


class ProjectionMissing(LookupError):
    """The read model has no tables yet: the schema was not prepared."""


@dataclass(frozen=True)
class Live:
    """A projection's live generation and the position its tables reflect."""

    generation: Generation
    position: int


def prepare_projections(database: Database, projections: Iterable[Projection]) -> None:
    """Create the position tables and, for a projection seen the first time, its generation 1;
    for one seen before, any table or index its live generation lacks."""
    with database.transaction() as cursor:
        if database.kind == "postgresql":
            # Concurrent CREATE TABLE IF NOT EXISTS of one table can fail on PostgreSQL.
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", (PREPARE_LOCK_KEY,))
        cursor.execute(PROJECTIONS_DDL)
        cursor.execute(BUILDS_DDL)
        for projection in projections:
            cursor.execute(
                "SELECT generation FROM ledger_projections WHERE name = %s", (projection.name,)
            )
            known = cursor.fetchone()
            if known is not None:
                # A table or index the projection's code gained since its live generation was
                # built (all IF NOT EXISTS) is created empty: right when no event so far would
                # have filled it; otherwise the read model needs a rebuild (README, Operations).
                live = Generation(int(known[0]))
                for statement in (
                    *projection.create_statements(live),
                    *projection.index_statements(live),
                ):
                    cursor.execute(statement)
                continue
            first = Generation(1)
            for statement in (
                *projection.create_statements(first),
                *projection.index_statements(first),
            ):
                cursor.execute(statement)
            cursor.execute(
                "INSERT INTO ledger_projections (name, generation, position) VALUES (%s, %s, 0)",
                (projection.name, first.number),
            )
            log.info("read model created", projection=projection.name, generation=first.number)


def _is_database_error(error: BaseException) -> bool:
    return isinstance(error, sqlite3.Error) or is_psycopg_error(error)


def _missing_table(error: Exception) -> bool:
    if is_psycopg_error(error):
        import psycopg.errors

        return isinstance(error, psycopg.errors.UndefinedTable)
    return isinstance(error, sqlite3.OperationalError) and "no such table" in str(error)


def live_state(cursor: Cursor, name: str, *, lock: bool = False) -> Live:
    """The projection's live generation and position, read (or locked) in the open transaction."""
    return live_states(cursor, [name], lock=lock)[name]


def _read_lives(cursor: Cursor, names: Sequence[str], *, lock: bool) -> dict[str, Live]:
    """Of the named projections, those that exist, with their live generation and position,
    read (or locked, in name order) in one statement; none before the table exists."""
    suffix = " FOR UPDATE" if lock else ""
    marks = ", ".join(["%s"] * len(names))
    try:
        cursor.execute(
            "SELECT name, generation, position FROM ledger_projections"
            f" WHERE name IN ({marks}) ORDER BY name{suffix}",
            list(names),
        )
        rows = cursor.fetchall()
    except Exception as error:
        if not _is_database_error(error) or not _missing_table(error):
            raise
        rows = []
    return {str(row[0]): Live(Generation(int(row[1])), int(row[2])) for row in rows}


def live_states(cursor: Cursor, names: Sequence[str], *, lock: bool = False) -> dict[str, Live]:
    """Each named projection's live generation and position, read (or locked, in name order) in
    the open transaction, in one statement."""
    lives = _read_lives(cursor, names, lock=lock)
    for name in names:
        if name not in lives:
            raise ProjectionMissing(
                f"read model {name!r} does not exist yet: start `ledger run` (or run"
                " `python -m ledger.deploy_setup`) to create it"
            )
    return lives


def lock_live(database: Database, cursor: Cursor, name: str) -> Live:
    """Lock the projection's live row for the rest of the transaction and return it."""
    return lock_lives(database, cursor, [name])[name]


def lock_lives(database: Database, cursor: Cursor, names: Sequence[str]) -> dict[str, Live]:
    """Lock the projections' live rows for the rest of the transaction and return them (FOR
    UPDATE on PostgreSQL; SQLite's BEGIN IMMEDIATE already excludes every other writer)."""
    return live_states(cursor, names, lock=database.kind == "postgresql")


def set_live(cursor: Cursor, name: str, live: Live) -> None:
    """Point the projection at a generation and position (the row must be locked)."""
    set_lives(cursor, {name: live})


def set_lives(cursor: Cursor, lives: dict[str, Live]) -> None:
    """Point each named projection at its generation and position (the rows must be locked):
    one statement (`executemany` sends them in one pipeline on PostgreSQL)."""
    if lives:
        cursor.executemany(
            "UPDATE ledger_projections SET generation = %s, position = %s WHERE name = %s",
            [(live.generation.number, live.position, name) for name, live in lives.items()],
        )


def drop_generation(cursor: Cursor, projection: Projection, generation: Generation) -> None:
    """Drop one generation's tables (their indexes go with them)."""
    for base in projection.tables:
        cursor.execute(f"DROP TABLE IF EXISTS {generation.table(base)}")


class LiveProjection:
    """Applies batches to a projection's live generation: what the projections worker tails."""

    def __init__(self, database: Database, projection: Projection) -> None:
        self.database = database
        self.projection = projection
        self.name = projection.name

    def position(self) -> int:
        """The last notification id reflected in the live generation."""
        with self.database.read() as cursor:
            return live_state(cursor, self.name).position

    def handle(self, notifications: Sequence[Notification]) -> None:
        """Apply a batch to the live generation and record the new position, in one transaction.

        The generation is read under the row lock, inside the transaction that writes: a batch
        read from the log before a swap lands in the new generation, and only its events after
        the swapped-in position.
        """
        with self.database.transaction() as cursor:
            self.handle_in(cursor, notifications)

    def handle_in(self, cursor: Cursor, notifications: Sequence[Notification]) -> None:
        """`handle` inside a transaction the caller opened (and commits)."""
        live = lock_live(self.database, cursor, self.name)
        moved = self.apply_in(cursor, live, notifications)
        if moved is not None:
            set_live(cursor, self.name, moved)

    def apply_in(
        self, cursor: Cursor, live: Live, notifications: Sequence[Notification]
    ) -> Live | None:
        """Apply what of the batch is new to `live` (the row locked by the caller) into its
        generation; where the projection now stands, or None if nothing was new."""
        if not notifications:
            return None
        if notifications[0].id > live.position:  # the usual case: the whole batch is new
            fresh = notifications
        else:
            fresh = [n for n in notifications if n.id > live.position]
            if not fresh:
                return None
        known = known_events(self.projection, fresh, strict=False)
        if known:
            self.projection.apply(self.database, cursor, live.generation, known)
        return Live(live.generation, fresh[-1].id)


class LiveProjections:
    """Every registered projection, tailed together: one read of the log and one transaction
    per batch for all of them (each still keeps its own generation and position).

    One transaction instead of one per read model: a fifth of the commits, and on SQLite a fifth
    of the waits for the write lock the account worker holds most of the time. A projection
    that stands behind the others (a rebuild swapped in an older position) makes the batch start
    at its position; the others skip what they already have, under their row locks.
    """

    name = "projections"

    def __init__(self, database: Database, projections: Iterable[Projection]) -> None:
        self.database = database
        self.handlers = [LiveProjection(database, projection) for projection in projections]

    def positions(self) -> dict[str, int]:
        """Each projection's position."""
        return live_positions(self.database, [handler.name for handler in self.handlers])

    def position(self) -> int:
        """The lowest position: every notification after it is new to some projection."""
        return min(self.positions().values())

    def handle(self, notifications: Sequence[Notification]) -> None:
        """Apply a batch to every projection's live generation, in one transaction: their rows
        of `ledger_projections` locked in one statement and moved on in another."""
        with self.database.transaction() as cursor, decoding_once():
            lives = lock_lives(self.database, cursor, [handler.name for handler in self.handlers])
            moved: dict[str, Live] = {}
            for handler in self.handlers:
                live = handler.apply_in(cursor, lives[handler.name], notifications)
                if live is not None:
                    moved[handler.name] = live
            set_lives(cursor, moved)


def read_live(database: Database, name: str, query: Callable[[Cursor, Live], T]) -> T:
    """Run a query on the projection's live generation, in one read transaction.

    A swap may drop the generation a read started on before the read reaches its tables
    (PostgreSQL looks tables up by name when a statement runs); the query then runs again on
    the new generation. An error with the generation unchanged is the query's own: raised.
    """
    started_on: list[Generation] = []

    def read(cursor: Cursor) -> T:
        live = live_state(cursor, name)
        started_on.append(live.generation)
        return query(cursor, live)

    for attempt in range(1, limits.live_read_attempts_max + 1):
        started_on.clear()
        try:
            return database.query(read)
        except Exception as error:
            if not _is_database_error(error):
                raise
            if not started_on or attempt == limits.live_read_attempts_max:
                raise
            current = database.query(lambda cursor: live_state(cursor, name).generation)
            if current == started_on[0]:
                raise
            log.info("read model swapped during a read: reading again", projection=name)
    raise AssertionError("unreachable: the last attempt returns or raises")


def live_positions(database: Database, names: Sequence[str]) -> dict[str, int]:
    """The live position of each named projection, read in one transaction (0: none yet)."""

    def read(cursor: Cursor) -> dict[str, int]:
        lives = _read_lives(cursor, names, lock=False)
        return {name: lives[name].position if name in lives else 0 for name in names}

    return database.query(read)


def status(
    database: Database, names: Sequence[str], read_head: Callable[[], int]
) -> list[dict[str, Any]]:
    """Each projection's live generation and position, and any rebuild under way, with lag.

    The head (the store's last notification id) is read after the positions, so lag is never
    negative.
    """

    def read(cursor: Cursor) -> list[tuple[str, str, int, int]]:
        found: list[tuple[str, str, int, int]] = []
        for name in names:
            live = live_state(cursor, name)
            found.append((name, "live", live.generation.number, live.position))
            cursor.execute(
                "SELECT generation, position FROM ledger_projection_builds WHERE name = %s"
                " ORDER BY generation",
                (name,),
            )
            found.extend(
                (name, "rebuilding", int(generation), int(position))
                for generation, position in cursor.fetchall()
            )
        return found

    found = database.query(read)
    head = read_head()
    return [
        {
            "name": name,
            "state": state,
            "generation": generation,
            "position": position,
            "head": head,
            "lag": head - position,
        }
        for name, state, generation, position in found
    ]
