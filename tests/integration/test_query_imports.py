"""A query imports only what it uses: no Kafka client, no pydantic, no structlog, and no
PostgreSQL driver on SQLite (they cost more than a query's whole time budget)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import orjson
import pytest

from ledger import read_models
from ledger.persistence.database import Database
from ledger.persistence.event_store import open_event_store
from ledger.persistence.urls import parse_database_url
from ledger.tailing import run_tail
from tests.integration.test_read_only_queries import write_books

NEVER_ON_A_QUERY = {"kafka", "pydantic", "pydantic_settings", "structlog", "eventsourcing", "rich"}

PROBE = """
import sys
sys.argv = ["ledger", *sys.argv[1:]]
from ledger.cli import main
try:
    main()
except SystemExit as stop:
    code = stop.code
else:
    code = 0
import orjson
sys.stderr.write(orjson.dumps({"code": code, "modules": sorted(sys.modules)}).decode() + "\\n")
"""


def write_every_read_model(database_url: str) -> None:
    """The books of `write_books`, projected by every registered read model."""
    write_books(database_url)
    target = parse_database_url(database_url)
    store = open_event_store(target)
    database = Database(target)
    try:
        together = read_models.live_together(database)
        run_tail(store, together, threading.Event(), until_caught_up=True)
    finally:
        database.close()
        store.close()


def loaded_by(args: list[str], database_url: str) -> tuple[int, set[str], bytes]:
    """Run one query in a fresh interpreter: its exit code, top-level modules and stdout."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        env=dict(os.environ, LEDGER_DATABASE_URL=database_url),
        capture_output=True,
        timeout=60,
        check=False,
    )
    report = orjson.loads(done.stderr.splitlines()[-1])
    return report["code"], {name.split(".")[0] for name in report["modules"]}, done.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["balance", "A", "--json"],
        ["history", "A", "--json"],
        ["trial-balance", "--json"],
        ["balance", "A", "--json", "--wait", "--timeout", "5"],
        ["overpayments", "--json"],
        ["overpayments", "--open", "--account", "A", "--json", "--wait", "--timeout", "5"],
        ["overpayments", "show", "A:op:4", "--json"],
        ["follow-ups", "--json"],
        ["disputes", "--json"],
        ["disputes", "--open", "--rep", "ann", "--account", "A", "--json", "--wait"],
        ["disputes", "feedback-report", "--since", "2026-11-01", "--json"],
        ["follow-ups", "--due", "--at", "2026-11-25T12:00:00Z", "--owner", "x", "--json"],
    ],
)
def test_a_query_loads_only_what_it_uses(database_url: str, args: list[str]) -> None:
    write_every_read_model(database_url)
    code, modules, stdout = loaded_by(args, database_url)
    assert code == 0
    assert orjson.loads(stdout)  # it answered
    assert modules & NEVER_ON_A_QUERY == set()
    if database_url.startswith("sqlite"):
        assert "psycopg" not in modules
    else:
        assert "psycopg" in modules


def test_a_refused_query_loads_no_more(database_url: str) -> None:
    write_books(database_url)
    code, modules, _ = loaded_by(["balance", "NOBODY", "--json"], database_url)
    assert code == 2
    assert modules & NEVER_ON_A_QUERY == set()


def test_help_loads_no_more(tmp_path: object) -> None:
    code, modules, stdout = loaded_by(["--help"], "sqlite:///nowhere.db")
    assert code == 0 and b"balance" in stdout
    assert modules & (NEVER_ON_A_QUERY | {"psycopg"}) == set()
