"""The projection registry, on SQLite and PostgreSQL: the projections worker runs every registered
projection at its own position; `ledger projections status` and `rebuild` from the command line."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime

import orjson
import pytest
from eventsourcing.persistence import Notification, StoredEvent, Tracking

from ledger import read_models, workers
from ledger.clock import FixedClock
from ledger.domain.account import account_uuid
from ledger.domain.event_names import event_name
from ledger.domain.policy import Policy
from ledger.generations import live_positions
from ledger.ingest import InboundMessage, IngestService
from ledger.persistence.database import Cursor, Database
from ledger.persistence.event_store import EventStore, open_event_store
from ledger.persistence.urls import parse_database_url
from ledger.projection import Generation
from ledger.settings import Settings
from ledger.tailing import run_tail
from projections import balances, queries
from tests.books import invoice, model_of, opened, payment
from tests.waiting import wait_for

POLICY = Policy(version="test-1")
CLOCK = FixedClock(datetime(2026, 11, 25, 12, 0, tzinfo=UTC))
LEDGER = [sys.executable, "-m", "ledger"]
COUNTS = "test_event_counts"


class EventCounts:
    """A second, tiny projection: how many events of each type the log holds."""

    name = "event_counts"
    tables = (COUNTS,)
    event_types = balances.EVENT_TYPES

    def create_statements(self, generation: Generation) -> tuple[str, ...]:
        return (
            f"CREATE TABLE IF NOT EXISTS {generation.table(COUNTS)}"
            " (type TEXT PRIMARY KEY, events BIGINT NOT NULL)",
        )

    def index_statements(self, generation: Generation) -> tuple[str, ...]:
        return ()

    def apply(
        self,
        database: Database,
        cursor: Cursor,
        generation: Generation,
        notifications: Sequence[Notification],
    ) -> None:
        table = generation.table(COUNTS)
        counts = Counter(event_name(n.topic) for n in notifications)
        database.insert_rows(
            cursor,
            table,
            ("type", "events"),
            list(counts.items()),
            pg_types=("text", "bigint"),
            suffix=f"ON CONFLICT (type) DO UPDATE SET events = {table}.events + excluded.events",
        )


@pytest.fixture
def store(database_url: str) -> Iterator[EventStore]:
    read_models.prepare(parse_database_url(database_url))
    event_store = open_event_store(parse_database_url(database_url))
    yield event_store
    event_store.close()


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    connection = Database(parse_database_url(database_url))
    yield connection
    connection.close()


def ingest(store: EventStore, lines: list[bytes], first_offset: int) -> None:
    service = IngestService(store, policy=POLICY, clock=CLOCK)
    messages = [InboundMessage("t", 0, first_offset + n, None, raw) for n, raw in enumerate(lines)]
    service.commit(service.prepare(messages), Tracking("t:0", first_offset + len(lines)))


def head(store: EventStore) -> int:
    return store.process_recorder.max_notification_id() or 0


LINES = [
    opened("o1", "A"),
    opened("o2", "B", currency="EUR"),
    invoice("i1", "A", 300),
    payment("p1", "A", 500),
    payment("p2", "B", 70, currency="EUR"),
]
MORE = [invoice("i2", "A", 40), payment("p3", "A", 100), invoice("i3", "B", 9, currency="EUR")]


def test_the_worker_runs_every_registered_projection_at_its_own_position(
    database_url: str, store: EventStore, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    ingest(store, LINES, 0)
    run_tail(store, read_models.live(database, "balances"), threading.Event(), until_caught_up=True)
    balances_at = head(store)
    ingest(store, MORE, len(LINES))
    # A second projection registered later starts from nothing; balances go on from where they are.
    monkeypatch.setattr(read_models, "PROJECTIONS", (*read_models.PROJECTIONS, EventCounts()))
    monkeypatch.setattr(workers, "tune_gc_for_throughput", lambda: None)
    read_models.prepare_tables(database)
    names = ["balances", "event_counts"]
    assert live_positions(database, names) == {"balances": balances_at, "event_counts": 0}

    stop = threading.Event()
    worker = threading.Thread(
        target=workers.run_worker,
        args=("projections", Settings(database_url=database_url), stop),
        daemon=True,
    )
    worker.start()
    try:
        wait_for(
            lambda: (
                not worker.is_alive()
                or live_positions(database, names) == dict.fromkeys(names, head(store))
            ),
            "every projection at the head",
            60,
        )
        assert worker.is_alive(), "the projections worker stopped by itself"
    finally:
        stop.set()
        worker.join(30)
    assert not worker.is_alive(), "the projections worker ignored the stop request"

    stored = store.process_recorder.select_notifications(0, 1000)
    with database.read() as cursor:
        cursor.execute(f"SELECT type, events FROM {Generation(1).table(COUNTS)}")
        counted = {str(type_name): int(events) for type_name, events in cursor.fetchall()}
    assert counted == Counter(event_name(n.topic) for n in stored)
    for account, books in model_of(LINES + MORE).balances.items():
        answer = queries.balance(database, account)
        assert {
            k: v for k, v in answer.items() if isinstance(v, int) and k != "position" and v
        } == (books)
    history = queries.history(database, "A", limit=100)
    assert [event["version"] for event in history] == list(range(1, len(history) + 1))


def run_cli(args: list[str], database_url: str) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ, LEDGER_DATABASE_URL=database_url, LEDGER_LOG_FORMAT="json")
    return subprocess.run([*LEDGER, *args], env=env, capture_output=True, timeout=120, check=False)


def test_status_shows_each_read_model_position_and_lag_and_rebuild_catches_up(
    database_url: str, store: EventStore, database: Database
) -> None:
    ingest(store, LINES, 0)
    live = read_models.live(database, "balances")
    first = store.process_recorder.select_notifications(0, 3)
    live.handle(first)
    latest = head(store)

    status = run_cli(["projections", "status", "--json"], database_url)
    assert status.returncode == 0, status.stderr.decode()
    # Only the balances were fed; every other registered read model is still at 0.
    assert orjson.loads(status.stdout) == [
        {
            "name": name,
            "state": "live",
            "generation": 1,
            "position": first[-1].id if name == "balances" else 0,
            "head": latest,
            "lag": latest - first[-1].id if name == "balances" else latest,
        }
        for name in read_models.names()
    ]
    table = run_cli(["projections", "status"], database_url)
    assert table.returncode == 0, table.stderr.decode()
    words = table.stdout.decode()
    assert all(word in words for word in ("name", "state", "generation", "position", "lag"))

    rebuilt = run_cli(["projections", "rebuild", "balances", "--json"], database_url)
    assert rebuilt.returncode == 0, rebuilt.stderr.decode()
    answer = orjson.loads(rebuilt.stdout)
    assert answer["events"] == latest
    assert answer["projections"] == [
        {"name": "balances", "generation": 2, "replaced": 1, "events": latest, "position": latest}
    ]
    after = orjson.loads(run_cli(["projections", "status", "--json"], database_url).stdout)
    assert [(row["name"], row["generation"], row["position"], row["lag"]) for row in after] == [
        ("balances", 2, latest, 0),
        *((name, 1, 0, latest) for name in read_models.names() if name != "balances"),
    ]

    everything = run_cli(["projections", "rebuild", "--json"], database_url)
    assert everything.returncode == 0, everything.stderr.decode()
    assert [
        (row["name"], row["generation"], row["position"])
        for row in orjson.loads(everything.stdout)["projections"]
    ] == [(name, 3 if name == "balances" else 2, latest) for name in read_models.names()]


def test_rebuild_refuses_an_unknown_event_type_naming_it(
    database_url: str, store: EventStore, database: Database
) -> None:
    ingest(store, LINES, 0)
    store.process_recorder.insert_events(
        [
            StoredEvent(
                originator_id=account_uuid("Z"),
                originator_version=1,
                topic="chargeback_reversed",
                state=orjson.dumps({"account_id": "Z", "timestamp": "2026-11-25T10:00:00+00:00"}),
            )
        ]
    )
    refused = run_cli(["projections", "rebuild", "--json"], database_url)
    assert refused.returncode == 2
    assert "chargeback_reversed" in refused.stderr.decode() and not refused.stdout
    unknown = run_cli(["projections", "rebuild", "nope"], database_url)
    assert unknown.returncode == 2 and "unknown projection 'nope'" in unknown.stderr.decode()
    rows = orjson.loads(run_cli(["projections", "status", "--json"], database_url).stdout)
    assert [(row["state"], row["generation"]) for row in rows] == [("live", 1)] * len(
        read_models.names()
    )
