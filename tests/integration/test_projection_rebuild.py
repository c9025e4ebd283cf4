"""Rebuilding a projection aside, on SQLite and PostgreSQL: a new generation of tables is built
while the live one serves queries and keeps applying new events, then swapped in at once."""

from __future__ import annotations

import bisect
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from typing import Any

import orjson
import pytest
from eventsourcing.persistence import StoredEvent, Tracking
from structlog.testing import capture_logs

from ledger.clock import FixedClock
from ledger.domain.account import account_uuid
from ledger.domain.policy import Policy
from ledger.domain.postings import LedgerAccount, natural_balance
from ledger.generations import LiveProjection, live_positions, live_state
from ledger.ingest import InboundMessage, IngestService
from ledger.persistence.database import Database
from ledger.persistence.event_store import EventStore, open_event_store
from ledger.persistence.urls import parse_database_url
from ledger.projection import Generation, UnknownEventType
from ledger.read_models import PROJECTIONS, live_together, prepare, projection_named
from ledger.rebuild import rebuild_aside
from ledger.tailing import run_tail, run_tails
from projections import balances, queries
from projections.balances_tables import HISTORY_INDEX
from tests.books import invoice, model_of, opened, payment
from tests.faults.harness import known_history
from tests.waiting import wait_for

POLICY = Policy(version="test-1")
CLOCK = FixedClock(datetime(2026, 11, 25, 12, 0, tzinfo=UTC))
BALANCES = projection_named("balances")
WAIT_S = 60.0
BALANCES_OBJECTS = (*balances.TABLES, HISTORY_INDEX)


@dataclass
class Feed:
    """An event store fed one inbound line per commit, remembering where each line's events end."""

    store: EventStore
    lines: list[bytes] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.service = IngestService(self.store, policy=POLICY, clock=CLOCK)

    def feed(self, raw: bytes) -> None:
        offset = len(self.lines)
        batch = self.service.prepare([InboundMessage("t", 0, offset, None, raw)])
        self.service.commit(batch, Tracking("t:0", offset + 1))
        self.ends.append(self.store.process_recorder.max_notification_id() or 0)
        self.lines.append(raw)

    def lines_at(self, position: int) -> int:
        """How many lines a read model at `position` reflects (a line's postings come first)."""
        starts = [0, *self.ends[:-1]]
        return bisect.bisect_left(starts, position)


@pytest.fixture
def stores(database_url: str) -> Iterator[Callable[[], EventStore]]:
    """Event stores on the test's database, one per thread that asks, all closed at the end."""
    target = parse_database_url(database_url)
    prepare(target)
    opened_stores: list[EventStore] = []

    def open_store() -> EventStore:
        opened_stores.append(open_event_store(target))
        return opened_stores[-1]

    yield open_store
    for store in opened_stores:
        store.close()


@pytest.fixture
def databases(database_url: str) -> Iterator[Callable[[], Database]]:
    """Read-model connections, one per thread that asks, all closed at the end."""
    opened_databases: list[Database] = []

    def open_database() -> Database:
        opened_databases.append(Database(parse_database_url(database_url)))
        return opened_databases[-1]

    yield open_database
    for database in opened_databases:
        database.close()


def _rows(database: Database, generation: int) -> dict[str, list[tuple[object, ...]]]:
    with database.read() as cursor:
        result = {}
        for table in balances.TABLES:
            cursor.execute(f"SELECT * FROM {Generation(generation).table(table)} ORDER BY 1, 2")
            result[table] = [tuple(row) for row in cursor.fetchall()]
        return result


def _objects(database: Database) -> set[str]:
    """Names of the balances read model's tables and secondary indexes in the database."""
    with database.read() as cursor:
        if database.kind == "postgresql":
            cursor.execute(
                "SELECT tablename FROM pg_tables WHERE tablename LIKE 'rm\\_%%'"
                " UNION SELECT indexname FROM pg_indexes WHERE indexname LIKE 'rm\\_%%'"
                " AND indexname NOT LIKE '%%\\_pkey'"
            )
        else:
            cursor.execute("SELECT name FROM sqlite_master WHERE name LIKE 'rm\\_%' ESCAPE '\\'")
        found = {str(row[0]) for row in cursor.fetchall()}
    # Other registered read models have tables too; these tests rebuild the balances only.
    return {name for name in found if name.rsplit("_g", 1)[0] in BALANCES_OBJECTS}


