"""The ingest service against the real event store: one contract suite, SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from eventsourcing.persistence import IntegrityError, Tracking

from ledger.clock import FixedClock
from ledger.domain.account import Account, account_uuid
from ledger.domain.policy import Policy
from ledger.ingest import InboundMessage, IngestService, PreparedBatch
from ledger.persistence.database import Database
from ledger.persistence.event_store import EventStore, open_event_store
from ledger.persistence.outcomes import CommandOutcome
from ledger.persistence.urls import parse_database_url
from ledger.read_models import live, prepare_tables
from ledger.tailing import run_tail
from projections import queries
from tests.books import expected_balances, invoice, opened, payment

POLICY = Policy(version="test-1")
CLOCK = FixedClock(datetime(2026, 11, 25, 12, 0, tzinfo=UTC))


@pytest.fixture
def store(database_url: str) -> Iterator[EventStore]:
    event_store = open_event_store(parse_database_url(database_url), create_table=True)
    yield event_store
    event_store.close()


def messages(lines: list[bytes], start_offset: int = 0) -> list[InboundMessage]:
    return [
        InboundMessage("payments.inbound", 0, start_offset + index, b"k", raw)
        for index, raw in enumerate(lines)
    ]


def ingest(service: IngestService, lines: list[bytes], start: int = 0) -> PreparedBatch:
    batch = service.prepare(messages(lines, start))
    service.commit(batch, Tracking("payments.inbound:t:0", start + len(lines)))
    return batch


def project(database_url: str, store: EventStore) -> Database:
    database = Database(parse_database_url(database_url))
    prepare_tables(database)
    import threading

    run_tail(store, live(database, "balances"), threading.Event(), until_caught_up=True)
    return database


def test_overpayment_books_and_read_model(database_url: str, store: EventStore) -> None:
    service = IngestService(store, policy=POLICY, clock=CLOCK)
    lines = [opened("e1", "A"), invoice("e2", "A", 12_000), payment("e3", "A", 15_000)]
    batch = ingest(service, lines)
    assert batch.applied == 3 and not batch.dead_letters
    database = project(database_url, store)
    answer = queries.balance(database, "A")
    assert answer["receivable"] == 0
    assert answer["customer_credit"] == 3_000
    assert answer["cash"] == 15_000
    assert answer["revenue"] == 12_000
    assert answer["position"] == store.process_recorder.max_notification_id()
    trial = queries.trial_balance(database)
    assert trial["currencies"]["USD"]["total"] == 0
    assert trial["currencies"]["USD"]["accounts"] == {
        "cash": 15_000,
        "customer_credit": -3_000,
        "receivable": 0,
        "revenue": -12_000,
    }
    events = queries.history(database, "A", limit=100)
    assert [event["type"] for event in events] == [
        "account_opened",
        "invoice_issued",
        "payment_received",
        "overpayment_detected",
    ]
    assert events[2]["postings"] == [
        {"debit": "cash", "credit": "receivable", "amount": 12_000, "currency": "USD"},
        {"debit": "cash", "credit": "customer_credit", "amount": 3_000, "currency": "USD"},
    ]
    database.close()


def test_same_event_id_twice_changes_nothing(database_url: str, store: EventStore) -> None:
    service = IngestService(store, policy=POLICY, clock=CLOCK)
    lines = [opened("e1", "A"), payment("e2", "A", 500)]
    ingest(service, lines)
    # The same facts at new offsets, in one batch and within a batch, by a fresh service.
    again = IngestService(store, policy=POLICY, clock=CLOCK)
    batch = ingest(again, [*lines, payment("e2", "A", 500)], start=2)
    assert batch.applied == 0
    assert batch.duplicates == 3
    database = project(database_url, store)
    assert queries.balance(database, "A")["customer_credit"] == 500
    database.close()


def test_bad_messages_become_dead_letters(store: EventStore) -> None:
    service = IngestService(store, policy=POLICY, clock=CLOCK)
    lines = [
        opened("e1", "A"),
        b"not json",
        b'{"type": "payment.received"}',
        payment("e2", "NOBODY", 100),
        payment("e3", "A", 100, currency="EUR"),
        payment("e4", "A", 100),
        b'{"event_id":"r1","processor":"p","account_id":"A","occurred_at":"2026-11-25T10:00:00Z",'
        b'"type":"refund.failed","refund_id":"r","reason":"card closed"}',
    ]
    batch = ingest(service, lines)
    kinds = [(letter.message.offset, letter.kind) for letter in batch.dead_letters]
    assert sorted(kinds) == [
        (1, "not_json"),
        (2, "contract"),
        (3, "unknown_account"),
        (4, "domain_rule"),
        (6, "domain_rule"),
    ]
    assert batch.applied == 2
    reasons = {letter.message.offset: letter.reason for letter in batch.dead_letters}
    assert "NOBODY" in reasons[3]
    assert "no refund r on account A" in reasons[6]


def test_opening_an_open_account_is_refused(store: EventStore) -> None:
    """Whether the account is in the store only, in the cache, or opened earlier in the batch."""
    ingest(IngestService(store, policy=POLICY, clock=CLOCK), [opened("e1", "A")])
    fresh = IngestService(store, policy=POLICY, clock=CLOCK)  # knows A only from the store
    batch = ingest(
        fresh,
        [opened("e2", "A"), opened("e3", "B"), opened("e4", "B"), opened("e5", "C")],
        start=1,
    )
    refused = {letter.event_id: letter for letter in batch.dead_letters}
    assert sorted(refused) == ["e2", "e4"]
    assert all(letter.kind == "domain_rule" for letter in refused.values())
    assert "account A is already open" in refused["e2"].reason
    assert "account B is already open" in refused["e4"].reason
    assert batch.applied == 2
    again = ingest(fresh, [opened("e6", "C")], start=5)  # C now in the cache
    assert [letter.reason for letter in again.dead_letters] == ["account C is already open"]
    for account_id in ("A", "B", "C"):
        versions = store.repository.get(account_uuid(account_id)).version
        assert versions == 1, account_id


def test_redelivered_position_is_refused(store: EventStore) -> None:
    service = IngestService(store, policy=POLICY, clock=CLOCK)
    ingest(service, [opened("e1", "A")])
    batch = service.prepare(messages([payment("e2", "A", 100)], 0))
    with pytest.raises(IntegrityError):
        service.commit(batch, Tracking("payments.inbound:t:0", 1))
    assert store.process_recorder.has_tracking_id("payments.inbound:t:0", 1)


def test_version_conflict_then_reload(store: EventStore) -> None:
    first = IngestService(store, policy=POLICY, clock=CLOCK)
    second = IngestService(store, policy=POLICY, clock=CLOCK)
    first.commit(first.prepare(messages([opened("e1", "A")])), Tracking("x:0", 1))
    second.commit(second.prepare(messages([invoice("e2", "A", 100)], 1)), Tracking("y:0", 2))
    stale = first.prepare(messages([payment("e3", "A", 300)], 1))
    with pytest.raises(IntegrityError):
        first.commit(stale, Tracking("x:0", 2))
    first.clear()  # as the consumer does after a failed commit
    first.commit(first.prepare(messages([payment("e3", "A", 300)], 1)), Tracking("x:0", 2))
    account = store.repository.get(account_uuid("A"))
    assert isinstance(account, Account)
    assert account.balances == {
        "receivable": 0,
        "revenue": -100,
        "cash": 300,
        "customer_credit": -200,
    }


def test_replay_gives_the_same_state(store: EventStore) -> None:
    service = IngestService(store, policy=POLICY, clock=CLOCK)
    lines = [opened("e1", "A"), invoice("e2", "A", 700), payment("e3", "A", 1_000)]
    held = ingest(service, lines).accounts["A"]
    replayed = store.repository.get(account_uuid("A"))
    assert isinstance(replayed, Account)
    assert replayed.balances == held.balances
    assert replayed.version == held.version == 4
    assert replayed.balances == {f"{name}": value for name, value in held.balances.items()}
    model = expected_balances(lines)["A"]
    assert replayed.balances["cash"] == model["cash"]
    assert -replayed.balances["customer_credit"] == model["customer_credit"]


def test_ingest_snapshots_long_accounts(store: EventStore) -> None:
    service = IngestService(store, policy=POLICY, clock=CLOCK)
    lines = [opened("e1", "A")] + [payment(f"p{n}", "A", n + 1) for n in range(249)]
    for start in range(0, len(lines), 60):
        held = ingest(service, lines[start : start + 60], start=start).accounts["A"]
    assert store.snapshots is not None
    snapshots = list(store.snapshots.get(account_uuid("A")))
    # 499 events (each payment overpays: payment + overpayment): one snapshot per 100 passed,
    # taken at the end of the batch that passed it.
    assert [snapshot.originator_version // 100 for snapshot in snapshots] == [1, 2, 3, 4]
    loaded = store.repository.get(account_uuid("A"))
    assert isinstance(loaded, Account)
    assert (loaded.version, loaded.balances) == (held.version, held.balances)
    assert loaded.version == 499
    assert loaded.balances["customer_credit"] == -sum(range(1, 250))


def test_balance_as_of_a_past_time(database_url: str, store: EventStore) -> None:
    clock = FixedClock(datetime(2026, 11, 1, 9, 0, tzinfo=UTC))
    service = IngestService(store, policy=POLICY, clock=clock)
    ingest(service, [opened("e1", "A"), invoice("e2", "A", 1_000)])
    clock.advance(timedelta(days=1))
    ingest(service, [payment("e3", "A", 1_500)], start=2)
    database = project(database_url, store)
    before = queries.balance(database, "A", at=datetime(2026, 11, 1, 12, 0, tzinfo=UTC))
    assert (before["receivable"], before["customer_credit"], before["cash"]) == (1_000, 0, 0)
    after = queries.balance(database, "A", at=datetime(2026, 11, 2, 9, 0, tzinfo=UTC))
    assert (after["receivable"], after["customer_credit"], after["cash"]) == (0, 500, 1_500)
    assert after["as_of"] == "2026-11-02T09:00:00+00:00"
    assert queries.balance(database, "A")["customer_credit"] == 500
    database.close()


def test_a_held_batch_counts_while_the_next_is_prepared(store: EventStore) -> None:
    """Pipelined commit: the batch prepared on top of one still being committed sees its keys
    as seen and its accounts as loaded, even when they were dropped from the cache."""
    service = IngestService(store, policy=POLICY, clock=CLOCK, cache_max=1)
    first = service.prepare(
        messages([opened("e1", "A"), opened("e2", "B"), invoice("e3", "A", 500)])
    )
    service.hold(first)  # handed to a commit that has not run yet; A was dropped from the cache
    second = service.prepare(
        messages([invoice("e3", "A", 500), payment("e4", "A", 700), payment("e5", "B", 50)], 3)
    )
    assert second.duplicates == 1 and second.applied == 2 and not second.dead_letters
    service.hold(second)
    service.commit(first, Tracking("payments.inbound:t:0", 3))
    service.release(first)
    service.commit(second, Tracking("payments.inbound:t:0", 6))
    service.release(second)
    history = [opened("e1", "A"), opened("e2", "B"), invoice("e3", "A", 500)]
    expected = expected_balances([*history, payment("e4", "A", 700), payment("e5", "B", 50)])
    for account_id in ("A", "B"):
        account = store.repository.get(account_uuid(account_id))
        assert isinstance(account, Account)
        natural = {str(k): account.balance(k).amount_minor for k in account.balances}
        assert {k: v for k, v in natural.items() if v} == expected[account_id]
    # Released: the store answers for them now, and nothing stays held.
    third = service.prepare(messages([payment("e4", "A", 700), opened("e6", "A")], 6))
    assert third.duplicates == 1 and [d.kind for d in third.dead_letters] == ["domain_rule"]


def test_snapshots_are_encoded_when_the_batch_is_prepared(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The next batch moves the accounts on while one is committed: its snapshot must show the
    account as that batch left it."""
    monkeypatch.setattr("ledger.limits.snapshot_interval_events", 2)
    service = IngestService(store, policy=POLICY, clock=CLOCK)
    first = service.prepare(messages([opened("e1", "A"), invoice("e2", "A", 500)]))
    assert len(first.snapshots) == 1
    service.hold(first)
    second = service.prepare(messages([invoice("e3", "A", 300)], 2))
    service.commit(first, Tracking("payments.inbound:t:0", 2))
    service.commit(second, Tracking("payments.inbound:t:0", 3))
    assert store.snapshots is not None
    [snapshot] = store.snapshots.get(account_uuid("A"))
    assert snapshot.originator_version == 2
    assert snapshot.state["balances"] == {"receivable": 500, "revenue": -500}
    account = store.repository.get(account_uuid("A"))
    assert isinstance(account, Account) and account.version == 3
    assert account.balances == {"receivable": 800, "revenue": -800}


