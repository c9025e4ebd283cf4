"""The read-model database adapter: a lock held too long is a retryable outage, nothing else."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from ledger import limits
from ledger.persistence.database import Database, DatabaseUnavailable
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
