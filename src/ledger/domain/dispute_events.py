"""The events of a payment dispute, from opening to feedback (see `ledger.domain.disputes`).

Like the overpayment protocol's, each carries its postings and applies them generically
(`AccountEvent`), then its own `update`. Fields that hold the customer's words are listed in
`PERSONAL_FIELDS`: they stay in the store (so a later erasure can remove them without touching
the money) and are never published on `ledger.events` nor written to logs.
"""

from __future__ import annotations

from typing import Any, Final

from ledger.domain.protocol_events import AccountEvent, Decision, register_events

SENIORITY: Final[dict[str, int]] = {"agent": 0, "supervisor": 1, "manager": 2}
"""Staff roles in order: an escalation is taken by its role or one above it."""


def takes_escalation(actor_role: str, escalated_to: str | None) -> bool:
    """Whether a decision by `actor_role` takes an escalation to `escalated_to`."""
    if escalated_to is None:
        return False
    if actor_role == escalated_to:
        return True
    return SENIORITY.get(actor_role, -1) > SENIORITY.get(escalated_to, len(SENIORITY))


PERSONAL_FIELDS: Final[frozenset[str]] = frozenset({"summary", "promise", "comment"})
"""Event fields that hold personal data: kept out of `ledger.events` and logs."""


class DisputeOpened(Decision):
    """A dispute opened: a processor's chargeback (cash withheld) or a customer's dispute of a
    bill from any channel (what is disputed is not asked for meanwhile)."""

    TOPIC = "dispute_opened"

    dispute_id: str
    external_id: str | None
    """The processor's dispute id (chargebacks)."""
    kind: str
    """`chargeback` or `billing`."""
    channel: str
    reason: str
    amount_minor: int
    currency: str
    held_minor: int
    """What moved to `dispute_hold` (a bill already paid is disputed without a hold)."""
    invoice_id: str | None
    payment_id: str | None
    respond_by: str | None
    first_response_due: str
    update_due: str
    resolution_due: str
    source_event_id: str | None

    def update(self, aggregate: Any) -> None:
        """The dispute exists, open, with nobody assigned yet."""
        aggregate.disputes[self.dispute_id] = {
            "id": self.dispute_id,
            "external_id": self.external_id,
            "kind": self.kind,
            "channel": self.channel,
            "amount": self.amount_minor,
            "held": self.held_minor,
            "paid": self.amount_minor - self.held_minor,
            "payment_id": self.payment_id,
            "invoice_id": self.invoice_id,
            "status": "open",
            "rep": None,
            "escalated_to": None,
            "opened_at": self.timestamp.isoformat(),
            "update_due": self.update_due,
            "responded": False,
            "last_out": None,
            "plan": None,
            "deferred_until": None,
            "outcome": None,
            "feedback": None,
        }
        if self.external_id is not None:
            aggregate.dispute_ids[self.external_id] = self.dispute_id


class DisputeAssigned(Decision):
    """A dedicated representative owns the dispute (a reassignment names the previous one)."""

    TOPIC = "dispute_assigned"

    dispute_id: str
    rep: str
    previous_rep: str | None

    def update(self, aggregate: Any) -> None:
        """The new owner."""
        aggregate.disputes[self.dispute_id]["rep"] = self.rep


class ContactLogged(Decision):
    """One contact with the customer: when, who, channel, direction, summary, any promise."""

    TOPIC = "dispute_contact_logged"

    dispute_id: str
    channel: str
    direction: str
    summary: str
    promise: str | None
    promise_by: str | None
    next_update_due: str | None
    """An outbound contact is a status update: the next one is due from it."""

    def update(self, aggregate: Any) -> None:
        """An outbound contact answers the customer and restarts the update interval."""
        dispute = aggregate.disputes[self.dispute_id]
        if self.direction == "out":
            dispute["responded"] = True
            dispute["update_due"] = self.next_update_due
            dispute["last_out"] = self.timestamp.isoformat()


class DisputeEscalated(Decision):
    """The dispute handed up to a role that may take what it needs."""

    TOPIC = "dispute_escalated"

    dispute_id: str
    to_role: str
    reason: str | None

    def update(self, aggregate: Any) -> None:
        """Who it is escalated to."""
        aggregate.disputes[self.dispute_id]["escalated_to"] = self.to_role


