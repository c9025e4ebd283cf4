"""Payment disputes, path by path, on the account aggregate with the shipped policy.

Each scenario ends stating the books: every ledger account's natural balance (all ten) and the
open follow-ups (reason, owner, due), as the README's "Disputes: the money" table says.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from itertools import count
from typing import Any

import pytest
from eventsourcing.application import project_aggregate

from ledger.domain import dispute_events as dv
from ledger.domain import protocol_events as ev
from ledger.domain.account import Account, FactOrigin
from ledger.domain.errors import DomainRuleError, NotDueYet, StaleFiring, UnauthorizedError
from ledger.domain.money import Money
from ledger.domain.overpayments import PROCESSOR, Actor
from ledger.domain.postings import LedgerAccount
from ledger.policy_file import load_policy

POLICY = load_policy()
START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
ANN = Actor("ann", "agent")
SUE = Actor("sue", "supervisor")
ACME = Actor("acme-pay", PROCESSOR)
_event_ids = count(1)


class Story:
    """One account under a clock the scenario moves, and every event it has produced."""

    def __init__(self) -> None:
        self.now = START
        self.account = Account.open(
            account_id="ACC-1",
            customer_id="C-1",
            kind="retail",
            jurisdiction="US-CA",
            currency="USD",
            origin=self.origin(),
            now=self.now,
        )
        self.events: list[Any] = []

    def origin(self) -> FactOrigin:
        return FactOrigin("acme-pay", f"e{next(_event_ids)}", self.now)

    def at(self, moment: datetime) -> None:
        assert moment >= self.now
        self.now = moment

    def collect(self) -> list[Any]:
        """The events produced since the last collect (kept for the replay check)."""
        new = self.account.collect_events()
        self.events.extend(new)
        return new

    def bill(self, amount_minor: int, invoice_id: str = "inv-1") -> None:
        self.account.issue_invoice(
            invoice_id=invoice_id,
            amount=Money(amount_minor, "USD"),
            due_date=date(2026, 12, 31),
            origin=self.origin(),
            now=self.now,
            policy=POLICY,
        )

    def pay(self, amount_minor: int, payment_id: str = "pay-1") -> None:
        self.account.receive_payment(
            payment_id=payment_id,
            amount=Money(amount_minor, "USD"),
            method="card",
            invoice_id=None,
            origin=self.origin(),
            now=self.now,
            policy=POLICY,
        )

    def dispute(self, channel: str, amount_minor: int, **fields: Any) -> str:
        return self.account.open_dispute(
            channel=channel,
            reason="double charge",
            amount_minor=amount_minor,
            actor=fields.pop("actor", ANN),
            policy=POLICY,
            now=self.now,
            **fields,
        )

    def chargeback(self, amount_minor: int, external_id: str = "cb-1") -> str:
        return self.dispute(
            "chargeback",
            amount_minor,
            actor=ACME,
            payment_id="pay-1",
            external_id=external_id,
            respond_by=self.now + timedelta(days=7),
            source_event_id=f"e{next(_event_ids)}",
        )

    def closed(self, external_id: str, outcome: str) -> None:
        """The processor's `dispute.closed`."""
        self.account.resolve_dispute(
            dispute_id=self.account.dispute_id_of(external_id),
            outcome=outcome,
            settlement=None,
            actor=ACME,
            policy=POLICY,
            now=self.now,
            source_event_id=f"e{next(_event_ids)}",
        )

    def resolve(
        self, dispute_id: str, outcome: str, settlement: str | None = None, actor: Actor = SUE
    ) -> None:
        self.account.resolve_dispute(
            dispute_id=dispute_id,
            outcome=outcome,
            settlement=settlement,
            actor=actor,
            policy=POLICY,
            now=self.now,
        )

    def contact(self, dispute_id: str, direction: str, promise_by: date | None = None) -> None:
        self.account.log_contact(
            dispute_id=dispute_id,
            channel="phone",
            direction=direction,
            summary="spoke with the customer",
            promise=None if promise_by is None else "call back",
            promise_by=promise_by,
            actor=ANN,
            policy=POLICY,
            now=self.now,
        )

    def assign(self, dispute_id: str, rep: str) -> None:
        self.account.assign_dispute(
            dispute_id=dispute_id, rep=rep, actor=SUE, policy=POLICY, now=self.now
        )

    def feedback(self, dispute_id: str, score: int) -> None:
        self.account.record_feedback(
            dispute_id=dispute_id,
            score=score,
            comment="quick and fair",
            actor=ANN,
            policy=POLICY,
            now=self.now,
        )


