"""Schema preparation on a fresh PostgreSQL database: many processes at once, all succeed."""

from __future__ import annotations

import multiprocessing
import traceback
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier

import psycopg

from ledger.deploy_setup import prepare_database
from ledger.persistence.urls import parse_database_url
from projections import balances

PREPARERS = 8
WAIT_S = 120.0

EXPECTED_TABLES = {
    "ledger_events",
    "ledger_snapshots",
    "ledger_tracking",
    "ledger_inbound_keys",
    "ledger_positions",
    *balances.TABLES,
}


def _prepare_together(database_url: str, barrier: Barrier, outcomes: Queue[str]) -> None:
    """In a child process: wait for every other preparer, then prepare the schema."""
    try:
        target = parse_database_url(database_url)
        barrier.wait(timeout=WAIT_S)
        prepare_database(target)
        outcomes.put("ok")
    except BaseException:
        outcomes.put(traceback.format_exc())


def prepare_at_once(database_url: str, processes: int) -> list[str]:
    """Run `processes` schema preparations released at the same moment; their outcomes."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes)
    outcomes: Queue[str] = context.Queue()
    children = [
        context.Process(target=_prepare_together, args=(database_url, barrier, outcomes))
        for _ in range(processes)
    ]
    for child in children:
        child.start()
    results = [outcomes.get(timeout=WAIT_S) for _ in children]
    for child in children:
        child.join(timeout=WAIT_S)
    return results


def test_eight_processes_prepare_a_fresh_database_at_once(postgres_url: str) -> None:
    outcomes = prepare_at_once(postgres_url, PREPARERS)
    assert [o for o in outcomes if o != "ok"] == []
    with psycopg.connect(parse_database_url(postgres_url).conninfo) as connection:
        tables = {
            row[0]
            for row in connection.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            )
        }
        position_rows = connection.execute("SELECT name, position FROM ledger_positions").fetchall()
    assert tables >= EXPECTED_TABLES
    assert position_rows == [(balances.POSITION_NAME, 0)]
