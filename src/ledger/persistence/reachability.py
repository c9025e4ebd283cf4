"""Whether the configured database can be used, found out at once (for commands a person runs).

A person running a command wants one line saying what is wrong, not a wait for the event
store's connection pool (which says only "couldn't get a connection") or a traceback from the
file system. Workers do not check: they retry an outage with back-off until it passes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from ledger import limits
from ledger.persistence.database import DatabaseUnavailable, connect_error_reason
from ledger.persistence.urls import DatabaseTarget

if TYPE_CHECKING:
    pass


def check_database(target: DatabaseTarget, *, writing: bool) -> None:
    """Raise DatabaseUnavailable (one line) unless the database can be opened; creates nothing.

    PostgreSQL: one connection, bounded by `limits.database_connect_timeout_s`. SQLite: the
    file, if it exists, must be a readable (and, for `writing`, writable) file, and the nearest
    existing directory on its path must be a directory (writable, for `writing`). A SQLite file
    that does not exist yet is fine: a query reads it as empty, a command that writes creates it.
    """
    if target.kind == "postgresql":
        _check_postgres(target)
    else:
        try:
            _check_sqlite(target, writing=writing)
        except OSError as error:
            raise DatabaseUnavailable(
                f"{target.describe()}: {error.strerror or error}: {error.filename}"
            ) from error


def _check_postgres(target: DatabaseTarget) -> None:
    import psycopg  # here: a query on SQLite never loads the PostgreSQL driver

    try:
        connection = psycopg.connect(
            target.conninfo, connect_timeout=limits.database_connect_timeout_s
        )
    except psycopg.OperationalError as error:
        raise DatabaseUnavailable(f"{target.describe()}: {connect_error_reason(error)}") from error
    connection.close()


def _check_sqlite(target: DatabaseTarget, *, writing: bool) -> None:
    path = target.sqlite_path
    if path is None:
        raise DatabaseUnavailable(f"{target.describe()}: no file named")
    if path.exists():
        if not path.is_file():
            raise DatabaseUnavailable(f"{target.describe()}: {path} is not a file")
        wanted = os.R_OK | os.W_OK if writing else os.R_OK
        if not os.access(path, wanted):
            raise DatabaseUnavailable(
                f"{target.describe()}: no permission to {'write' if writing else 'read'} {path}"
            )
    directory = _nearest_existing(path.parent)
    if not directory.is_dir():
        raise DatabaseUnavailable(f"{target.describe()}: {directory} is not a directory")
    if writing and not os.access(directory, os.W_OK | os.X_OK):
        raise DatabaseUnavailable(
            f"{target.describe()}: no permission to create files in {directory}"
        )


def _nearest_existing(directory: Path) -> Path:
    """The directory itself if it exists, else its nearest ancestor that does."""
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    return directory
