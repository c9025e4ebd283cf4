"""The relay's floor: a bare kafka-python producer sending the relay's own messages, as it did.

After the system phase's timed run, and before the ledger's broker goes, a worker process reads
back every message the relay sent in the timed run (`ledger.events` and each topic of
`ledger.outbox.ROUTES`: the same keys, values, headers and partitions), in the relay's order
(by `ce_sequence`, the notification id, each event before the messages it routes). It sends
them to fresh topics of the same partition counts on the same broker with a bare `KafkaProducer`
of the relay's client settings (`ledger.relay.make_relay_producer`: idempotent, acks=all, the
same linger and batch bytes), each to its partition explicitly, and flushes per batch. The
batches are the relay's own as far as the driver saw them: the relay's position as read at each
of the driver's polls (every 50 ms) ends a batch. A poll can miss a batch's end, so these
batches are at least as large as the relay's and the bare producer's cost per message at most
its true cost: `relay_vs_bare_producer` errs high, never low.

The worker reports its process CPU time (every thread: the producer's sender thread too) from the
first send to the last flush; nothing else runs in it meanwhile. It runs once the ledger's run is
over, alone beside the idle workers, where the relay shared two busy cores with five processes:
the baseline relay's figure over the bare producer's (`baseline_relay_vs_bare_producer`) shows
how much of the relay's ratio the sharing makes.
"""

from __future__ import annotations

import bisect
import gc
import threading
import time
from dataclasses import dataclass
from typing import Any

import orjson
from kafka import TopicPartition

from ledger import limits
from ledger.bench.processes import Worker, WorkerFailed, bench_worker
from ledger.bench.scratch import Scratch
from ledger.bench.system_workers import say, wait_for_go
from ledger.kafka.clients import check_crc32c, make_consumer
from ledger.kafka.topics import LEDGER_EVENTS, ensure_topics
from ledger.outbox import ROUTES
from ledger.relay import make_relay_producer

BARE_TOPIC_PREFIX = "bench.bare."
"""The bare producer sends to `bench.bare.<source topic>`, never to the ledger's topics."""
READ_BACK_TIMEOUT_S = 120.0
"""Longest time the worker may take to read the relay's messages back from the broker."""
SEND_TIMEOUT_S = 300.0
"""Longest time the driver waits for the bare producer to send and flush every batch."""
SEQUENCE_HEADER = "ce_sequence"


def relay_topics() -> tuple[str, ...]:
    """Every topic the relay sends to: `ledger.events`, then each route's, once."""
    routed = sorted({route.topic for routes in ROUTES.values() for route in routes})
    return (LEDGER_EVENTS, *routed)


@dataclass(frozen=True)
class Outgoing:
    """One message as the relay sent it."""

    sequence: int
    topic: str
    partition: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


def _sequence(headers: list[tuple[str, bytes]]) -> int:
    for name, value in headers:
        if name == SEQUENCE_HEADER:
            return int(value)
    raise ValueError(f"a relayed message without {SEQUENCE_HEADER}")


def read_relayed(bootstrap: str, topics: tuple[str, ...], after: int) -> list[Outgoing]:
    """Every message on `topics` with a notification id above `after`, in the relay's order."""
    consumer = make_consumer(bootstrap, group_id=None, client_id="ledger-bench-bare-reader")
    try:
        assigned = [
            TopicPartition(topic, partition)
            for topic in topics
            for partition in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        consumer.assign(assigned)
        consumer.seek_to_beginning(*assigned)
        found: list[tuple[int, int, int, Outgoing]] = []
        deadline = time.monotonic() + READ_BACK_TIMEOUT_S
        while True:
            for batch in consumer.poll(timeout_ms=limits.poll_timeout_ms).values():
                for record in batch:
                    headers = list(record.headers)
                    sequence = _sequence(headers)
                    if sequence <= after:
                        continue
                    rank = 0 if record.topic == LEDGER_EVENTS else 1
                    message = Outgoing(
                        sequence, record.topic, record.partition, record.key, record.value, headers
                    )
                    found.append((sequence, rank, record.offset, message))
            highwater = [consumer.highwater(tp) for tp in assigned]
            if all(
                end is not None and consumer.position(tp) >= end
                for tp, end in zip(assigned, highwater, strict=True)
            ):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"bare producer: relayed messages not read back: {highwater}")
    finally:
        consumer.close(autocommit=False)
    found.sort(key=lambda item: item[:3])
    return [message for *_order, message in found]


