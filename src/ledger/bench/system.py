"""The system phase: the whole ledger as `ledger run` runs it, fed as fast as a client can.

The ledger's ingest, relay(s) and projections run as `ledger run` starts them
(`ledger.bench.running`), on a scratch database and a broker of their own. A publisher process
sends the run's lines to `payments.inbound` as fast as one producer can while they run. The run
is timed from the first publish until every line is ingested, every stored event is in every
read model and every relay has passed the last stored event; events/s counts the lines
published. Each process's CPU (user + system, from the operating system) is read when the
publishing starts and when the run is done, and reported per line published.

The baseline runs the same stages with no domain, as processes of the same shape, on a fresh
broker and database of its own, timed the same way: a consumer writing one row per message and
its position per partition batch (`run_baseline`, with row ids in commit order); a relay tailing
those rows in order and producing, per row, as many messages as the ledger's relays sent per
line in the ledger's run, with the same headers, producer and flush per batch; a projection
upserting one row per row read with its position in the same transaction.

The ledger's ingest with its domain taken out runs once too, between the two baseline runs
(`BaselineSystem(ingest="no_domain")`): a system of the baseline's shape whose consumer is the
ledger's ingest consumer and service without the domain, its relay and projection tailing the
event store's log. What its consumer costs an event over the baseline's is what the ingest's
parsing, de-duplication and event store take of the ingest's 2x target before any domain.

The relay's floor is measured in the same run too (`ledger.bench.bare_producer`): a bare
kafka-python producer of the relay's settings sending the relay's own messages of the timed run,
in its batches, each to its partition; `relay_vs_bare_producer` is the relay's CPU per event over
the bare producer's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from ledger import read_models
from ledger.bench.bare_producer import measure_bare_producer
from ledger.bench.cpu import CpuMeter, per_event_us
from ledger.bench.ingest import TIMEOUT_FLOOR_S, TIMEOUT_PER_EVENT_S, split_partitions
from ledger.bench.processes import Worker, WorkerFailed, bench_worker
from ledger.bench.running import Progress as SystemProgress
from ledger.bench.running import running_ledger
from ledger.bench.scratch import Scratch
from ledger.bench.system_workers import (
    BASELINE_PROJECTION_POSITION,
    BASELINE_RELAY_POSITION,
    baseline_view_ddl,
)
from ledger.bench.worker import (
    BASELINE_POSITIONS_TABLE,
    BASELINE_ROWS_TABLE,
    baseline_ddl,
    baseline_row_id,
)
from ledger.bench.workload import (
    InboundLine,
    LineWriter,
    Workload,
    account_name,
    write_lines,
)
from ledger.kafka.topics import (
    PAYMENTS_INBOUND,
    TopicWatcher,
    dead_letter_topic,
    ensure_topics,
    tracking_name,
)
from ledger.persistence.database import Database
from ledger.persistence.event_store import EventStore, latest_position, open_event_store
from ledger.persistence.urls import parse_database_url

Progress = Callable[[str, int, int], None]
"""Reports (phase, done, total)."""

POLL_INTERVAL_S = 0.05
"""How often the driver reads the positions to see whether a run is done: a few queries on the
database under test each time (about 100/s). The end is seen within 50 ms; at the default
100,000 events a run lasts several seconds, so under 2% of it."""
SETTLE_TIMEOUT_S = 120.0
"""Longest wait for the warm-up line to go all the way through (the ingest's first consumer
group join takes about 3 s on the embedded broker; process start-ups a few seconds more)."""
START_LINE_TIMEOUT_S = 10.0
"""Longest wait for the publisher to report its first send after the go."""
BASELINE_INBOUND_TOPIC = "bench.baseline.inbound"
BASELINE_EVENTS_TOPIC = "bench.baseline.events"
ROLES = ("ingest", "relay", "projections", "scheduler", "broker", "publisher")
"""The processes whose CPU is reported (plus `postgres` on PostgreSQL); the baseline has no
scheduler (0)."""


class _System(Protocol):
    """A running pipeline under test: the ledger or its baseline."""

    def pids(self) -> dict[str, list[int]]: ...

    def check(self) -> None: ...

    def progress(self) -> SystemProgress: ...


@dataclass
class TimedRun:
    """One timed run: seconds from the first publish to caught up, and each role's CPU."""

    seconds: float
    cpu_s: dict[str, float]


