"""Property tests of the overpayment protocol: random histories of facts, staff commands and
clock moves through the ingest and command services, committed to a real store, checked after
every step.

Each step is one batch: a processor fact (invoice, payment, refund settled or failed for a refund
that exists, payment returned, invoice voided, coupon or store credit redeemed), a staff command
(verify or reject by the right or a wrong department, resolve with any option, retry, release,
by roles with and without the authority) or a clock move followed by the scheduler firing what
is due. After each: the trial balance over every stored event is zero per currency and each
account's stored postings add up to its balances; no never-negative account is negative; every
overpayment's places sum to its amount and, per ledger account, the places add up to its
balance; replaying each account from its stored events gives the state the services hold.
Runs on SQLite and on PostgreSQL, each example on an emptied database.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from eventsourcing.application import project_aggregate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.clock import FixedClock
from ledger.commands import CommandService
from ledger.domain.account import Account, account_uuid
from ledger.domain.overpayments import SCHEDULER
from ledger.domain.postings import _NEVER_NEGATIVE, natural_balance
from ledger.domain.protocol_events import PLACE_ACCOUNTS, PLACES
from ledger.ingest import IngestService
from ledger.persistence.event_store import EventStore, open_event_store
from ledger.persistence.urls import parse_database_url
from ledger.policy_file import load_policy
from ledger.schemas.commands import firing_command_id
from tests.books import opened
from tests.commands import Feeder, command, fact, money
from tests.databases import empty_database
from tests.hypothesis_settings import max_examples

POLICY = load_policy()
START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
ACCOUNTS = {"A": ("utility", "USD"), "B": ("monthly", "USD"), "C": ("retail", "EUR")}
DEPARTMENTS = ("accounting", "risk_management", "operations")
STAFF_ROLES = ("agent", "supervisor", "manager", *DEPARTMENTS)
RESOLUTIONS = ("credit", "refund", "escrow", "coupon", "store_credit", "cancel_and_refund")
AMOUNTS = st.one_of(
    st.integers(min_value=1_000, max_value=30_000),
    st.integers(min_value=1, max_value=600),
    st.integers(min_value=40_000, max_value=120_000),
)
"""Mostly amounts above the small-credit threshold; some below it; some needing two
departments' verification and above most roles' authority."""


class History:
    """One example: the store, the services, the clock, and what the services hold."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.clock = FixedClock(START)
        self.ingest = IngestService(store, policy=POLICY, clock=self.clock)
        self.feed = Feeder(self.ingest, CommandService(self.ingest))
        self.accounts: dict[str, Account] = {}
        self.event_number = 0

    def event_id(self) -> str:
        self.event_number += 1
        return f"e{self.event_number}"

    def facts(self, *values: bytes) -> None:
        self.accounts.update(self.feed.facts(*values).accounts)

    def commands(self, *values: bytes) -> None:
        batch = self.feed.commands_(*values)
        for outcome in batch.outcomes:
            # A refusal moves nothing: its only event is the refusal itself.
            if outcome.status != "accepted":
                assert outcome.versions == ()
        self.accounts.update(batch.accounts)

    def occurred_at(self) -> str:
        return self.clock.now().isoformat()


