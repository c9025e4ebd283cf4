"""End-to-end latency, as a client of the ledger sees it, with the whole ledger running.

The ledger runs as `ledger run` runs it (ingest, relay(s), projections; `ledger.bench.running`),
on a scratch database and a broker of its own. Events are published at a steady rate, and two
readers note when each one arrives where a client would see it:

- **balance visible**: a reader polls the read model's history (written in the same transaction
  as the balances) for each event's `source_event_id`, so a query would already see the balance;
- **on `ledger.events`**: a consumer of `ledger.events` (`assign()` to every partition, seeked
  to the end before the paced events, the ledger's own short `fetch_max_wait_ms`) matches each
  relayed event's `source_event_id` in its value. Beside it, `relay_sent`: publish to the relay
  handing the event to its producer (the record's CreateTime, which the producer stamps at
  `send()`; wall clock, whole milliseconds). The rest of that latency is the relay's flush, the
  broker and the reader's fetch.

The first arrival of each event's id counts (a payment may be stored as more than one event).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from ledger import limits, read_models
from ledger.bench.running import RunningLedger, running_ledger
from ledger.bench.scratch import Scratch
from ledger.bench.workload import InboundLine, LineWriter, account_name, publish
from ledger.generations import Live, read_live
from ledger.kafka.topics import LEDGER_EVENTS, PAYMENTS_INBOUND
from ledger.persistence.database import Cursor, Database

HISTORY = read_models.BALANCES.history_table
"""The balances read model's history table: it is written in the same transaction as balances."""

RATE_PER_S = 1_000
EVENTS_MIN = 200
EVENTS_MAX = 5_000
ACCOUNTS_MAX = 100
READ_INTERVAL_S = 0.002
"""How often the balance reader polls the history: a bound on how late it sees a row."""
SETTLE_TIMEOUT_S = 120.0
"""Longest wait for the ledger to start (the ingest's first group join takes about 3 s), for
the accounts to be opened, or for the paced events to arrive."""
READER_STOP_S = 5.0
"""Longest wait for a reader thread to end after the stop."""
CONSUMER_POLL_MS = 100
"""How long the `ledger.events` reader's poll waits when nothing arrives (it returns as soon as
a fetch brings records)."""

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


def summary(latencies_ms: list[float]) -> dict[str, float]:
    """p50, p99 and max of some latencies, in ms."""
    ordered = sorted(latencies_ms)
    return {
        "p50_ms": round(percentile(ordered, 0.50), 1),
        "p99_ms": round(percentile(ordered, 0.99), 1),
        "max_ms": round(ordered[-1], 1) if ordered else 0.0,
    }


class _Reader:
    """A thread noting when each sent event id first arrives somewhere."""

    def __init__(self, name: str, sent_at: dict[str, float]) -> None:
        self.sent_at = sent_at
        self.latencies_ms: dict[str, float] = {}
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def arrived(self, event_id: object, now: float) -> bool:
        """Note an arrival of `event_id`; True if it is the first of a sent id (which counts)."""
        if not isinstance(event_id, str) or event_id in self.latencies_ms:
            return False
        sent = self.sent_at.get(event_id)
        if sent is None:
            return False
        self.latencies_ms[event_id] = (now - sent) * 1000
        return True

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                self.poll()
        except BaseException as error:  # reported by the main thread
            self.error = error
        finally:
            self.close()

    def poll(self) -> None:
        """Look once for new arrivals."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the reader holds (in its own thread)."""

    def finish(self) -> None:
        """Stop the thread and raise its error, if any."""
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout=READER_STOP_S)
        if self.error is not None:
            raise self.error


class _Visibility(_Reader):
    """Polls the read model's history for new rows."""

    def __init__(self, database: Database, sent_at: dict[str, float]) -> None:
        super().__init__("bench-latency-balances", sent_at)
        self.database = database
        self.position = _max_position(database)

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
            self.arrived(orjson.loads(data).get("source_event_id"), now)
        time.sleep(READ_INTERVAL_S)

    def close(self) -> None:
        self.database.close()


