"""The whole ledger running as `ledger run` runs it, on a scratch database and a broker of its own.

The ledger's workers use the real topic names (`payments.inbound`, `ledger.events`, ...), so the
run gets a fresh embedded broker, never the deployment's. `ledger.runner.Supervisor` starts it
all as `ledger run` does: the topics (`ensure_topics`) and the schema
(`ledger.deploy_setup.prepare_database`) first, then each worker as its own process (`python -m
ledger.workers ingest|relay|projections`, as many copies as the settings ask for) with the same
environment. The benchmark reads progress from the database: the ingest's tracking positions,
the store's head, each projection's live position and each relay's position.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import closing, contextmanager
from dataclasses import dataclass

from ledger import read_models
from ledger.bench.processes import WorkerFailed
from ledger.bench.scratch import Scratch
from ledger.generations import Live, live_positions, read_live
from ledger.kafka.broker import EmbeddedBroker
from ledger.kafka.topics import PAYMENTS_INBOUND, TopicWatcher, tracking_name
from ledger.outbox import ROUTES
from ledger.persistence.database import Cursor, Database
from ledger.persistence.event_store import EventStore, latest_position, open_event_store
from ledger.persistence.urls import parse_database_url
from ledger.runner import Supervisor

RELAY_POSITION_PREFIX = "outbox:"
"""Every relay's position in `ledger_positions` starts so (one row per relay or share)."""
WORKER_LOG_LEVEL = "error"
"""The workers log to the benchmark's stderr: errors only (every bad line of the workload is a
dead letter, logged as a warning)."""


@dataclass(frozen=True)
class Progress:
    """Where a running system stands, read from its database."""

    ingested: dict[int, int]
    """Each partition's stored ingest position (next offset) of `payments.inbound`."""
    head: int
    """The event store's last notification id."""
    projections: dict[str, int]
    relays: dict[str, int]

    def settled(self) -> bool:
        """Every stored event is in every read model and relayed by every relay."""
        return (
            self.head > 0
            and bool(self.relays)
            and all(position >= self.head for position in self.projections.values())
            and all(position >= self.head for position in self.relays.values())
        )

    def caught_up(self, ends: Mapping[int, int]) -> bool:
        """Every message up to `ends` ingested, and everything stored projected and relayed."""
        return all(self.ingested.get(p, 0) >= end for p, end in ends.items()) and self.settled()


class RunningLedger:
    """The ledger's workers under a supervisor, and the benchmark's view of their progress."""

    def __init__(
        self, scratch: Scratch, purpose: str, *, ingest_workers: int | None = None
    ) -> None:
        """Create the database and start the broker; `start()` starts the ledger on them.

        `ingest_workers` overrides the settings' `LEDGER_INGEST_WORKERS`.
        """
        self.scratch = scratch
        self.database_url = scratch.database_url(purpose)
        self.target = parse_database_url(self.database_url)
        self.broker: EmbeddedBroker = scratch.private_broker(purpose)
        self.bootstrap = self.broker.bootstrap
        update: dict[str, object] = {
            "database_url": self.database_url,
            "kafka_bootstrap": self.bootstrap,
        }
        if ingest_workers is not None:
            update["ingest_workers"] = ingest_workers
        settings = scratch.settings.model_copy(update=update)
        self.supervisor = Supervisor(
            settings,
            extra_env={"LEDGER_LOG_FORMAT": "json", "LEDGER_LOG_LEVEL": WORKER_LOG_LEVEL},
        )
        self.database: Database | None = None
        self.store: EventStore | None = None
        self._tracking_names: dict[int, str] = {}

    def start(self) -> None:
        """Prepare topics and schema, start every worker (see the module)."""
        self.supervisor.start()
        self.database = Database(self.target)
        self.store = open_event_store(self.target)

    def pids(self) -> dict[str, list[int]]:
        """Process ids of the workers by kind (`ingest`, `relay`, `projections`) and the broker."""
        found: dict[str, list[int]] = {}
        for name, child in self.supervisor.children.items():
            found.setdefault(name.split("-", 1)[0], []).append(child.process.pid)
        if self.broker.pid is not None:
            found["broker"] = [self.broker.pid]
        return found

    def check(self) -> None:
        """Raise if a worker exited (the benchmark does not restart them; their logs are on
        stderr)."""
        for name, child in self.supervisor.children.items():
            code = child.process.poll()
            if code is not None:
                raise WorkerFailed(f"ledger worker {name} exited with {code} (see its log above)")

    def progress(self) -> Progress:
        """Where ingest, store, projections and relays stand now (read in that order)."""
        assert self.database is not None and self.store is not None
        ingested = self._ingested()
        head = latest_position(self.database)
        projections = live_positions(self.database, read_models.names())
        with self.database.read() as cursor:
            cursor.execute(
                "SELECT name, position FROM ledger_positions WHERE name LIKE %s",
                (RELAY_POSITION_PREFIX + "%",),
            )
            relays = {str(name): int(position) for name, position in cursor.fetchall()}
        return Progress(ingested, head, projections, relays)

    def _ingested(self) -> dict[int, int]:
        assert self.store is not None
        if not self._tracking_names:
            with closing(TopicWatcher(self.bootstrap)) as watcher:
                info = watcher.describe(PAYMENTS_INBOUND)
            if info is None or info.topic_id is None:
                return {}
            self._tracking_names = {
                p: tracking_name(PAYMENTS_INBOUND, info.topic_id, p) for p in info.partitions
            }
        recorder = self.store.process_recorder
        return {p: recorder.max_tracking_id(name) or 0 for p, name in self._tracking_names.items()}

    def published_messages(self) -> int:
        """Messages the relays send for everything stored: one per event on `ledger.events`,
        plus what `ledger.outbox.ROUTES` sends besides (counted from the history read model)."""
        assert self.database is not None

        def query(cursor: Cursor, live: Live) -> Counter[str]:
            table = live.generation.table(read_models.BALANCES.history_table)
            cursor.execute(f"SELECT type, COUNT(*) FROM {table} GROUP BY type")
            return Counter({str(kind): int(count) for kind, count in cursor.fetchall()})

        by_type = read_live(self.database, read_models.BALANCES.name, query)
        return sum(count * (1 + len(ROUTES.get(kind, ()))) for kind, count in by_type.items())

    def close(self) -> None:
        """Stop the workers and the broker; close the benchmark's connections."""
        try:
            self.supervisor.stop()
        finally:
            if self.store is not None:
                self.store.close()
            if self.database is not None:
                self.database.close()
            self.scratch.stop_private_broker(self.broker)


@contextmanager
def running_ledger(
    scratch: Scratch, purpose: str, *, ingest_workers: int | None = None
) -> Iterator[RunningLedger]:
    """The ledger running on a scratch database `purpose` and a broker of its own."""
    ledger = RunningLedger(scratch, purpose, ingest_workers=ingest_workers)
    try:
        ledger.start()
        yield ledger
    finally:
        ledger.close()
