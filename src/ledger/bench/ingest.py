"""Ingest throughput: the real ingest worker against the raw batched pipeline, same messages."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass
from typing import Any

from ledger import read_models
from ledger.bench.memory import MemorySampler
from ledger.bench.processes import Worker, bench_worker
from ledger.bench.scratch import Scratch
from ledger.bench.worker import BASELINE_POSITIONS_TABLE, baseline_ddl
from ledger.bench.workload import Workload, publish
from ledger.kafka.topics import TopicWatcher, tracking_name
from ledger.persistence.database import Database
from ledger.persistence.event_store import open_event_store
from ledger.persistence.urls import parse_database_url

POLL_INTERVAL_S = 0.05
"""How often the stored positions are read to see whether a run is done. Each check costs the
database under test a query per partition, so it stays rare (about 80 queries/s for 4
partitions); a run's end is seen within 50 ms, under 3% of the shortest run at 100,000 events."""
MEMORY_INTERVAL_S = 0.1
BASELINE_RUNS = 3
"""The raw baseline is the shortest run of the phase (about a second at 100,000 events), so the
noisiest: two runs of the same commit on one machine read 86,000 and 105,000 events/s. It runs
this many times and its median is the ratio's denominator (every run is in the JSON)."""
TIMEOUT_FLOOR_S = 120.0
TIMEOUT_PER_EVENT_S = 0.002

Progress = Callable[[str, int, int], None]
"""Reports (phase, done, total)."""


@dataclass
class IngestRun:
    """What the ingest phase measured, and where its event store is (the rebuild reuses it)."""

    result: dict[str, Any]
    memory: dict[str, float]
    database_url: str


def _drive(
    workers: Sequence[Worker],
    positions: Callable[[], dict[int, int]],
    ends: dict[int, int],
    *,
    label: str,
    progress: Progress,
    sampler: MemorySampler | None = None,
) -> float:
    """Wait until every partition's stored position reaches its end; return the seconds taken."""
    total = sum(ends.values())
    started = max(worker.wait_ready() for worker in workers)
    deadline = started + TIMEOUT_FLOOR_S + TIMEOUT_PER_EVENT_S * total
    next_sample = started
    while True:
        now = time.monotonic()
        current = positions()
        done = sum(min(current.get(p, 0), end) for p, end in ends.items())
        if all(current.get(p, 0) >= end for p, end in ends.items()):
            elapsed = now - started
            if sampler is not None:
                sampler.sample(1.0)
            progress(label, total, total)
            return elapsed
        if sampler is not None and now >= next_sample:
            sampler.sample(done / total if total else 1.0)
            next_sample = now + MEMORY_INTERVAL_S
        progress(label, done, total)
        for worker in workers:
            worker.check()
        if now > deadline:
            raise TimeoutError(f"{label}: {done} of {total} messages after {now - started:.0f} s")
        time.sleep(POLL_INTERVAL_S)


def split_partitions(partitions: Sequence[int], workers: int) -> list[list[int]]:
    """The partitions each of `workers` processes reads (round robin; none left empty)."""
    count = max(1, min(workers, len(partitions)))
    ordered = sorted(partitions)
    return [ordered[n::count] for n in range(count)]


def _start(
    name: str, config: dict[str, Any], shares: list[list[int]], scratch: Scratch
) -> list[Worker]:
    started: list[Worker] = []
    try:
        for n, share in enumerate(shares, start=1):
            started.append(
                bench_worker(f"{name}-{n}", {**config, "partitions": share}, scratch.directory)
            )
    except BaseException:
        _stop(started)
        raise
    return started


def _stop(workers: Sequence[Worker]) -> None:
    for worker in workers:
        worker.stop()


