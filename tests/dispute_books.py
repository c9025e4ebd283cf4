"""A history of disputes written through the real account aggregate, for read-model tests.

Each step is one `save` (one commit) under a clock the history sets, so every time a read
model derives (first response, resolution, SLA) is known exactly:

- P, a bill disputed by phone: reassigned twice, contacts in and out (a promise), settled by
  an installment plan with one installment missed and then paid late; feedback 4.
- Q, a bill disputed by email: an adjustment above the agent's authority is refused, escalated
  and granted by a supervisor; still open.
- R, a bill disputed in chat, escalated to a manager and left there (an escalation's age).
- C and L, processor chargebacks, one won (feedback 5), one lost (feedback 2 with a comment).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from ledger.domain.account import Account, FactOrigin
from ledger.domain.errors import DomainRuleError
from ledger.domain.money import Money
from ledger.domain.overpayments import PROCESSOR, Actor
from ledger.domain.policy import Policy
from ledger.persistence.event_store import EventStore

POLICY = Policy(version="test-1")
START = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
ANN = Actor("ann", "agent")
BOB = Actor("bob", "agent")
SUE = Actor("sue", "supervisor")
ACME = Actor("acme-pay", PROCESSOR)
SECRET_WORDS = ("charged twice on my card", "call back Friday", "never got my money back")
"""The customer's words written into the history: personal data, never published."""


@dataclass
class DisputeBooks:
    """The store, the clock, and the ids and moments the history produced (by name)."""

    store: EventStore
    now: datetime = START
    facts: int = 0
    ids: dict[str, str] = field(default_factory=dict)
    at: dict[str, datetime] = field(default_factory=dict)

    def origin(self) -> FactOrigin:
        self.facts += 1
        return FactOrigin("acme-pay", f"e-{self.facts}", self.now)

    def save(self, account: Account, moment: str | None = None) -> None:
        """Commit, remember the moment under `moment`, then a minute passes."""
        self.store.save(account)
        if moment is not None:
            self.at[moment] = self.now
        self.now += timedelta(minutes=1)

    def open(self, account_id: str, invoice_minor: int) -> Account:
        account = Account.open(
            account_id=account_id,
            customer_id=f"cust-{account_id}",
            kind="retail",
            jurisdiction="US-CA",
            currency="USD",
            origin=self.origin(),
            now=self.now,
        )
        self.save(account)
        account.issue_invoice(
            invoice_id=f"inv-{account_id}",
            amount=Money(invoice_minor, "USD"),
            due_date=date(2026, 12, 31),
            origin=self.origin(),
            now=self.now,
            policy=POLICY,
        )
        self.save(account)
        return account

    def pay(self, account: Account, payment_id: str, amount_minor: int) -> None:
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

    def contact(
        self,
        account: Account,
        name: str,
        direction: str,
        summary: str,
        *,
        actor: Actor,
        promise: tuple[str, date] | None = None,
    ) -> None:
        account.log_contact(
            dispute_id=self.ids[name],
            channel="phone",
            direction=direction,
            summary=summary,
            promise=None if promise is None else promise[0],
            promise_by=None if promise is None else promise[1],
            actor=actor,
            policy=POLICY,
            now=self.now,
        )
        self.save(account, f"{name}_{direction}")


def _plan(books: DisputeBooks) -> None:
    ids = books.ids
    p = books.open("P", 12_000)
    ids["plan"] = p.open_dispute(
        channel="phone",
        reason="double charge",
        amount_minor=12_000,
        invoice_id="inv-P",
        actor=ANN,
        policy=POLICY,
        now=books.now,
    )
    books.save(p, "plan_opened")
    for rep in ("ann", "bob", "cid"):
        p.assign_dispute(dispute_id=ids["plan"], rep=rep, actor=SUE, policy=POLICY, now=books.now)
        books.save(p, f"plan_to_{rep}")
    books.contact(p, "plan", "in", f"Customer: {SECRET_WORDS[0]}", actor=BOB)
    books.now += timedelta(hours=2)
    books.contact(
        p,
        "plan",
        "out",
        "Explained the invoice; offered a plan",
        actor=BOB,
        promise=(SECRET_WORDS[1], date(2026, 11, 27)),
    )
    p.agree_plan(
        dispute_id=ids["plan"],
        installments=[(date(2026, 12, 1), 4_000), (date(2027, 1, 1), 8_000)],
        forgiven_minor=0,
        actor=BOB,
        policy=POLICY,
        now=books.now,
    )
    books.save(p, "plan_agreed")
    books.now = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
    books.pay(p, "pay-p1", 4_000)
    books.now = datetime(2027, 1, 5, 9, 0, tzinfo=UTC)
    p.installment_due(dispute_id=ids["plan"], index=1, policy=POLICY, now=books.now)
    books.save(p, "plan_missed")
    ids["missed_follow_up"] = next(reversed(p.follow_ups))
    books.now = datetime(2027, 1, 6, 9, 0, tzinfo=UTC)
    books.pay(p, "pay-p2", 8_000)
    books.at["plan_resolved"] = books.now - timedelta(minutes=1)
    p.record_feedback(
        dispute_id=ids["plan"],
        score=4,
        comment="Slow but fair",
        actor=ANN,
        policy=POLICY,
        now=books.now,
    )
    books.save(p)