def draw_fact(data: st.DataObject, history: History, account_id: str) -> bytes | None:
    account = history.accounts[account_id]
    currency = account.currency
    event_id = history.event_id()
    at = {"occurred_at": history.occurred_at()}
    kinds = ["invoice", "payment", "payment"]
    in_flight = sorted(
        key for key, item in account.refunds.items() if item["status"] == "requested"
    )
    kinds += ["refund"] * (bool(account.refunds) + 3 * bool(in_flight))
    kinds += ["return"] * bool(account.payments)
    kinds += ["void"] * bool(account.invoices)
    kinds += ["coupon"] * bool(account.coupons)
    kinds += ["store_credit"] * any(
        item["places"].get("store_credit") for item in account.overpayments.values()
    )
    kind = data.draw(st.sampled_from(kinds), label="fact")
    if kind == "invoice":
        amount = data.draw(AMOUNTS, label="invoice")
        return fact(
            event_id,
            "invoice.issued",
            account_id,
            invoice_id=f"inv-{event_id}",
            amount=money(amount, currency),
            due_date="2027-01-31",
            **at,
        )
    if kind == "payment":
        owed = natural_balance("receivable", account.balances.get("receivable", 0))
        exact = [st.just(owed), st.integers(min_value=1, max_value=owed)] if owed else []
        amount = data.draw(st.one_of(AMOUNTS, *exact), label="payment")
        return fact(
            event_id,
            "payment.received",
            account_id,
            payment_id=f"pay-{event_id}",
            amount=money(amount, currency),
            method="card",
            **at,
        )
    if kind == "refund":
        refund_id = data.draw(likely(in_flight, sorted(account.refunds)), label="refund")
        amount = account.refunds[refund_id]["amount"]
        if data.draw(st.booleans(), label="settled"):
            return fact(
                event_id,
                "refund.settled",
                account_id,
                refund_id=refund_id,
                amount=money(amount, currency),
                **at,
            )
        return fact(
            event_id, "refund.failed", account_id, refund_id=refund_id, reason="closed", **at
        )
    if kind == "return":
        payment_id = data.draw(st.sampled_from(sorted(account.payments)), label="returned")
        amount = account.payments[payment_id]["amount"]
        return fact(
            event_id,
            "payment.returned",
            account_id,
            payment_id=payment_id,
            amount=money(amount, currency),
            reason="R01",
            **at,
        )
    if kind == "void":
        invoice_id = data.draw(st.sampled_from(sorted(account.invoices)), label="voided")
        return fact(event_id, "invoice.voided", account_id, invoice_id=invoice_id, **at)
    if kind == "coupon":
        code = data.draw(st.sampled_from(sorted(account.coupons)), label="coupon")
        left = account.overpayments[account.coupons[code]]["places"].get("coupon", 0)
        amount = data.draw(st.integers(min_value=1, max_value=left + 10), label="redeemed")
        return fact(
            event_id,
            "coupon.redeemed",
            account_id,
            coupon_code=code,
            amount=money(amount, currency),
            **at,
        )
    held = sum(item["places"].get("store_credit", 0) for item in account.overpayments.values())
    amount = data.draw(st.integers(min_value=1, max_value=held + 10), label="store credit")
    return fact(
        event_id,
        "credit.redeemed",
        account_id,
        redemption_id=f"red-{event_id}",
        amount=money(amount, currency),
        **at,
    )


def likely(fitting: list[str], every: list[str]) -> st.SearchStrategy[str]:
    """Mostly one of the fitting choices (when there are any), sometimes any."""
    if not fitting:
        return st.sampled_from(every)
    return st.one_of(st.sampled_from(fitting), st.sampled_from(fitting), st.sampled_from(every))


def draw_command(data: st.DataObject, history: History, account_id: str) -> bytes | None:
    account = history.accounts[account_id]
    now = history.clock.now()
    wanted = {
        "verify": lambda item: item["status"] == "detected",
        "reject": lambda item: item["status"] == "detected",
        "resolve": lambda item: item["status"] == "verified",
        "release": lambda item: bool(item["places"].get("escrow")),
    }
    fitting = {
        kind: sorted(key for key, item in account.overpayments.items() if test(item))
        for kind, test in wanted.items()
    }
    fitting["retry"] = sorted(
        key for key, item in account.refunds.items() if item["status"] == "failed"
    )
    weights = {"verify": 3, "reject": 1, "resolve": 4, "release": 2, "retry": 2}
    kinds = [kind for kind, weight in weights.items() for _ in range(weight) if fitting[kind]]
    if account.overpayments:
        kinds.append("any")  # sometimes one that may not fit
    if not kinds:
        return None
    kind = data.draw(st.sampled_from(kinds), label="command")
    if kind == "any":
        anything = ["verify", "reject", "resolve", "release"] + ["retry"] * bool(account.refunds)
        kind = data.draw(st.sampled_from(anything), label="any command")
    # Mostly a role with the authority for the usual amounts, sometimes any role.
    role = data.draw(st.sampled_from((*STAFF_ROLES, *["manager"] * 6)), label="role")
    actor = (f"staff-{role}", role)
    if kind == "retry":
        refund_id = data.draw(likely(fitting["retry"], sorted(account.refunds)), label="retried")
        return command("refund.retry", account_id, actor, now, refund_id=refund_id)
    overpayment_id = data.draw(likely(fitting[kind], sorted(account.overpayments)), label="op")
    if kind in ("verify", "reject"):
        item = account.overpayments[overpayment_id]
        missing = sorted(set(item["departments"]) - set(item["verified"]))
        department = data.draw(likely(missing, list(DEPARTMENTS)), label="department")
        if data.draw(st.sampled_from((True,) * 5 + (False,)), label="as the department"):
            actor = (f"staff-{department}", department)
        extra = {"reason": "not ours"} if kind == "reject" else {}
        return command(
            f"overpayment.{kind}",
            account_id,
            actor,
            now,
            overpayment_id=overpayment_id,
            department=department,
            **extra,
        )
    if kind == "release":
        to = data.draw(st.sampled_from(("refund", "credit", "escheat")), label="to")
        return command(
            "escrow.release", account_id, actor, now, overpayment_id=overpayment_id, to=to
        )
    resolution = data.draw(st.sampled_from(RESOLUTIONS), label="resolution")
    basis = (
        {"legal_basis": {"level": "state", "reference": "Civ. Code 1789"}}
        if resolution == "cancel_and_refund" and data.draw(st.booleans(), label="basis")
        else {}
    )
    return command(
        "overpayment.resolve",
        account_id,
        actor,
        now,
        overpayment_id=overpayment_id,
        resolution=resolution,
        **basis,
    )


