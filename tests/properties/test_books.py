"""Property tests of the books: generated histories through the ingest service, checked per batch.

Histories mix openings, invoices and payments of several accounts in several currencies, in any
order (facts before an account's opening), with duplicates, wrong-currency facts and types not
handled yet, cut into batches of random sizes. After every batch: each currency's trial balance
is zero, receivable and customer credit are never negative, every unit of every payment is in
exactly one place (settled receivable or customer credit), cash and revenue equal the applied
payments and invoices, and replaying each account from the store gives the state the ingest
holds (the accounts its batches moved). At the end the read model agrees with an independent
model. It runs on SQLite and on PostgreSQL, each example on an emptied database; `make deep`
runs 10,000 examples on each.
"""

from __future__ import annotations

import threading
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import Tracking
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.clock import FixedClock
from ledger.domain.account import Account, account_uuid
from ledger.domain.event_names import INVOICE_ISSUED, PAYMENT_RECEIVED, event_name
from ledger.domain.policy import Policy
from ledger.domain.postings import natural_balance
from ledger.ingest import InboundMessage, IngestService
from ledger.persistence.database import Database
from ledger.persistence.event_store import EventStore, open_event_store
from ledger.persistence.urls import parse_database_url
from ledger.read_models import live, prepare_tables
from ledger.tailing import run_tail
from projections import queries
from tests.books import expected_balances, invoice, line, opened, payment
from tests.databases import empty_database
from tests.hypothesis_settings import max_examples

POLICY = Policy(version="test-1")
CURRENCIES = ("USD", "EUR", "JPY")
ACCOUNT_IDS = ("A", "B", "C", "D")


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[bytes], list[int]]:
    """Lines of a history and the sizes of the batches it is cut into."""
    currency = {a: draw(st.sampled_from(CURRENCIES)) for a in ACCOUNT_IDS}
    lines: list[bytes] = []
    for n in range(draw(st.integers(min_value=1, max_value=40))):
        account = draw(st.sampled_from(ACCOUNT_IDS))
        money = currency[account]
        if draw(st.integers(0, 9)) == 0:
            money = draw(st.sampled_from(CURRENCIES))
        kind = draw(
            st.sampled_from(
                ["open", "invoice", "payment", "payment", "duplicate", "refund", "open_again"]
            )
        )
        amount = draw(st.integers(min_value=1, max_value=10_000))
        if kind == "open":
            lines.append(opened(f"open-{account}", account, currency=currency[account]))
        elif kind == "open_again":
            lines.append(opened(f"reopen-{n}", account, currency=money))
        elif kind == "invoice":
            lines.append(invoice(f"i{n}", account, amount, money))
        elif kind == "payment":
            lines.append(payment(f"p{n}", account, amount, money))
        elif kind == "duplicate" and lines:
            lines.append(lines[draw(st.integers(0, len(lines) - 1))])
        else:
            lines.append(
                line(f"r{n}", "refund.settled", account, refund_id=f"r{n}",
                     amount={"value": amount, "currency": money})
            )  # fmt: skip
    sizes: list[int] = []
    while sum(sizes) < len(lines):
        sizes.append(draw(st.integers(min_value=1, max_value=8)))
    return lines, sizes


def applied_totals(store: EventStore) -> tuple[Counter[str], Counter[str]]:
    """Sums of applied payments and invoices per account, from the stored events."""
    paid: Counter[str] = Counter()
    billed: Counter[str] = Counter()
    for notification in store.process_recorder.select_notifications(start=0, limit=100_000):
        state = orjson.loads(notification.state)
        if event_name(notification.topic) == PAYMENT_RECEIVED:
            paid[state["account_id"]] += state["amount_minor"]
        elif event_name(notification.topic) == INVOICE_ISSUED:
            billed[state["account_id"]] += state["amount_minor"]
    return paid, billed


def check_books(store: EventStore, accounts: dict[str, Account]) -> None:
    """The books of the accounts the ingest holds in memory (`accounts`), against the store."""
    paid, billed = applied_totals(store)
    trial: Counter[str] = Counter()
    for account_id in ACCOUNT_IDS:
        held = accounts.get(account_id)
        if held is None:
            with pytest.raises(AggregateNotFoundError):
                store.repository.get(account_uuid(account_id))
            continue
        replayed = store.repository.get(account_uuid(account_id))
        assert isinstance(replayed, Account)
        # Replay gives the very state the ingest holds.
        assert replayed.version == held.version
        assert replayed.balances == held.balances
        assert {k: v for k, v in vars(replayed).items() if k != "_pending_events"} == {
            k: v for k, v in vars(held).items() if k != "_pending_events"
        }
        books = {name: natural_balance(name, raw) for name, raw in held.balances.items()}
        assert books.get("receivable", 0) >= 0 and books.get("customer_credit", 0) >= 0
        # Every unit of every payment is in exactly one place: settled receivable or credit.
        settled = books.get("revenue", 0) - books.get("receivable", 0)
        assert books.get("cash", 0) == settled + books.get("customer_credit", 0) == paid[account_id]
        assert books.get("revenue", 0) == billed[account_id]
        for raw in held.balances.values():
            trial[held.currency] += raw
    assert all(total == 0 for total in trial.values()), trial


@settings(
    max_examples=max_examples(default=50),
    deadline=None,
    # Every example runs on the one database the fixture made, emptied first.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(history=histories())
def test_books_hold_after_every_batch(
    database_url: str, history: tuple[list[bytes], list[int]]
) -> None:
    lines, sizes = history
    clock = FixedClock(datetime(2026, 11, 25, 12, 0, tzinfo=UTC))
    empty_database(database_url)
    target = parse_database_url(database_url)
    store = open_event_store(target, create_table=True)
    try:
        service = IngestService(store, policy=POLICY, clock=clock)
        accounts: dict[str, Account] = {}
        offset = 0
        for size in sizes:
            chunk = lines[offset : offset + size]
            messages = [
                InboundMessage("payments.inbound", 0, offset + n, None, raw)
                for n, raw in enumerate(chunk)
            ]
            batch = service.prepare(messages)
            service.commit(batch, Tracking("payments.inbound:prop:0", offset + len(chunk)))
            assert batch.applied + batch.duplicates + len(batch.dead_letters) == len(chunk)
            accounts.update(batch.accounts)
            offset += len(chunk)
            check_books(store, accounts)
        check_read_model(target, store, lines)
    finally:
        store.close()


def check_read_model(target: Any, store: EventStore, lines: list[bytes]) -> None:
    database = Database(target)
    try:
        prepare_tables(database)
        run_tail(store, live(database, "balances"), threading.Event(), until_caught_up=True)
        model = expected_balances(lines)
        for account_id, books in model.items():
            answer = queries.balance(database, account_id)
            for name, value in books.items():
                assert answer[name] == value, (account_id, name)
        trial = queries.trial_balance(database)
        assert all(entry["total"] == 0 for entry in trial["currencies"].values())
        assert trial["position"] == (store.process_recorder.max_notification_id() or 0)
    finally:
        database.close()
