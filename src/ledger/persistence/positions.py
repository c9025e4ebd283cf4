"""Positions of the relay and the projections in the event store's log, kept in the database."""

from __future__ import annotations

from ledger.persistence.database import Cursor

POSITIONS_DDL = (
    "CREATE TABLE IF NOT EXISTS ledger_positions (name TEXT PRIMARY KEY, position BIGINT NOT NULL)"
)


def read_position(cursor: Cursor, name: str) -> int:
    """The last notification id processed under `name` (0: nothing yet)."""
    cursor.execute("SELECT position FROM ledger_positions WHERE name = %s", (name,))
    row = cursor.fetchone()
    return int(row[0]) if row else 0


def write_position(cursor: Cursor, name: str, position: int) -> None:
    """Record progress; a position never goes back except through `reset_position`."""
    cursor.execute(
        "INSERT INTO ledger_positions (name, position) VALUES (%s, %s) "
        "ON CONFLICT (name) DO UPDATE SET position = excluded.position "
        "WHERE ledger_positions.position < excluded.position",
        (name, position),
    )


def reset_position(cursor: Cursor, name: str, position: int = 0) -> None:
    """Move a position explicitly (rebuild, republish)."""
    cursor.execute("DELETE FROM ledger_positions WHERE name = %s", (name,))
    if position:
        cursor.execute(
            "INSERT INTO ledger_positions (name, position) VALUES (%s, %s)", (name, position)
        )