def verify_fully(history: History, account_id: str) -> list[bytes]:
    """One batch verifying the oldest overpayment awaiting verification by every department
    still missing (each acting as itself)."""
    account = history.accounts[account_id]
    for overpayment_id, item in account.overpayments.items():
        if item["status"] == "detected":
            return [
                command(
                    "overpayment.verify",
                    account_id,
                    (f"staff-{department}", department),
                    history.clock.now(),
                    overpayment_id=overpayment_id,
                    department=department,
                )
                for department in item["departments"]
                if department not in item["verified"]
            ]
    return []


def resolve_one(data: st.DataObject, history: History, account_id: str) -> bytes | None:
    """A manager resolves a verified overpayment by any option (some not allowed here)."""
    account = history.accounts[account_id]
    verified = sorted(
        key for key, item in account.overpayments.items() if item["status"] == "verified"
    )
    if not verified:
        return None
    resolution = data.draw(st.sampled_from(RESOLUTIONS), label="resolution")
    return command(
        "overpayment.resolve",
        account_id,
        ("staff-manager", "manager"),
        history.clock.now(),
        overpayment_id=data.draw(st.sampled_from(verified), label="resolved"),
        resolution=resolution,
        legal_basis={"level": "federal", "reference": "15 U.S.C. 1666"},
    )


def due_firings(history: History) -> list[bytes]:
    """What the scheduler would fire now, from the state the services hold."""
    now = history.clock.now()
    firings: list[tuple[str, str, str, str, int | None]] = []
    for account_id, account in sorted(history.accounts.items()):
        for refund_id, refund in account.refunds.items():
            retry_at = refund["retry_at"]
            if (
                refund["status"] == "failed"
                and retry_at
                and datetime.fromisoformat(retry_at) <= now
            ):
                firings.append((account_id, "refund_retry", refund_id, retry_at, refund["attempt"]))
        for overpayment_id, item in account.overpayments.items():
            due = item.get("self_correct_at")
            if item["status"] == "verified" and due and datetime.fromisoformat(due) <= now:
                firings.append((account_id, "self_correction", overpayment_id, due, None))
            expires = item.get("escrow_expires_at")
            if item["places"].get("escrow") and expires and datetime.fromisoformat(expires) <= now:
                firings.append((account_id, "escrow_expiry", overpayment_id, expires, None))
        for follow_up_id, follow_up in account.follow_ups.items():
            due = follow_up["due_at"]
            if follow_up["status"] == "open" and datetime.fromisoformat(due) <= now:
                firings.append((account_id, "follow_up", follow_up_id, due, None))
        dormant = datetime.fromisoformat(account.last_activity) + POLICY.dormancy(
            account.jurisdiction
        )
        if dormant <= now:
            firings.append((account_id, "dormancy", account_id, dormant.isoformat(), None))
    return [
        command(
            "schedule.fire",
            account_id,
            (SCHEDULER, SCHEDULER),
            now,
            command_id=firing_command_id(item, item_id, due_at, attempt),
            item=item,
            item_id=item_id,
            due_at=due_at,
            **({"attempt": attempt} if attempt is not None else {}),
        )
        for account_id, item, item_id, due_at, attempt in firings
    ]