def _live(database: Database) -> tuple[int, int]:
    with database.read() as cursor:
        live = live_state(cursor, balances.NAME)
        return live.generation.number, live.position


def _builds(database: Database) -> list[tuple[object, ...]]:
    with database.read() as cursor:
        cursor.execute("SELECT name, generation, position FROM ledger_projection_builds")
        return [tuple(row) for row in cursor.fetchall()]


def test_rebuild_gives_the_live_rows_in_new_tables_and_drops_the_old(
    stores: Callable[[], EventStore], databases: Callable[[], Database]
) -> None:
    store, database = stores(), databases()
    feed = Feed(store)
    for raw in [opened("o1", "A"), opened("o2", "B", currency="EUR")]:
        feed.feed(raw)
    for n in range(30):
        feed.feed(invoice(f"i{n}", "A", 100 + n))
    for n in range(10):
        feed.feed(payment(f"p{n}", "A", 500 + n))
    feed.feed(payment("pb", "B", 70, currency="EUR"))
    run_tail(
        store,
        LiveProjection(database, BALANCES),
        threading.Event(),
        batch_max=5,
        until_caught_up=True,
    )
    live = _rows(database, 1)
    assert len(live["rm_history"]) > len(feed.lines) and len(live["rm_accounts"]) == 2
    assert _objects(database) == {*(f"{t}_g1" for t in balances.TABLES), "rm_history_account_g1"}

    rebuilt = rebuild_aside(database, store, BALANCES, batch_max=7)

    head = store.process_recorder.max_notification_id()
    assert (rebuilt.generation, rebuilt.replaced, rebuilt.position) == (2, 1, head)
    assert _live(database) == (2, head)
    assert _rows(database, 2) == live
    assert _objects(database) == {*(f"{t}_g2" for t in balances.TABLES), "rm_history_account_g2"}
    assert _builds(database) == []


def test_projections_tailed_together_catch_up_each_from_its_own_position(
    stores: Callable[[], EventStore], databases: Callable[[], Database]
) -> None:
    """One transaction for every read model: a projection ahead of the others (here the
    balances, tailed alone first) takes nothing twice; the others catch up from their own."""
    store, database = stores(), databases()
    feed = Feed(store)
    for raw in [opened("o1", "A"), invoice("i1", "A", 300), payment("p1", "A", 500)]:
        feed.feed(raw)
    run_tail(store, LiveProjection(database, BALANCES), threading.Event(), until_caught_up=True)
    ahead = _live(database)[1]
    for n in range(6):
        feed.feed(invoice(f"i{n + 2}", "A", 40 + n))
    feed.feed(payment("p2", "A", 1_000))
    together = live_together(database)
    names = [projection.name for projection in PROJECTIONS]
    assert together.position() == 0 < ahead == together.positions()[BALANCES.name]

    handled = run_tails(store, [together], threading.Event(), batch_max=4, until_caught_up=True)

    head = store.process_recorder.max_notification_id()
    assert live_positions(database, names) == dict.fromkeys(names, head)
    assert handled == head  # the round starts at the lowest position: every event read once
    assert _books(queries.balance(database, "A")) == model_of(feed.lines).balances["A"]
    history = queries.history(database, "A", limit=100)
    assert [event["version"] for event in history] == list(range(1, len(history) + 1))


