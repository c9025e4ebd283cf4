"""The events of the overpayment protocol, after detection: facts and decisions.

Each event names the account, carries the postings it makes (possibly none) and the `moves` of
overpayment money between places (`Move`: which overpayment, from which place, to which, how
much), and applies both generically; its own `update` changes the rest of the state. So every
unit of every overpayment is always in exactly one place (`PLACES`), and the places map onto the
ledger accounts (`PLACE_ACCOUNTS`): the property tests check that the two agree.

Decision events record the policy version that allowed them and who decided (`actor_id`,
`actor_role`; the scheduler acts as `scheduler`). Fields hold plain JSON values only (the store
keeps them as JSON; lists come back as lists).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from eventsourcing.domain import Aggregate
from eventsourcing.utils import TopicError, register_topic, resolve_topic

from ledger.domain.postings import LedgerAccount, Posting

PLACES: Final[tuple[str, ...]] = (
    "credit",
    "kept",
    "next_bill",
    "store_credit",
    "refund_failed",
    "escrow",
    "refund_in_flight",
    "coupon",
    "refunded",
    "applied",
    "redeemed",
    "escheated",
    "reversed",
)
"""Where each unit of an overpayment is: owed as credit (`credit` unresolved, `kept` after a
rejection or as a small credit, `next_bill` waiting for an invoice, `store_credit`,
`refund_failed` waiting for a retry), held (`escrow`, `refund_in_flight`, `coupon`), or gone
(`refunded`, `applied` to an invoice, `redeemed` as coupon or store credit, `escheated`,
`reversed` by a returned payment)."""

PLACE_ACCOUNTS: Final[dict[str, str | None]] = {
    "credit": LedgerAccount.CUSTOMER_CREDIT,
    "kept": LedgerAccount.CUSTOMER_CREDIT,
    "next_bill": LedgerAccount.CUSTOMER_CREDIT,
    "store_credit": LedgerAccount.CUSTOMER_CREDIT,
    "refund_failed": LedgerAccount.CUSTOMER_CREDIT,
    "escrow": LedgerAccount.ESCROW,
    "refund_in_flight": LedgerAccount.REFUND_CLEARING,
    "coupon": LedgerAccount.COUPON,
    "refunded": None,
    "applied": None,
    "redeemed": None,
    "escheated": None,
    "reversed": None,
}
"""The ledger account holding each place's money (None: it has left what we owe)."""

APPLIES_TO_INVOICES: Final[tuple[str, ...]] = ("kept", "next_bill")
"""Credit applied automatically when an invoice is issued, oldest overpayment first."""

OWED_CREDIT: Final[tuple[str, ...]] = (
    "credit",
    "kept",
    "next_bill",
    "store_credit",
    "refund_failed",
)
"""Places whose money sits in `customer_credit`."""


def later(first: str, second: str) -> str:
    """The later of two RFC 3339 timestamps (compared as times: offsets differ by processor)."""
    if len(first) == len(second) and first[-6:] == second[-6:]:
        # The same shape and offset (as one processor's `isoformat()` times are): text order
        # is time order, and no parsing is needed.
        return second if second > first else first
    return second if datetime.fromisoformat(second) > datetime.fromisoformat(first) else first


Move = tuple[str, str, str, int]
"""(overpayment id, from place, to place, amount in minor units)."""


class AccountEvent(Aggregate.Event):
    """An event of the protocol: postings and moves applied generically, then `update`."""

    TOPIC = "account_protocol_event"
    """Abstract: never triggered itself, named because the library names every event."""

    account_id: str
    postings: tuple[Posting, ...]
    moves: list[list[Any]]

    def apply(self, aggregate: Any) -> None:
        """Move balances and overpayment places, then the event's own state changes."""
        aggregate.apply_postings(tuple(self.postings))
        crediting = aggregate.crediting
        for overpayment_id, source, target, amount in self.moves:
            places = aggregate.overpayments[overpayment_id]["places"]
            places[source] = places.get(source, 0) - amount
            if not places[source]:
                del places[source]
            places[target] = places.get(target, 0) + amount
            if places.keys().isdisjoint(APPLIES_TO_INVOICES):
                crediting.pop(overpayment_id, None)
            else:
                crediting[overpayment_id] = None
        self.update(aggregate)

    def update(self, aggregate: Any) -> None:
        """The event's own state changes (none by default)."""


class Decision(AccountEvent):
    """A decision: who took it and under which policy version."""

    TOPIC = "account_decision"
    """Abstract."""

    actor_id: str
    actor_role: str
    policy_version: str


class OverpaymentVerified(Decision):
    """A department verified an overpayment; `complete` once every required one has."""

    TOPIC = "overpayment_verified"

    overpayment_id: str
    department: str
    note: str | None
    complete: bool
    self_correct_at: str | None
    """Monthly accounts: when the self-correction applies it, if no resolution is chosen."""

    def update(self, aggregate: Any) -> None:
        """Record the verification; a complete one makes the overpayment verified."""
        overpayment = aggregate.overpayments[self.overpayment_id]
        overpayment["verified"][self.department] = self.actor_id
        if self.complete:
            overpayment["status"] = "verified"
            overpayment["self_correct_at"] = self.self_correct_at


