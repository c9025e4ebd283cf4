"""The benchmark's answer: one JSON document, or a table for people."""

from __future__ import annotations

import os
import platform
from typing import Any

import psutil
from rich.table import Table


def machine() -> dict[str, Any]:
    """The machine the figures were measured on."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 1024**3, 1),
        "python": platform.python_version(),
        "system": platform.system(),
    }


def _number(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.2f}{unit}"
    return f"{value:,}{unit}"


def _throughput_row(label: str, figures: dict[str, Any]) -> tuple[str, str, str, str]:
    """A measured throughput beside its same-run baseline, with the ratio and its target."""
    return (
        label,
        _number(figures["events_per_s"]),
        _number(figures["baseline_per_s"]),
        f"{figures['ratio']:.2f} (target >= 0.50)",
    )


def _rebuild_rows(rebuild: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """Each read model rebuilt on its own, and the log only decoded, against the raw copy."""
    passes = [(f"  rebuilt alone: {name}", figures) for name, figures in rebuild["models"].items()]
    passes.append(("  log only read and decoded", rebuild["decode"]))
    return [
        (
            label,
            _number(figures["events_per_s"]),
            _number(figures["baseline_per_s"]),
            f"{figures['ratio']:.2f} of the raw copy",
        )
        for label, figures in passes
    ]


CPU_ROLES = ("ingest", "relay", "projections", "scheduler", "broker", "publisher", "postgres")
"""The system phase's processes, in the order the table shows their CPU."""


def _cpu(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _latency_cell(figures: dict[str, Any]) -> str:
    return f"{figures['p50_ms']} / {figures['p99_ms']} / {figures['max_ms']} ms"


def _system_rows(system: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """Throughput of the running system, then each process's CPU per event beside the
    baseline's."""
    processes = ", ".join(f"{count} {role}" for role, count in system["processes"].items())
    rows = [
        (
            f"system: ledger run (events/s; {processes})",
            _number(system["events_per_s"]),
            _number(system["baseline_per_s"]),
            f"{system['ratio']:.2f} (same-run baseline)",
        )
    ]
    ledger_cpu = system["cpu_us_per_event"]
    baseline_cpu = system["baseline_cpu_us_per_event"]
    for role in CPU_ROLES:
        if role not in ledger_cpu:
            continue
        mine, theirs = ledger_cpu[role], baseline_cpu.get(role)
        note = f"{mine / theirs:.2f}x the baseline" if mine and theirs else ""
        rows.append((f"  CPU us per event: {role}", _cpu(mine), _cpu(theirs), note))
    bare = system.get("bare_producer")
    ratio = system.get("relay_vs_bare_producer")
    if bare:
        rows.append(
            (
                "  CPU us per event: relay vs a bare producer (same messages and batches)",
                _cpu(ledger_cpu.get("relay")),
                _cpu(bare["cpu_us_per_event"]),
                "-" if ratio is None else f"{ratio:.2f}x the bare producer (target <= 1.3)",
            )
        )
        baseline_ratio = system.get("baseline_relay_vs_bare_producer")
        if baseline_ratio is not None:
            rows.append(
                ("    the baseline relay vs the bare producer", "", "", f"{baseline_ratio:.2f}x")
            )
    no_domain = system.get("no_domain")
    if no_domain:
        floor = no_domain.get("ingest_vs_baseline")
        rows.append(
            (
                "  the ingest with no domain, in a system of the baseline's shape (events/s)",
                _number(no_domain["events_per_s"]),
                _number(system["baseline_per_s"]),
                f"{no_domain['ratio']:.2f} (same-run baseline)",
            )
        )
        rows.append(
            (
                "    its CPU us per event: ingest",
                _cpu(no_domain["cpu_us_per_event"].get("ingest")),
                _cpu(baseline_cpu.get("ingest")),
                "-" if floor is None else f"{floor:.2f}x the baseline (the ingest's target: 2x)",
            )
        )
    return rows


def table(document: dict[str, Any]) -> Table:
    """The figures as a rich table."""
    broker = document["broker"] or "embedded, one per phase"
    result = Table(
        title=(
            f"ledger bench: {document['events']:,} events, {document['backend']}, broker {broker}"
        ),
        caption=f"{document['machine']['cpu']}, {document['machine']['cores']} cores",
    )
    for column in ("measure", "ledger", "baseline", "ratio / note"):
        result.add_column(column, justify="left" if column == "measure" else "right")
    ingest = document.get("ingest")
    if ingest:
        processes = ingest["workers"]
        label = f"ingest (events/s, {processes} process{'es' if processes > 1 else ''})"
        result.add_row(*_throughput_row(label, ingest))
        no_domain = ingest.get("no_domain")
        if no_domain:
            result.add_row(
                "ingest with no domain (parse + store)",
                _number(no_domain["events_per_s"]),
                _number(no_domain["baseline_per_s"]),
                f"{no_domain['ratio']:.2f} (the ceiling for any domain)",
            )
    system = document.get("system")
    if system:
        for row in _system_rows(system):
            result.add_row(*row)
    latency = document.get("latency")
    if latency:
        note = f"at {latency['rate_per_s']:,}/s (p99 target < 250 ms)"
        result.add_row(
            "latency to balance visible p50 / p99 / max", _latency_cell(latency), "", note
        )
        downstream = latency.get("ledger_events")
        if downstream:
            result.add_row(
                "latency to ledger.events p50 / p99 / max", _latency_cell(downstream), "", note
            )
            result.add_row(
                "  of which publish to the relay's send",
                _latency_cell(downstream["relay_sent"]),
                "",
                "",
            )
    commands = document.get("commands")
    if commands:
        trip = commands["round_trip_ms"]
        result.add_row(
            "staff command round trip p50 / p99 / max",
            f"{trip['p50']} / {trip['p99']} / {trip['max']} ms",
            "",
            f"facts at {commands['rate_per_s']:,}/s (p99 target < 250 ms)",
        )
        result.add_row(
            f"scheduler firings applied (per s, {commands['firings']:,} due items)",
            _number(commands["fire_per_s"]),
            _number(commands["facts_per_s"]),
            f"{commands['ratio']:.2f} of facts/s (target >= 0.50)",
        )
    rebuild = document.get("rebuild")
    if rebuild:
        result.add_row(*_throughput_row("rebuild (events/s)", rebuild))
        for row in _rebuild_rows(rebuild):
            result.add_row(*row)
    load = document.get("load")
    if load:
        result.add_row(
            f"load one account of {load['events']:,} events",
            f"{document['load_ms']} ms",
            f"{load['load_without_snapshot_ms']} ms",
            "snapshot vs full replay (target < 20 ms)",
        )
    memory = document.get("memory")
    if memory:
        result.add_row(
            "ingest RSS start / end / peak",
            f"{memory['start_mb']} / {memory['end_mb']} / {memory['peak_mb']} MB",
            "",
            f"end/start {memory['end_over_start']:.2f} (target <= 1.10)",
        )
    return result