class DisputeAdjusted(Decision):
    """Part of a disputed bill written off (goodwill), within the actor's authority."""

    TOPIC = "dispute_adjusted"

    dispute_id: str
    amount_minor: int
    reason: str

    def update(self, aggregate: Any) -> None:
        """Less is held (and owed); an escalation to the actor's role is taken."""
        dispute = aggregate.disputes[self.dispute_id]
        dispute["held"] -= self.amount_minor
        if takes_escalation(self.actor_role, dispute["escalated_to"]):
            dispute["escalated_to"] = None


class PlanAgreed(Decision):
    """An installment plan: the agreed amount back to receivable (owed on the installments'
    schedule), any part forgiven written off."""

    TOPIC = "dispute_plan_agreed"

    dispute_id: str
    installments: list[list[Any]]
    """[[due date, amount in minor units], ...] in due order."""
    forgiven_minor: int

    def update(self, aggregate: Any) -> None:
        """The hold is released into the plan."""
        dispute = aggregate.disputes[self.dispute_id]
        dispute["held"] = 0
        dispute["status"] = "plan"
        if takes_escalation(self.actor_role, dispute["escalated_to"]):
            dispute["escalated_to"] = None
        dispute["plan"] = [
            {"due": due, "amount": amount, "paid": 0, "status": "due"}
            for due, amount in self.installments
        ]


class InstallmentsPaid(AccountEvent):
    """A payment matched to the plan's next installments (in due order)."""

    TOPIC = "dispute_installments_paid"

    dispute_id: str
    payment_id: str
    paid: list[list[Any]]
    """[[installment index, amount, late], ...]."""

    def update(self, aggregate: Any) -> None:
        """Each installment paid (late if after its due date)."""
        plan = aggregate.disputes[self.dispute_id]["plan"]
        for index, amount, late in self.paid:
            installment = plan[index]
            installment["paid"] += amount
            if installment["paid"] >= installment["amount"]:
                installment["status"] = "late" if late else "paid"


class InstallmentMissed(Decision):
    """An installment not paid within the policy's grace after its due date."""

    TOPIC = "dispute_installment_missed"

    dispute_id: str
    index: int

    def update(self, aggregate: Any) -> None:
        """Marked missed (it may still be paid, late)."""
        aggregate.disputes[self.dispute_id]["plan"][self.index]["status"] = "missed"


class DisputeDeferred(Decision):
    """Payment of the disputed amount deferred until a date."""

    TOPIC = "dispute_deferred"

    dispute_id: str
    until: str

    def update(self, aggregate: Any) -> None:
        """Deferred."""
        dispute = aggregate.disputes[self.dispute_id]
        dispute["status"] = "deferred"
        dispute["deferred_until"] = self.until


class DisputeStatusUpdate(Decision):
    """A status update the policy's schedule made due: the customer is told where it stands."""

    TOPIC = "dispute_status_update"

    dispute_id: str
    status: str
    next_step: str
    next_update_due: str

    def update(self, aggregate: Any) -> None:
        """The next update is due later."""
        aggregate.disputes[self.dispute_id]["update_due"] = self.next_update_due


class DisputeResolved(Decision):
    """The outcome, and the money: the hold released exactly once."""

    TOPIC = "dispute_resolved"

    dispute_id: str
    outcome: str
    """won, lost, withdrawn (chargebacks); customer_favour, upheld, withdrawn, plan_completed."""
    settlement: str | None
    """For a bill decided in the customer's favour that was already paid: refund or credit."""
    source_event_id: str | None

    def update(self, aggregate: Any) -> None:
        """Resolved: nothing held any more."""
        dispute = aggregate.disputes[self.dispute_id]
        dispute["held"] = 0
        dispute["status"] = "resolved"
        dispute["outcome"] = self.outcome


class FeedbackRecorded(Decision):
    """The customer's feedback after resolution (from staff or the processor's survey)."""

    TOPIC = "dispute_feedback_recorded"

    dispute_id: str
    score: int
    comment: str | None
    source_event_id: str | None

    def update(self, aggregate: Any) -> None:
        """Recorded once."""
        aggregate.disputes[self.dispute_id]["feedback"] = self.score


DISPUTE_EVENTS: Final[tuple[type[AccountEvent], ...]] = (
    DisputeOpened,
    DisputeAssigned,
    ContactLogged,
    DisputeEscalated,
    DisputeAdjusted,
    PlanAgreed,
    InstallmentsPaid,
    InstallmentMissed,
    DisputeDeferred,
    DisputeStatusUpdate,
    DisputeResolved,
    FeedbackRecorded,
)
"""Every dispute event that can be stored."""

register_events(DISPUTE_EVENTS)
