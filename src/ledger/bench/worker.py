"""Benchmark worker processes (`python -m ledger.bench.worker CONFIG_JSON`).

`ingest` runs the real ingest consumer and service on the run's own topics; `baseline` runs the
raw pipeline the ingest is compared with: the same consumer settings, one row per message written
with `executemany`, one transaction per partition per poll, the Kafka position in that
transaction. `no_domain` runs the real ingest consumer and service with the domain taken out
(see `NoDomainService`): what is left is the ceiling any domain on top of this pipeline starts
from. The system phase's `publisher`, `baseline_relay` and `baseline_projection` are in
`ledger.bench.system_workers`. Each prints `ready` on stdout once its partitions are assigned and
seeked, and stops on SIGTERM.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import orjson
from eventsourcing.persistence import StoredEvent, Tracking
from kafka import TopicPartition

from ledger import limits
from ledger.clock import SystemClock
from ledger.domain.account import account_uuid
from ledger.gc_tuning import tune_gc_for_throughput
from ledger.ingest import HasAccount, InboundMessage, IngestService, PreparedBatch
from ledger.kafka.clients import (
    ProducerStopped,
    ResilientProducer,
    check_crc32c,
    make_consumer,
)
from ledger.logging import configure_logging
from ledger.persistence.database import Database
from ledger.persistence.event_store import open_event_store
from ledger.persistence.urls import parse_database_url
from ledger.policy_file import load_policy
from ledger.schemas.inbound import InboundEvent
from ledger.workers import ingest_consumer, install_stop_handlers

BASELINE_ROWS_TABLE = "bench_baseline_rows"
BASELINE_POSITIONS_TABLE = "bench_baseline_positions"


def baseline_ddl(kind: str, *, sequenced: bool = False) -> tuple[str, ...]:
    """Tables of the raw baseline pipeline.

    `sequenced` (the system phase) gives every row an ascending id, as the event store gives
    every event a notification id, for the baseline relay and projection to read in order: on
    SQLite the implicit rowid, on PostgreSQL a `row_id` column.
    """
    blob = "BYTEA" if kind == "postgresql" else "BLOB"
    row_id = " row_id BIGSERIAL NOT NULL UNIQUE," if sequenced and kind == "postgresql" else ""
    return (
        f"CREATE TABLE IF NOT EXISTS {BASELINE_ROWS_TABLE} (partition_id INTEGER NOT NULL,"
        f" record_offset BIGINT NOT NULL, record_key {blob}, record_value {blob},{row_id}"
        " PRIMARY KEY (partition_id, record_offset))",
        f"CREATE TABLE IF NOT EXISTS {BASELINE_POSITIONS_TABLE} (name TEXT PRIMARY KEY,"
        " position BIGINT NOT NULL)",
    )


def baseline_row_id(kind: str) -> str:
    """The column of a sequenced baseline row's id (see `baseline_ddl`)."""
    return "row_id" if kind == "postgresql" else "rowid"


def _ready() -> None:
    sys.stdout.write("ready\n")
    sys.stdout.flush()


class NoDomainService(IngestService):
    """The ingest service with no domain: parse, validate, de-duplicate, store one event per fact.

    Everything else is the real path: the consumer, dead letters, the idempotency keys and the
    Kafka position in the same transaction, and the event store's write. Each fact becomes one
    stored event: the raw message as its state (so not even an encoding is paid), the next
    version of its account; no aggregate, postings, checks or snapshots.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._versions: dict[str, int] = {}
        self._originators: dict[str, UUID] = {}
        """Each account's aggregate id, derived once, as the real path holds it in its aggregate."""

    def absent_accounts(self, facts: Iterable[HasAccount]) -> set[str]:
        """None: with no aggregates there is nothing to load or to find missing (no query)."""
        return set()

    def _record(
        self,
        batch: PreparedBatch,
        message: InboundMessage,
        fact: InboundEvent,
        absent: set[str],
        now: datetime,
    ) -> None:
        version = self._versions.get(fact.account_id, 0) + 1
        self._versions[fact.account_id] = version
        originator = self._originators.get(fact.account_id)
        if originator is None:
            originator = self._originators[fact.account_id] = account_uuid(fact.account_id)
        batch.events.append(StoredEvent(originator, version, NO_DOMAIN_TOPIC, message.value or b""))

    def encode_snapshots(self, batch: PreparedBatch) -> list[StoredEvent]:
        return []

    def commit(self, batch: PreparedBatch, tracking: Tracking) -> None:
        self.store.process_recorder.insert_events(
            batch.events, tracking=tracking, inbound_keys=batch.keys
        )


NO_DOMAIN_TOPIC = "ledger.bench.worker:NoDomainFact"