def check(history: History) -> None:
    """Every invariant, after one step."""
    store = history.store
    stored: dict[str, Counter[str]] = {}
    trial: Counter[str] = Counter()
    currency = {account_id: currency for account_id, (_, currency) in ACCOUNTS.items()}
    for notification in store.process_recorder.select_notifications(start=0, limit=100_000):
        state = orjson.loads(notification.state)
        for posting in state.get("postings", ()):
            assert posting["debit"] != posting["credit"] and posting["amount_minor"] > 0
            books = stored.setdefault(state["account_id"], Counter())
            books[posting["debit"]] += posting["amount_minor"]
            books[posting["credit"]] -= posting["amount_minor"]
            assert posting["currency"] == currency[state["account_id"]]
    for account_id, books in stored.items():
        trial[currency[account_id]] += sum(books.values())
    assert all(total == 0 for total in trial.values()), trial
    for account_id, account in history.accounts.items():
        balances = {name: raw for name, raw in account.balances.items() if raw}
        assert balances == {name: raw for name, raw in stored.get(account_id, {}).items() if raw}
        assert sum(account.balances.values()) == 0
        for name in _NEVER_NEGATIVE:
            assert natural_balance(name, account.balances.get(name, 0)) >= 0, name
        held: Counter[str] = Counter()
        for overpayment_id, item in account.overpayments.items():
            assert set(item["places"]) <= set(PLACES)
            assert all(amount > 0 for amount in item["places"].values()), (overpayment_id, item)
            assert sum(item["places"].values()) == item["amount"], (overpayment_id, item)
            for place, amount in item["places"].items():
                ledger_account = PLACE_ACCOUNTS[place]
                if ledger_account is not None:
                    held[ledger_account] += amount
        for ledger_account in {name for name in PLACE_ACCOUNTS.values() if name is not None}:
            natural = natural_balance(ledger_account, account.balances.get(ledger_account, 0))
            assert held[ledger_account] == natural, (ledger_account, dict(held), account.balances)
        # Replay from the stored events alone (no snapshot) gives the state held in memory.
        events = store.events.get(account_uuid(account_id))
        replayed = project_aggregate(None, events)
        assert isinstance(replayed, Account)
        assert state_of(replayed) == state_of(account)
        loaded = store.repository.get(account_uuid(account_id))
        assert state_of(loaded) == state_of(account)


def state_of(account: Any) -> dict[str, Any]:
    return {
        name: value
        for name, value in vars(account).items()
        if name not in ("_pending_events", "_modified_on")
    }


@st.composite
def account_choice(draw: st.DrawFn) -> str:
    return draw(st.sampled_from(sorted(ACCOUNTS)))


@settings(
    max_examples=max_examples(default=25),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_protocol_invariants_hold_after_every_step(database_url: str, data: st.DataObject) -> None:
    empty_database(database_url)
    store = open_event_store(parse_database_url(database_url), create_table=True)
    try:
        history = History(store)
        history.facts(
            *(
                opened(f"open-{account_id}", account_id, currency=currency, kind=kind)
                for account_id, (kind, currency) in ACCOUNTS.items()
            )
        )
        check(history)
        steps = data.draw(st.integers(min_value=10, max_value=40), label="steps")
        for _ in range(steps):
            step = data.draw(
                st.sampled_from(("fact", "fact", "verified", "resolved", "command", "time"))
            )
            account_id = data.draw(account_choice(), label="account")
            if step in ("verified", "resolved"):
                status = "detected" if step == "verified" else "verified"
                fitting = [
                    key
                    for key, account in sorted(history.accounts.items())
                    if any(item["status"] == status for item in account.overpayments.values())
                ]
                account_id = data.draw(likely(fitting, [account_id]), label="fitting account")
            if step == "fact":
                value = draw_fact(data, history, account_id)
                if value is not None:
                    history.facts(value)
            elif step == "verified":
                values = verify_fully(history, account_id)
                if values:
                    history.commands(*values)
            elif step == "resolved":
                value = resolve_one(data, history, account_id)
                if value is not None:
                    history.commands(value)
            elif step == "command":
                value = draw_command(data, history, account_id)
                if value is not None:
                    history.commands(value)
            else:
                unit = data.draw(
                    st.sampled_from(("hours",) * 4 + ("days",) * 4 + ("years",)), label="unit"
                )
                amount = data.draw(st.integers(min_value=1, max_value=40), label="how long")
                delta = {
                    "hours": timedelta(hours=amount),
                    "days": timedelta(days=amount),
                    "years": timedelta(days=365 * (1 + amount % 5)),
                }[unit]
                history.clock.advance(delta)
                firings = due_firings(history)
                if firings:
                    history.commands(*firings)
            check(history)
    finally:
        store.close()