class _Downstream(_Reader):
    """Consumes `ledger.events` from its end, as a downstream client would."""

    def __init__(
        self, bootstrap: str, sent_at: dict[str, float], sent_wall_ms: dict[str, float]
    ) -> None:
        super().__init__("bench-latency-ledger-events", sent_at)
        self.sent_wall_ms = sent_wall_ms
        self.relay_sent_ms: list[float] = []
        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            client_id="ledger-bench-downstream",
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=limits.fetch_max_wait_ms,
            allow_auto_create_topics=False,
        )
        partitions = [
            TopicPartition(LEDGER_EVENTS, p)
            for p in sorted(self.consumer.partitions_for_topic(LEDGER_EVENTS) or ())
        ]
        self.consumer.assign(partitions)
        self.consumer.seek_to_end(*partitions)
        for partition in partitions:
            self.consumer.position(partition)  # resolve the end now, before the paced events

    def poll(self) -> None:
        batches = self.consumer.poll(timeout_ms=CONSUMER_POLL_MS)
        now = time.monotonic()
        for records in batches.values():
            for record in records:
                event_id = orjson.loads(record.value).get("source_event_id")
                if self.arrived(event_id, now):
                    self.relay_sent_ms.append(record.timestamp - self.sent_wall_ms[event_id])

    def close(self) -> None:
        self.consumer.close(autocommit=False)


def _paced_lines(prefix: str, count: int) -> tuple[list[InboundLine], list[InboundLine]]:
    """The account openings, then `count` invoices and payments over those accounts."""
    accounts = max(1, min(ACCOUNTS_MAX, count // 4))
    writer = LineWriter(prefix)
    names = [account_name(prefix, index) for index in range(accounts)]
    paced: list[InboundLine] = []
    for index in range(count):
        name = names[index % accounts]
        if (index // accounts) % 2 == 0:
            paced.append(writer.invoice(name, f"inv-{index}", 10_000))
        else:
            paced.append(writer.payment(name, f"pay-{index}", 10_000))
    return [writer.opening(name) for name in names], paced


def measure_latency(scratch: Scratch, events: int, progress: Progress) -> dict[str, Any]:
    """Publish at 1,000 events/s to the running ledger; p50, p99 and max in ms to the balance
    being visible (top level) and to the event on `ledger.events` (`ledger_events`)."""
    count = latency_events(events)
    openings, paced = _paced_lines(f"{scratch.run_id}L", count)
    with running_ledger(scratch, "latency") as ledger:
        publish(ledger.bootstrap, PAYMENTS_INBOUND, openings)
        _wait(
            lambda: _accounts(ledger) >= len(openings) and ledger.progress().settled(),
            "accounts opened and relayed",
            ledger,
        )
        sent_at: dict[str, float] = {}
        sent_wall_ms: dict[str, float] = {}
        balance = _Visibility(Database(ledger.target), sent_at)
        downstream = _Downstream(ledger.bootstrap, sent_at, sent_wall_ms)
        readers: list[_Reader] = [balance, downstream]
        producer = KafkaProducer(
            bootstrap_servers=ledger.bootstrap,
            client_id="ledger-bench-latency",
            acks="all",
            enable_idempotence=True,
            linger_ms=0,
        )
        try:
            for reader in readers:
                reader.thread.start()
            started = time.monotonic()
            for index, line in enumerate(paced):
                due = started + index / RATE_PER_S
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                event_id = orjson.loads(line.value)["event_id"]
                sent_wall_ms[event_id] = time.time() * 1000
                sent_at[event_id] = time.monotonic()
                producer.send(PAYMENTS_INBOUND, key=line.key, value=line.value)
                if index % 100 == 0:
                    progress("latency", index, count)
            producer.flush()
            _wait(
                lambda: all(
                    len(reader.latencies_ms) >= count or reader.error is not None
                    for reader in readers
                ),
                "events visible and relayed",
                ledger,
            )
            progress("latency", count, count)
        finally:
            producer.close(timeout=1)
            for reader in readers:
                reader.stop.set()
        for reader in readers:
            reader.finish()
    return {
        **summary(list(balance.latencies_ms.values())),
        "events": len(balance.latencies_ms),
        "rate_per_s": RATE_PER_S,
        "ledger_events": {
            **summary(list(downstream.latencies_ms.values())),
            "events": len(downstream.latencies_ms),
            "relay_sent": summary(downstream.relay_sent_ms),
        },
    }


def _accounts(ledger: RunningLedger) -> int:
    assert ledger.database is not None

    def query(cursor: Cursor, live: Live) -> int:
        cursor.execute(
            f"SELECT COUNT(*) FROM {live.generation.table(read_models.BALANCES.accounts_table)}"
        )
        return int(cursor.fetchone()[0])

    return read_live(ledger.database, read_models.BALANCES.name, query)


def _max_position(database: Database) -> int:
    def query(cursor: Cursor, live: Live) -> int:
        cursor.execute(f"SELECT COALESCE(MAX(position), 0) FROM {live.generation.table(HISTORY)}")
        return int(cursor.fetchone()[0])

    return read_live(database, read_models.BALANCES.name, query)


def _wait(condition: Callable[[], bool], what: str, ledger: RunningLedger) -> None:
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while not condition():
        ledger.check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"latency: {what} not reached within {SETTLE_TIMEOUT_S:.0f} s")
        time.sleep(0.01)
