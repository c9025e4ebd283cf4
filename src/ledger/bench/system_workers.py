"""The system phase's own worker processes: the publisher, and the baseline's relay and projection.

`publisher` sends the run's lines to a topic as fast as one producer can, on request. The
baseline's relay and projection are the ledger's relay and projection with no domain: they tail
the sequenced rows the baseline consumer writes (`baseline_ddl(kind, sequenced=True)`) in id
order, in batches of `limits.notification_batch_max`, idling `limits.projection_idle_poll_s` when
they are not behind, exactly as `ledger.tailing.run_tails` does. The relay produces
`messages_per_event` messages a row (the ledger's own count of messages per inbound event) with
the relay's seven CloudEvents headers and producer, flushing per batch, then records its
position; the projection upserts one row per row read with its position in the same transaction.
With `source` "events" both tail the event store's log instead (the no-domain ingest's events,
keyed by their aggregate's id): the system phase's run of the ingest with no domain.
"""

from __future__ import annotations

import select
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from ledger import limits
from ledger.bench.worker import BASELINE_POSITIONS_TABLE, BASELINE_ROWS_TABLE, baseline_row_id
from ledger.bench.workload import InboundLine, publish, read_lines
from ledger.kafka.clients import ResilientProducer, check_crc32c, make_producer
from ledger.persistence.database import Cursor, Database
from ledger.persistence.head import events_table, notification_id_column
from ledger.persistence.urls import parse_database_url

BASELINE_VIEW_TABLE = "bench_baseline_view"
BASELINE_RELAY_POSITION = "relay"
BASELINE_PROJECTION_POSITION = "projection"
CLOUDEVENT_HEADER_NAMES = (
    "ce_id",
    "ce_type",
    "ce_source",
    "ce_time",
    "ce_specversion",
    "ce_sequence",
    "content-type",
)
"""The headers of every message the relay sends (`ledger.public_events.cloudevent_headers`)."""
STDIN_WAIT_S = 0.1
"""How often the publisher, waiting for its go, checks for a stop request."""


def baseline_view_ddl(kind: str) -> str:
    """The baseline projection's table: one row per key, upserted for each row read."""
    blob = "BYTEA" if kind == "postgresql" else "BLOB"
    return (
        f"CREATE TABLE IF NOT EXISTS {BASELINE_VIEW_TABLE} (record_key {blob} PRIMARY KEY,"
        " last_row_id BIGINT NOT NULL, rows_seen BIGINT NOT NULL)"
    )


def baseline_headers(
    key: bytes, row_id: int, copy: int, occurred_at: bytes
) -> list[tuple[str, bytes]]:
    """The baseline relay's headers: the relay's seven, with values of the same shape."""
    values = (
        b"%s:%d:%d" % (key, row_id, copy),
        b"ledger.bench_baseline",
        b"ledger",
        occurred_at,
        b"1.0",
        f"{row_id:020d}".encode(),
        b"application/json",
    )
    return list(zip(CLOUDEVENT_HEADER_NAMES, values, strict=True))


def say(line: str) -> None:
    """One line to the driver, at once."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def wait_for_go(stop: threading.Event) -> bool:
    """Block until the driver writes a line to stdin; False on a stop or a closed stdin."""
    while not stop.is_set():
        readable, _, _ = select.select([sys.stdin], [], [], STDIN_WAIT_S)
        if readable:
            return bool(sys.stdin.readline().strip())
    return False


def run_publisher(config: dict[str, Any], stop: threading.Event) -> None:
    """Send a warm-up line, say `ready`, and on `go` send every line as fast as possible.

    Prints `started <monotonic s>` just before the first send and `done <ends>` once every line
    is acknowledged (acks=all), then waits for the stop so that its CPU time can still be read.
    """
    check_crc32c()
    bootstrap: str = config["bootstrap"]
    topic: str = config["topic"]
    lines = read_lines(Path(config["lines_path"]))
    warmup = InboundLine(config["warmup_key"].encode(), config["warmup_value"].encode())
    producer = make_producer(bootstrap, client_id="ledger-bench-publisher")
    try:
        publish(bootstrap, topic, [warmup], producer=producer)
        say("ready")
        if not wait_for_go(stop):
            return
        say(f"started {time.monotonic()!r}")
        ends = publish(bootstrap, topic, lines, producer=producer)
        say("done " + orjson.dumps(sorted(ends.items())).decode())
        stop.wait()
    finally:
        producer.close(timeout=limits.producer_close_timeout_s)


def _row_select(database: Database, source: str) -> str:
    """The statement reading the next rows after a position, in id order: of the baseline's
    sequenced rows (`source` "rows"), or of the event store's log ("events": the no-domain
    ingest's events, each keyed by its aggregate's id, its state as the value)."""
    if source == "events":
        table = events_table(database.target)
        row_id = notification_id_column(database.kind)
        key, value = "originator_id", "state"
    else:
        table, row_id = BASELINE_ROWS_TABLE, baseline_row_id(database.kind)
        key, value = "record_key", "record_value"
    return (
        f"SELECT {row_id}, {key}, {value} FROM {table}"
        f" WHERE {row_id} > %s ORDER BY {row_id} LIMIT %s"
    )


def _as_bytes(value: object) -> bytes:
    """A column read as bytes (a BLOB or BYTEA as is, a text or a uuid as its UTF-8 text)."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return b"" if value is None else str(value).encode()


