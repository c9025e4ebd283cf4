"""The event store's head, read without the eventsourcing library (cheap enough for a query).

Queries use this rather than an `EventStore`, whose construction would open the SQLite file for
writing (it sets WAL mode), has no read-only form, and costs a query's whole time budget to
import. Table names follow the library's recorders (a contract test checks them).
"""

from __future__ import annotations

from ledger.persistence.database import Cursor, Database
from ledger.persistence.urls import DatabaseTarget

APPLICATION_NAME = "Ledger"
"""The eventsourcing application's name: PostgreSQL tables are `ledger_events` and so on."""


def events_table(target: DatabaseTarget) -> str:
    """The event store's table, named as the eventsourcing recorders name it."""
    if target.kind == "sqlite":
        return "stored_events"
    return f'"{target.schema or "public"}"."{APPLICATION_NAME.lower()}_events"'


def notification_id_column(kind: str) -> str:
    """The events table's column of notification ids (on SQLite the library uses the rowid)."""
    return "rowid" if kind == "sqlite" else "notification_id"


def latest_position(database: Database) -> int:
    """The event store's latest notification id (0: none yet, or no table yet)."""
    table = events_table(database.target)
    notification_id = notification_id_column(database.kind)

    def read(cursor: Cursor) -> int:
        if not database.has_tables(cursor, (table,)):
            return 0
        cursor.execute(f"SELECT MAX({notification_id}) FROM {table}")
        row = cursor.fetchone()
        return int(row[0] or 0)

    return database.query(read)