def test_a_batch_read_before_the_swap_is_written_once_to_the_new_generation(
    stores: Callable[[], EventStore], databases: Callable[[], Database]
) -> None:
    store, database = stores(), databases()
    feed = Feed(store)
    for raw in [opened("o1", "A"), invoice("i1", "A", 300), payment("p1", "A", 500)]:
        feed.feed(raw)
    live = LiveProjection(database, BALANCES)
    run_tail(store, live, threading.Event(), until_caught_up=True)
    feed.feed(invoice("i2", "A", 40))
    feed.feed(invoice("i3", "A", 2))
    # The live worker reads the next batch from the log ...
    stale = store.process_recorder.select_notifications(
        start=live.position(), limit=100, inclusive_of_start=False
    )
    assert len(stale) == 2
    # ... a rebuild swaps in meanwhile (it has those events too) ...
    rebuild_aside(database, store, BALANCES)
    feed.feed(invoice("i4", "A", 1))
    # ... then the worker writes its batch: nothing of it twice, nothing into the dropped tables.
    live.handle(stale)
    run_tail(store, live, threading.Event(), until_caught_up=True)
    assert _books(queries.balance(database, "A")) == model_of(feed.lines).balances["A"]
    history = queries.history(database, "A", limit=100)
    assert [event["version"] for event in history] == list(range(1, len(history) + 1))
    assert _live(database) == (2, store.process_recorder.max_notification_id())


def _insert_unknown_event(store: EventStore) -> int:
    """An event the projection has never heard of, as a newer writer might have stored it."""
    state = {"account_id": "Z", "timestamp": "2026-11-25T10:00:00+00:00", "postings": []}
    store.process_recorder.insert_events(
        [
            StoredEvent(
                originator_id=account_uuid("Z"),
                originator_version=1,
                topic="chargeback_reversed",
                state=orjson.dumps(state),
            )
        ]
    )
    return store.process_recorder.max_notification_id() or 0


def test_a_live_run_skips_an_unknown_event_type_and_a_rebuild_refuses_it(
    stores: Callable[[], EventStore], databases: Callable[[], Database]
) -> None:
    store, database = stores(), databases()
    feed = Feed(store)
    feed.feed(opened("o1", "A"))
    unknown_at = _insert_unknown_event(store)
    feed.feed(invoice("i1", "A", 300))
    live = LiveProjection(database, BALANCES)
    with capture_logs() as logs:
        run_tail(store, live, threading.Event(), until_caught_up=True)
    skipped = [entry for entry in logs if entry["event"] == "unknown event type skipped"]
    assert [(e["type"], e["position"]) for e in skipped] == [("chargeback_reversed", unknown_at)]
    assert _live(database) == (1, store.process_recorder.max_notification_id())
    assert queries.balance(database, "A")["receivable"] == 300
    before = _objects(database)

    with pytest.raises(UnknownEventType, match="chargeback_reversed"):
        rebuild_aside(database, store, BALANCES)

    assert _live(database) == (1, store.process_recorder.max_notification_id())
    assert _objects(database) == before and _builds(database) == []


@dataclass
class Answer:
    """One query answer, and whether it was asked once the swap had happened."""

    kind: str
    account: str
    result: dict[str, Any] | None
    after_swap: bool


