"""The account aggregate, with nothing running: postings, balances and refusals."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from ledger.domain.account import Account, FactOrigin, account_uuid
from ledger.domain.errors import DomainRuleError
from ledger.domain.money import Money
from ledger.domain.policy import Policy
from ledger.domain.postings import LedgerAccount, Posting

NOW = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
POLICY = Policy(version="test-1")


def open_account(currency: str = "USD") -> Account:
    return Account.open(
        account_id="ACC-1",
        customer_id="C-1",
        kind="monthly",
        jurisdiction="US-CA",
        currency=currency,
        origin=FactOrigin("acme", "e1", NOW),
        now=NOW,
    )


def bill(account: Account, amount_minor: int, currency: str = "USD") -> None:
    account.issue_invoice(
        invoice_id="inv-1",
        amount=Money(amount_minor, currency),
        due_date=date(2026, 12, 1),
        origin=FactOrigin("acme", "e2", NOW),
        now=NOW,
        policy=POLICY,
    )


def pay(account: Account, amount_minor: int, currency: str = "USD") -> None:
    account.receive_payment(
        payment_id="pay-1",
        amount=Money(amount_minor, currency),
        method="card",
        invoice_id=None,
        origin=FactOrigin("acme", "e3", NOW),
        now=NOW,
        policy=POLICY,
    )


def test_account_id_is_stable() -> None:
    assert open_account().id == account_uuid("ACC-1")


def test_overpayment_is_the_part_above_the_whole_receivable() -> None:
    account = open_account()
    bill(account, 12_000)
    pay(account, 15_000)
    events = account.collect_events()
    assert [type(event).__name__ for event in events] == [
        "Opened",
        "InvoiceIssued",
        "PaymentReceived",
        "OverpaymentDetected",
    ]
    payment_event = events[2]
    assert isinstance(payment_event, Account.PaymentReceived)
    assert payment_event.postings == (
        Posting("cash", "receivable", 12_000, "USD"),
        Posting("cash", "customer_credit", 3_000, "USD"),
    )
    detected = events[3]
    assert isinstance(detected, Account.OverpaymentDetected)
    assert detected.amount_minor == 3_000
    assert detected.postings == ()
    assert detected.policy_version == "test-1"
    assert account.balance(LedgerAccount.RECEIVABLE) == Money(0, "USD")
    assert account.balance(LedgerAccount.CUSTOMER_CREDIT) == Money(3_000, "USD")
    assert account.balance(LedgerAccount.CASH) == Money(15_000, "USD")
    assert sum(account.balances.values()) == 0


def test_payment_below_receivable_is_no_overpayment() -> None:
    account = open_account()
    bill(account, 12_000)
    pay(account, 5_000)
    events = account.collect_events()
    assert not any(isinstance(event, Account.OverpaymentDetected) for event in events)
    assert account.balance(LedgerAccount.RECEIVABLE) == Money(7_000, "USD")
    assert account.balance(LedgerAccount.CUSTOMER_CREDIT) == Money(0, "USD")


def test_payment_with_nothing_owed_is_all_credit() -> None:
    account = open_account()
    pay(account, 999)
    assert account.balance(LedgerAccount.CUSTOMER_CREDIT) == Money(999, "USD")
    assert account.balances == {"cash": 999, "customer_credit": -999}


def test_other_currency_is_refused_and_changes_nothing() -> None:
    account = open_account()
    bill(account, 100)
    before = dict(account.balances)
    version = account.version
    with pytest.raises(DomainRuleError, match="in USD, not EUR"):
        pay(account, 100, currency="EUR")
    assert account.balances == before
    assert account.version == version


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(DomainRuleError, match="kind"):
        Account.open(
            account_id="A",
            customer_id="C",
            kind="weekly",
            jurisdiction="US-CA",
            currency="USD",
            origin=FactOrigin("s", "e", NOW),
            now=NOW,
        )


def test_balance_overflow_is_refused() -> None:
    account = open_account()
    for _ in range(4):
        bill(account, 10**15)
    account.balances["receivable"] = 2**62 - 1
    account.balances["revenue"] = -(2**62 - 1)
    with pytest.raises(DomainRuleError, match="balance_minor_max"):
        bill(account, 10)


def test_event_timestamps_come_from_the_given_clock() -> None:
    account = open_account()
    bill(account, 100)
    assert {event.timestamp for event in account.collect_events()} == {NOW}