def _warmup_line(scratch: Scratch) -> InboundLine:
    """An account opening outside the workload, sent before the timing: it goes through every
    stage (and so shows that the ingest joined its group and every worker is up)."""
    prefix = f"{scratch.run_id}W"
    return LineWriter(prefix).opening(account_name(prefix, 0))


def _publisher(scratch: Scratch, name: str, bootstrap: str, topic: str) -> Worker:
    warmup = _warmup_line(scratch)
    config = {
        "kind": "publisher",
        "bootstrap": bootstrap,
        "topic": topic,
        "lines_path": str(scratch.directory / "system-lines.bin"),
        "warmup_key": warmup.key.decode(),
        "warmup_value": warmup.value.decode(),
    }
    return bench_worker(name, config, scratch.directory, interactive=True)


def _wait(condition: Callable[[], bool], what: str, *checks: Callable[[], None]) -> None:
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while not condition():
        for check in checks:
            check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"system: {what} not reached within {SETTLE_TIMEOUT_S:.0f} s")
        time.sleep(POLL_INTERVAL_S)


def _meter(system: _System, publisher: Worker, database_url: str) -> CpuMeter:
    roles: dict[str, list[int]] = {role: [] for role in ROLES}
    roles.update(system.pids())
    roles["publisher"] = [publisher.pid]
    target = parse_database_url(database_url)
    if target.kind == "postgresql":
        return CpuMeter(roles, postgres_database=target.dbname, postgres_port=target.port)
    return CpuMeter(roles)


def time_system(
    system: _System,
    publisher: Worker,
    *,
    events: int,
    database_url: str,
    label: str,
    progress: Progress,
    warmed_up: Callable[[], None] | None = None,
    observe: Callable[[SystemProgress], None] | None = None,
) -> TimedRun:
    """Warm up, then time the publisher's lines through `system` and read each role's CPU.

    `warmed_up` runs once the warm-up line has gone through, before the timing starts;
    `observe` is given every progress read during the timed run.
    """
    publisher.wait_ready()
    _wait(lambda: system.progress().settled(), f"{label}: warm-up", system.check, publisher.check)
    if warmed_up is not None:
        warmed_up()
    meter = _meter(system, publisher, database_url)
    meter.start()
    publisher.tell("go")
    line = publisher.read_line(START_LINE_TIMEOUT_S)
    if line is None or not line.startswith(b"started "):
        raise WorkerFailed(f"{publisher.name} did not start publishing: {publisher.log_tail()}")
    started = float(line.split()[1])
    ends: dict[int, int] | None = None
    deadline = started + TIMEOUT_FLOOR_S + TIMEOUT_PER_EVENT_S * events
    while True:
        if ends is None:
            line = publisher.read_line(0.0)
            if line is not None and line.startswith(b"done "):
                pairs = orjson.loads(line.removeprefix(b"done "))
                ends = {int(p): int(end) for p, end in pairs}
        current = system.progress()
        # Read after the positions: the run was done by then (at most one poll earlier).
        now = time.monotonic()
        if observe is not None:
            observe(current)
        if ends is not None and current.caught_up(ends):
            spent = meter.stop()
            progress(label, events, events)
            return TimedRun(seconds=now - started, cpu_s=spent)
        progress(label, min(events, sum(current.ingested.values())), events)
        system.check()
        publisher.check()
        if now > deadline:
            raise TimeoutError(f"{label}: not caught up after {now - started:.0f} s: {current}")
        time.sleep(POLL_INTERVAL_S)