def run_ingest(config: dict[str, Any], stop: threading.Event) -> None:
    """The ledger's ingest on the benchmark topic, as `ledger.workers ingest` wires it (with
    `NoDomainService` for the `no_domain` kind)."""
    check_crc32c()
    store = open_event_store(parse_database_url(config["database_url"]))
    producer = ResilientProducer(config["bootstrap"], stop=stop)
    service_class = NoDomainService if config["kind"] == "no_domain" else IngestService
    service = service_class(
        store,
        policy=load_policy(Path(config["policy"]) if config.get("policy") else None),
        clock=SystemClock(),
    )
    consumer = ingest_consumer(
        on_assigned=_ready,
        bootstrap=config["bootstrap"],
        service=service,
        dead_letters=producer,
        group_id=None,
        stop=stop,
        topic=config["topic"],
        dlq_topic=config["dlq_topic"],
        partitions=config.get("partitions"),
    )
    tune_gc_for_throughput()
    try:
        consumer.run()
    finally:
        producer.close()
        store.close()


def run_baseline(config: dict[str, Any], stop: threading.Event) -> None:
    """The raw pipeline: consume, executemany one row per message, position in the same commit."""
    check_crc32c()
    topic: str = config["topic"]
    # The event store's durability (eventsourcing keeps SQLite's default FULL: every commit is
    # synced), not the read models' NORMAL: the baseline must promise what the ledger promises.
    database = Database(parse_database_url(config["database_url"]), sqlite_synchronous="FULL")
    consumer = make_consumer(config["bootstrap"], group_id=None, client_id="ledger-bench-baseline")
    insert_rows = (
        f"INSERT INTO {BASELINE_ROWS_TABLE} (partition_id, record_offset, record_key,"
        " record_value) VALUES (%s, %s, %s, %s)"
    )
    upsert_position = (
        f"INSERT INTO {BASELINE_POSITIONS_TABLE} (name, position) VALUES (%s, %s)"
        " ON CONFLICT (name) DO UPDATE SET position = excluded.position"
    )
    # Sequenced rows are read in id order: on PostgreSQL, ids must be committed in order, which
    # the event store gets from a table lock per write (eventsourcing's application recorder).
    lock_rows = (
        f"LOCK TABLE {BASELINE_ROWS_TABLE} IN EXCLUSIVE MODE"
        if config.get("sequenced") and database.kind == "postgresql"
        else None
    )
    try:
        partitions = config.get("partitions") or consumer.partitions_for_topic(topic)
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        positions: dict[int, int] = {}
        with database.read() as cursor:
            cursor.execute(f"SELECT name, position FROM {BASELINE_POSITIONS_TABLE}")
            stored = {str(name): int(position) for name, position in cursor.fetchall()}
        for topic_partition in assigned:
            position = stored.get(f"{topic}:{topic_partition.partition}", 0)
            positions[topic_partition.partition] = position
            consumer.seek(topic_partition, position)
        _ready()
        while not stop.is_set():
            records = consumer.poll(
                timeout_ms=limits.poll_timeout_ms, max_records=limits.poll_records_max
            )
            for topic_partition, batch in records.items():
                floor = positions[topic_partition.partition]
                rows = [
                    (record.partition, record.offset, record.key, record.value)
                    for record in batch
                    if record.offset + 1 > floor
                ]
                if not rows:
                    continue
                position = rows[-1][1] + 1
                with database.transaction() as cursor:
                    if lock_rows is not None:
                        cursor.execute(lock_rows)
                    cursor.executemany(insert_rows, rows)
                    cursor.execute(
                        upsert_position, (f"{topic}:{topic_partition.partition}", position)
                    )
                positions[topic_partition.partition] = position
    finally:
        consumer.close(autocommit=False)
        database.close()


def main(argv: list[str] | None = None) -> int:
    """Entry point of a benchmark worker process."""
    from ledger.bench import bare_producer, system_workers  # import this module: only when run

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m ledger.bench.worker CONFIG_JSON", file=sys.stderr)
        return 2
    config: dict[str, Any] = orjson.loads(args[0])
    configure_logging("json", "warning")
    stop = threading.Event()
    install_stop_handlers(stop)
    runners = {
        "ingest": run_ingest,
        "no_domain": run_ingest,
        "baseline": run_baseline,
        "publisher": system_workers.run_publisher,
        "baseline_relay": system_workers.run_baseline_relay,
        "baseline_projection": system_workers.run_baseline_projection,
        "bare_producer": bare_producer.run_bare_producer,
    }
    runner = runners.get(config["kind"])
    if runner is None:
        print(f"unknown benchmark worker {config['kind']!r}", file=sys.stderr)
        return 2
    try:
        runner(config, stop)
    except ProducerStopped:
        if not stop.is_set():
            raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
