"""The SQLite event store's log is checkpointed by a thread of the writing process, never inside
a commit: the writer's auto-checkpoint is off, the thread keeps the log small, and closing the
store stops the thread."""

from __future__ import annotations

import sqlite3
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from eventsourcing.persistence import Tracking

from ledger.clock import FixedClock
from ledger.domain.policy import Policy
from ledger.ingest import InboundMessage, IngestService
from ledger.persistence.database import Database
from ledger.persistence.event_store import open_event_store
from ledger.persistence.urls import parse_database_url
from ledger.read_models import live, prepare_tables
from ledger.tailing import run_tail
from projections import queries
from tests.books import invoice, opened, payment

POLICY = Policy(version="test-1")
CLOCK = FixedClock(datetime(2026, 11, 25, 12, 0, tzinfo=UTC))
ACCOUNTS = 200


def _checkpoint_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "sqlite-wal-checkpoints"]


def _log_frames(path: Path) -> int:
    """Frames in the log not yet copied into the database file (a PASSIVE checkpoint's answer)."""
    with sqlite3.connect(path) as connection:
        _busy, log_frames, checkpointed = connection.execute(
            "PRAGMA wal_checkpoint(PASSIVE)"
        ).fetchone()
    return int(log_frames) - int(checkpointed)


def test_the_writer_never_checkpoints_and_the_thread_keeps_the_log_checkpointed(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ledger.db"
    url = f"sqlite:///{path}"
    store = open_event_store(parse_database_url(url), create_table=True)
    service = IngestService(store, policy=POLICY, clock=CLOCK)
    assert _checkpoint_threads() == []  # started by the first write, not by opening
    position = 0
    for round_ in range(5):  # each round touches every account: hundreds of index pages
        lines = []
        for n in range(ACCOUNTS):
            account = f"W{n:04d}"
            if round_ == 0:
                lines.append(opened(f"o-{account}", account))
            lines.append(invoice(f"i{round_}-{account}", account, 1_000))
            lines.append(payment(f"p{round_}-{account}", account, 1_500))
        batch = service.prepare(
            [
                InboundMessage("payments.inbound", 0, position + i, None, line)
                for i, line in enumerate(lines)
            ]
        )
        position += len(lines)
        service.commit(batch, Tracking("payments.inbound:t:0", position))
        assert batch.applied == len(lines) and not batch.dead_letters
    recorder = store.key_recorder
    checkpointer = recorder._checkpointer  # type: ignore[attr-defined]
    assert checkpointer is not None and len(_checkpoint_threads()) == 1
    with store.process_recorder.datastore.transaction(commit=False) as cursor:  # type: ignore[attr-defined]
        cursor.execute("PRAGMA wal_autocheckpoint")
        assert cursor.fetchone()[0] == 0  # the writing connection leaves checkpoints alone
    deadline = time.monotonic() + 5
    while checkpointer.checkpoints == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert checkpointer.checkpoints >= 1

    store.close()

    assert _checkpoint_threads() == []
    assert _log_frames(path) == 0  # the last checkpoint copied every commit into the file
    # Every event is there, read back through the read model.
    database = Database(parse_database_url(url))
    prepare_tables(database)
    reopened = open_event_store(parse_database_url(url))
    try:
        run_tail(reopened, live(database, "balances"), threading.Event(), until_caught_up=True)
        assert queries.balance(database, "W0007")["cash"] == 5 * 1_500
    finally:
        reopened.close()
        database.close()