class BaselineSystem:
    """The no-domain pipeline of the ledger's shape, each stage its own process.

    With `ingest="raw"` (the baseline) its consumer writes one row per message
    (`ledger.bench.worker.run_baseline`). With `ingest="no_domain"` it is the ledger's own ingest
    consumer and service with the domain taken out (`NoDomainService`: the contract's parsing
    and validation, de-duplication, idempotency keys, dead letters, one stored event per fact in
    the event store with the position), and the relay and projection tail the event store's log
    instead of the rows: what the ledger's ingest costs before any domain, in a running system.
    """

    def __init__(
        self,
        scratch: Scratch,
        messages_per_event: float,
        consumers: int,
        *,
        purpose: str = "sysbase",
        ingest: str = "raw",
    ) -> None:
        """Start a broker, create topics and tables, start consumer(s), relay and projection
        (`purpose` names its database, broker and workers: one per timed run)."""
        if ingest not in ("raw", "no_domain"):
            raise ValueError(f"unknown baseline ingest {ingest!r}")
        self.scratch = scratch
        self.broker = scratch.private_broker(purpose)
        self.bootstrap = self.broker.bootstrap
        partitions = scratch.settings.partitions
        dlq_topic = dead_letter_topic(BASELINE_INBOUND_TOPIC)
        ensure_topics(
            self.bootstrap,
            partitions,
            names=(BASELINE_INBOUND_TOPIC, BASELINE_EVENTS_TOPIC, dlq_topic),
        )
        self.database_url = scratch.database_url(purpose)
        target = parse_database_url(self.database_url)
        self.store: EventStore | None = None
        self.tracking_names: dict[int, str] = {}
        if ingest == "no_domain":
            read_models.prepare(target)
            self.store = open_event_store(target)
            with closing(TopicWatcher(self.bootstrap)) as watcher:
                topic_id = watcher.topic_id(BASELINE_INBOUND_TOPIC) or "unknown"
            self.tracking_names = {
                p: tracking_name(BASELINE_INBOUND_TOPIC, topic_id, p) for p in range(partitions)
            }
        self.database = Database(target)
        with self.database.transaction() as cursor:
            for statement in (
                *baseline_ddl(self.database.kind, sequenced=True),
                baseline_view_ddl(self.database.kind),
            ):
                cursor.execute(statement)
        source = "events" if ingest == "no_domain" else "rows"
        common = {"database_url": self.database_url, "bootstrap": self.bootstrap}
        self.workers: dict[str, list[Worker]] = {"ingest": [], "relay": [], "projections": []}
        try:
            for n, share in enumerate(split_partitions(range(partitions), consumers), start=1):
                config: dict[str, Any] = {
                    **common,
                    "kind": "baseline",
                    "sequenced": True,
                    "topic": BASELINE_INBOUND_TOPIC,
                    "partitions": share,
                }
                if ingest == "no_domain":
                    policy = scratch.settings.policy
                    config.update(
                        kind="no_domain",
                        dlq_topic=dlq_topic,
                        policy=str(policy) if policy else None,
                    )
                self.workers["ingest"].append(
                    bench_worker(f"{purpose}-consumer-{n}", config, scratch.directory)
                )
            relay = {
                **common,
                "kind": "baseline_relay",
                "topic": BASELINE_EVENTS_TOPIC,
                "messages_per_event": messages_per_event,
                "source": source,
            }
            self.workers["relay"].append(bench_worker(f"{purpose}-relay", relay, scratch.directory))
            projection = {**common, "kind": "baseline_projection", "source": source}
            self.workers["projections"].append(
                bench_worker(f"{purpose}-projection", projection, scratch.directory)
            )
            for worker in self._all():
                worker.wait_ready()
        except BaseException:
            self.close()
            raise
        self.max_row_id = (
            f"SELECT COALESCE(MAX({baseline_row_id(self.database.kind)}), 0)"
            f" FROM {BASELINE_ROWS_TABLE}"
        )

    def _all(self) -> list[Worker]:
        return [worker for workers in self.workers.values() for worker in workers]

    def pids(self) -> dict[str, list[int]]:
        """Process ids by the ledger's role names, and the broker."""
        found = {role: [worker.pid for worker in workers] for role, workers in self.workers.items()}
        if self.broker.pid is not None:
            found["broker"] = [self.broker.pid]
        return found

    def check(self) -> None:
        """Raise if a worker exited."""
        for worker in self._all():
            worker.check()

    def progress(self) -> SystemProgress:
        """The consumer's positions, the last row id, the relay's and projection's positions."""
        with self.database.read() as cursor:
            cursor.execute(f"SELECT name, position FROM {BASELINE_POSITIONS_TABLE}")
            positions = {str(name): int(position) for name, position in cursor.fetchall()}
        if self.store is not None:  # the no-domain ingest: the event store's log and positions
            recorder = self.store.process_recorder
            ingested = {
                p: recorder.max_tracking_id(name) or 0 for p, name in self.tracking_names.items()
            }
            head = latest_position(self.database)
        else:
            with self.database.read() as cursor:
                cursor.execute(self.max_row_id)
                head = int(cursor.fetchone()[0])
            prefix = f"{BASELINE_INBOUND_TOPIC}:"
            ingested = {
                int(name[len(prefix) :]): position
                for name, position in positions.items()
                if name.startswith(prefix)
            }
        return SystemProgress(
            ingested=ingested,
            head=head,
            projections={"projection": positions.get(BASELINE_PROJECTION_POSITION, 0)},
            relays={"relay": positions.get(BASELINE_RELAY_POSITION, 0)},
        )

    def close(self) -> None:
        """Stop every worker and the broker."""
        for worker in self._all():
            worker.stop()
        self.database.close()
        if self.store is not None:
            self.store.close()
        self.scratch.stop_private_broker(self.broker)