def books(account: Account) -> dict[str, int]:
    """Every ledger account's natural balance."""
    return {name.value: account.balance(name).amount_minor for name in LedgerAccount}


def stated(**nonzero: int) -> dict[str, int]:
    """All ten ledger accounts: the ones named, every other one at zero."""
    assert set(nonzero) <= {name.value for name in LedgerAccount}
    return {name.value: nonzero.get(name.value, 0) for name in LedgerAccount}


def open_follow_ups(account: Account) -> list[tuple[str, str, str]]:
    """The open follow-ups: (reason, owner, due), in the order they were raised."""
    return [
        (item["reason"], item["owner"], item["due_at"])
        for item in account.follow_ups.values()
        if item["status"] == "open"
    ]


def refused_without_change(story: Story, error: type[Exception], call: Any) -> str:
    """A refusal changes nothing: no event, the same books. Returns its reason."""
    story.collect()
    before = (story.account.version, books(story.account))
    with pytest.raises(error) as refusal:
        call()
    assert story.account.pending_event_count() == 0
    assert (story.account.version, books(story.account)) == before
    return str(refusal.value)


def replayed_equals(story: Story) -> None:
    """The events produced give back the same state."""
    story.collect()
    copy = project_aggregate(None, story.events)
    assert isinstance(copy, Account)
    for name in ("balances", "disputes", "follow_ups", "refunds", "overpayments"):
        assert getattr(copy, name) == getattr(story.account, name), name


def end_of(day: str) -> str:
    return datetime.combine(date.fromisoformat(day), datetime.max.time(), UTC).isoformat()


# --------------------------------------------------------------------------- chargebacks


def test_chargeback_won_gives_the_withheld_cash_back() -> None:
    story = Story()
    story.bill(10_000)
    story.pay(10_000)
    opened_at = story.now
    dispute_id = story.chargeback(10_000)
    assert books(story.account) == stated(dispute_hold=10_000, revenue=10_000)
    assert open_follow_ups(story.account) == [
        ("dispute_first_response", "agent", (opened_at + timedelta(days=1)).isoformat()),
        ("chargeback_respond_by", "agent", (opened_at + timedelta(days=7)).isoformat()),
    ]
    refused_without_change(story, DomainRuleError, lambda: story.chargeback(10_000))
    # Staff do not decide a chargeback: the processor's dispute.closed does.
    refused_without_change(story, DomainRuleError, lambda: story.resolve(dispute_id, "withdrawn"))

    story.at(START + timedelta(days=20))
    story.closed("cb-1", "won")
    assert story.account.disputes[dispute_id]["outcome"] == "won"
    refused_without_change(story, DomainRuleError, lambda: story.closed("cb-1", "lost"))
    assert books(story.account) == stated(cash=10_000, revenue=10_000)
    assert open_follow_ups(story.account) == []
    replayed_equals(story)


def test_chargeback_lost_writes_the_withheld_cash_off() -> None:
    story = Story()
    story.bill(10_000)
    story.pay(10_000)
    dispute_id = story.chargeback(7_500)
    assert books(story.account) == stated(cash=2_500, dispute_hold=7_500, revenue=10_000)
    story.assign(dispute_id, "ann")
    story.contact(dispute_id, "out")  # the first response: its follow-up closes
    assert [reason for reason, _, _ in open_follow_ups(story.account)] == ["chargeback_respond_by"]

    story.at(START + timedelta(days=30))
    story.closed("cb-1", "lost")
    refused_without_change(story, DomainRuleError, lambda: story.closed("cb-1", "won"))
    assert books(story.account) == stated(cash=2_500, revenue=10_000, losses=7_500)
    assert open_follow_ups(story.account) == []
    replayed_equals(story)


# --------------------------------------------------------------------------- a plan


