"""Event-store recorders that also record inbound idempotency keys in the same transaction."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any
from uuid import UUID

from eventsourcing.persistence import (
    ApplicationRecorder,
    InterfaceError,
    Notification,
    OperationalError,
    StoredEvent,
    Tracking,
)
from eventsourcing.postgres import PostgresFactory, PostgresProcessRecorder
from eventsourcing.sqlite import SQLiteCursor, SQLiteFactory, SQLiteProcessRecorder
from eventsourcing.utils import Environment, EnvType, retry
from psycopg import Cursor
from psycopg.rows import DictRow, tuple_row
from psycopg.sql import SQL, Composed, Identifier

from ledger import limits
from ledger.persistence.database import PLAN_EVERY_RUN
from ledger.persistence.outcomes import (
    COLUMNS as OUTCOME_COLUMNS,
)
from ledger.persistence.outcomes import (
    OUTCOMES_TABLE,
    CommandOutcome,
    OutcomeKey,
    create_table_sql,
)
from ledger.persistence.wal_checkpoints import WalCheckpointer

INBOUND_KEYS_TABLE = "ledger_inbound_keys"


class InboundKeyRecorder:
    """What the ingest needs beyond eventsourcing's process recorder."""

    commits_concurrently = False
    """Whether a commit may run in a writer thread while the ingest prepares the next batch.

    Only where the write holds the GIL briefly: PostgreSQL sends one statement and waits for
    the server. Python's sqlite3 releases and re-takes the GIL around every row's step, so a
    writer thread competing with a busy preparing thread waits for the GIL once per row: 2,000
    rows measured 7 ms alone and 2.5 s beside a busy thread.
    """

    def select_inbound_keys(self, keys: Collection[str]) -> set[str]:
        """The given idempotency keys that are already recorded."""
        raise NotImplementedError

    def select_existing_originators(self, originator_ids: Collection[UUID]) -> set[UUID]:
        """The given aggregate ids that have at least one stored event (one query per chunk)."""
        raise NotImplementedError

    def stop_background_work(self) -> None:
        """Stop what the recorder runs beside its writes (none by default)."""

    def write_snapshots_to(self, table: str) -> None:
        """Snapshots passed to `insert_events(..., snapshots=...)` go into `table` (the
        snapshot recorder's), in the events' transaction; one already there is left as it is."""
        raise NotImplementedError

    def select_outcomes(self, keys: Collection[OutcomeKey]) -> dict[OutcomeKey, str]:
        """Of the given commands, those with a recorded outcome, with their body digests."""
        raise NotImplementedError


def _sqlite_rows(stored_events: Sequence[StoredEvent]) -> list[tuple[Any, ...]]:
    """Stored events as rows of the library's SQLite tables (ids as 32 hex digits)."""
    return [
        (
            event.originator_id.hex
            if isinstance(event.originator_id, UUID)
            else event.originator_id,
            event.originator_version,
            event.topic,
            event.state,
        )
        for event in stored_events
    ]


_UUIDS: dict[str, UUID] = {}
"""Originator ids already read, by their stored text: a log names the same accounts again and
again, and `UUID(text)` costs a microsecond."""


def _uuid(text: str) -> UUID:
    found = _UUIDS.get(text)
    if found is None:
        if len(_UUIDS) >= limits.notification_uuid_cache_max:
            _UUIDS.clear()
        found = _UUIDS[text] = UUID(text)
    return found


def _notification(
    notification_id: int, originator_id: UUID, version: int, topic: str, state: bytes
) -> Notification:
    """A `Notification` filled as the library's frozen dataclass would be, without its
    `__init__` (which sets each field through `object.__setattr__`)."""
    notification = object.__new__(Notification)
    object.__setattr__(
        notification,
        "__dict__",
        {
            "originator_id": originator_id,
            "originator_version": version,
            "topic": topic,
            "state": state,
            "id": notification_id,
        },
    )
    return notification


