"""Schema preparation: on a fresh PostgreSQL database many processes at once, all succeed; a new
SQLite path gets its directories."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import psycopg
import pytest
from structlog.testing import capture_logs

from ledger import limits
from ledger.deploy_setup import prepare_deployment_patiently
from ledger.kafka.broker import EmbeddedBroker
from ledger.persistence.schema_lock import SCHEMA_LOCK_KEY, SchemaLockTimeout
from ledger.persistence.urls import parse_database_url
from ledger.read_models import names as read_model_names
from ledger.settings import Settings
from projections import balances
from tests.preparers import prepare_at_once
from tests.waiting import wait_for

PREPARERS = 8
WAIT_S = 120.0

EXPECTED_TABLES = {
    "ledger_events",
    "ledger_snapshots",
    "ledger_tracking",
    "ledger_inbound_keys",
    "ledger_positions",
    "ledger_projections",
    *(f"{table}_g1" for table in balances.TABLES),
}


def _public_tables(database_url: str) -> set[str]:
    with psycopg.connect(parse_database_url(database_url).conninfo) as connection:
        rows = connection.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {row[0] for row in rows}


def _hold_schema_lock(database_url: str) -> psycopg.Connection[tuple[object, ...]]:
    """A connection holding the schema lock, as a preparation that takes its time would."""
    holder = psycopg.connect(parse_database_url(database_url).conninfo, autocommit=True)
    holder.execute("SELECT pg_advisory_lock(%s)", (SCHEMA_LOCK_KEY,))
    return holder


def test_eight_processes_prepare_a_fresh_database_at_once(postgres_url: str) -> None:
    outcomes = prepare_at_once(postgres_url, PREPARERS)
    assert [o for o in outcomes if o != "ok"] == []
    with psycopg.connect(parse_database_url(postgres_url).conninfo) as connection:
        live_rows = connection.execute(
            "SELECT name, generation, position FROM ledger_projections"
        ).fetchall()
    assert _public_tables(postgres_url) >= EXPECTED_TABLES
    assert sorted(live_rows) == sorted((name, 1, 0) for name in read_model_names())


def test_start_retries_with_back_off_until_the_other_preparation_ends(
    postgres_url: str, broker: EmbeddedBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "schema_lock_wait_max_s", 0.1)
    monkeypatch.setattr(limits, "backoff_initial_s", 0.05)
    holder = _hold_schema_lock(postgres_url)
    outcome: list[bool] = []
    start = threading.Thread(
        target=lambda: outcome.append(
            prepare_deployment_patiently(broker.bootstrap, Settings(database_url=postgres_url))
        )
    )
    with capture_logs() as logs:
        try:
            start.start()
            wait_for(
                lambda: any(entry["event"] == "start failed: retrying" for entry in logs),
                "a retried start",
            )
            assert _public_tables(postgres_url) == set()
        finally:
            holder.close()
        start.join(timeout=WAIT_S)
    assert outcome == [True]
    retries = [entry for entry in logs if entry["event"] == "start failed: retrying"]
    assert retries[0]["error_type"] == SchemaLockTimeout.__name__
    assert retries[0]["log_level"] == "warning" and retries[0]["attempt"] == 1
    assert _public_tables(postgres_url) >= EXPECTED_TABLES


def test_start_gives_up_after_its_attempts(
    postgres_url: str, broker: EmbeddedBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "schema_lock_wait_max_s", 0.1)
    monkeypatch.setattr(limits, "backoff_initial_s", 0.01)
    monkeypatch.setattr(limits, "start_attempts_max", 3)
    holder = _hold_schema_lock(postgres_url)
    try:
        with capture_logs() as logs, pytest.raises(SchemaLockTimeout):
            prepare_deployment_patiently(broker.bootstrap, Settings(database_url=postgres_url))
    finally:
        holder.close()
    assert [(entry["event"], entry["attempt"]) for entry in logs if "attempt" in entry] == [
        ("start failed: retrying", 1),
        ("start failed: retrying", 2),
        ("start failed: giving up", 3),
    ]


def test_a_sqlite_path_in_a_missing_directory_is_created_at_start(
    tmp_path: Path, broker: EmbeddedBroker
) -> None:
    """`ledger run` on a new SQLite path: its directories are made (SQLite makes only the file);
    before, the start retried "unable to open database file" and gave up."""
    path = tmp_path / "new" / "deeper" / "ledger.db"
    settings = Settings(database_url=f"sqlite:///{path}")
    with capture_logs() as logs:
        assert prepare_deployment_patiently(broker.bootstrap, settings) is True
    assert [entry for entry in logs if "attempt" in entry] == []
    with sqlite3.connect(path) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
    assert {"stored_events", "ledger_inbound_keys", "ledger_positions"} <= tables