def _escalations(books: DisputeBooks) -> None:
    ids = books.ids
    q = books.open("Q", 30_000)
    ids["adjusted"] = q.open_dispute(
        channel="email",
        reason="service not delivered",
        amount_minor=30_000,
        invoice_id="inv-Q",
        actor=ANN,
        policy=POLICY,
        now=books.now,
    )
    books.save(q, "adjusted_opened")
    q.assign_dispute(dispute_id=ids["adjusted"], rep="ann", actor=ANN, policy=POLICY, now=books.now)
    books.save(q)
    try:
        q.adjust_dispute(
            dispute_id=ids["adjusted"],
            amount_minor=10_000,
            reason="goodwill",
            actor=ANN,
            policy=POLICY,
            now=books.now,
        )
    except DomainRuleError:
        pass  # above the agent's authority: refused, nothing recorded
    else:
        raise AssertionError("an agent adjusted 100.00 (limit 50.00)")
    q.escalate_dispute(
        dispute_id=ids["adjusted"],
        to_role="supervisor",
        reason="goodwill above my limit",
        actor=ANN,
        policy=POLICY,
        now=books.now,
    )
    books.save(q, "adjusted_escalated")
    books.now += timedelta(hours=1)
    q.adjust_dispute(
        dispute_id=ids["adjusted"],
        amount_minor=10_000,
        reason="goodwill",
        actor=SUE,
        policy=POLICY,
        now=books.now,
    )
    books.save(q, "adjusted_granted")

    r = books.open("R", 2_500)
    ids["escalated"] = r.open_dispute(
        channel="chat",
        reason="wrong tariff",
        amount_minor=2_500,
        invoice_id="inv-R",
        actor=BOB,
        policy=POLICY,
        now=books.now,
    )
    books.save(r, "escalated_opened")
    r.escalate_dispute(
        dispute_id=ids["escalated"],
        to_role="manager",
        reason=None,
        actor=BOB,
        policy=POLICY,
        now=books.now,
    )
    books.save(r, "escalated_escalated")
    ids["escalation_follow_up"] = next(reversed(r.follow_ups))


def _chargeback(books: DisputeBooks, account_id: str, outcome: str, score: int) -> None:
    ids = books.ids
    name = f"chargeback_{outcome}"
    account = books.open(account_id, 5_000)
    books.pay(account, f"pay-{account_id}", 5_000)
    ids[name] = account.open_dispute(
        channel="chargeback",
        reason="fraudulent" if outcome == "won" else "product not received",
        amount_minor=5_000,
        payment_id=f"pay-{account_id}",
        external_id=f"dp_{outcome}",
        respond_by=books.now + timedelta(days=7),
        source_event_id=books.origin().source_event_id,
        actor=ACME,
        policy=POLICY,
        now=books.now,
    )
    books.save(account, f"{name}_opened")
    account.assign_dispute(dispute_id=ids[name], rep="ann", actor=ANN, policy=POLICY, now=books.now)
    books.save(account)
    books.now += timedelta(hours=3)
    books.contact(account, name, "out", "Evidence sent to the processor", actor=ANN)
    books.now += timedelta(days=2)
    account.resolve_dispute(
        dispute_id=ids[name],
        outcome=outcome,
        settlement=None,
        actor=ACME,
        policy=POLICY,
        now=books.now,
        source_event_id=books.origin().source_event_id,
    )
    books.save(account, f"{name}_resolved")
    account.record_feedback(
        dispute_id=ids[name],
        score=score,
        comment=None if outcome == "won" else f"I {SECRET_WORDS[2]}",
        actor=ACME,
        policy=POLICY,
        now=books.now,
        source_event_id=books.origin().source_event_id,
    )
    books.save(account)


def write_history(store: EventStore) -> DisputeBooks:
    """Write the whole history; `ids` names its disputes, `at` its moments."""
    books = DisputeBooks(store)
    _plan(books)
    _escalations(books)
    _chargeback(books, "C", "won", 5)
    _chargeback(books, "L", "lost", 2)
    return books