def measure_ingest(
    scratch: Scratch,
    workload: Workload,
    progress: Progress,
    *,
    workers: int = 1,
    no_domain: bool = True,
) -> IngestRun:
    """Publish the workload to a fresh topic, then time the baseline and the ledger reading it.

    Both run as `workers` processes, each reading its share of the partitions. With `no_domain`
    the ingest pipeline with its domain taken out reads the same topic too, on a database of
    its own: the ceiling of the ratio for any domain on top of this pipeline.
    """
    topic, dlq_topic = scratch.topics("ingest")
    total = len(workload.lines)
    ends = publish(
        scratch.bootstrap,
        topic,
        workload.lines,
        progress=lambda done: progress("publishing", done, total),
    )
    shares = split_partitions(list(ends), workers)
    baseline_runs = [
        _run_baseline(scratch, f"baseline_{n}", topic, ends, shares, progress)
        for n in range(1, BASELINE_RUNS + 1)
    ]
    baseline_s = statistics.median(baseline_runs)
    with closing(TopicWatcher(scratch.bootstrap)) as watcher:
        topic_id = watcher.topic_id(topic) or "unknown"
    config = {
        "bootstrap": scratch.bootstrap,
        "topic": topic,
        "dlq_topic": dlq_topic,
        "policy": str(scratch.settings.policy) if scratch.settings.policy else None,
    }
    ingest_url = scratch.database_url("ingest")
    sampler = MemorySampler([])
    ingest_s = _run_pipeline(
        "ingest", ingest_url, config, topic_id, ends, shares, scratch, progress, sampler
    )
    baseline_per_s = total / baseline_s
    ingest_per_s = total / ingest_s
    result: dict[str, Any] = {
        "events_per_s": round(ingest_per_s),
        "baseline_per_s": round(baseline_per_s),
        "ratio": round(ingest_per_s / baseline_per_s, 3),
        "seconds": round(ingest_s, 3),
        "baseline_seconds": round(baseline_s, 3),
        "baseline_runs_seconds": [round(seconds, 3) for seconds in baseline_runs],
        "messages": total,
        "workers": len(shares),
    }
    if no_domain:
        url = scratch.database_url("no_domain")
        no_domain_s = _run_pipeline(
            "no_domain", url, config, topic_id, ends, shares, scratch, progress, None
        )
        result["no_domain"] = {
            "events_per_s": round(total / no_domain_s),
            "baseline_per_s": round(baseline_per_s),
            "ratio": round(baseline_s / no_domain_s, 3),
            "seconds": round(no_domain_s, 3),
        }
    return IngestRun(result=result, memory=sampler.report(), database_url=ingest_url)


def _run_pipeline(
    kind: str,
    database_url: str,
    config: dict[str, Any],
    topic_id: str,
    ends: dict[int, int],
    shares: list[list[int]],
    scratch: Scratch,
    progress: Progress,
    sampler: MemorySampler | None,
) -> float:
    """Run the `kind` ingest workers on a fresh event store until they reach the ends; seconds."""
    target = parse_database_url(database_url)
    read_models.prepare(target)
    store = open_event_store(target)
    names = {p: tracking_name(config["topic"], topic_id, p) for p in ends}
    recorder = store.process_recorder

    def positions() -> dict[int, int]:
        return {p: recorder.max_tracking_id(name) or 0 for p, name in names.items()}

    started = _start(kind, {**config, "kind": kind, "database_url": database_url}, shares, scratch)
    try:
        if sampler is not None:
            sampler.pids.extend(worker.pid for worker in started)
        label = "ingest" if kind == "ingest" else "ingest, no domain"
        return _drive(started, positions, ends, label=label, progress=progress, sampler=sampler)
    finally:
        _stop(started)
        store.close()


def _run_baseline(
    scratch: Scratch,
    purpose: str,
    topic: str,
    ends: dict[int, int],
    shares: list[list[int]],
    progress: Progress,
) -> float:
    url = scratch.database_url(purpose)
    database = Database(parse_database_url(url))
    try:
        with database.transaction() as cursor:
            for statement in baseline_ddl(database.kind):
                cursor.execute(statement)

        def positions() -> dict[int, int]:
            with database.read() as cursor:
                cursor.execute(f"SELECT name, position FROM {BASELINE_POSITIONS_TABLE}")
                rows = cursor.fetchall()
            return {int(str(name).rsplit(":", 1)[1]): int(position) for name, position in rows}

        config = {
            "kind": "baseline",
            "database_url": url,
            "bootstrap": scratch.bootstrap,
            "topic": topic,
        }
        started = _start("baseline", config, shares, scratch)
        try:
            return _drive(started, positions, ends, label="baseline", progress=progress)
        finally:
            _stop(started)
    finally:
        database.close()