def _per_event(run: TimedRun, events: int, backend: str) -> dict[str, float | None]:
    figures: dict[str, float | None] = dict(per_event_us(run.cpu_s, events))
    if backend == "postgresql" and "postgres" not in figures:
        figures["postgres"] = None  # the server's processes are not visible from here
    return figures


ORDER = ("ledger", "baseline", "no_domain", "baseline", "ledger")
"""The timed runs, in turn: the ledger, its baseline, the no-domain pipeline, the baseline again,
the ledger again. The ledger's and the baseline's figures are each the mean of their two runs,
all centred on the same moment: a machine whose speed drifts over the phase's minutes moves both
sides alike (one run each, ledger then baseline, moved the ratio by a tenth either way between
runs of the same code). The no-domain pipeline (`BaselineSystem(ingest="no_domain")`) runs once,
in the middle: the ledger's ingest before any domain, beside the same relay and projection
shapes, so that the ingest's target (2x the baseline's consumer) can be set against what its
parsing, de-duplication and event store cost alone in a running system."""


@dataclass
class _LedgerRun:
    run: TimedRun
    messages_per_event: float
    processes: dict[str, int]
    bare: dict[str, Any] | None


def _time_ledger(
    scratch: Scratch,
    events: int,
    progress: Progress,
    *,
    workers: int,
    purpose: str,
    with_bare_producer: bool,
) -> _LedgerRun:
    """One timed run of the ledger on a database and broker of its own (and, if asked, the
    bare producer sending the relays' messages of that run again)."""
    with running_ledger(scratch, purpose, ingest_workers=workers) as ledger:
        publisher = _publisher(scratch, f"{purpose}-publisher", ledger.bootstrap, PAYMENTS_INBOUND)
        sent_before: list[int] = []
        relay_start: list[int] = []
        relay_ends: set[int] = set()

        def warmed_up() -> None:
            sent_before.append(ledger.published_messages())
            relay_start.append(min(ledger.progress().relays.values()))

        try:
            run = time_system(
                ledger,
                publisher,
                events=events,
                database_url=ledger.database_url,
                label=purpose.replace("system", "system "),
                progress=progress,
                warmed_up=warmed_up,
                observe=lambda current: relay_ends.update(current.relays.values()),
            )
            messages_per_event = (ledger.published_messages() - sent_before[0]) / events
            processes = {
                role: len(pids) for role, pids in ledger.pids().items() if role != "broker"
            }
        finally:
            publisher.stop()
        bare = None
        if with_bare_producer:
            progress("system: bare producer", 0, 1)
            bare = measure_bare_producer(
                scratch,
                ledger.bootstrap,
                after=relay_start[0],
                ends=sorted(relay_ends),
                events=events,
            )
            progress("system: bare producer", 1, 1)
    return _LedgerRun(run, messages_per_event, processes, bare)


def _time_baseline(
    scratch: Scratch,
    events: int,
    progress: Progress,
    *,
    messages_per_event: float,
    consumers: int,
    purpose: str,
    ingest: str = "raw",
) -> TimedRun:
    """One timed run of the no-domain system (`ingest`: see `BaselineSystem`) on a database and
    broker of its own."""
    baseline_system = BaselineSystem(
        scratch, messages_per_event, consumers, purpose=purpose, ingest=ingest
    )
    try:
        publisher = _publisher(
            scratch, f"{purpose}-publisher", baseline_system.bootstrap, BASELINE_INBOUND_TOPIC
        )
        try:
            return time_system(
                baseline_system,
                publisher,
                events=events,
                database_url=baseline_system.database_url,
                label=purpose.replace("sysbase", "system baseline ").replace(
                    "sysnodomain", "system no-domain ingest "
                ),
                progress=progress,
            )
        finally:
            publisher.stop()
    finally:
        baseline_system.close()


