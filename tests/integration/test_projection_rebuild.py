"""Rebuilding the balances read model: the same rows as the live projection, index included."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from eventsourcing.persistence import Tracking

from ledger.clock import FixedClock
from ledger.domain.policy import Policy
from ledger.ingest import InboundMessage, IngestService
from ledger.persistence.database import Database
from ledger.persistence.event_store import open_event_store
from ledger.persistence.urls import parse_database_url
from ledger.tailing import run_tail
from projections import balances
from tests.books import invoice, opened, payment

POLICY = Policy(version="test-1")
CLOCK = FixedClock(datetime(2026, 11, 25, 12, 0, tzinfo=UTC))


def _rows(database: Database) -> dict[str, list[tuple[object, ...]]]:
    with database.read() as cursor:
        result = {}
        for table in balances.TABLES:
            cursor.execute(f"SELECT * FROM {table} ORDER BY 1, 2")
            result[table] = [tuple(row) for row in cursor.fetchall()]
        return result


def _history_index_exists(database: Database) -> bool:
    with database.read() as cursor:
        if database.kind == "postgresql":
            cursor.execute(
                "SELECT 1 FROM pg_indexes WHERE indexname = %s", (balances.HISTORY_INDEX,)
            )
        else:
            cursor.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = %s",
                (balances.HISTORY_INDEX,),
            )
        return cursor.fetchone() is not None


def test_rebuild_gives_the_live_rows_and_restores_the_index(database_url: str) -> None:
    target = parse_database_url(database_url)
    store = open_event_store(target, create_table=True)
    database = Database(target)
    try:
        service = IngestService(store, policy=POLICY, clock=CLOCK)
        lines = [opened("o1", "A"), opened("o2", "B", currency="EUR")]
        lines += [invoice(f"i{n}", "A", 100 + n) for n in range(30)]
        lines += [payment(f"p{n}", "A", 500 + n) for n in range(10)]
        lines += [payment("pb", "B", 70, currency="EUR")]
        for start in range(0, len(lines), 7):
            chunk = lines[start : start + 7]
            messages = [InboundMessage("t", 0, start + n, None, raw) for n, raw in enumerate(chunk)]
            service.commit(service.prepare(messages), Tracking("t:0", start + len(chunk)))
        balances.create_tables(database)
        projection = balances.BalancesProjection(database)
        run_tail(store, projection, threading.Event(), until_caught_up=True, batch_max=5)
        live = _rows(database)
        assert len(live["rm_history"]) > len(lines) and len(live["rm_accounts"]) == 2

        balances.clear(database)
        assert not _history_index_exists(database)
        assert _rows(database) == {table: [] for table in balances.TABLES}
        run_tail(store, projection, threading.Event(), until_caught_up=True)
        balances.finish_rebuild(database)
        assert _history_index_exists(database)
        assert _rows(database) == live
        assert projection.position() == store.process_recorder.max_notification_id()
    finally:
        database.close()
        store.close()
