"""`ledger bench`: measure this deployment against baselines taken in the same run.

Every figure is a ratio against a baseline measured on the same machine in the same run, so that
noise cancels. The run never touches the deployment's data: it uses fresh temporary databases of
the configured kind and fresh topics on the configured (or an embedded) broker.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from contextlib import closing
from typing import Any

import orjson
from rich.console import Console
from rich.progress import Progress, TaskID

from ledger.bench.commands import measure_commands
from ledger.bench.ingest import measure_ingest
from ledger.bench.latency import measure_latency
from ledger.bench.rebuild import measure_load, measure_rebuild, populate
from ledger.bench.report import machine, table
from ledger.bench.scratch import Scratch
from ledger.bench.system import measure_system
from ledger.bench.workload import build_workload
from ledger.kafka.clients import check_crc32c
from ledger.settings import Settings

PHASES = ("ingest", "system", "latency", "commands", "rebuild", "load")
"""What `--only` can select, in the order they run; memory is sampled during the ingest phase."""


class BenchRefused(ValueError):
    """Options the benchmark cannot run with."""


def parse_phases(only: str | None) -> tuple[str, ...]:
    """The phases to run, from a comma-separated `--only` value (None: all)."""
    if not only:
        return PHASES
    chosen = tuple(part.strip() for part in only.split(",") if part.strip())
    unknown = [phase for phase in chosen if phase not in PHASES]
    if unknown or not chosen:
        raise BenchRefused(f"unknown phase(s) {unknown}; choose from {', '.join(PHASES)}")
    return chosen


def run_bench(
    settings: Settings,
    *,
    events: int = 100_000,
    accounts: int = 1_000,
    phases: Sequence[str] = PHASES,
    workers: int = 1,
    err: Console | None = None,
) -> dict[str, Any]:
    """Run the chosen phases and return the result document."""
    if events < 100:
        raise BenchRefused("--events must be at least 100")
    if accounts < 1:
        raise BenchRefused("--accounts must be at least 1")
    if workers < 1:
        raise BenchRefused("--workers must be at least 1")
    check_crc32c()
    console = err or Console(stderr=True)
    document: dict[str, Any] = {
        "ingest": None,
        "system": None,
        "latency": None,
        "commands": None,
        "rebuild": None,
        "load_ms": None,
        "memory": None,
    }
    with closing(Scratch(settings)) as scratch, Progress(console=console, transient=True) as bars:
        tasks: dict[str, TaskID] = {}

        def progress(label: str, done: int, total: int) -> None:
            if label not in tasks:
                tasks[label] = bars.add_task(label, total=total)
            bars.update(tasks[label], completed=done, total=total)

        document.update(
            backend=scratch.backend,
            events=events,
            run_id=scratch.run_id,
            partitions=settings.partitions,
            machine=machine(),
        )
        workload = build_workload(events, accounts, scratch.run_id)
        document["accounts"] = workload.accounts
        document["mix"] = workload.counts
        # The system and latency phases run the ledger's own workers, on brokers of their own.
        document["broker"] = None
        if "ingest" in phases or "commands" in phases:
            scratch.start_broker()
            document["broker"] = scratch.broker_kind
        store_url: str | None = None
        if "ingest" in phases:
            run = measure_ingest(scratch, workload, progress, workers=workers)
            document["ingest"] = run.result
            document["memory"] = run.memory
            store_url = run.database_url
        if "system" in phases:
            document["system"] = measure_system(scratch, workload, progress, workers=workers)
        if "latency" in phases:
            document["latency"] = measure_latency(scratch, events, progress)
        if "commands" in phases:
            document["commands"] = measure_commands(scratch, events, progress)
        if "rebuild" in phases:
            if store_url is None:
                store_url = scratch.database_url("rebuild")
                populate(store_url, workload, progress)
            document["rebuild"] = measure_rebuild(store_url, progress)
        if "load" in phases:
            load = measure_load(scratch.database_url("load"), events, progress)
            document["load"] = load
            document["load_ms"] = load["load_ms"]
    return document


def print_report(document: dict[str, Any], *, json_output: bool, out: Console) -> None:
    """One JSON document on stdout, or the table."""
    if json_output:
        sys.stdout.write(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n")
        sys.stdout.flush()
    else:
        out.print(table(document))
