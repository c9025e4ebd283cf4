"""A small SQL adapter for our own tables (read models, positions) on SQLite or PostgreSQL.

SQL is written once with `%s` placeholders; the SQLite adapter turns them into `?`.

A read-only `Database` (for queries) never writes and never creates anything: on PostgreSQL every
transaction is read-only (a read-only role will do); on SQLite it opens the file read-only, and a
file that does not exist reads as an empty database.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

import orjson

if TYPE_CHECKING:
    import psycopg

from ledger import limits
from ledger.persistence.urls import DatabaseTarget

T = TypeVar("T")

PLAN_EVERY_RUN = "-c plan_cache_mode=force_custom_plan"
"""The session option every PostgreSQL connection of the ledger gets (the read models' and the
event store's pool): each run of a statement planned for its own parameters. psycopg prepares a
statement run five times (the event store's library prepares its log query at once), and
PostgreSQL may then keep a generic plan made while the tables were empty, a sequential scan
(and a sort, for the log's pages), until autovacuum analyzes them: 57 ms a page of the log at
100,000 events instead of 6-12, and the server's CPU per event two to four times its usual in
the runs it hit. Planning each run costs a fraction of a millisecond."""


def is_psycopg_error(error: BaseException, name: str = "Error") -> bool:
    """Whether `error` is psycopg's error class `name`, without importing psycopg for it.

    A process that never imported psycopg cannot have one of its errors in hand.
    """
    module = sys.modules.get("psycopg")
    return module is not None and isinstance(error, getattr(module, name))


def connect_error_reason(error: psycopg.OperationalError) -> str:
    """The part of libpq's connection error that says why, on one line."""
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
    reason = first_line.rsplit(" failed: ", 1)[-1]
    return " ".join(reason.removeprefix("FATAL:").split())


class DatabaseUnavailable(Exception):
    """The database could not be reached, refused the connection or stayed locked too long."""


class ReadOnlyDatabase(TypeError):
    """A write was asked of a read-only `Database` (a bug in the caller, not an outage)."""


def _sqlite_busy(error: sqlite3.OperationalError) -> bool:
    """Whether SQLite gave up waiting for another connection's lock (worth retrying later)."""
    code = getattr(error, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class Cursor(Protocol):
    """The part of a DB-API cursor the read models use."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run one statement."""
        ...

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> Any:
        """Run one statement for many rows."""
        ...

    def fetchall(self) -> list[Any]:
        """All rows of the last query."""
        ...

    def fetchone(self) -> Any:
        """The next row of the last query."""
        ...


class _SQLiteCursor:
    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._cursor = cursor

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._cursor.execute(sql.replace("%s", "?"), params)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> Any:
        return self._cursor.executemany(sql.replace("%s", "?"), rows)

    def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    def fetchone(self) -> Any:
        return self._cursor.fetchone()


def is_sqlite_cursor(cursor: Cursor) -> bool:
    """Whether a cursor of `Database.transaction` or `read` is SQLite's (else PostgreSQL's)."""
    return isinstance(cursor, _SQLiteCursor)


def _sqlite_quiescent_state(path: Path) -> tuple[int, int, int, int] | None:
    """The file's identity and last change, if no connection writes it; None otherwise.

    In WAL mode the `-wal` file exists exactly while some connection has the database open; a
    `-journal` is a rollback-mode write in progress (or a crash to recover from).
    """
    for suffix in ("-wal", "-journal"):
        if Path(f"{path}{suffix}").exists():
            return None
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


class Database:
    """One connection to the read-model database; use from one thread."""

    def __init__(
        self,
        target: DatabaseTarget,
        *,
        sqlite_synchronous: str = "NORMAL",
        read_only: bool = False,
    ) -> None:
        self.target = target
        self.sqlite_synchronous = sqlite_synchronous
        self.read_only = read_only
        self.kind: Literal["sqlite", "postgresql"] = target.kind
        self._sqlite: sqlite3.Connection | None = None
        self._postgres: psycopg.Connection[Any] | None = None

    def insert_rows(
        self,
        cursor: Cursor,
        table: str,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        *,
        pg_types: Sequence[str],
        suffix: str = "",
    ) -> None:
        """Insert many rows (then `suffix`, such as an ON CONFLICT clause) in the open transaction.

        PostgreSQL gets one statement over the rows as one JSON array of arrays (orjson, in C),
        each value cast to its column's type (`pg_types`), instead of a statement per row: a
        batch costs one round trip and one plan. (Column arrays for `unnest` cost psycopg 3.4-4.6
        us of Python a row of eight columns, dumped element by element; the JSON 1 us, the
        server's time the same.) Values are text, integers, booleans or None. SQLite, in the
        process, gets `executemany`. Rows must not repeat a conflict key.
        """
        if not rows:
            return
        names = ", ".join(columns)
        if self.kind == "postgresql":
            if len(pg_types) != len(columns):
                raise ValueError(f"{table}: {len(columns)} columns but {len(pg_types)} pg_types")
            values = ", ".join(f"(r->>{n})::{pg_type}" for n, pg_type in enumerate(pg_types))
            cursor.execute(
                f"INSERT INTO {table} ({names}) SELECT {values}"
                f" FROM jsonb_array_elements(%s::jsonb) AS r {suffix}",
                (orjson.dumps(rows).decode(),),
            )
        else:
            values = ", ".join(["%s"] * len(columns))
            cursor.executemany(f"INSERT INTO {table} ({names}) VALUES ({values}) {suffix}", rows)

    def _connect_sqlite(self) -> sqlite3.Connection:
        if self.read_only:
            raise ReadOnlyDatabase("a read-only SQLite database is read through query()")
        if self._sqlite is None:
            if self.target.sqlite_path is None:
                raise ValueError(f"no SQLite path in {self.target.describe()}")
            self.target.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(
                self.target.sqlite_path,
                isolation_level=None,
                timeout=limits.sqlite_busy_timeout_s,
                check_same_thread=False,
            )
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute(f"PRAGMA synchronous={self.sqlite_synchronous}")
            self._sqlite = connection
        return self._sqlite

    def _connect_postgres(self) -> psycopg.Connection[Any]:
        if self._postgres is None or self._postgres.closed or self._postgres.broken:
            options = PLAN_EVERY_RUN
            if self.read_only:
                # A read-only database's session refuses every write, whatever its role may do.
                options += " -c default_transaction_read_only=on"
            import psycopg  # here, not at the top: a query on SQLite never pays for it

            try:
                self._postgres = psycopg.connect(
                    self.target.conninfo,
                    connect_timeout=limits.database_connect_timeout_s,
                    options=options,
                )
            except psycopg.OperationalError as error:
                reason = connect_error_reason(error)
                raise DatabaseUnavailable(f"{self.target.describe()}: {reason}") from error
            if self.target.schema:
                with self._postgres.cursor() as cursor:
                    cursor.execute(f'SET search_path TO "{self.target.schema}"')
                self._postgres.commit()
        return self._postgres

    @contextmanager
    def _outages(self) -> Iterator[None]:
        """A lost PostgreSQL connection or a SQLite lock held too long: DatabaseUnavailable."""
        try:
            yield
        except sqlite3.OperationalError as error:
            if not _sqlite_busy(error):
                raise
            raise DatabaseUnavailable(f"{self.target.describe()}: {error}") from error
        except Exception as error:
            if not is_psycopg_error(error, "OperationalError"):
                raise
            self._drop_postgres()
            raise DatabaseUnavailable(f"{self.target.describe()}: {error}") from error

    @contextmanager
    def transaction(self) -> Iterator[Cursor]:
        """A write transaction: committed when the block ends, rolled back if it raises."""
        if self.read_only:
            raise ReadOnlyDatabase(f"{self.target.describe()} was opened read-only")
        with self._outages():
            if self.kind == "sqlite":
                connection = self._connect_sqlite()
                cursor = connection.cursor()
                cursor.execute("BEGIN IMMEDIATE")
                try:
                    yield _SQLiteCursor(cursor)
                    connection.commit()
                except BaseException:
                    if connection.in_transaction:
                        connection.rollback()
                    raise
            else:
                postgres = self._connect_postgres()
                with postgres.transaction(), postgres.cursor() as pg_cursor:
                    yield pg_cursor

    @contextmanager
    def read(self) -> Iterator[Cursor]:
        """A read-only snapshot (one transaction) for consistent queries."""
        with self._outages():
            if self.kind == "sqlite":
                connection = self._connect_sqlite()
                cursor = connection.cursor()
                cursor.execute("BEGIN")
                try:
                    yield _SQLiteCursor(cursor)
                finally:
                    connection.rollback()
            else:
                postgres = self._connect_postgres()
                with postgres.transaction(), postgres.cursor() as pg_cursor:
                    pg_cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    yield pg_cursor

    def query(self, read: Callable[[Cursor], T]) -> T:
        """Run `read` in one read-only snapshot and return its answer."""
        if self.read_only and self.kind == "sqlite":
            return self._query_sqlite_file(read)
        with self.read() as cursor:
            return read(cursor)

    def has_tables(self, cursor: Cursor, names: Sequence[str]) -> bool:
        """Whether every named table exists (PostgreSQL names may be schema-qualified)."""
        if not names:
            return True
        if self.kind == "postgresql":
            cursor.execute(
                "SELECT count(*) FROM unnest(%s::text[]) AS wanted (name)"
                " WHERE to_regclass(name) IS NOT NULL",
                (list(names),),
            )
        else:
            cursor.execute(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table'"
                f" AND name IN ({', '.join(['%s'] * len(names))})",
                names,
            )
        return int(cursor.fetchone()[0]) == len(set(names))

    def _query_sqlite_file(self, read: Callable[[Cursor], T]) -> T:
        """`query` on a SQLite file opened read-only, leaving it and its WAL files as they were.

        Opened plainly read-only, SQLite creates the `-wal` and `-shm` files of a WAL database
        that nobody has open, and leaves them. So when nobody has it open (no `-wal`), the file
        is read as immutable (the WAL files untouched), and the answer kept only if the file is
        still unchanged after the read: a writer that came meanwhile means another try, which
        then goes through the writer's WAL. With a `-wal` present, the plain read-only
        connection uses it as any reader does (SQLite may update the `-shm` index, never the
        database or the log).
        """
        path = self.target.sqlite_path
        if path is None:
            raise ValueError(f"no SQLite path in {self.target.describe()}")
        for _ in range(limits.sqlite_quiescent_read_attempts_max):
            quiescent = _sqlite_quiescent_state(path)
            if quiescent is not None:
                uri: str | None = f"{path.as_uri()}?mode=ro&immutable=1"
            elif path.exists():
                uri = f"{path.as_uri()}?mode=ro"
            else:
                uri = None  # not created yet: read as an empty database, create nothing
            with self._outages():
                connection = sqlite3.connect(
                    uri or ":memory:",
                    uri=uri is not None,
                    isolation_level=None,
                    timeout=limits.sqlite_busy_timeout_s,
                )
                try:
                    cursor = connection.cursor()
                    cursor.execute("BEGIN")
                    try:
                        answer = read(_SQLiteCursor(cursor))
                    except Exception:
                        if quiescent is None or _sqlite_quiescent_state(path) == quiescent:
                            raise
                        continue
                    finally:
                        connection.rollback()
                finally:
                    connection.close()
            if quiescent is None or _sqlite_quiescent_state(path) == quiescent:
                return answer
        raise DatabaseUnavailable(
            f"{self.target.describe()} changed during each of"
            f" {limits.sqlite_quiescent_read_attempts_max} reads"
        )

    def _drop_postgres(self) -> None:
        if self._postgres is not None:
            self._postgres.close()
            self._postgres = None

    def close(self) -> None:
        """Close the connection."""
        if self._sqlite is not None:
            self._sqlite.close()
            self._sqlite = None
        self._drop_postgres()