class OverpaymentRejected(Decision):
    """A department rejected an overpayment: the money stays as credit against future bills."""

    TOPIC = "overpayment_rejected"

    overpayment_id: str
    department: str
    reason: str

    def update(self, aggregate: Any) -> None:
        """The overpayment is closed as rejected (its money moved to `kept`)."""
        overpayment = aggregate.overpayments[self.overpayment_id]
        overpayment["status"] = "rejected"
        overpayment["rejection"] = {"department": self.department, "reason": self.reason}


class OverpaymentResolved(Decision):
    """A verified overpayment got its resolution (`automatic`: small credit or self-correction)."""

    TOPIC = "overpayment_resolved"
    class_version = 2

    overpayment_id: str
    resolution: str
    automatic: bool
    escrow_expires_at: str | None
    coupon_code: str | None
    self_corrected: bool
    """Applied by the monthly self-correction (its credit not absorbed raises a follow-up)."""

    @staticmethod
    def upcast_v1_v2(state: dict[str, Any]) -> None:
        """v2 records the self-correction in the event (v1 set it outside any event)."""
        state.setdefault("self_corrected", False)

    def update(self, aggregate: Any) -> None:
        """Record the resolution."""
        overpayment = aggregate.overpayments[self.overpayment_id]
        overpayment["status"] = "resolved"
        if self.self_corrected:
            overpayment["self_corrected"] = True
        overpayment["resolution"] = self.resolution
        overpayment["escrow_expires_at"] = self.escrow_expires_at
        if self.coupon_code is not None:
            overpayment["coupon_code"] = self.coupon_code
            aggregate.coupons[self.coupon_code] = self.overpayment_id


class RefundRequested(Decision):
    """Money sent back to the original payment method: a request on `payments.outbound`."""

    TOPIC = "refund_requested"

    refund_id: str
    overpayment_id: str | None
    dispute_id: str | None
    """A bill decided in the customer's favour refunds what was paid of it (no overpayment)."""
    payment_id: str
    method: str
    amount_minor: int
    currency: str
    attempt: int
    retry_of: str | None

    def update(self, aggregate: Any) -> None:
        """Track the refund; a retry supersedes the failed attempt."""
        aggregate.refunds[self.refund_id] = {
            "overpayment_id": self.overpayment_id,
            "dispute_id": self.dispute_id,
            "payment_id": self.payment_id,
            "amount": self.amount_minor,
            "attempt": self.attempt,
            "status": "requested",
            "retry_at": None,
        }
        if self.retry_of is not None:
            aggregate.refunds[self.retry_of]["status"] = "retried"
        if self.overpayment_id is not None:
            aggregate.overpayments[self.overpayment_id]["refund_id"] = self.refund_id


class RefundSettled(AccountEvent):
    """The processor paid the refund out."""

    TOPIC = "refund_settled"

    refund_id: str
    overpayment_id: str | None
    amount_minor: int
    source: str
    source_event_id: str
    reported_at: str

    def update(self, aggregate: Any) -> None:
        """The refund is done."""
        aggregate.refunds[self.refund_id]["status"] = "settled"


class RefundFailed(AccountEvent):
    """The processor could not pay the refund: its money is owed as credit again."""

    TOPIC = "refund_failed"

    refund_id: str
    overpayment_id: str | None
    reason: str
    attempt: int
    retry_at: str | None
    """When the scheduler retries it; None once the policy's retries are spent."""
    policy_version: str
    source: str
    source_event_id: str
    reported_at: str

    def update(self, aggregate: Any) -> None:
        """The refund waits for a retry (or for staff)."""
        refund = aggregate.refunds[self.refund_id]
        refund["status"] = "failed"
        refund["retry_at"] = self.retry_at


class EscrowReleased(Decision):
    """Money held in escrow released by staff or, at expiry, by the scheduler."""

    TOPIC = "escrow_released"

    overpayment_id: str
    to: str
    amount_minor: int
    at_expiry: bool

    def update(self, aggregate: Any) -> None:
        """The escrow hold ends (exactly once)."""
        overpayment = aggregate.overpayments[self.overpayment_id]
        overpayment["escrow_released_to"] = self.to


class CreditApplied(AccountEvent):
    """Credit applied to an invoice when it was issued (oldest overpayment first)."""

    TOPIC = "credit_applied"

    invoice_id: str
    amount_minor: int
    currency: str


class Redemption(AccountEvent):
    """A processor's report of owed credit used: customer activity (dormancy counts from the
    last)."""

    TOPIC = "account_redemption"
    """Abstract: never triggered itself, named because the library names every event."""

    amount_minor: int
    currency: str
    invoice_id: str | None
    source: str
    source_event_id: str
    reported_at: str

    def update(self, aggregate: Any) -> None:
        """Using credit is customer activity (dormancy counts from the last)."""
        aggregate.last_activity = later(aggregate.last_activity, self.reported_at)