def test_billing_dispute_settled_by_a_plan_with_one_installment_missed() -> None:
    story = Story()
    story.bill(12_000)
    dispute_id = story.dispute("phone", 12_000, invoice_id="inv-1")
    assert books(story.account) == stated(dispute_hold=12_000, revenue=12_000)
    story.assign(dispute_id, "ann")
    story.contact(dispute_id, "out")

    def plan(*installments: tuple[date, int], forgiven_minor: int = 0) -> None:
        story.account.agree_plan(
            dispute_id=dispute_id,
            installments=list(installments),
            forgiven_minor=forgiven_minor,
            actor=ANN,
            policy=POLICY,
            now=story.now,
        )

    reason = refused_without_change(
        story,
        DomainRuleError,
        lambda: plan((date(2026, 12, 15), 4_000), (date(2027, 1, 15), 7_000)),
    )
    assert "owes 12000" in reason
    # Forgiving a part needs write-off authority, which an agent does not have.
    refused_without_change(
        story,
        UnauthorizedError,
        lambda: plan((date(2026, 12, 15), 4_000), (date(2027, 1, 15), 7_000), forgiven_minor=1_000),
    )
    plan((date(2026, 12, 15), 4_000), (date(2027, 1, 15), 8_000))
    assert books(story.account) == stated(receivable=12_000, revenue=12_000)
    refused_without_change(story, DomainRuleError, lambda: story.resolve(dispute_id, "upheld"))

    story.at(datetime(2026, 12, 14, 10, 0, tzinfo=UTC))
    story.pay(4_000, "pay-1")
    plan_state = story.account.disputes[dispute_id]["plan"]
    assert [(i["paid"], i["status"]) for i in plan_state] == [(4_000, "paid"), (0, "due")]

    def fire() -> None:
        story.account.installment_due(dispute_id=dispute_id, index=1, policy=POLICY, now=story.now)

    # Due through 2027-01-15, then the policy's grace of three days.
    story.at(datetime(2027, 1, 18, 12, 0, tzinfo=UTC))
    refused_without_change(story, NotDueYet, fire)
    story.at(datetime(2027, 1, 19, 9, 0, tzinfo=UTC))
    fire()
    assert plan_state[1]["status"] == "missed"
    refused_without_change(story, StaleFiring, fire)
    assert open_follow_ups(story.account) == [
        ("dispute_installment_missed", "ann", story.now.isoformat())
    ]

    story.at(datetime(2027, 1, 20, 9, 0, tzinfo=UTC))
    story.pay(8_000, "pay-2")
    assert [(i["paid"], i["status"]) for i in plan_state] == [(4_000, "paid"), (8_000, "late")]
    assert story.account.disputes[dispute_id]["outcome"] == "plan_completed"
    assert story.account.overpayments == {}
    assert books(story.account) == stated(cash=12_000, revenue=12_000)
    assert open_follow_ups(story.account) == []
    replayed_equals(story)


# --------------------------------------------------------------------------- authority


def test_adjustment_above_an_agents_authority_is_escalated_and_granted() -> None:
    story = Story()
    story.bill(30_000)
    opened_at = story.now
    dispute_id = story.dispute("email", 30_000, invoice_id="inv-1")

    def adjust(actor: Actor) -> None:
        story.account.adjust_dispute(
            dispute_id=dispute_id,
            amount_minor=10_000,
            reason="goodwill",
            actor=actor,
            policy=POLICY,
            now=story.now,
        )

    reason = refused_without_change(story, UnauthorizedError, lambda: adjust(ANN))
    assert "ann (agent) may not adjust 10000" in reason and "supervisor" in reason

    story.at(START + timedelta(hours=1))
    story.account.escalate_dispute(
        dispute_id=dispute_id,
        to_role="supervisor",
        reason="goodwill above my limit",
        actor=ANN,
        policy=POLICY,
        now=story.now,
    )
    escalated_at = story.now
    refused_without_change(
        story,
        DomainRuleError,
        lambda: story.account.escalate_dispute(
            dispute_id=dispute_id,
            to_role="supervisor",
            reason=None,
            actor=ANN,
            policy=POLICY,
            now=story.now,
        ),
    )
    assert open_follow_ups(story.account) == [
        ("dispute_first_response", "agent", (opened_at + timedelta(days=1)).isoformat()),
        ("dispute_escalated", "supervisor", escalated_at.isoformat()),
    ]

    story.at(START + timedelta(hours=3))
    adjust(SUE)
    assert story.account.disputes[dispute_id]["escalated_to"] is None
    assert story.account.disputes[dispute_id]["held"] == 20_000
    assert books(story.account) == stated(dispute_hold=20_000, revenue=30_000, losses=10_000)
    assert open_follow_ups(story.account) == [
        ("dispute_first_response", "agent", (opened_at + timedelta(days=1)).isoformat())
    ]
    replayed_equals(story)


# --------------------------------------------------------------------------- representatives


