"""The event store: an eventsourcing application whose recorder also keeps tracking and keys."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.persistence import Mapper, ProcessRecorder

from ledger import limits
from ledger.persistence.head import APPLICATION_NAME, events_table, latest_position
from ledger.persistence.mapper import OrjsonMapper
from ledger.persistence.recorders import InboundKeyRecorder
from ledger.persistence.urls import DatabaseTarget

__all__ = ["APPLICATION_NAME", "EventStore", "events_table", "latest_position", "open_event_store"]


def event_store_env(target: DatabaseTarget, *, create_table: bool) -> dict[str, str]:
    """The eventsourcing environment for a database target."""
    common = {
        "CREATE_TABLE": "y" if create_table else "n",
        # Loads start from the latest snapshot (the ingest takes them); see ingest.py.
        "IS_SNAPSHOTTING_ENABLED": "y",
        # Empty means no repository cache ("0" would mean an unbounded one); the ingest keeps
        # its own bounded cache (limits.aggregate_cache_max).
        "AGGREGATE_CACHE_MAXSIZE": "",
    }
    if target.kind == "sqlite":
        return {
            **common,
            "PERSISTENCE_MODULE": "ledger.persistence.recorders:LedgerSQLiteFactory",
            "SQLITE_DBNAME": str(target.sqlite_path),
            "SQLITE_LOCK_TIMEOUT": str(int(limits.sqlite_busy_timeout_s)),
        }
    return {
        **common,
        "PERSISTENCE_MODULE": "ledger.persistence.recorders:LedgerPostgresFactory",
        "POSTGRES_DBNAME": target.dbname,
        "POSTGRES_HOST": target.host,
        "POSTGRES_PORT": str(target.port),
        "POSTGRES_USER": target.user,
        "POSTGRES_PASSWORD": target.password,
        "POSTGRES_SCHEMA": target.schema,
        "POSTGRES_CONNECT_TIMEOUT": str(limits.database_connect_timeout_s),
        "POSTGRES_LOCK_TIMEOUT": str(limits.postgres_lock_timeout_s),
        "POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT": str(
            limits.postgres_idle_in_transaction_timeout_s
        ),
        "POSTGRES_POOL_SIZE": str(limits.postgres_pool_size),
        "POSTGRES_MAX_OVERFLOW": str(limits.postgres_pool_overflow_max),
        # No round trip to test a pooled connection before each use (one per batch for the
        # keys, one per commit: 15% of the isolated ingest). A connection the server dropped
        # fails its next statement instead, which the library's retries (writes, the log's
        # reads) and the workers' batch back-off redo on a fresh connection (the PostgreSQL
        # restart test in tests/faults covers it).
        "POSTGRES_PRE_PING": "n",
    }


class EventStore(Application[UUID]):
    """The ledger's event store; its recorder writes tracking and inbound keys with the events."""

    name = APPLICATION_NAME

    def __init__(self, env: Mapping[str, str]) -> None:
        super().__init__(env=env)
        if self.snapshots is not None:
            # The ingest writes an account's snapshot in the transaction of its events.
            self.key_recorder.write_snapshots_to(self.snapshots.recorder.events_table_name)  # type: ignore[attr-defined]

    def construct_recorder(self) -> ProcessRecorder:
        """A process recorder, so tracking is written in the events' transaction."""
        return self.factory.process_recorder()

    def construct_mapper(self) -> Mapper[UUID]:
        """The orjson mapper (clean public JSON in the store, fast)."""
        return OrjsonMapper(transcoder=self.construct_transcoder())

    @property
    def process_recorder(self) -> ProcessRecorder:
        """The recorder, typed as the process recorder it is."""
        recorder = self.recorder
        if not isinstance(recorder, ProcessRecorder):
            raise TypeError(f"the event store needs a process recorder, got {type(recorder)}")
        return recorder

    def close(self) -> None:
        """Stop the recorder's background work, then close the connections."""
        recorder: Any = self.recorder
        if isinstance(recorder, InboundKeyRecorder):
            recorder.stop_background_work()
        super().close()

    @property
    def key_recorder(self) -> InboundKeyRecorder:
        """The recorder, typed for inbound idempotency keys."""
        recorder: Any = self.recorder
        if not isinstance(recorder, InboundKeyRecorder):
            raise TypeError(f"the event store needs an inbound-key recorder, got {type(recorder)}")
        return recorder


def open_event_store(target: DatabaseTarget, *, create_table: bool = False) -> EventStore:
    """Construct the event store for a database target.

    With `create_table` (the schema's preparation, before any worker starts) a SQLite file's
    directory is created if missing, as the read models' database creates it: SQLite creates a
    file, not its directory, and `ledger run` on a new path would retry, then exit.
    """
    if create_table and target.kind == "sqlite" and target.sqlite_path is not None:
        target.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
    return EventStore(env=event_store_env(target, create_table=create_table))