def _mean_run(runs: list[TimedRun]) -> TimedRun:
    """Seconds and each role's CPU averaged over runs (a role some run lacks is left out)."""
    roles = set.intersection(*(set(run.cpu_s) for run in runs))
    return TimedRun(
        seconds=sum(run.seconds for run in runs) / len(runs),
        cpu_s={role: sum(run.cpu_s[role] for run in runs) / len(runs) for role in sorted(roles)},
    )


def measure_system(
    scratch: Scratch, workload: Workload, progress: Progress, *, workers: int = 1
) -> dict[str, Any]:
    """Time the running ledger (`workers` ingest processes) and its no-domain baseline (as many
    consumers) on the workload, in the turns of `ORDER`; see the module."""
    events = len(workload.lines)
    write_lines(scratch.directory / "system-lines.bin", workload.lines)
    ledger_runs: list[_LedgerRun] = []
    baseline_runs: list[TimedRun] = []
    no_domain_runs: list[TimedRun] = []
    for side in ORDER:
        if side == "ledger":
            ledger_runs.append(
                _time_ledger(
                    scratch,
                    events,
                    progress,
                    workers=workers,
                    purpose=f"system{len(ledger_runs) + 1}",
                    with_bare_producer=not ledger_runs,
                )
            )
        else:
            first = ledger_runs[0]
            runs = no_domain_runs if side == "no_domain" else baseline_runs
            runs.append(
                _time_baseline(
                    scratch,
                    events,
                    progress,
                    messages_per_event=first.messages_per_event,
                    consumers=first.processes.get("ingest", 1),
                    purpose=f"sys{'nodomain' if side == 'no_domain' else 'base'}{len(runs) + 1}",
                    ingest="no_domain" if side == "no_domain" else "raw",
                )
            )
    first = ledger_runs[0]
    bare = first.bare
    if bare is None:
        raise RuntimeError("system: the first ledger run measures the bare producer")
    run = _mean_run([ledger.run for ledger in ledger_runs])
    baseline = _mean_run(baseline_runs)
    events_per_s = events / run.seconds
    baseline_per_s = events / baseline.seconds
    cpu_us_per_event = _per_event(run, events, scratch.backend)
    baseline_cpu_us_per_event = _per_event(baseline, events, scratch.backend)
    no_domain = _mean_run(no_domain_runs)
    no_domain_cpu_us_per_event = _per_event(no_domain, events, scratch.backend)
    return {
        "events_per_s": round(events_per_s),
        "baseline_per_s": round(baseline_per_s),
        "ratio": round(events_per_s / baseline_per_s, 3),
        "seconds": round(run.seconds, 3),
        "baseline_seconds": round(baseline.seconds, 3),
        "runs_seconds": [round(ledger.run.seconds, 3) for ledger in ledger_runs],
        "baseline_runs_seconds": [round(timed.seconds, 3) for timed in baseline_runs],
        "messages": events,
        "relayed_per_event": round(first.messages_per_event, 3),
        "processes": first.processes,
        "cpu_us_per_event": cpu_us_per_event,
        "baseline_cpu_us_per_event": baseline_cpu_us_per_event,
        "bare_producer": bare,
        "relay_vs_bare_producer": _over(cpu_us_per_event.get("relay"), bare["cpu_us_per_event"]),
        # The bare producer runs alone, the relays among busy processes: the baseline relay's
        # figure shows how much of the relay's is the sharing of the cores.
        "baseline_relay_vs_bare_producer": _over(
            baseline_cpu_us_per_event.get("relay"), bare["cpu_us_per_event"]
        ),
        # The ingest's floor before any domain: the no-domain pipeline's consumer over the
        # baseline's (the ingest's target is 2x), and the ledger's ingest over that pipeline's.
        "no_domain": {
            "events_per_s": round(events / no_domain.seconds),
            "ratio": round(baseline.seconds / no_domain.seconds, 3),
            "seconds": round(no_domain.seconds, 3),
            "cpu_us_per_event": no_domain_cpu_us_per_event,
            "ingest_vs_baseline": _over(
                no_domain_cpu_us_per_event.get("ingest"), baseline_cpu_us_per_event.get("ingest")
            ),
            "ledger_ingest_vs_no_domain": _over(
                cpu_us_per_event.get("ingest"), no_domain_cpu_us_per_event.get("ingest")
            ),
        },
    }


def _over(numerator: float | None, denominator: float | None) -> float | None:
    return round(numerator / denominator, 3) if numerator and denominator else None
