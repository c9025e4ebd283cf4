"""A small SQL adapter for our own tables (read models, positions) on SQLite or PostgreSQL.

SQL is written once with `%s` placeholders; the SQLite adapter turns them into `?`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal, Protocol

import psycopg

from ledger import limits
from ledger.persistence.urls import DatabaseTarget


class DatabaseUnavailable(Exception):
    """The database could not be reached, refused the connection or stayed locked too long."""


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


class Database:
    """One connection to the read-model database; use from one thread."""

    def __init__(self, target: DatabaseTarget, *, sqlite_synchronous: str = "NORMAL") -> None:
        self.target = target
        self.sqlite_synchronous = sqlite_synchronous
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

        PostgreSQL gets one statement over binary arrays, one per column (`pg_types` name their
        element types), instead of a statement per row: a batch costs one round trip and one
        plan. SQLite, in the process, gets `executemany`. Rows must not repeat a conflict key.
        """
        if not rows:
            return
        names = ", ".join(columns)
        if self.kind == "postgresql":
            arrays = ", ".join(f"%b::{pg_type}[]" for pg_type in pg_types)
            cursor.execute(
                f"INSERT INTO {table} ({names}) SELECT * FROM unnest({arrays}) {suffix}",
                [list(column) for column in zip(*rows, strict=True)],
            )
        else:
            values = ", ".join(["%s"] * len(columns))
            cursor.executemany(f"INSERT INTO {table} ({names}) VALUES ({values}) {suffix}", rows)

    def _connect_sqlite(self) -> sqlite3.Connection:
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
            try:
                self._postgres = psycopg.connect(
                    self.target.conninfo, connect_timeout=limits.postgres_connect_timeout_s
                )
            except psycopg.OperationalError as error:
                raise DatabaseUnavailable(f"{self.target.describe()}: {error}") from error
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
        except psycopg.OperationalError as error:
            self._drop_postgres()
            raise DatabaseUnavailable(f"{self.target.describe()}: {error}") from error

    @contextmanager
    def transaction(self) -> Iterator[Cursor]:
        """A write transaction: committed when the block ends, rolled back if it raises."""
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
