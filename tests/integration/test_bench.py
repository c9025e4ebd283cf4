"""`ledger bench` on both backends: the JSON document's shape, never its timings."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from eventsourcing.persistence import Notification, Tracking
from typer.testing import CliRunner

from ledger import read_models
from ledger.bench.system_workers import CLOUDEVENT_HEADER_NAMES, baseline_headers
from ledger.bench.worker import NoDomainService
from ledger.cli import app
from ledger.clock import SystemClock
from ledger.domain.account import account_uuid
from ledger.domain.policy import Policy
from ledger.ingest import InboundMessage
from ledger.kafka.broker import EmbeddedBroker
from ledger.persistence.event_store import open_event_store
from ledger.persistence.urls import parse_database_url
from ledger.public_events import cloudevent_headers
from tests.books import invoice, opened, payment


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def _latency_ordered(figures: dict[str, Any]) -> bool:
    return all(_positive(figures[key]) for key in ("p50_ms", "p99_ms", "max_ms")) and (
        figures["p50_ms"] <= figures["p99_ms"] <= figures["max_ms"]
    )


def _bench_databases(database_url: str) -> list[str]:
    target = parse_database_url(database_url)
    with psycopg.connect(target.conninfo, autocommit=True) as connection:
        rows = connection.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE 'ledger_bench_%%'"
        ).fetchall()
    return [str(row[0]) for row in rows]


@pytest.fixture
def bench_env(
    database_url: str,
    broker: EmbeddedBroker,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> str:
    """The environment `ledger bench` runs in: this test's database kind, the shared broker."""
    monkeypatch.setenv("LEDGER_DATABASE_URL", database_url)
    monkeypatch.setenv("LEDGER_KAFKA_BOOTSTRAP", broker.bootstrap)
    monkeypatch.setenv("LEDGER_LOG_FORMAT", "json")
    monkeypatch.setenv("LEDGER_LOG_LEVEL", "warning")
    monkeypatch.chdir(tmp_path)
    return database_url


@pytest.mark.ci_backend("sqlite")
def test_bench_json_document(bench_env: str) -> None:
    database_url = bench_env

    result = CliRunner().invoke(
        app, ["bench", "--events", "2000", "--accounts", "100", "--json"], catch_exceptions=False
    )

    assert result.exit_code == 0, result.output
    document = orjson.loads(result.stdout)
    assert document["backend"] == parse_database_url(database_url).kind
    assert document["events"] == 2000
    assert document["broker"] == "external"
    assert document["accounts"] == 100
    mix = document["mix"]
    kinds = ("opened", "invoice", "payment", "dispute_opened", "dispute_closed", "duplicate", "bad")
    assert sum(mix[kind] for kind in kinds) == 2000
    assert mix["dispute_opened"] > 0 and mix["dispute_closed"] > 0
    assert document["machine"]["cores"] >= 1
    assert document["machine"]["cpu"], "a figure names the machine it was measured on"
    assert document["ingest"]["messages"] == 2000
    # The rebuild replayed every stored event: each fact applied, plus one per overpayment; a
    # chargeback opened stores its dispute and a follow-up, one closed its outcome and closure.
    stored = mix["opened"] + mix["invoice"] + mix["payment"] + mix["overpayment"]
    stored += 2 * (mix["dispute_opened"] + mix["dispute_closed"])
    assert document["rebuild"]["events"] == stored
    # Every registered read model is rebuilt on its own from the same log, and the log decoded.
    models = document["rebuild"]["models"]
    assert list(models) == read_models.names()
    for figures in (*models.values(), document["rebuild"]["decode"]):
        assert figures["events"] == stored
        assert all(_positive(figures[key]) for key in ("events_per_s", "baseline_per_s", "ratio"))
    assert models["balances"]["ratio"] == document["rebuild"]["ratio"]
    for phase in ("ingest", "rebuild"):
        figures = document[phase]
        assert {"events_per_s", "baseline_per_s", "ratio"} <= figures.keys()
        assert all(_positive(figures[key]) for key in ("events_per_s", "baseline_per_s", "ratio"))
    no_domain = document["ingest"]["no_domain"]
    assert all(_positive(no_domain[key]) for key in ("events_per_s", "baseline_per_s", "ratio"))
    assert _latency_ordered(document["latency"])
    assert _latency_ordered(document["latency"]["ledger_events"])
    assert _positive(document["system"]["ratio"])
    _check_commands(document["commands"])
    assert _positive(document["load_ms"])
    memory = document["memory"]
    assert all(_positive(memory[key]) for key in ("start_mb", "end_mb", "peak_mb"))
    assert memory["peak_mb"] >= memory["end_mb"]
    # The deployment's own data is never touched: nothing left behind, nothing created.
    if database_url.startswith("postgresql"):
        # Only this run's: others may be running a bench on the same server meanwhile.
        run_id = document["run_id"]
        assert [name for name in _bench_databases(database_url) if run_id in name] == []
    else:
        assert not Path(parse_database_url(database_url).sqlite_path or "").exists()