def split_batches(messages: list[Outgoing], ends: list[int]) -> list[list[Outgoing]]:
    """The messages cut where the relay's position was seen: a batch ends at each of `ends`."""
    bounds = sorted(set(ends))
    batches: dict[int, list[Outgoing]] = {}
    for message in messages:
        batches.setdefault(bisect.bisect_left(bounds, message.sequence), []).append(message)
    return [batches[index] for index in sorted(batches)]


def run_bare_producer(config: dict[str, Any], stop: threading.Event) -> None:
    """Read the relay's messages back, say `ready`; on `go` send them, say `done <figures>`."""
    check_crc32c()
    bootstrap: str = config["bootstrap"]
    topics = tuple(config["topics"])
    messages = read_relayed(bootstrap, topics, int(config["after"]))
    batches = split_batches(messages, [int(end) for end in config["ends"]])
    producer = make_relay_producer(bootstrap)
    try:
        partitions = {topic: len(producer.partitions_for(topic)) for topic in topics}
        for topic, count in partitions.items():
            ensure_topics(bootstrap, count, names=(BARE_TOPIC_PREFIX + topic,))
        targets = {topic: BARE_TOPIC_PREFIX + topic for topic in topics}
        # Warm the producer (metadata, producer id) as the relay's is warm in the timed run.
        for target in targets.values():
            producer.send(target, key=b"warm-up", value=b"{}", partition=0)
        producer.flush()
        gc.collect()
        gc.freeze()  # the loaded messages are not the relay's heap: keep them out of the GC
        say("ready")
        if not wait_for_go(stop):
            return
        started_cpu_s = time.process_time()
        started_s = time.monotonic()
        for batch in batches:
            for message in batch:
                producer.send(
                    targets[message.topic],
                    key=message.key,
                    value=message.value,
                    headers=message.headers,
                    partition=message.partition,
                )
            producer.flush()
        figures = {
            "cpu_s": time.process_time() - started_cpu_s,
            "seconds": time.monotonic() - started_s,
            "messages": len(messages),
            "batches": len(batches),
        }
        say("done " + orjson.dumps(figures).decode())
        stop.wait()
    finally:
        producer.close(timeout=limits.producer_close_timeout_s)


def measure_bare_producer(
    scratch: Scratch, bootstrap: str, *, after: int, ends: list[int], events: int
) -> dict[str, Any]:
    """The bare producer's CPU for the relay's messages of the timed run (see the module)."""
    config = {
        "kind": "bare_producer",
        "bootstrap": bootstrap,
        "topics": list(relay_topics()),
        "after": after,
        "ends": sorted(set(ends)),
    }
    worker: Worker = bench_worker(
        "system-bare-producer", config, scratch.directory, interactive=True
    )
    try:
        worker.wait_ready(READ_BACK_TIMEOUT_S)
        worker.tell("go")
        line = worker.read_line(SEND_TIMEOUT_S)
        if line is None or not line.startswith(b"done "):
            raise WorkerFailed(f"{worker.name} did not finish: {worker.log_tail()}")
        figures = orjson.loads(line.removeprefix(b"done "))
    finally:
        worker.stop()
    messages, batches = int(figures["messages"]), int(figures["batches"])
    cpu_us = float(figures["cpu_s"]) * 1e6
    return {
        "cpu_us_per_event": round(cpu_us / events, 1),
        "cpu_us_per_message": round(cpu_us / messages, 1) if messages else None,
        "messages": messages,
        "batches": batches,
        "messages_per_batch": round(messages / batches, 1) if batches else None,
        "seconds": round(float(figures["seconds"]), 3),
    }
