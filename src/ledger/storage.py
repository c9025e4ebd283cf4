"""Opening the ledger's storage: the event store plus the read-model database, schema included."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ledger.persistence.database import Database
from ledger.persistence.event_store import EventStore, open_event_store
from ledger.persistence.positions import POSITIONS_DDL
from ledger.persistence.relay_leases import SQLITE_LEASES_DDL
from ledger.persistence.relay_positions import CONFIGURATION_DDL
from ledger.persistence.schema_lock import schema_lock
from ledger.persistence.urls import DatabaseTarget, parse_database_url
from ledger.settings import Settings


@dataclass
class Storage:
    """The event store and a read-model connection for one database."""

    target: DatabaseTarget
    store: EventStore
    database: Database

    def close(self) -> None:
        """Close every connection."""
        self.database.close()
        self.store.close()


def prepare_schema(
    target: DatabaseTarget,
    read_model_schema: Sequence[str] = (),
    then: Callable[[Database], None] | None = None,
) -> None:
    """Create every table once, before any worker starts (workers never create tables).

    Holds the schema lock throughout, so any number of processes may prepare one database at
    once: the first creates, the others wait and find everything there. Our own tables and
    `read_model_schema` go in one transaction, so a reader sees all of them or none; `then`
    runs last, still under the lock (the read models' own preparation).
    """
    with schema_lock(target):
        store = open_event_store(target, create_table=True)
        store.close()
        database = Database(target)
        try:
            with database.transaction() as cursor:
                cursor.execute(POSITIONS_DDL)
                cursor.execute(CONFIGURATION_DDL)
                if target.kind == "sqlite":
                    cursor.execute(SQLITE_LEASES_DDL)
                for statement in read_model_schema:
                    cursor.execute(statement)
            if then is not None:
                then(database)
        finally:
            database.close()


def open_storage(settings: Settings, *, create_table: bool = False) -> Storage:
    """Open the event store and the read-model database named by the settings."""
    target = parse_database_url(settings.database_url)
    return Storage(
        target=target,
        store=open_event_store(target, create_table=create_table),
        database=Database(target),
    )