def _check_commands(commands: dict[str, Any]) -> None:
    """The commands phase's figures: shape and sanity, never speed."""
    trip = commands["round_trip_ms"]
    assert _positive(trip["p50"]) and trip["p50"] <= trip["p99"] <= trip["max"]
    assert commands["round_trips"] >= 20
    assert all(_positive(commands[key]) for key in ("fire_per_s", "facts_per_s", "ratio"))
    assert commands["firings"] >= 50
    assert commands["rounds"] >= 1
    # The paced facts mix in the new inbound types; nothing ever conflicted or rewound.
    assert {"invoice.voided", "payment.returned"} <= commands["paced_mix"].keys()
    assert commands["conflicts"] == 0 and commands["rewinds"] == 0


def test_bench_commands_phase_alone(bench_env: str) -> None:
    """`--only commands` at the smallest size: its figures, and no other phase run."""
    result = CliRunner().invoke(
        app, ["bench", "--events", "100", "--only", "commands", "--json"], catch_exceptions=False
    )

    assert result.exit_code == 0, result.output
    document = orjson.loads(result.stdout)
    _check_commands(document["commands"])
    assert document["commands"]["firings"] == 50
    assert all(document[phase] is None for phase in ("ingest", "system", "latency", "rebuild"))


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        (
            ["--only", "nonsense"],
            "unknown phase(s) ['nonsense']; choose from"
            " ingest, system, latency, commands, rebuild, load",
        ),
        (["--only", "ingest,,rebuilt"], "unknown phase(s) ['rebuilt']; choose from"),
        (["--events", "99"], "--events must be at least 100"),
        (["--accounts", "0"], "--accounts must be at least 1"),
        (["--workers", "0"], "--workers must be at least 1"),
    ],
)
def test_bench_refuses_options_it_cannot_run_with(
    options: list[str], reason: str, tmp_path: Path
) -> None:
    """Exit 2 and one line saying why, as the `ledger` command itself; nothing run or created."""
    env = dict(os.environ)
    env.pop("LEDGER_KAFKA_BOOTSTRAP", None)  # none configured: the bench would embed its own
    env.update(LEDGER_DATABASE_URL=f"sqlite:///{tmp_path / 'ledger.db'}", LEDGER_LOG_FORMAT="json")
    done = subprocess.run(
        [sys.executable, "-m", "ledger", "bench", *options, "--json"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr.decode()
    assert done.stdout == b""
    [line] = done.stderr.decode().splitlines()
    assert line.startswith(f"ledger: {reason}"), line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.ci_backend("postgresql")
def test_bench_system_and_latency(bench_env: str) -> None:
    """The running ledger against its no-domain baseline, and latency as downstream sees it."""
    result = CliRunner().invoke(
        app,
        ["bench", "--events", "1000", "--accounts", "50", "--only", "system,latency", "--json"],
        catch_exceptions=False,
    )

    assert result.exit_code == 0, result.output
    document = orjson.loads(result.stdout)
    assert document["ingest"] is None and document["rebuild"] is None
    system = document["system"]
    assert all(_positive(system[key]) for key in ("events_per_s", "baseline_per_s", "ratio"))
    assert system["ratio"] == pytest.approx(
        system["events_per_s"] / system["baseline_per_s"], rel=0.01
    )
    assert system["messages"] == 1000
    # The ledger and its baseline each ran twice, in turn (ledger, baseline, no-domain pipeline,
    # baseline, ledger): each side's figures are its runs' mean.
    assert len(system["runs_seconds"]) == len(system["baseline_runs_seconds"]) == 2
    assert system["seconds"] == pytest.approx(sum(system["runs_seconds"]) / 2, abs=0.002)
    assert system["baseline_seconds"] == pytest.approx(
        sum(system["baseline_runs_seconds"]) / 2, abs=0.002
    )
    # Every stored event goes out once; overpayments also send a notification request.
    assert system["relayed_per_event"] > 1
    assert system["processes"]["ingest"] >= 1 and system["processes"]["relay"] >= 1
    roles = {"ingest", "relay", "projections", "scheduler", "broker", "publisher"}
    if document["backend"] == "postgresql":
        roles.add("postgres")
    # `ledger run` also runs the scheduler, which the no-domain baseline has no counterpart of.
    assert system["cpu_us_per_event"].keys() == roles | {"scheduler"}
    assert system["baseline_cpu_us_per_event"].keys() == roles
    for figures in (system["cpu_us_per_event"], system["baseline_cpu_us_per_event"]):
        # The OS counts CPU in 10 ms ticks: a short run can see 0 for a light process.
        assert all(isinstance(value, int | float) and value >= 0 for value in figures.values())
        assert _positive(figures["ingest"] + figures["relay"])
    # The relay's floor: a bare producer sent the relay's own messages of the timed run.
    bare = system["bare_producer"]
    assert bare["messages"] == pytest.approx(system["relayed_per_event"] * 1000, abs=1)
    assert 1 <= bare["batches"] <= bare["messages"]
    assert _positive(bare["cpu_us_per_event"])
    relay_vs_bare = system["relay_vs_bare_producer"]
    assert relay_vs_bare is None or _positive(relay_vs_bare)  # a 10 ms tick can read 0
    baseline_vs_bare = system["baseline_relay_vs_bare_producer"]
    assert baseline_vs_bare is None or _positive(baseline_vs_bare)
    # The ledger's ingest with its domain taken out ran once between the baselines, as a system
    # of the baseline's shape: every line through its consumer, relay and projection.
    no_domain = system["no_domain"]
    assert _positive(no_domain["seconds"]) and _positive(no_domain["events_per_s"])
    assert no_domain["events_per_s"] == pytest.approx(1000 / no_domain["seconds"], rel=0.01)
    assert no_domain["ratio"] == pytest.approx(
        system["baseline_seconds"] / no_domain["seconds"], rel=0.01
    )
    assert no_domain["cpu_us_per_event"].keys() == roles
    assert _positive(
        no_domain["cpu_us_per_event"]["ingest"] + no_domain["cpu_us_per_event"]["relay"]
    )
    for key, numerator, denominator in (
        ("ingest_vs_baseline", no_domain["cpu_us_per_event"], system["baseline_cpu_us_per_event"]),
        ("ledger_ingest_vs_no_domain", system["cpu_us_per_event"], no_domain["cpu_us_per_event"]),
    ):
        # A ratio is None where either side read no tick of CPU (10 ms ticks, a short run).
        expected = (
            numerator["ingest"] / denominator["ingest"]
            if numerator["ingest"] and denominator["ingest"]
            else None
        )
        assert no_domain[key] == (None if expected is None else pytest.approx(expected, abs=0.01))
    latency = document["latency"]
    assert _latency_ordered(latency)
    assert latency["events"] == latency["ledger_events"]["events"] == 200
    assert _latency_ordered(latency["ledger_events"])
    relay_sent = latency["ledger_events"]["relay_sent"]
    assert relay_sent["p50_ms"] <= relay_sent["p99_ms"] <= relay_sent["max_ms"]


def test_baseline_relay_sends_the_relays_headers() -> None:
    notification = Notification(
        id=7, originator_id=uuid.uuid4(), originator_version=1, topic="t", state=b"{}"
    )
    public = {"account_id": "A", "version": 1, "type": "x", "occurred_at": "2030-01-01T00:00:00"}
    expected = tuple(name for name, _value in cloudevent_headers(notification, public))
    assert expected == CLOUDEVENT_HEADER_NAMES
    assert [name for name, _ in baseline_headers(b"A", 7, 1, b"now")] == list(expected)


def test_bench_ingest_with_two_workers(bench_env: str) -> None:
    """Ledger and baseline each run as two processes sharing the partitions."""
    result = CliRunner().invoke(
        app,
        [
            "bench",
            "--events",
            "1000",
            "--accounts",
            "50",
            "--only",
            "ingest",
            "--workers",
            "2",
            "--json",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    document = orjson.loads(result.stdout)
    assert document["events"] == 1000
    ingest = document["ingest"]
    assert ingest["workers"] == 2
    assert ingest["messages"] == 1000
    assert all(_positive(ingest[key]) for key in ("events_per_s", "baseline_per_s", "ratio"))
    memory = document["memory"]
    assert all(_positive(memory[key]) for key in ("start_mb", "end_mb", "peak_mb"))
    # Only the phase asked for ran.
    assert document["latency"] is None and document["rebuild"] is None
    assert document["load_ms"] is None


def test_no_domain_service_stores_one_event_per_new_fact(database_url: str) -> None:
    """The bench's no-domain pipeline keeps the real path's guarantees, without the domain."""
    store = open_event_store(parse_database_url(database_url), create_table=True)
    try:
        service = NoDomainService(store, policy=Policy(version="t"), clock=SystemClock())
        lines = [opened("e1", "A"), invoice("e2", "A", 100), b"{broken", payment("e3", "B", 5)]
        lines.append(lines[1])
        messages = [InboundMessage("t", 0, n, None, raw) for n, raw in enumerate(lines)]
        batch = service.prepare(messages)
        service.commit(batch, Tracking("t:0", len(lines)))
        assert (batch.applied, batch.duplicates, len(batch.dead_letters)) == (3, 1, 1)
        stored = store.process_recorder.select_notifications(start=0, limit=10)
        assert [(n.originator_id, n.originator_version, n.state) for n in stored] == [
            (account_uuid("A"), 1, lines[0]),
            (account_uuid("A"), 2, lines[1]),
            (account_uuid("B"), 1, lines[3]),
        ]
        again = service.prepare(messages)
        assert (again.applied, again.duplicates) == (0, 4)
    finally:
        store.close()