class CouponRedeemed(Redemption):
    """The processor reported a coupon used (against the receivable; the rest as a purchase)."""

    TOPIC = "coupon_redeemed"

    coupon_code: str


class StoreCreditRedeemed(Redemption):
    """The processor reported store credit used for a purchase."""

    TOPIC = "store_credit_redeemed"

    redemption_id: str


class AccountCancelled(Decision):
    """Cancel and refund: an emergency on a non-utility account, with its legal basis."""

    TOPIC = "account_cancelled"

    overpayment_id: str
    legal_basis_level: str
    legal_basis_reference: str

    def update(self, aggregate: Any) -> None:
        """The account takes no more invoices."""
        aggregate.closed = True


class CreditEscheated(Decision):
    """Credit unclaimed past the jurisdiction's dormancy period, owed to the state now."""

    TOPIC = "credit_escheated"

    jurisdiction: str
    amount_minor: int
    currency: str
    dormant_since: str


class PaymentReturned(AccountEvent):
    """A payment came back (ACH return, bounced check, card reversal): its postings reversed;
    credit already refunded or used becomes receivable, never negative credit."""

    TOPIC = "payment_returned"

    payment_id: str
    amount_minor: int
    currency: str
    reason: str
    shortfall_minor: int
    source: str
    source_event_id: str
    reported_at: str

    def update(self, aggregate: Any) -> None:
        """The payment is returned (once)."""
        aggregate.payments[self.payment_id]["returned"] = True


class InvoiceVoided(AccountEvent):
    """An invoice was voided: its receivable reversed; what was paid of it becomes credit."""

    TOPIC = "invoice_voided"

    invoice_id: str
    amount_minor: int
    currency: str
    paid_minor: int
    source: str
    source_event_id: str
    reported_at: str

    def update(self, aggregate: Any) -> None:
        """The invoice is voided (once)."""
        aggregate.invoices[self.invoice_id]["voided"] = True


class FollowUpRaised(Decision):
    """Staff must contact the customer: it joins the follow-up queue."""

    TOPIC = "follow_up_raised"

    follow_up_id: str
    reason: str
    subject_id: str
    due_at: str
    owner: str

    def update(self, aggregate: Any) -> None:
        """The follow-up is open."""
        aggregate.follow_ups[self.follow_up_id] = {
            "reason": self.reason,
            "subject_id": self.subject_id,
            "due_at": self.due_at,
            "owner": self.owner,
            "contacts": 0,
            "status": "open",
            "raised_at": self.timestamp.isoformat(),
        }


class FollowUpDue(Decision):
    """A follow-up came due again without its subject being settled: the next contact (and,
    after the policy's count, an escalation)."""

    TOPIC = "follow_up_due"

    follow_up_id: str
    contacts: int
    due_at: str
    owner: str
    escalated: bool

    def update(self, aggregate: Any) -> None:
        """The next contact is due."""
        follow_up = aggregate.follow_ups[self.follow_up_id]
        follow_up["contacts"] = self.contacts
        follow_up["due_at"] = self.due_at
        follow_up["owner"] = self.owner


class FollowUpClosed(Decision):
    """A follow-up's subject is settled: it leaves the queue."""

    TOPIC = "follow_up_closed"

    follow_up_id: str
    reason: str

    def update(self, aggregate: Any) -> None:
        """The follow-up is done."""
        aggregate.follow_ups[self.follow_up_id]["status"] = "closed"


class CommandRefused(AccountEvent):
    """A staff command for this account was refused: who asked, what, and why."""

    TOPIC = "command_refused"

    command_id: str
    command_type: str
    actor_id: str
    actor_role: str
    error_kind: str
    reason: str


PROTOCOL_EVENTS: Final[tuple[type[AccountEvent], ...]] = (
    OverpaymentVerified,
    OverpaymentRejected,
    OverpaymentResolved,
    RefundRequested,
    RefundSettled,
    RefundFailed,
    EscrowReleased,
    CreditApplied,
    CouponRedeemed,
    StoreCreditRedeemed,
    AccountCancelled,
    CreditEscheated,
    PaymentReturned,
    InvoiceVoided,
    FollowUpRaised,
    FollowUpDue,
    FollowUpClosed,
    CommandRefused,
)
"""Every protocol event that can be stored (the registry in `event_names` lists them)."""


def register_events(classes: tuple[type[AccountEvent], ...]) -> None:
    """Register events' stable names with the library (nested events of an aggregate are
    registered by its metaclass; these live at module level)."""
    for cls in classes:
        try:
            resolved = resolve_topic(cls.TOPIC)
        except TopicError:
            register_topic(cls.TOPIC, cls)
            continue
        if resolved is not cls:
            raise TopicError(f"event name {cls.TOPIC} is taken by {resolved}")


register_events((AccountEvent, Decision, Redemption, *PROTOCOL_EVENTS))