def test_dispute_reassigned_twice_keeps_the_history_of_its_representatives() -> None:
    story = Story()
    story.bill(5_000)
    opened_at = story.now
    dispute_id = story.dispute("phone", 5_000, invoice_id="inv-1")
    for rep in ("ann", "bob", "cid"):
        story.assign(dispute_id, rep)
    refused_without_change(story, DomainRuleError, lambda: story.assign(dispute_id, "cid"))
    story.contact(dispute_id, "in", promise_by=date(2026, 12, 4))

    history = [
        (event.previous_rep, event.rep)
        for event in story.events
        if isinstance(event, dv.DisputeAssigned)
    ]
    assert history == [(None, "ann"), ("ann", "bob"), ("bob", "cid")]
    assert story.account.disputes[dispute_id]["rep"] == "cid"
    assert books(story.account) == stated(dispute_hold=5_000, revenue=5_000)
    # An inbound contact is no answer: the first response is still due; the promise is cid's.
    assert open_follow_ups(story.account) == [
        ("dispute_first_response", "agent", (opened_at + timedelta(hours=4)).isoformat()),
        ("dispute_promise", "cid", end_of("2026-12-04")),
    ]
    replayed_equals(story)


# --------------------------------------------------------------------------- feedback


def test_feedback_is_recorded_once_after_resolution() -> None:
    story = Story()
    story.bill(5_000)
    dispute_id = story.dispute("chat", 5_000, invoice_id="inv-1")
    refused_without_change(story, DomainRuleError, lambda: story.feedback(dispute_id, 4))
    story.resolve(dispute_id, "withdrawn", actor=ANN)
    refused_without_change(story, DomainRuleError, lambda: story.resolve(dispute_id, "upheld"))
    refused_without_change(story, DomainRuleError, lambda: story.feedback(dispute_id, 6))
    story.feedback(dispute_id, 4)
    refused_without_change(story, DomainRuleError, lambda: story.feedback(dispute_id, 5))
    assert story.account.disputes[dispute_id]["feedback"] == 4
    assert books(story.account) == stated(receivable=5_000, revenue=5_000)
    assert open_follow_ups(story.account) == []
    replayed_equals(story)


# --------------------------------------------------------------------------- customer's favour


def test_bill_decided_for_the_customer_refunds_its_paid_part() -> None:
    story = Story()
    story.bill(10_000)
    story.pay(6_000)
    dispute_id = story.dispute("phone", 10_000, invoice_id="inv-1", payment_id="pay-1")
    assert story.account.disputes[dispute_id]["held"] == 4_000
    assert books(story.account) == stated(cash=6_000, dispute_hold=4_000, revenue=10_000)
    # An agent may not write anything off; the paid part needs a refund or credit.
    refused_without_change(
        story,
        UnauthorizedError,
        lambda: story.resolve(dispute_id, "customer_favour", "refund", ANN),
    )
    refused_without_change(
        story, DomainRuleError, lambda: story.resolve(dispute_id, "customer_favour")
    )
    story.resolve(dispute_id, "customer_favour", "refund")
    requested = [e for e in story.collect() if isinstance(e, ev.RefundRequested)]
    assert [(e.dispute_id, e.payment_id, e.amount_minor) for e in requested] == [
        (dispute_id, "pay-1", 6_000)
    ]
    assert books(story.account) == stated(
        cash=6_000, refund_clearing=6_000, revenue=10_000, losses=10_000
    )
    story.account.settle_refund(
        refund_id=requested[0].refund_id,
        amount_minor=6_000,
        origin=story.origin().event_fields(),
        policy=POLICY,
        now=story.now,
    )
    assert story.account.refunds[requested[0].refund_id]["status"] == "settled"
    assert books(story.account) == stated(revenue=10_000, losses=10_000)
    assert open_follow_ups(story.account) == []
    replayed_equals(story)


def test_bill_decided_for_the_customer_with_credit_is_an_overpayment() -> None:
    story = Story()
    story.bill(10_000)
    story.pay(6_000)
    dispute_id = story.dispute("phone", 10_000, invoice_id="inv-1", payment_id="pay-1")
    story.resolve(dispute_id, "customer_favour", "credit")
    detected = [e for e in story.collect() if isinstance(e, Account.OverpaymentDetected)]
    assert [(e.payment_id, e.amount_minor) for e in detected] == [("pay-1", 6_000)]
    overpayment = story.account.overpayments[detected[0].overpayment_id]
    assert overpayment["places"] == {"credit": 6_000}
    assert books(story.account) == stated(
        cash=6_000, customer_credit=6_000, revenue=10_000, losses=10_000
    )
    assert open_follow_ups(story.account) == []
    replayed_equals(story)


def test_a_paid_part_beyond_what_was_paid_is_refused() -> None:
    """Disputing more than is owed claims the rest was paid: never more than was paid."""
    story = Story()
    story.bill(10_000)
    story.pay(2_000)
    refused_without_change(
        story, DomainRuleError, lambda: story.dispute("phone", 20_000, invoice_id="inv-1")
    )
    first = story.dispute("phone", 10_000, invoice_id="inv-1")
    assert story.account.disputes[first]["paid"] == 2_000
    # The paid part is disputed already.
    refused_without_change(story, DomainRuleError, lambda: story.dispute("email", 1_000))
    refused_without_change(
        story, DomainRuleError, lambda: story.dispute("email", 1_000, invoice_id="inv-9")
    )