def test_rebuild_while_queries_run_and_the_live_worker_applies_new_events(
    stores: Callable[[], EventStore], databases: Callable[[], Database]
) -> None:
    lines = known_history(random.Random(14), accounts=12, events=320)
    feed = Feed(stores())
    for raw in lines[:160]:
        feed.feed(raw)
    stop_worker, stop_queries, swapped, fed_during = (threading.Event() for _ in range(4))
    failures: list[BaseException] = []
    answers: list[Answer] = []

    def guarded(work: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                work()
            except BaseException as error:  # reported by the main thread
                failures.append(error)

        return run

    def ingest() -> None:
        rest = lines[160:]
        for index, raw in enumerate(rest):
            if index == len(rest) // 2:
                assert swapped.wait(WAIT_S), "no swap"
            feed.feed(raw)
            if index == 10:
                fed_during.set()

    def live_worker() -> None:
        database = databases()
        handlers = [LiveProjection(database, BALANCES)]
        run_tails(stores(), handlers, stop_worker, batch_max=10, idle_s=0.005)

    def ask() -> None:
        database = databases()
        accounts = sorted({str(fact.get("account_id")) for fact in _facts(lines[:40])})
        rng = random.Random(7)
        while not stop_queries.is_set():
            after = swapped.is_set()
            account = rng.choice(accounts)
            try:
                answer: dict[str, Any] | None = queries.balance(database, account)
            except queries.NotFound:
                answer = None
            answers.append(Answer("balance", account, answer, after))
            answers.append(Answer("trial", "", queries.trial_balance(database), after))

    threads = [
        threading.Thread(target=guarded(work), daemon=True) for work in (live_worker, ask, ingest)
    ]
    for thread in threads:
        thread.start()
    database, store = databases(), stores()
    wait_for(lambda: bool(answers), "a first answer", WAIT_S)
    applied_during: list[int] = []

    def progress(position: int) -> None:
        if not applied_during:
            # The rebuild is under way: let ingest and the live worker move on meanwhile.
            assert fed_during.wait(WAIT_S)
            target = feed.ends[-1]
            wait_for(lambda: _live(database)[1] >= target, "the live worker to apply", WAIT_S)
            applied_during.append(target)
        time.sleep(0.002)

    rebuilt = rebuild_aside(databases(), stores(), BALANCES, batch_max=7, progress=progress)
    swapped.set()
    asked = len(answers)
    wait_for(lambda: len(answers) > asked + 20 or bool(failures), "answers after the swap", WAIT_S)
    threads[2].join(WAIT_S)
    head = store.process_recorder.max_notification_id() or 0
    wait_for(
        lambda: _live(database) == (2, head) or bool(failures), "the live worker at head", WAIT_S
    )
    stop_queries.set()
    stop_worker.set()
    for thread in threads:
        thread.join(WAIT_S)
    assert not failures, failures
    assert applied_during and rebuilt.generation == 2 and rebuilt.position < head

    # Every answer equals the independent model at the position it reports.
    @cache
    def model_at(position: int) -> Any:
        return model_of(feed.lines[: feed.lines_at(position)])

    currencies = {
        fact["account_id"]: fact["currency"]
        for fact in _facts(lines)
        if fact.get("type") == "account.opened"
    }
    for answer in answers:
        if answer.kind == "balance":
            if answer.result is None:
                continue  # not opened yet (the answer names no position to check it at)
            model = model_at(answer.result["position"]).balances
            assert _books(answer.result) == model[answer.account], answer
        else:
            assert answer.result is not None
            model = model_at(answer.result["position"]).balances
            expected: Counter[tuple[str, str]] = Counter()
            for account, books in model.items():
                for name, value in books.items():
                    expected[(currencies[account], name)] += value
            seen = {
                (currency, name): natural_balance(LedgerAccount(name), raw)
                for currency, entry in answer.result["currencies"].items()
                for name, raw in entry["accounts"].items()
                if raw
            }
            assert seen == {key: value for key, value in expected.items() if value}, answer
    assert any(a.after_swap for a in answers) and any(not a.after_swap for a in answers)

    # After the swap the live worker carried on: every event once, none missed, books complete.
    every = [n.id for n in store.process_recorder.select_notifications(0, 10_000)]
    with database.read() as cursor:
        cursor.execute(f"SELECT position FROM {Generation(2).table(balances.HISTORY)}")
        assert sorted(int(row[0]) for row in cursor.fetchall()) == every
    final = model_of(feed.lines).balances
    for account, books in final.items():
        assert _books(queries.balance(database, account)) == books, account
    assert _objects(database) == {*(f"{t}_g2" for t in balances.TABLES), "rm_history_account_g2"}


def _books(answer: dict[str, Any]) -> dict[str, int]:
    """The non-zero balances of a balance answer."""
    return {
        name: value
        for name, value in answer.items()
        if isinstance(value, int) and name != "position" and value
    }


def _facts(lines: list[bytes]) -> Iterator[dict[str, Any]]:
    """The lines that parse as JSON objects."""
    for raw in lines:
        try:
            fact = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if isinstance(fact, dict):
            yield fact