class _LogPages(ApplicationRecorder):
    """The log's pages as the relays and the projections read them for every event: the rows
    as tuples (not `sqlite3.Row`s or dicts looked up by name) into notifications built without
    their `__init__` (6.5-9.6 -> 3.6-7.1 us a notification). Pages with a `stop` or `topics`,
    which they never ask for, go to the library."""

    def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> Sequence[Notification]:
        """See the class."""
        if start is None or stop is not None or topics:
            # The library's recorder after this class in the recorders' order implements it.
            return super().select_notifications(  # type: ignore[safe-super]
                start, limit, stop, topics, inclusive_of_start=inclusive_of_start
            )
        return self._page(start, limit, inclusive_of_start=inclusive_of_start)

    def _page(self, start: int, limit: int, *, inclusive_of_start: bool) -> list[Notification]:
        """One page after (or from) `start`: each backend's own reading."""
        raise NotImplementedError


class LedgerSQLiteProcessRecorder(_LogPages, SQLiteProcessRecorder, InboundKeyRecorder):
    """SQLite process recorder with an inbound idempotency-key table.

    Its writes leave the log's checkpoints to a thread (`WalCheckpointer`, started at the
    first write): a commit never copies the log into the database file itself.
    """

    _checkpointer: WalCheckpointer | None = None
    _insert_snapshots_statement: str | None = None

    def write_snapshots_to(self, table: str) -> None:
        """See `InboundKeyRecorder.write_snapshots_to`."""
        self._insert_snapshots_statement = (
            f"INSERT OR IGNORE INTO {table} (originator_id, originator_version, topic, state)"
            " VALUES (?, ?, ?, ?)"
        )

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """Write in one transaction, then ask for a checkpoint of the log."""
        notification_ids = super().insert_events(stored_events, **kwargs)
        if self._checkpointer is None and not self.datastore.pool.is_sqlite_memory_mode:
            self._checkpointer = WalCheckpointer(self.datastore.pool.db_name)
        if self._checkpointer is not None:
            self._checkpointer.written()
        return notification_ids

    def stop_background_work(self) -> None:
        """Stop the checkpoint thread (after a last checkpoint)."""
        if self._checkpointer is not None:
            self._checkpointer.close()
            self._checkpointer = None

    def _page(self, start: int, limit: int, *, inclusive_of_start: bool) -> list[Notification]:
        """A page of the log (see `_LogPages`), each originator id parsed once."""
        statement = (
            "SELECT rowid, originator_id, originator_version, topic, state"
            f" FROM {self.events_table_name} WHERE rowid {'>=' if inclusive_of_start else '>'} ?"
            " ORDER BY rowid LIMIT ?"
        )
        with self.datastore.transaction(commit=False) as c:
            c.sqlite_cursor.row_factory = None  # tuples; the cursor is this read's alone
            c.execute(statement, (start, limit))
            rows = c.fetchall()
        if self.datastore.originator_id_type != "uuid":
            return [_notification(r[0], r[1], r[2], r[3], r[4]) for r in rows]
        return [_notification(r[0], _uuid(r[1]), r[2], r[3], r[4]) for r in rows]

    def construct_create_table_statements(self) -> list[str]:
        """Create the library's tables and ours."""
        statements = super().construct_create_table_statements()
        statements.append(
            f"CREATE TABLE IF NOT EXISTS {INBOUND_KEYS_TABLE} (key TEXT PRIMARY KEY) WITHOUT ROWID"
        )
        statements.append(create_table_sql(OUTCOMES_TABLE))
        return statements

    def _insert_events(
        self, c: SQLiteCursor, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        c.execute("PRAGMA wal_autocheckpoint=0")  # the connection's setting: see the class
        keys: Collection[str] = kwargs.get("inbound_keys") or ()
        if keys:
            c.executemany(
                f"INSERT INTO {INBOUND_KEYS_TABLE} (key) VALUES (?)", [(key,) for key in keys]
            )
        outcomes: Sequence[CommandOutcome] = kwargs.get("outcomes") or ()
        if outcomes:
            c.executemany(
                f"INSERT INTO {OUTCOMES_TABLE} ({', '.join(OUTCOME_COLUMNS)})"
                f" VALUES ({', '.join('?' * len(OUTCOME_COLUMNS))})",
                [outcome.row() for outcome in outcomes],
            )
        snapshots: Sequence[StoredEvent] = kwargs.get("snapshots") or ()
        if snapshots:
            if self._insert_snapshots_statement is None:
                raise ValueError("snapshots given, but no snapshot table (write_snapshots_to)")
            c.executemany(self._insert_snapshots_statement, _sqlite_rows(snapshots))
        tracking: Tracking | None = kwargs.get("tracking")
        if tracking is None:
            return super()._insert_events(c, stored_events, **kwargs)
        # A write with a tracking position (the ingest) needs no notification ids back: one
        # executemany instead of the library's statement per event (to read each lastrowid).
        c.executemany(self.insert_events_statement, _sqlite_rows(stored_events))
        self._insert_tracking(c, tracking)
        return None

    def select_inbound_keys(self, keys: Collection[str]) -> set[str]:
        """The given idempotency keys that are already recorded."""
        return set(self._select_in(f"SELECT key FROM {INBOUND_KEYS_TABLE} WHERE key IN", keys))

    def select_existing_originators(self, originator_ids: Collection[UUID]) -> set[UUID]:
        """The given aggregate ids that have at least one stored event."""
        found = self._select_in(
            f"SELECT originator_id FROM {self.events_table_name}"
            " WHERE originator_version = 1 AND originator_id IN",
            [originator_id.hex for originator_id in originator_ids],
        )
        return {UUID(hex_id) for hex_id in found}

    def select_outcomes(self, keys: Collection[OutcomeKey]) -> dict[OutcomeKey, str]:
        """Of the given commands, those with a recorded outcome, with their body digests (one
        query per chunk of (account id, command id) pairs, joined to the table's key)."""
        found: dict[OutcomeKey, str] = {}
        ordered = list(keys)
        chunk_max = limits.sqlite_in_chunk_max // 2  # two parameters a key
        with self.datastore.transaction(commit=False) as c:
            for start in range(0, len(ordered), chunk_max):
                chunk = ordered[start : start + chunk_max]
                # Joined from the pairs, so each is one search of the key's index (a row-value
                # `IN (VALUES ...)` scans the whole table instead).
                c.execute(
                    f"WITH asked(account_id, command_id) AS"
                    f" (VALUES {', '.join(['(?, ?)'] * len(chunk))})"
                    " SELECT o.account_id, o.command_id, o.body_sha256"
                    f" FROM asked JOIN {OUTCOMES_TABLE} AS o"
                    " ON o.account_id = asked.account_id AND o.command_id = asked.command_id",
                    [value for key in chunk for value in key],
                )
                for account_id, command_id, digest in c.fetchall():
                    found[(account_id, command_id)] = digest
        return found

    def _select_in(self, query: str, values: Collection[str]) -> list[str]:
        """`query (?, ?, ...)` over `values` in chunks; the first column of every row."""
        found: list[str] = []
        ordered = list(values)
        with self.datastore.transaction(commit=False) as c:
            for start in range(0, len(ordered), limits.sqlite_in_chunk_max):
                chunk = ordered[start : start + limits.sqlite_in_chunk_max]
                c.execute(f"{query} ({','.join('?' * len(chunk))})", chunk)
                found.extend(row[0] for row in c.fetchall())
        return found


class LedgerPostgresProcessRecorder(_LogPages, PostgresProcessRecorder, InboundKeyRecorder):
    """PostgreSQL process recorder with an inbound idempotency-key table."""

    commits_concurrently = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        table = Identifier(self.datastore.schema or "public", INBOUND_KEYS_TABLE)
        self.sql_create_statements.append(
            SQL("CREATE TABLE IF NOT EXISTS {0} (key text PRIMARY KEY)").format(table)
        )
        # Arrays go in binary (%b): psycopg's text dumping escapes every element with regular
        # expressions, about 7x slower for the event array.
        outcomes = Identifier(self.datastore.schema or "public", OUTCOMES_TABLE)
        self.sql_create_statements.append(SQL(create_table_sql("{0}")).format(outcomes))
        # One statement of column arrays, not executemany: executemany inside the pipeline the
        # library commits in once left the events insert's RETURNING unreadable ("the last
        # operation didn't produce records (command status: INSERT 0 1)").
        self._insert_outcomes_statement = SQL(
            "INSERT INTO {0} (" + ", ".join(OUTCOME_COLUMNS) + ")"
            " SELECT * FROM unnest(" + ", ".join(["%b::text[]"] * len(OUTCOME_COLUMNS)) + ")"
        ).format(outcomes)
        self._select_outcomes_statement = SQL(
            "SELECT account_id, command_id, body_sha256 FROM {0}"
            " WHERE (account_id, command_id) IN (SELECT * FROM unnest(%b::text[], %b::text[]))"
        ).format(outcomes)
        self._insert_keys_statement = SQL("INSERT INTO {0} (key) SELECT unnest(%b::text[])").format(
            table
        )
        self._select_keys_statement = SQL("SELECT key FROM {0} WHERE key = ANY(%b::text[])").format(
            table
        )
        self._select_originators_statement = SQL(
            "SELECT originator_id FROM {schema}.{table}"
            " WHERE originator_version = 1 AND originator_id = ANY(%b::{id_type}[])"
        ).format(
            schema=Identifier(self.datastore.schema),
            table=Identifier(self.events_table_name),
            id_type=Identifier(self.datastore.originator_id_type),
        )
        self._insert_columns_statement = self._columns_statement(
            self.events_table_name, SQL(" RETURNING notification_id")
        )
        select_page = (
            "SELECT notification_id, originator_id, originator_version, topic, state"
            " FROM {schema}.{table} WHERE notification_id {op} %s"
            " ORDER BY notification_id LIMIT %s"
        )
        self._select_pages = {
            inclusive: SQL(select_page).format(
                schema=Identifier(self.datastore.schema),
                table=Identifier(self.events_table_name),
                op=SQL(">=" if inclusive else ">"),
            )
            for inclusive in (True, False)
        }

    _insert_snapshots_statement: Composed | None = None

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def _page(self, start: int, limit: int, *, inclusive_of_start: bool) -> list[Notification]:
        """A page of the log (see `_LogPages`), from a statement composed once (retried as the
        library retries its own reads; planned for its parameters each run: `PLAN_EVERY_RUN`)."""
        connection = self.datastore.get_connection()
        with connection as conn, conn.cursor(row_factory=tuple_row) as curs:
            curs.execute(self._select_pages[inclusive_of_start], (start, limit), prepare=True)
            rows = curs.fetchall()
        return [
            _notification(r[0], r[1], r[2], r[3], r[4] if type(r[4]) is bytes else bytes(r[4]))
            for r in rows
        ]

    def write_snapshots_to(self, table: str) -> None:
        """See `InboundKeyRecorder.write_snapshots_to`."""
        self._insert_snapshots_statement = self._columns_statement(
            table, SQL(" ON CONFLICT DO NOTHING")
        )

    def _columns_statement(self, table: str, suffix: SQL) -> Composed:
        """Insert stored events into `table` (of the store's schema) as four plain arrays rather
        than one array of the library's composite type: psycopg dumps composites in pure
        Python, these arrays' elements in C."""
        return (
            SQL(
                "INSERT INTO {schema}.{table} (originator_id, originator_version, topic, state)"
                " SELECT * FROM unnest(%b::{id_type}[], %b::bigint[], %b::text[], %b::bytea[])"
            ).format(
                schema=Identifier(self.datastore.schema),
                table=Identifier(table),
                id_type=Identifier(self.datastore.originator_id_type),
            )
            + suffix
        )

    def _insert_columns(
        self, curs: Cursor[DictRow], statement: Composed, stored_events: Sequence[StoredEvent]
    ) -> None:
        text_ids = self.datastore.originator_id_type == "text"
        curs.execute(
            statement,
            (
                [str(e.originator_id) if text_ids else e.originator_id for e in stored_events],
                [e.originator_version for e in stored_events],
                [e.topic for e in stored_events],
                [e.state for e in stored_events],
            ),
        )

    def _insert_events(
        self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> None:
        snapshots: Sequence[StoredEvent] = kwargs.get("snapshots") or ()
        if snapshots:
            if self._insert_snapshots_statement is None:
                raise ValueError("snapshots given, but no snapshot table (write_snapshots_to)")
            self._insert_columns(curs, self._insert_snapshots_statement, snapshots)
        keys: Collection[str] = kwargs.get("inbound_keys") or ()
        if keys:
            curs.execute(self._insert_keys_statement, (list(keys),))
        outcomes: Sequence[CommandOutcome] = kwargs.get("outcomes") or ()
        if outcomes:
            rows = [outcome.row() for outcome in outcomes]
            curs.execute(
                self._insert_outcomes_statement,
                [list(column) for column in zip(*rows, strict=True)],
            )
        super()._insert_events(curs, stored_events, **kwargs)

    def _insert_stored_events(
        self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> None:
        self._lock_table(curs)
        self._notify_channel(curs)
        self._insert_columns(curs, self._insert_columns_statement, stored_events)

    def select_inbound_keys(self, keys: Collection[str]) -> set[str]:
        """The given idempotency keys that are already recorded."""
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(self._select_keys_statement, (list(keys),))
            return {row["key"] for row in curs.fetchall()}

    def select_outcomes(self, keys: Collection[OutcomeKey]) -> dict[OutcomeKey, str]:
        """Of the given commands, those with a recorded outcome, with their body digests."""
        ordered = list(keys)
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(
                self._select_outcomes_statement,
                ([key[0] for key in ordered], [key[1] for key in ordered]),
            )
            return {
                (row["account_id"], row["command_id"]): row["body_sha256"]
                for row in curs.fetchall()
            }

    def select_existing_originators(self, originator_ids: Collection[UUID]) -> set[UUID]:
        """The given aggregate ids that have at least one stored event."""
        text_ids = self.datastore.originator_id_type == "text"
        values = [str(i) if text_ids else i for i in originator_ids]
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(self._select_originators_statement, (values,))
            return {
                row["originator_id"]
                if isinstance(row["originator_id"], UUID)
                else UUID(str(row["originator_id"]))
                for row in curs.fetchall()
            }


class LedgerSQLiteFactory(SQLiteFactory):
    """SQLite infrastructure whose process recorder keeps inbound keys."""

    process_recorder_class = LedgerSQLiteProcessRecorder


class LedgerPostgresFactory(PostgresFactory):
    """PostgreSQL infrastructure whose process recorder keeps inbound keys, on connections
    that plan every run of a statement for its parameters (`PLAN_EVERY_RUN`)."""

    process_recorder_class = LedgerPostgresProcessRecorder

    def __init__(self, env: Environment | EnvType | None) -> None:
        super().__init__(env)
        # The pool opens its connections at the first use, with these arguments (the
        # library builds them as a dict).
        kwargs = self.datastore.pool.kwargs
        if not isinstance(kwargs, dict):
            raise TypeError(f"the event store's pool arguments are {type(kwargs).__name__}")
        kwargs["options"] = PLAN_EVERY_RUN