# --------------------------------------------------------------------------- deferral


def test_deferral_and_its_end() -> None:
    story = Story()
    story.bill(5_000)
    opened_at = story.now
    dispute_id = story.dispute("chat", 5_000, invoice_id="inv-1")
    story.assign(dispute_id, "ann")

    def defer(until: date) -> None:
        story.account.defer_dispute(
            dispute_id=dispute_id, until=until, actor=ANN, policy=POLICY, now=story.now
        )

    refused_without_change(story, DomainRuleError, lambda: defer(date(2026, 11, 30)))
    defer(date(2026, 12, 20))
    assert story.account.disputes[dispute_id]["status"] == "deferred"
    assert books(story.account) == stated(dispute_hold=5_000, revenue=5_000)

    def ended() -> None:
        story.account.deferral_ended(dispute_id=dispute_id, policy=POLICY, now=story.now)

    story.at(datetime(2026, 12, 20, 23, 0, tzinfo=UTC))
    refused_without_change(story, NotDueYet, ended)
    story.at(datetime(2026, 12, 21, 9, 0, tzinfo=UTC))
    ended()
    refused_without_change(story, StaleFiring, ended)
    assert books(story.account) == stated(dispute_hold=5_000, revenue=5_000)
    assert open_follow_ups(story.account) == [
        ("dispute_first_response", "agent", (opened_at + timedelta(hours=1)).isoformat()),
        ("dispute_deferral_ended", "ann", story.now.isoformat()),
    ]
    replayed_equals(story)


def test_a_failed_refund_of_a_dispute_is_an_overpayment_not_retried() -> None:
    story = Story()
    story.bill(10_000)
    story.pay(6_000)
    dispute_id = story.dispute("phone", 10_000, invoice_id="inv-1", payment_id="pay-1")
    story.resolve(dispute_id, "customer_favour", "refund")
    (refund_id,) = story.account.refunds
    story.account.fail_refund(
        refund_id=refund_id,
        reason="card closed",
        origin=story.origin().event_fields(),
        policy=POLICY,
        now=story.now,
    )
    (overpayment,) = story.account.overpayments.values()
    assert (overpayment["amount"], overpayment["places"]) == (6_000, {"credit": 6_000})
    refused_without_change(
        story,
        DomainRuleError,
        lambda: story.account.retry_refund(
            refund_id=refund_id, actor=SUE, policy=POLICY, now=story.now, attempt=None
        ),
    )
    assert books(story.account) == stated(
        cash=6_000, customer_credit=6_000, revenue=10_000, losses=10_000
    )
    assert open_follow_ups(story.account) == []
    replayed_equals(story)


# --------------------------------------------------------------------------- the edges


def test_an_escalation_is_taken_by_a_role_above_it_too() -> None:
    story = Story()
    story.bill(30_000)
    dispute_id = story.dispute("email", 30_000, invoice_id="inv-1")
    story.account.escalate_dispute(
        dispute_id=dispute_id,
        to_role="supervisor",
        reason="goodwill above my limit",
        actor=ANN,
        policy=POLICY,
        now=story.now,
    )
    story.at(START + timedelta(hours=2))
    story.account.adjust_dispute(
        dispute_id=dispute_id,
        amount_minor=10_000,
        reason="goodwill",
        actor=Actor("meg", "manager"),
        policy=POLICY,
        now=story.now,
    )
    assert story.account.disputes[dispute_id]["escalated_to"] is None
    assert [reason for reason, _, _ in open_follow_ups(story.account)] == ["dispute_first_response"]
    assert books(story.account) == stated(dispute_hold=20_000, revenue=30_000, losses=10_000)
    replayed_equals(story)


def test_a_disputed_invoice_is_not_voided_until_the_dispute_is_resolved() -> None:
    story = Story()
    story.bill(12_000)
    dispute_id = story.dispute("phone", 12_000, invoice_id="inv-1")

    def void() -> None:
        story.account.void_invoice_and_detect(
            invoice_id="inv-1", origin=story.origin(), policy=POLICY, now=story.now
        )

    reason = refused_without_change(story, DomainRuleError, void)
    assert f"invoice inv-1 is disputed ({dispute_id})" in reason
    story.resolve(dispute_id, "upheld")
    void()
    assert books(story.account) == stated()
    replayed_equals(story)
