"""The read-model database adapter: a lock held too long is a retryable outage, nothing else."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from ledger import limits
from ledger.persistence.database import Cursor, Database, DatabaseUnavailable
from ledger.persistence.urls import parse_database_url


def test_sqlite_lock_wait_is_bounded_and_retryable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "sqlite_busy_timeout_s", 0.2)
    path = tmp_path / "locked.db"
    database = Database(parse_database_url(f"sqlite:///{path}"))
    with database.transaction() as cursor:
        cursor.execute("CREATE TABLE t (n INTEGER)")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process's write lock
    try:
        with pytest.raises(DatabaseUnavailable, match="locked"), database.transaction() as cursor:
            cursor.execute("INSERT INTO t VALUES (1)")
    finally:
        holder.rollback()
        holder.close()
    # The connection is usable again once the lock is gone, and nothing half-done was kept.
    with database.transaction() as cursor:
        cursor.execute("INSERT INTO t VALUES (2)")
    with database.read() as cursor:
        cursor.execute("SELECT n FROM t")
        assert cursor.fetchall() == [(2,)]
    database.close()


def test_other_sqlite_errors_are_not_disguised_as_outages(tmp_path: Path) -> None:
    database = Database(parse_database_url(f"sqlite:///{tmp_path / 'plain.db'}"))
    with pytest.raises(sqlite3.OperationalError, match="no such table"), database.read() as cursor:
        cursor.execute("SELECT * FROM missing")
    database.close()


def _sqlite_table_of_one_row(path: Path) -> Database:
    """A SQLite file with table t holding 1, every connection to it closed; its writer."""
    writer = Database(parse_database_url(f"sqlite:///{path}"))
    with writer.transaction() as cursor:
        cursor.execute("CREATE TABLE t (n INTEGER)")
        cursor.execute("INSERT INTO t VALUES (1)")
    writer.close()
    assert not Path(f"{path}-wal").exists()
    return writer


def test_read_only_sqlite_read_is_retried_when_a_writer_arrives_during_it(tmp_path: Path) -> None:
    path = tmp_path / "quiet.db"
    writer = _sqlite_table_of_one_row(path)
    reader = Database(parse_database_url(f"sqlite:///{path}"), read_only=True)
    seen: list[list[tuple[int]]] = []

    def read(cursor: Cursor) -> list[tuple[int]]:
        cursor.execute("SELECT n FROM t ORDER BY n")
        rows = cursor.fetchall()
        seen.append(rows)
        if len(seen) == 1:  # a writer opens the file and commits while the first read runs
            with writer.transaction() as write:
                write.execute("INSERT INTO t VALUES (2)")
        return rows

    try:
        assert reader.query(read) == [(1,), (2,)]
        assert seen == [[(1,)], [(1,), (2,)]]
    finally:
        writer.close()


def test_read_only_sqlite_reads_of_a_file_that_keeps_changing_give_up(tmp_path: Path) -> None:
    path = tmp_path / "busy.db"
    writer = _sqlite_table_of_one_row(path)
    reader = Database(parse_database_url(f"sqlite:///{path}"), read_only=True)

    def read(cursor: Cursor) -> None:
        cursor.execute("SELECT n FROM t")
        with writer.transaction() as write:  # a whole writer's life during every read
            write.execute("INSERT INTO t VALUES (2)")
        writer.close()

    with pytest.raises(DatabaseUnavailable, match="changed during each of"):
        reader.query(read)
    assert not Path(f"{path}-wal").exists()


def test_insert_rows_writes_every_kind_of_value_and_upserts(database_url: str) -> None:
    database = Database(parse_database_url(database_url))
    columns = ("id", "name", "amount", "count", "flag", "note")
    pg_types = ("text", "text", "bigint", "integer", "boolean", "text")
    upsert = "ON CONFLICT (id) DO UPDATE SET amount = t_rows.amount + excluded.amount"
    try:
        with database.transaction() as cursor:
            cursor.execute("DROP TABLE IF EXISTS t_rows")
            cursor.execute(
                "CREATE TABLE t_rows (id TEXT PRIMARY KEY, name TEXT NOT NULL, amount BIGINT,"
                " count INTEGER, flag BOOLEAN, note TEXT)"
            )
            rows = [
                ("a", 'quote " back\\slash é 😀', 2**62, -7, True, None),
                ("b", "", 0, 2**31 - 1, False, '{"json": [1, 2]}'),
            ]
            database.insert_rows(cursor, "t_rows", columns, rows, pg_types=pg_types)
            database.insert_rows(
                cursor,
                "t_rows",
                columns,
                [("b", "x", 5, 0, False, None)],
                pg_types=pg_types,
                suffix=upsert,
            )
            database.insert_rows(cursor, "t_rows", columns, [], pg_types=pg_types)
        with database.read() as cursor:
            cursor.execute("SELECT * FROM t_rows ORDER BY id")
            found = [tuple(row) for row in cursor.fetchall()]
        assert [(r[0], r[1], r[2], r[3], bool(r[4]), r[5]) for r in found] == [
            ("a", 'quote " back\\slash é 😀', 2**62, -7, True, None),
            ("b", "", 5, 2**31 - 1, False, '{"json": [1, 2]}'),
        ]
        if database.kind == "postgresql":
            with (
                pytest.raises(ValueError, match="6 columns but 5 pg_types"),
                database.transaction() as cursor,
            ):
                database.insert_rows(cursor, "t_rows", columns, rows, pg_types=pg_types[:5])
    finally:
        with database.transaction() as cursor:
            cursor.execute("DROP TABLE IF EXISTS t_rows")
        database.close()
