"""`ledger bench` on both backends: the JSON document's shape, never its timings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import psycopg
import pytest
from eventsourcing.persistence import Tracking
from typer.testing import CliRunner

from ledger.bench.worker import NoDomainService
from ledger.cli import app
from ledger.clock import SystemClock
from ledger.domain.account import account_uuid
from ledger.domain.policy import Policy
from ledger.ingest import InboundMessage
from ledger.kafka.broker import EmbeddedBroker
from ledger.persistence.event_store import open_event_store
from ledger.persistence.urls import parse_database_url
from tests.books import invoice, opened, payment


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


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
    assert sum(mix[kind] for kind in ("opened", "invoice", "payment", "duplicate", "bad")) == 2000
    assert document["machine"]["cores"] >= 1
    assert document["machine"]["cpu"], "a figure names the machine it was measured on"
    assert document["ingest"]["messages"] == 2000
    # The rebuild replayed every stored event: each fact applied, plus one per overpayment.
    stored = mix["opened"] + mix["invoice"] + mix["payment"] + mix["overpayment"]
    assert document["rebuild"]["events"] == stored
    for phase in ("ingest", "rebuild"):
        figures = document[phase]
        assert {"events_per_s", "baseline_per_s", "ratio"} <= figures.keys()
        assert all(_positive(figures[key]) for key in ("events_per_s", "baseline_per_s", "ratio"))
    no_domain = document["ingest"]["no_domain"]
    assert all(_positive(no_domain[key]) for key in ("events_per_s", "baseline_per_s", "ratio"))
    latency = document["latency"]
    assert all(_positive(latency[key]) for key in ("p50_ms", "p99_ms", "max_ms"))
    assert latency["p50_ms"] <= latency["p99_ms"] <= latency["max_ms"]
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


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        (
            ["--only", "nonsense"],
            "unknown phase(s) ['nonsense']; choose from ingest, latency, rebuild, load",
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