class _RowTail:
    """Reads sequenced rows after a position, in id order, a batch at a time."""

    def __init__(self, database: Database, position_name: str, source: str = "rows") -> None:
        self.database = database
        self.position_name = position_name
        self.select = _row_select(database, source)
        self.upsert_position = (
            f"INSERT INTO {BASELINE_POSITIONS_TABLE} (name, position) VALUES (%s, %s)"
            " ON CONFLICT (name) DO UPDATE SET position = excluded.position"
        )
        with database.read() as cursor:
            cursor.execute(
                f"SELECT position FROM {BASELINE_POSITIONS_TABLE} WHERE name = %s",
                (position_name,),
            )
            row = cursor.fetchone()
        self.position = int(row[0]) if row else 0

    def page(self) -> list[tuple[int, bytes, bytes]]:
        """The next rows after the position (at most `limits.notification_batch_max`)."""
        with self.database.read() as cursor:
            cursor.execute(self.select, (self.position, limits.notification_batch_max))
            rows = cursor.fetchall()
        return [(int(row_id), _as_bytes(key), _as_bytes(value)) for row_id, key, value in rows]

    def record(self, cursor: Cursor, rows: list[tuple[int, bytes, bytes]]) -> None:
        """Write the position after `rows` in the open transaction."""
        cursor.execute(self.upsert_position, (self.position_name, rows[-1][0]))

    def run(self, stop: threading.Event, handle: Any) -> None:
        """Hand each page to `handle` until stopped; idle as the ledger's tailing does."""
        say("ready")
        while not stop.is_set():
            rows = self.page()
            if rows:
                handle(rows)
                self.position = rows[-1][0]
            if len(rows) < limits.notification_batch_max:
                stop.wait(limits.projection_idle_poll_s)


def run_baseline_relay(config: dict[str, Any], stop: threading.Event) -> None:
    """The relay with no domain: each row as `messages_per_event` messages, flush per batch."""
    check_crc32c()
    database = Database(parse_database_url(config["database_url"]))
    producer = ResilientProducer(config["bootstrap"], stop=stop)
    topic: str = config["topic"]
    per_event = float(config["messages_per_event"])
    occurred_at = datetime.now(UTC).isoformat().encode()
    tail = _RowTail(database, BASELINE_RELAY_POSITION, config.get("source", "rows"))
    owed = [0.0]

    def handle(rows: list[tuple[int, bytes, bytes]]) -> None:
        for row_id, key, value in rows:
            owed[0] += per_event
            copy = 0
            while owed[0] >= 1.0:
                owed[0] -= 1.0
                copy += 1
                headers = baseline_headers(key, row_id, copy, occurred_at)
                producer.send(topic, key=key, value=value, headers=headers)
        producer.flush()
        with database.transaction() as cursor:
            tail.record(cursor, rows)

    try:
        tail.run(stop, handle)
    finally:
        producer.close()
        database.close()


def run_baseline_projection(config: dict[str, Any], stop: threading.Event) -> None:
    """The projection with no domain: one upsert per row read, the position in that commit."""
    database = Database(parse_database_url(config["database_url"]))
    upsert = (
        f"INSERT INTO {BASELINE_VIEW_TABLE} (record_key, last_row_id, rows_seen)"
        " VALUES (%s, %s, 1) ON CONFLICT (record_key) DO UPDATE SET"
        f" last_row_id = excluded.last_row_id, rows_seen = {BASELINE_VIEW_TABLE}.rows_seen + 1"
    )
    tail = _RowTail(database, BASELINE_PROJECTION_POSITION, config.get("source", "rows"))

    def handle(rows: list[tuple[int, bytes, bytes]]) -> None:
        with database.transaction() as cursor:
            cursor.executemany(upsert, [(key, row_id) for row_id, key, _value in rows])
            tail.record(cursor, rows)

    try:
        tail.run(stop, handle)
    finally:
        database.close()