def test_snapshots_commit_with_their_batch_and_a_redone_one_keeps_the_first(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A snapshot is written in its batch's transaction: none without the batch's events, and a
    batch redone after its commit was lost (the snapshot already there) commits all the same."""
    monkeypatch.setattr("ledger.limits.snapshot_interval_events", 2)
    assert store.snapshots is not None
    service = IngestService(store, policy=POLICY, clock=CLOCK)
    batch = service.prepare(messages([opened("e1", "A"), invoice("e2", "A", 500)]))
    [snapshot] = batch.snapshots
    taken = Tracking("other:t:0", 1)
    store.process_recorder.insert_events([], tracking=taken)
    with pytest.raises(IntegrityError):  # the position is taken: the whole write is refused
        store.process_recorder.insert_events([], tracking=taken, snapshots=[snapshot])
    assert list(store.snapshots.get(account_uuid("A"))) == []
    service.commit(batch, Tracking("payments.inbound:t:0", 2))
    assert [s.originator_version for s in store.snapshots.get(account_uuid("A"))] == [2]
    # Redone by a new worker on a store that already has the snapshot (say the commit's
    # acknowledgement was lost): the snapshot row is kept, the batch's other rows go in.
    redone = service.prepare(messages([invoice("e3", "A", 300)], 2))
    store.process_recorder.insert_events(
        [], tracking=Tracking("payments.inbound:t:0", 3), snapshots=[snapshot]
    )
    service.commit(redone, Tracking("payments.inbound:t:0", 4))
    [kept] = store.snapshots.get(account_uuid("A"))
    assert kept.originator_version == 2
    account = store.repository.get(account_uuid("A"))
    assert isinstance(account, Account) and account.balances == {"receivable": 800, "revenue": -800}


def test_recorded_outcomes_are_found_by_their_key_pairs_over_several_chunks(
    store: EventStore,
) -> None:
    """Commands' outcomes are looked up by (account, command id) pairs, in chunks: a pair's
    halves never match across two recorded outcomes."""
    recorded = [
        CommandOutcome(
            account_id=f"A{n % 7}",
            command_id=f"c-{n}",
            command_type="overpayment.verify",
            body_sha256=f"digest-{n}",
            status="accepted",
            error_kind=None,
            reason=None,
            versions=(n,),
            recorded_at=CLOCK.now().isoformat(),
        )
        for n in range(600)
    ]
    store.process_recorder.insert_events(
        [], tracking=Tracking("ledger.commands:t:0", 1), outcomes=recorded
    )
    asked = [outcome.key for outcome in recorded[::2]]
    asked += [(f"A{(n + 1) % 7}", f"c-{n}") for n in range(600)]  # a command id, another account
    asked += [("A0", "never")]

    found = store.key_recorder.select_outcomes(asked)

    assert found == {outcome.key: outcome.body_sha256 for outcome in recorded[::2]}
