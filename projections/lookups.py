"""Reading back the rows a batch is about to change, a bounded number of ids per statement."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from ledger import limits
from ledger.persistence.database import Cursor, is_sqlite_cursor


def select_by_ids(
    cursor: Cursor, table: str, columns: Sequence[str], key: str, ids: Iterable[str]
) -> list[dict[str, Any]]:
    """The rows of `table` whose `key` is one of `ids`, as dicts of `columns`.

    PostgreSQL gets the ids as one array parameter: one statement text whatever their number
    (psycopg converts it once and caches it), where an `IN` list of N placeholders is a new text
    for each N. SQLite has no arrays: `IN` lists of at most `projection_lookup_ids_max` ids.
    """
    wanted = sorted(set(ids))
    found: list[dict[str, Any]] = []
    names = ", ".join(columns)
    if not wanted:
        return found
    if not is_sqlite_cursor(cursor):
        cursor.execute(f"SELECT {names} FROM {table} WHERE {key} = ANY(%s)", (wanted,))
        return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]
    for start in range(0, len(wanted), limits.projection_lookup_ids_max):
        chunk = wanted[start : start + limits.projection_lookup_ids_max]
        marks = ", ".join(["%s"] * len(chunk))
        cursor.execute(f"SELECT {names} FROM {table} WHERE {key} IN ({marks})", chunk)
        found.extend(dict(zip(columns, row, strict=True)) for row in cursor.fetchall())
    return found


def upsert_suffix(key: str, columns: Sequence[str]) -> str:
    """The ON CONFLICT clause that replaces every other column of an existing row."""
    updates = ", ".join(f"{column} = excluded.{column}" for column in columns if column != key)
    return f"ON CONFLICT ({key}) DO UPDATE SET {updates}"
