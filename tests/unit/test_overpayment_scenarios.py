"""The overpayment protocol, path by path, on the account aggregate with the shipped policy.

Each scenario ends stating the books: every ledger account's natural balance, the open
follow-ups, and where every unit of each overpayment is.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from itertools import count
from typing import Any

import pytest
from eventsourcing.application import project_aggregate

from ledger.domain.account import Account, FactOrigin
from ledger.domain.errors import DomainRuleError, NotDueYet, StaleFiring
from ledger.domain.money import Money
from ledger.domain.overpayments import SCHEDULER_ACTOR, Actor, LegalBasis, coupon_code
from ledger.domain.postings import LedgerAccount
from ledger.policy_file import load_policy

POLICY = load_policy()
START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
ACCOUNTING = Actor("ann", "accounting")
SUPERVISOR = Actor("sam", "supervisor")
_event_ids = count(1)


class Clock:
    """The time the scenario is at (the services' FixedClock, by hand)."""

    def __init__(self) -> None:
        self.now = START

    def advance(self, delta: timedelta) -> datetime:
        self.now += delta
        return self.now


def origin(now: datetime) -> FactOrigin:
    return FactOrigin("acme-pay", f"e{next(_event_ids)}", now)


def open_account(clock: Clock, kind: str = "utility", jurisdiction: str = "US-CA") -> Account:
    return Account.open(
        account_id="ACC-1",
        customer_id="C-1",
        kind=kind,
        jurisdiction=jurisdiction,
        currency="USD",
        origin=origin(clock.now),
        now=clock.now,
    )


def bill(account: Account, clock: Clock, invoice_id: str, amount_minor: int) -> None:
    account.issue_invoice(
        invoice_id=invoice_id,
        amount=Money(amount_minor, "USD"),
        due_date=date(2027, 1, 1),
        origin=origin(clock.now),
        now=clock.now,
        policy=POLICY,
    )


def pay(
    account: Account,
    clock: Clock,
    payment_id: str,
    amount_minor: int,
    *,
    method: str = "card",
    invoice_id: str | None = None,
) -> str | None:
    """Receive a payment; the id of the overpayment it made, if any."""
    before = set(account.overpayments)
    account.receive_payment(
        payment_id=payment_id,
        amount=Money(amount_minor, "USD"),
        method=method,
        invoice_id=invoice_id,
        origin=origin(clock.now),
        now=clock.now,
        policy=POLICY,
    )
    made = set(account.overpayments) - before
    return made.pop() if made else None


def give_back(account: Account, clock: Clock, payment_id: str, amount_minor: int) -> None:
    """The processor reports the payment returned (an ACH return)."""
    account.return_payment(
        payment_id=payment_id,
        amount_minor=amount_minor,
        reason="ACH R01",
        origin=origin(clock.now).event_fields(),
        now=clock.now,
    )


def verify(account: Account, clock: Clock, overpayment_id: str) -> None:
    account.verify_overpayment(
        overpayment_id=overpayment_id,
        department="accounting",
        note=None,
        actor=ACCOUNTING,
        policy=POLICY,
        now=clock.now,
    )


def resolve(
    account: Account,
    clock: Clock,
    overpayment_id: str,
    resolution: str,
    legal_basis: LegalBasis | None = None,
) -> None:
    account.resolve_overpayment(
        overpayment_id=overpayment_id,
        resolution=resolution,
        actor=SUPERVISOR,
        policy=POLICY,
        now=clock.now,
        legal_basis=legal_basis,
    )


def overpaid(account: Account, clock: Clock, amount_minor: int = 20_000) -> str:
    """A verified overpayment of `amount_minor` (nothing owed when it is paid)."""
    overpayment_id = pay(account, clock, "pay-1", amount_minor)
    assert overpayment_id is not None
    verify(account, clock, overpayment_id)
    assert account.overpayments[overpayment_id]["status"] == "verified"
    return overpayment_id


def refund_of(account: Account, overpayment_id: str) -> str:
    refund_id = account.overpayments[overpayment_id]["refund_id"]
    assert isinstance(refund_id, str)
    return refund_id


def settle(account: Account, clock: Clock, refund_id: str) -> None:
    account.settle_refund(
        refund_id=refund_id,
        amount_minor=account.refunds[refund_id]["amount"],
        origin=origin(clock.now).event_fields(),
        policy=POLICY,
        now=clock.now,
    )


def fail(account: Account, clock: Clock, refund_id: str) -> None:
    account.fail_refund(
        refund_id=refund_id,
        reason="card closed",
        origin=origin(clock.now).event_fields(),
        policy=POLICY,
        now=clock.now,
    )


def books(account: Account) -> dict[str, int]:
    """Every ledger account's natural balance."""
    return {name.value: account.balance(name).amount_minor for name in LedgerAccount}


def expect_books(account: Account, **nonzero: int) -> None:
    expected = {name.value: 0 for name in LedgerAccount}
    expected.update(nonzero)
    assert books(account) == expected
    assert sum(account.balances.values()) == 0


def open_follow_ups(account: Account) -> list[tuple[str, str]]:
    return sorted(
        (item["reason"], item["subject_id"])
        for item in account.follow_ups.values()
        if item["status"] == "open"
    )


def places(account: Account) -> dict[str, dict[str, int]]:
    return {key: dict(item["places"]) for key, item in account.overpayments.items()}


def event_names(account: Account) -> list[str]:
    return [type(event).__name__ for event in account.collect_events()]


# --------------------------------------------------------------------------- resolutions


def test_credit_on_next_bill_spans_two_invoices() -> None:
    clock = Clock()
    account = open_account(clock)
    bill(account, clock, "inv-1", 10_000)
    op = pay(account, clock, "pay-1", 30_000)
    assert op is not None
    verify(account, clock, op)
    resolve(account, clock, op, "credit")
    # Verified credit waits for the next bill: nothing applied yet.
    expect_books(account, cash=30_000, revenue=10_000, customer_credit=20_000)
    bill(account, clock, "inv-2", 5_000)
    assert places(account) == {op: {"next_bill": 15_000, "applied": 5_000}}
    bill(account, clock, "inv-3", 25_000)
    expect_books(account, cash=30_000, revenue=40_000, receivable=10_000)
    assert places(account) == {op: {"applied": 20_000}}
    assert open_follow_ups(account) == []


def test_credit_settles_invoices_oldest_overpayment_first_whatever_order_it_was_kept_in() -> None:
    clock = Clock()
    account = open_account(clock)
    older = pay(account, clock, "pay-1", 10_000)
    newer = pay(account, clock, "pay-2", 6_000)
    assert older is not None and newer is not None
    verify(account, clock, newer)
    resolve(account, clock, newer, "credit")  # the newer one holds credit first
    account.reject_overpayment(
        overpayment_id=older,
        department="accounting",
        reason="not ours to refund",
        actor=ACCOUNTING,
        policy=POLICY,
        now=clock.now,
    )
    assert places(account) == {older: {"kept": 10_000}, newer: {"next_bill": 6_000}}
    assert list(account.crediting) == [newer, older]  # the order they started to hold credit
    bill(account, clock, "inv-1", 12_000)
    assert places(account) == {
        older: {"applied": 10_000},
        newer: {"next_bill": 4_000, "applied": 2_000},
    }
    assert list(account.crediting) == [newer]
    expect_books(account, cash=16_000, revenue=12_000, customer_credit=4_000)
    # A snapshot taken before the index existed (class version 4) reads with the same index.
    state = {key: value for key, value in vars(account).items() if key != "crediting"}
    Account.upcast_v4_v5(state)
    assert state["crediting"] == account.crediting
    replayed = project_aggregate(None, account.collect_events())
    assert replayed is not None and replayed.crediting == account.crediting


def test_credit_waits_for_verification() -> None:
    clock = Clock()
    account = open_account(clock)
    op = pay(account, clock, "pay-1", 20_000)
    assert op is not None
    bill(account, clock, "inv-1", 5_000)
    expect_books(account, cash=20_000, revenue=5_000, receivable=5_000, customer_credit=20_000)
    assert places(account) == {op: {"credit": 20_000}}


def test_refund_settled() -> None:
    clock = Clock()
    account = open_account(clock)
    op = overpaid(account, clock)
    resolve(account, clock, op, "refund")
    refund_id = refund_of(account, op)
    expect_books(account, cash=20_000, refund_clearing=20_000)
    assert places(account) == {op: {"refund_in_flight": 20_000}}
    settle(account, clock, refund_id)
    expect_books(account)
    assert places(account) == {op: {"refunded": 20_000}}
    assert account.refunds[refund_id]["status"] == "settled"
    assert open_follow_ups(account) == []


def escrowed(clock: Clock) -> tuple[Account, str]:
    account = open_account(clock)
    op = overpaid(account, clock)
    resolve(account, clock, op, "escrow")
    expect_books(account, cash=20_000, escrow=20_000)
    assert places(account) == {op: {"escrow": 20_000}}
    assert account.overpayments[op]["escrow_expires_at"] == (START + timedelta(days=90)).isoformat()
    return account, op


def release(account: Account, clock: Clock, op: str, to: str) -> None:
    account.release_escrow(overpayment_id=op, to=to, actor=SUPERVISOR, policy=POLICY, now=clock.now)


def test_escrow_released_by_staff_to_refund() -> None:
    clock = Clock()
    account, op = escrowed(clock)
    clock.advance(timedelta(days=10))
    release(account, clock, op, "refund")
    expect_books(account, cash=20_000, refund_clearing=20_000)
    settle(account, clock, refund_of(account, op))
    expect_books(account)
    assert places(account) == {op: {"refunded": 20_000}}
    with pytest.raises(DomainRuleError, match="nothing in escrow"):
        release(account, clock, op, "refund")


def test_escrow_released_by_staff_to_credit() -> None:
    clock = Clock()
    account, op = escrowed(clock)
    release(account, clock, op, "credit")
    expect_books(account, cash=20_000, customer_credit=20_000)
    assert places(account) == {op: {"next_bill": 20_000}}
    bill(account, clock, "inv-1", 8_000)
    expect_books(account, cash=20_000, customer_credit=12_000, revenue=8_000)
    assert places(account) == {op: {"next_bill": 12_000, "applied": 8_000}}
    assert open_follow_ups(account) == []


def test_escrow_released_by_staff_to_escheat() -> None:
    clock = Clock()
    account, op = escrowed(clock)
    release(account, clock, op, "escheat")
    expect_books(account, cash=20_000, escheat_payable=20_000)
    assert places(account) == {op: {"escheated": 20_000}}


def test_escrow_released_at_expiry_by_the_scheduler() -> None:
    clock = Clock()
    account, op = escrowed(clock)
    account.collect_events()
    clock.advance(timedelta(days=90) - timedelta(seconds=1))
    with pytest.raises(StaleFiring):
        account.release_escrow(
            overpayment_id=op,
            to=POLICY.escrow.expiry_release_to,
            actor=SCHEDULER_ACTOR,
            policy=POLICY,
            now=clock.now,
            at_expiry=True,
        )
    assert account.collect_events() == []
    clock.advance(timedelta(seconds=1))
    account.release_escrow(
        overpayment_id=op,
        to=POLICY.escrow.expiry_release_to,
        actor=SCHEDULER_ACTOR,
        policy=POLICY,
        now=clock.now,
        at_expiry=True,
    )
    assert POLICY.escrow.expiry_release_to == "refund"
    events = account.collect_events()
    assert [type(event).__name__ for event in events] == ["EscrowReleased", "RefundRequested"]
    assert {(event.actor_role, event.at_expiry) for event in events[:1]} == {("scheduler", True)}  # type: ignore[attr-defined]
    expect_books(account, cash=20_000, refund_clearing=20_000)
    assert places(account) == {op: {"refund_in_flight": 20_000}}
    # Released exactly once: a second firing is stale.
    with pytest.raises(StaleFiring):
        account.release_escrow(
            overpayment_id=op,
            to="refund",
            actor=SCHEDULER_ACTOR,
            policy=POLICY,
            now=clock.now,
            at_expiry=True,
        )


def test_coupon_issued_then_redeemed() -> None:
    clock = Clock()
    account = open_account(clock)
    op = overpaid(account, clock)
    resolve(account, clock, op, "coupon")
    code = coupon_code(op)
    assert account.coupons == {code: op}
    expect_books(account, cash=20_000, coupon=20_000)
    bill(account, clock, "inv-1", 3_000)  # a coupon is not applied automatically
    expect_books(account, cash=20_000, coupon=20_000, receivable=3_000, revenue=3_000)
    account.redeem_coupon(
        code=code,
        amount_minor=5_000,
        invoice_id="inv-1",
        origin=origin(clock.now).event_fields(),
        now=clock.now,
    )
    expect_books(account, cash=20_000, coupon=15_000, revenue=5_000)
    assert places(account) == {op: {"coupon": 15_000, "redeemed": 5_000}}
    with pytest.raises(DomainRuleError, match="15000 left"):
        account.redeem_coupon(
            code=code,
            amount_minor=15_001,
            invoice_id=None,
            origin=origin(clock.now).event_fields(),
            now=clock.now,
        )


def test_store_credit_redeemed() -> None:
    clock = Clock()
    account = open_account(clock)
    op = overpaid(account, clock)
    resolve(account, clock, op, "store_credit")
    bill(account, clock, "inv-1", 4_000)  # store credit is never applied automatically
    expect_books(account, cash=20_000, customer_credit=20_000, receivable=4_000, revenue=4_000)
    account.redeem_store_credit(
        redemption_id="red-1",
        amount_minor=6_000,
        invoice_id=None,
        origin=origin(clock.now).event_fields(),
        now=clock.now,
    )
    expect_books(account, cash=20_000, customer_credit=14_000, revenue=6_000)
    assert places(account) == {op: {"store_credit": 14_000, "redeemed": 6_000}}
    with pytest.raises(DomainRuleError, match="14000 of store credit"):
        account.redeem_store_credit(
            redemption_id="red-2",
            amount_minor=14_001,
            invoice_id=None,
            origin=origin(clock.now).event_fields(),
            now=clock.now,
        )


def test_cancel_and_refund_on_a_retail_account() -> None:
    clock = Clock()
    account = open_account(clock, kind="retail")
    op = overpaid(account, clock)
    with pytest.raises(DomainRuleError, match="legal basis"):
        resolve(account, clock, op, "cancel_and_refund")
    basis = LegalBasis("state", "Cal. Civ. Code 1789.3")
    account.collect_events()
    resolve(account, clock, op, "cancel_and_refund", legal_basis=basis)
    events = account.collect_events()
    assert [type(event).__name__ for event in events] == [
        "OverpaymentResolved",
        "AccountCancelled",
        "RefundRequested",
    ]
    cancelled: Any = events[1]
    assert (cancelled.legal_basis_level, cancelled.legal_basis_reference) == (
        "state",
        "Cal. Civ. Code 1789.3",
    )
    assert account.closed
    expect_books(account, cash=20_000, refund_clearing=20_000)
    settle(account, clock, refund_of(account, op))
    expect_books(account)
    assert places(account) == {op: {"refunded": 20_000}}
    with pytest.raises(DomainRuleError, match="cancelled"):
        bill(account, clock, "inv-9", 1_000)
    expect_books(account)


def test_cancel_and_refund_never_on_a_utility_account() -> None:
    clock = Clock()
    account = open_account(clock, kind="utility")
    op = overpaid(account, clock)
    with pytest.raises(DomainRuleError, match="not allowed"):
        resolve(account, clock, op, "cancel_and_refund", legal_basis=LegalBasis("local", "x"))
    assert not account.closed


# --------------------------------------------------------------------------- refunds that fail


def test_refund_failed_twice_then_settled() -> None:
    clock = Clock()
    account = open_account(clock)
    op = overpaid(account, clock)
    resolve(account, clock, op, "refund")
    first = refund_of(account, op)
    fail(account, clock, first)
    assert account.refunds[first]["retry_at"] == (clock.now + timedelta(hours=1)).isoformat()
    expect_books(account, cash=20_000, customer_credit=20_000)
    assert places(account) == {op: {"refund_failed": 20_000}}
    with pytest.raises(NotDueYet, match="is due for a retry at"):
        account.retry_refund(
            refund_id=first, actor=SCHEDULER_ACTOR, policy=POLICY, now=clock.now, attempt=1
        )
    clock.advance(timedelta(hours=1))
    account.retry_refund(
        refund_id=first, actor=SCHEDULER_ACTOR, policy=POLICY, now=clock.now, attempt=1
    )
    second = refund_of(account, op)
    assert second != first and account.refunds[second]["attempt"] == 2
    assert account.refunds[first]["status"] == "retried"
    fail(account, clock, second)
    assert account.refunds[second]["retry_at"] == (clock.now + timedelta(hours=6)).isoformat()
    clock.advance(timedelta(hours=6))
    account.retry_refund(
        refund_id=second, actor=SCHEDULER_ACTOR, policy=POLICY, now=clock.now, attempt=2
    )
    third = refund_of(account, op)
    assert account.refunds[third]["attempt"] == 3
    expect_books(account, cash=20_000, refund_clearing=20_000)
    settle(account, clock, third)
    expect_books(account)
    assert places(account) == {op: {"refunded": 20_000}}
    assert open_follow_ups(account) == []


def test_refund_retries_exhausted_raise_a_follow_up_closed_by_settlement() -> None:
    clock = Clock()
    account = open_account(clock)
    op = overpaid(account, clock)
    resolve(account, clock, op, "refund")
    refund_id = refund_of(account, op)
    waits = [timedelta(hours=1), timedelta(hours=6), timedelta(days=1)]
    for attempt, wait in enumerate(waits, start=1):
        fail(account, clock, refund_id)
        assert account.refunds[refund_id]["retry_at"] == (clock.now + wait).isoformat()
        assert open_follow_ups(account) == []
        clock.advance(wait)
        account.retry_refund(
            refund_id=refund_id,
            actor=SCHEDULER_ACTOR,
            policy=POLICY,
            now=clock.now,
            attempt=attempt,
        )
        refund_id = refund_of(account, op)
    assert account.refunds[refund_id]["attempt"] == 1 + POLICY.refunds.retry_max
    fail(account, clock, refund_id)
    assert account.refunds[refund_id]["retry_at"] is None
    assert open_follow_ups(account) == [("refund_retries_exhausted", refund_id)]
    expect_books(account, cash=20_000, customer_credit=20_000)
    # Staff retry it by hand; it settles and the follow-up closes.
    account.retry_refund(
        refund_id=refund_id, actor=SUPERVISOR, policy=POLICY, now=clock.now, attempt=None
    )
    settle(account, clock, refund_of(account, op))
    expect_books(account)
    assert open_follow_ups(account) == []
    assert places(account) == {op: {"refunded": 20_000}}


# --------------------------------------------------------------------------- money that comes back


def test_payment_returned_after_its_refund_becomes_receivable() -> None:
    clock = Clock()
    account = open_account(clock)
    bill(account, clock, "inv-1", 10_000)
    op = pay(account, clock, "pay-1", 30_000)
    assert op is not None
    verify(account, clock, op)
    resolve(account, clock, op, "refund")
    settle(account, clock, refund_of(account, op))
    expect_books(account, revenue=10_000, cash=10_000)
    give_back(account, clock, "pay-1", 30_000)
    # We refunded 20,000 the customer never paid, and the invoice is unpaid again.
    expect_books(account, revenue=10_000, receivable=30_000, cash=-20_000)
    assert places(account) == {op: {"refunded": 20_000}}
    assert account.payments["pay-1"]["returned"]


def test_payment_returned_while_its_credit_is_held() -> None:
    clock = Clock()
    account = open_account(clock)
    bill(account, clock, "inv-1", 10_000)
    op = pay(account, clock, "pay-1", 30_000)
    assert op is not None
    give_back(account, clock, "pay-1", 30_000)
    expect_books(account, revenue=10_000, receivable=10_000)
    assert places(account) == {op: {"reversed": 20_000}}


def test_invoice_voided_after_being_paid_is_an_overpayment() -> None:
    clock = Clock()
    account = open_account(clock)
    bill(account, clock, "inv-1", 10_000)
    assert pay(account, clock, "pay-1", 10_000) is None
    account.void_invoice_and_detect(
        invoice_id="inv-1", origin=origin(clock.now), policy=POLICY, now=clock.now
    )
    expect_books(account, cash=10_000, customer_credit=10_000)
    ((op, overpayment),) = account.overpayments.items()
    assert overpayment["amount"] == 10_000 and overpayment["status"] == "detected"
    assert places(account) == {op: {"credit": 10_000}}
    with pytest.raises(DomainRuleError, match="voided already"):
        account.void_invoice_and_detect(
            invoice_id="inv-1", origin=origin(clock.now), policy=POLICY, now=clock.now
        )


def test_invoice_voided_unpaid_reverses_the_receivable() -> None:
    clock = Clock()
    account = open_account(clock)
    bill(account, clock, "inv-1", 10_000)
    pay(account, clock, "pay-1", 4_000)
    account.void_invoice_and_detect(
        invoice_id="inv-1", origin=origin(clock.now), policy=POLICY, now=clock.now
    )
    # 6,000 was unpaid: reversed; 4,000 was paid: credit owed back.
    expect_books(account, cash=4_000, customer_credit=4_000)
    ((op, _),) = account.overpayments.items()
    assert places(account) == {op: {"credit": 4_000}}


# --------------------------------------------------------------------------- the scheduler's work


def test_monthly_self_correction_and_its_follow_up() -> None:
    clock = Clock()
    account = open_account(clock, kind="monthly")
    op = overpaid(account, clock)
    due = START + POLICY.monthly.self_correction_window
    assert account.overpayments[op]["self_correct_at"] == due.isoformat()
    clock.advance(POLICY.monthly.self_correction_window - timedelta(seconds=1))
    with pytest.raises(StaleFiring):
        account.self_correct(overpayment_id=op, policy=POLICY, now=clock.now)
    clock.advance(timedelta(seconds=1))
    account.self_correct(overpayment_id=op, policy=POLICY, now=clock.now)
    assert account.overpayments[op]["resolution"] == "credit"
    assert places(account) == {op: {"next_bill": 20_000}}
    with pytest.raises(StaleFiring):
        account.self_correct(overpayment_id=op, policy=POLICY, now=clock.now)
    clock.advance(timedelta(days=1))
    bill(account, clock, "inv-1", 5_000)  # too small to absorb it
    expect_books(account, cash=20_000, revenue=5_000, customer_credit=15_000)
    assert open_follow_ups(account) == [("credit_not_absorbed", op)]
    ((follow_up_id, follow_up),) = account.follow_ups.items()
    assert follow_up["due_at"] == (clock.now + POLICY.follow_ups.first_contact_after).isoformat()
    bill(account, clock, "inv-2", 30_000)
    expect_books(account, cash=20_000, revenue=35_000, receivable=15_000)
    assert places(account) == {op: {"applied": 20_000}}
    assert open_follow_ups(account) == []
    assert account.follow_ups[follow_up_id]["status"] == "closed"
    # The self-correction is a fact of the events: a replay knows it too.
    replayed = project_aggregate(None, account.collect_events())
    assert isinstance(replayed, Account)
    assert replayed.overpayments == account.overpayments
    assert replayed.follow_ups == account.follow_ups


def test_escheatment_after_dormancy() -> None:
    clock = Clock()
    account = open_account(clock, jurisdiction="US-DE")
    op = pay(account, clock, "pay-1", 20_000)
    assert op is not None
    dormancy = POLICY.dormancy("US-DE")
    assert dormancy == timedelta(days=1825)
    clock.advance(dormancy - timedelta(seconds=1))
    with pytest.raises(StaleFiring):
        account.escheat(policy=POLICY, now=clock.now)
    clock.advance(timedelta(seconds=1))
    account.escheat(policy=POLICY, now=clock.now)
    expect_books(account, cash=20_000, escheat_payable=20_000)
    assert places(account) == {op: {"escheated": 20_000}}
    assert open_follow_ups(account) == []
    with pytest.raises(StaleFiring, match="owes no credit"):
        account.escheat(policy=POLICY, now=clock.now)


# --------------------------------------------------------------------------- found by the proof


def test_failed_refund_whose_payment_came_back_is_not_retried() -> None:
    clock = Clock()
    account = open_account(clock)
    op = overpaid(account, clock)
    resolve(account, clock, op, "refund")
    refund_id = refund_of(account, op)
    fail(account, clock, refund_id)
    give_back(account, clock, "pay-1", 20_000)
    expect_books(account)
    assert places(account) == {op: {"reversed": 20_000}}
    account.collect_events()
    with pytest.raises(DomainRuleError, match="no longer waiting"):
        account.retry_refund(
            refund_id=refund_id, actor=SUPERVISOR, policy=POLICY, now=clock.now, attempt=None
        )
    clock.advance(timedelta(hours=1))
    with pytest.raises(StaleFiring, match="no longer waiting"):
        account.retry_refund(
            refund_id=refund_id, actor=SCHEDULER_ACTOR, policy=POLICY, now=clock.now, attempt=1
        )
    assert account.collect_events() == []
    expect_books(account)


def test_failed_refund_escheated_is_not_retried() -> None:
    clock = Clock()
    account = open_account(clock)
    op = overpaid(account, clock)
    resolve(account, clock, op, "refund")
    refund_id = refund_of(account, op)
    fail(account, clock, refund_id)
    clock.advance(POLICY.dormancy("US-CA"))
    account.escheat(policy=POLICY, now=clock.now)
    expect_books(account, cash=20_000, escheat_payable=20_000)
    with pytest.raises(StaleFiring, match="no longer waiting"):
        account.retry_refund(
            refund_id=refund_id, actor=SCHEDULER_ACTOR, policy=POLICY, now=clock.now, attempt=1
        )
    expect_books(account, cash=20_000, escheat_payable=20_000)
    assert places(account) == {op: {"escheated": 20_000}}


def test_a_voided_invoice_names_the_payment_that_paid_it() -> None:
    clock = Clock()
    account = open_account(clock)
    bill(account, clock, "inv-1", 10_000)
    bill(account, clock, "inv-2", 5_000)
    pay(account, clock, "pay-1", 10_000, method="card", invoice_id="inv-1")
    pay(account, clock, "pay-2", 5_000, method="ach", invoice_id="inv-2")
    account.void_invoice_and_detect(
        invoice_id="inv-1", origin=origin(clock.now), policy=POLICY, now=clock.now
    )
    ((op, overpayment),) = account.overpayments.items()
    assert overpayment["payment_id"] == "pay-1"  # the payment that named it, not the last one
    verify(account, clock, op)
    resolve(account, clock, op, "refund")
    refund = account.refunds[refund_of(account, op)]
    assert (refund["payment_id"], refund["amount"]) == ("pay-1", 10_000)
    events = account.collect_events()
    requested = [event for event in events if type(event).__name__ == "RefundRequested"]
    assert [event.method for event in requested] == ["card"]  # back the way it came
    expect_books(account, cash=15_000, revenue=5_000, refund_clearing=10_000)
    # Replayed, the account knows which payment paid each invoice.
    replayed = project_aggregate(None, events)
    assert replayed is not None and replayed.invoices == account.invoices
    # A snapshot from before it was remembered (class version 5) reads as paid by no named
    # payment: a void of such an invoice names the account's last payment, as before.
    state = {key: value for key, value in vars(account).items()}
    state["invoices"] = {
        invoice_id: {key: value for key, value in invoice.items() if key != "paid_by"}
        for invoice_id, invoice in account.invoices.items()
    }
    Account.upcast_v5_v6(state)
    assert {invoice["paid_by"] for invoice in state["invoices"].values()} == {None}


def test_a_voided_invoice_whose_named_payment_came_back_names_the_last_payment() -> None:
    clock = Clock()
    account = open_account(clock)
    bill(account, clock, "inv-1", 10_000)
    pay(account, clock, "pay-1", 10_000, method="ach", invoice_id="inv-1")
    give_back(account, clock, "pay-1", 10_000)
    pay(account, clock, "pay-2", 10_000)  # by card, naming no invoice: it paid inv-1
    account.void_invoice_and_detect(
        invoice_id="inv-1", origin=origin(clock.now), policy=POLICY, now=clock.now
    )
    ((_, overpayment),) = account.overpayments.items()
    assert overpayment["payment_id"] == "pay-2"
    expect_books(account, cash=10_000, customer_credit=10_000)


def test_payment_returned_after_a_larger_invoice_was_voided() -> None:
    clock = Clock()
    account = open_account(clock)
    bill(account, clock, "inv-1", 10_000)
    pay(account, clock, "pay-1", 10_000)
    bill(account, clock, "inv-2", 5_000)
    pay(account, clock, "pay-2", 5_000)
    account.void_invoice_and_detect(
        invoice_id="inv-1", origin=origin(clock.now), policy=POLICY, now=clock.now
    )
    ((op, overpayment),) = account.overpayments.items()
    assert overpayment["payment_id"] == "pay-2"  # a void names the last payment
    expect_books(account, cash=15_000, revenue=5_000, customer_credit=10_000)
    give_back(account, clock, "pay-2", 5_000)
    # The return takes back no more than the payment brought.
    expect_books(account, cash=10_000, revenue=5_000, customer_credit=5_000)
    assert places(account) == {op: {"credit": 5_000, "reversed": 5_000}}
