"""A history of overpayments written through the real account aggregate, for read-model tests.

Each step is one `save` (one commit), under a clock that moves forward, so the log holds every
protocol path the overpayments and follow-up read models must follow: verification by two
departments, rejection, refunds that fail and are retried, escrow, coupons, self-correction
and credit applied to invoices, follow-ups raised, come due, escalated and closed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from ledger.domain.account import Account, FactOrigin
from ledger.domain.money import Money
from ledger.domain.overpayments import Actor
from ledger.domain.policy import Policy
from ledger.persistence.event_store import EventStore

POLICY = Policy(version="test-1")
LATER_POLICY = Policy(version="test-2")
START = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
ACCOUNTING = Actor("ann", "accounting")
RISK = Actor("rita", "risk_management")
MANAGER = Actor("max", "manager")


@dataclass
class Books:
    """The store, the clock, and the ids the history produced (by name)."""

    store: EventStore
    now: datetime = START
    facts: int = 0
    ids: dict[str, str] = field(default_factory=dict)

    def origin(self) -> FactOrigin:
        self.facts += 1
        return FactOrigin("acme-pay", f"e-{self.facts}", self.now)

    def tick(self, delta: timedelta = timedelta(minutes=1)) -> None:
        self.now += delta

    def open(self, account_id: str, kind: str) -> Account:
        account = Account.open(
            account_id=account_id,
            customer_id=f"cust-{account_id}",
            kind=kind,
            jurisdiction="US-CA",
            currency="USD",
            origin=self.origin(),
            now=self.now,
        )
        self.save(account)
        return account

    def pay(self, account: Account, payment_id: str, amount_minor: int) -> str:
        """A payment; the id of the overpayment it produced."""
        before = set(account.overpayments)
        account.receive_payment(
            payment_id=payment_id,
            amount=Money(amount_minor, "USD"),
            method="card",
            invoice_id=None,
            origin=self.origin(),
            now=self.now,
            policy=POLICY,
        )
        self.save(account)
        (overpayment_id,) = set(account.overpayments) - before
        return overpayment_id

    def invoice(self, account: Account, invoice_id: str, amount_minor: int) -> None:
        account.issue_invoice(
            invoice_id=invoice_id,
            amount=Money(amount_minor, "USD"),
            due_date=date(2026, 12, 31),
            origin=self.origin(),
            now=self.now,
            policy=POLICY,
        )
        self.save(account)

    def save(self, account: Account) -> None:
        self.store.save(account)
        self.tick()


def last_refund(account: Account) -> str:
    return next(reversed(account.refunds))


def write_history(store: EventStore) -> Books:
    """Write the whole history; `Books.ids` names its overpayments and follow-ups."""
    books = Books(store)
    ids = books.ids

    # A: two departments verify; refunded, the first attempt fails and is retried under a
    # later policy; settled.
    a = books.open("A", "monthly")
    books.invoice(a, "inv-a1", 10_000)
    ids["refunded"] = op = books.pay(a, "pay-a1", 70_000)
    a.verify_overpayment(
        overpayment_id=op,
        department="accounting",
        note="bank statement matches",
        actor=ACCOUNTING,
        policy=POLICY,
        now=books.now,
    )
    books.save(a)
    a.verify_overpayment(
        overpayment_id=op,
        department="risk_management",
        note=None,
        actor=RISK,
        policy=POLICY,
        now=books.now,
    )
    books.save(a)
    a.resolve_overpayment(
        overpayment_id=op, resolution="refund", actor=MANAGER, policy=LATER_POLICY, now=books.now
    )
    books.save(a)
    ids["refund_1"] = first = last_refund(a)
    a.fail_refund(
        refund_id=first,
        reason="card expired",
        origin=books.origin().event_fields(),
        policy=LATER_POLICY,
        now=books.now,
    )
    books.save(a)
    a.retry_refund(refund_id=first, actor=MANAGER, policy=LATER_POLICY, now=books.now, attempt=None)
    books.save(a)
    ids["refund_2"] = second = last_refund(a)
    a.settle_refund(
        refund_id=second,
        amount_minor=60_000,
        origin=books.origin().event_fields(),
        policy=LATER_POLICY,
        now=books.now,
    )
    books.save(a)

    # B: rejected (kept as credit), partly applied to the next invoice; a second one waits.
    b = books.open("B", "retail")
    ids["rejected"] = op = books.pay(b, "pay-b1", 2_000)
    b.reject_overpayment(
        overpayment_id=op,
        department="accounting",
        reason="duplicate of pay-b0",
        actor=ACCOUNTING,
        policy=POLICY,
        now=books.now,
    )
    books.save(b)
    books.invoice(b, "inv-b1", 1_500)
    ids["detected"] = books.pay(b, "pay-b2", 700)

    # C: held in escrow; then a coupon.
    c = books.open("C", "utility")
    ids["escrow"] = op = books.pay(c, "pay-c1", 30_000)
    for resolution in ("escrow", "coupon"):
        c.verify_overpayment(
            overpayment_id=op,
            department="accounting",
            note=None,
            actor=ACCOUNTING,
            policy=POLICY,
            now=books.now,
        )
        books.save(c)
        c.resolve_overpayment(
            overpayment_id=op, resolution=resolution, actor=MANAGER, policy=POLICY, now=books.now
        )
        books.save(c)
        if resolution == "escrow":
            ids["coupon"] = op = books.pay(c, "pay-c2", 1_000)

    # D: a refund that fails every attempt: a follow-up, due three times, escalated.
    d = books.open("D", "retail")
    ids["refund_failing"] = op = books.pay(d, "pay-d1", 10_000)
    d.verify_overpayment(
        overpayment_id=op,
        department="accounting",
        note=None,
        actor=ACCOUNTING,
        policy=POLICY,
        now=books.now,
    )
    books.save(d)
    d.resolve_overpayment(
        overpayment_id=op, resolution="refund", actor=MANAGER, policy=POLICY, now=books.now
    )
    books.save(d)
    for attempt in range(1, POLICY.refunds.retry_max + 2):
        refund_id = last_refund(d)
        d.fail_refund(
            refund_id=refund_id,
            reason=f"declined {attempt}",
            origin=books.origin().event_fields(),
            policy=POLICY,
            now=books.now,
        )
        books.save(d)
        if attempt <= POLICY.refunds.retry_max:
            d.retry_refund(
                refund_id=refund_id, actor=MANAGER, policy=POLICY, now=books.now, attempt=None
            )
            books.save(d)
    ids["escalated"] = follow_up_id = next(iter(d.follow_ups))
    for _ in range(POLICY.follow_ups.escalate_after_contacts):
        due_at = d.follow_ups[follow_up_id]["due_at"]
        books.now = max(books.now, datetime.fromisoformat(due_at))
        d.follow_up_due(follow_up_id=follow_up_id, due_at=due_at, policy=POLICY, now=books.now)
        books.save(d)

    # E and F: monthly credit that self-corrects; E's next invoices absorb it (its follow-up
    # closes), F's do not (its follow-up stays open).
    e = books.open("E", "monthly")
    f = books.open("F", "monthly")
    ids["absorbed"] = books.pay(e, "pay-e1", 20_000)
    ids["not_absorbed"] = books.pay(f, "pay-f1", 20_000)
    for account, name in ((e, "absorbed"), (f, "not_absorbed")):
        account.verify_overpayment(
            overpayment_id=ids[name],
            department="accounting",
            note=None,
            actor=ACCOUNTING,
            policy=POLICY,
            now=books.now,
        )
        books.save(account)
    books.tick(POLICY.monthly.self_correction_window)
    for account, name in ((e, "absorbed"), (f, "not_absorbed")):
        account.self_correct(overpayment_id=ids[name], policy=POLICY, now=books.now)
        books.save(account)
        books.invoice(account, f"inv-{name}-1", 5_000)
    ids["closed"] = next(iter(e.follow_ups))
    ids["waiting"] = next(iter(f.follow_ups))
    books.invoice(e, "inv-absorbed-2", 15_000)
    return books
