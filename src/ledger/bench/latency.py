"""End-to-end latency: publish at a steady rate, time until the balance is in the read model.

The ingest worker and the balances projection worker run as processes; a reader polls the
read model's history (written in the same transaction as the balances) for each event's
`source_event_id`, so "visible" means a query would already see the new balance.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
from kafka import KafkaProducer

from ledger import read_models
from ledger.bench.processes import bench_worker, ledger_worker
from ledger.bench.scratch import Scratch
from ledger.bench.workload import InboundLine, LineWriter, account_name, publish
from ledger.generations import Live, read_live
from ledger.persistence.database import Cursor, Database
from ledger.persistence.urls import parse_database_url

HISTORY = read_models.BALANCES.history_table
"""The balances read model's history table: it is written in the same transaction as balances."""

RATE_PER_S = 1_000
EVENTS_MIN = 200
EVENTS_MAX = 5_000
ACCOUNTS_MAX = 100
READ_INTERVAL_S = 0.002
SETTLE_TIMEOUT_S = 60.0

Progress = Callable[[str, int, int], None]


def latency_events(events: int) -> int:
    """How many paced events a run of `events` publishes (5 s at 1,000/s for the default run)."""
    return max(EVENTS_MIN, min(EVENTS_MAX, events // 20))


def percentile(sorted_values: list[float], share: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, round(share * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]


class _Visibility:
    """Polls the read model's history for new rows and notes when each sent event appeared."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.sent_at: dict[str, float] = {}
        self.latencies_ms: list[float] = []
        self.accounts_seen = 0
        self.position = 0
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.poll()
                time.sleep(READ_INTERVAL_S)
        except BaseException as error:  # reported by the main thread
            self.error = error

    def poll(self) -> None:
        def query(cursor: Cursor, live: Live) -> list[Any]:
            cursor.execute(
                f"SELECT position, data FROM {live.generation.table(HISTORY)}"
                " WHERE position > %s ORDER BY position",
                (self.position,),
            )
            return cursor.fetchall()

        rows = read_live(self.database, read_models.BALANCES.name, query)
        now = time.monotonic()
        for position, data in rows:
            self.position = int(position)
            event_id = orjson.loads(data).get("source_event_id")
            sent = self.sent_at.get(event_id) if event_id else None
            if sent is None:
                self.accounts_seen += 1
            else:
                self.latencies_ms.append((now - sent) * 1000)


def measure_latency(scratch: Scratch, events: int, progress: Progress) -> dict[str, Any]:
    """Publish at 1,000 events/s to a running ingest and projection; p50, p99 and max in ms."""
    count = latency_events(events)
    accounts = max(1, min(ACCOUNTS_MAX, count // 4))
    topic, dlq_topic = scratch.topics("latency")
    url = scratch.database_url("latency")
    read_models.prepare(parse_database_url(url))
    writer = LineWriter(f"{scratch.run_id}L")
    names = [account_name(f"{scratch.run_id}L", index) for index in range(accounts)]
    paced: list[InboundLine] = []
    for index in range(count):
        name = names[index % accounts]
        if (index // accounts) % 2 == 0:
            paced.append(writer.invoice(name, f"inv-{index}", 10_000))
        else:
            paced.append(writer.payment(name, f"pay-{index}", 10_000))
    config = {
        "kind": "ingest",
        "database_url": url,
        "bootstrap": scratch.bootstrap,
        "topic": topic,
        "dlq_topic": dlq_topic,
        "policy": str(scratch.settings.policy) if scratch.settings.policy else None,
    }
    ingest = bench_worker("latency-ingest", config, scratch.directory)
    projection = ledger_worker("projections", url, scratch.bootstrap, scratch.directory)
    database = Database(parse_database_url(url))
    visibility = _Visibility(database)
    reader = threading.Thread(target=visibility.run, name="bench-latency-reader", daemon=True)
    producer = KafkaProducer(
        bootstrap_servers=scratch.bootstrap,
        client_id="ledger-bench-latency",
        acks="all",
        enable_idempotence=True,
        linger_ms=0,
    )
    try:
        ingest.wait_ready()
        publish(scratch.bootstrap, topic, [writer.opening(name) for name in names])
        _wait(lambda: _accounts(database) >= accounts, "accounts opened", ingest, projection)
        visibility.position = _max_position(database)
        reader.start()
        started = time.monotonic()
        for index, line in enumerate(paced):
            due = started + index / RATE_PER_S
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            event_id = orjson.loads(line.value)["event_id"]
            visibility.sent_at[event_id] = time.monotonic()
            producer.send(topic, key=line.key, value=line.value)
            if index % 100 == 0:
                progress("latency", index, count)
        producer.flush()
        _wait(
            lambda: len(visibility.latencies_ms) >= count or visibility.error is not None,
            "events visible",
            ingest,
            projection,
        )
        progress("latency", count, count)
    finally:
        visibility.stop.set()
        if reader.is_alive():
            reader.join(timeout=5)
        producer.close(timeout=1)
        ingest.stop()
        projection.stop()
        database.close()
    if visibility.error is not None:
        raise visibility.error
    ordered = sorted(visibility.latencies_ms)
    return {
        "p50_ms": round(percentile(ordered, 0.50), 1),
        "p99_ms": round(percentile(ordered, 0.99), 1),
        "max_ms": round(ordered[-1], 1) if ordered else 0.0,
        "events": len(ordered),
        "rate_per_s": RATE_PER_S,
    }


def _accounts(database: Database) -> int:
    def query(cursor: Cursor, live: Live) -> int:
        cursor.execute(
            f"SELECT COUNT(*) FROM {live.generation.table(read_models.BALANCES.accounts_table)}"
        )
        return int(cursor.fetchone()[0])

    return read_live(database, read_models.BALANCES.name, query)


def _max_position(database: Database) -> int:
    def query(cursor: Cursor, live: Live) -> int:
        cursor.execute(f"SELECT COALESCE(MAX(position), 0) FROM {live.generation.table(HISTORY)}")
        return int(cursor.fetchone()[0])

    return read_live(database, read_models.BALANCES.name, query)


def _wait(condition: Callable[[], bool], what: str, *workers: Any) -> None:
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while not condition():
        for worker in workers:
            worker.check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"latency: {what} not reached within {SETTLE_TIMEOUT_S:.0f} s")
        time.sleep(0.01)
