"""The customer account aggregate: applies payment facts and enforces the handling protocol."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from eventsourcing.domain import Aggregate
from eventsourcing.domain import Snapshot as LibrarySnapshot
from eventsourcing.utils import register_topic

from ledger import limits
from ledger.domain.disputes import DisputeHandling
from ledger.domain.errors import DomainRuleError
from ledger.domain.event_shapes import build_event, event_shape
from ledger.domain.money import Money
from ledger.domain.overpayments import OverpaymentHandling
from ledger.domain.policy import ACCOUNT_KINDS as ACCOUNT_KINDS  # re-exported: its old home
from ledger.domain.policy import Policy
from ledger.domain.postings import (
    LedgerAccount,
    Posting,
    UnbalancedPostingError,
    add_movements,
    check_postings_on,
    movements,
    natural_balance,
)
from ledger.domain.protocol_events import APPLIES_TO_INVOICES, later

ACCOUNT_NAMESPACE = uuid.UUID("6f1c1f5e-8f0a-4a55-9d3c-2b8f5c1d7a10")


@dataclass(frozen=True, slots=True)
class FactOrigin:
    """Where a processor's fact comes from: the processor, its event id, when it says it happened.

    Every event that records a processor's fact carries these as `source`, `source_event_id` and
    `reported_at` (an ISO 8601 string).
    """

    source: str
    source_event_id: str
    reported_at: datetime

    def event_fields(self) -> dict[str, str]:
        """The fields an event records about its origin."""
        return {
            "source": self.source,
            "source_event_id": self.source_event_id,
            "reported_at": self.reported_at.isoformat(),
        }


def account_uuid(account_id: str) -> uuid.UUID:
    """The aggregate id of a customer account: stable, derived from the account id."""
    return uuid.uuid5(ACCOUNT_NAMESPACE, account_id)


class Account(OverpaymentHandling, DisputeHandling, Aggregate):
    """One customer account in one currency, with its ledger balances.

    Every class whose instances are stored has an explicit, stable `TOPIC` (the library refuses
    a nested event without one once the aggregate has one): the store records that name, not
    the class's module path, so classes can move or be renamed without touching stored events
    or the wire. Event topics are the public event names (`ledger.event_names` is the registry).

    Versions: `class_version` with `upcast_vN_vN+1(state)` static methods, on the aggregate (for
    its snapshot state) and on any event whose stored shape changes. Upcasters see the stored
    JSON values (ISO strings, lists), before the mapper turns them into our value types.
    """

    TOPIC = "account"
    class_version = 6

    @staticmethod
    def upcast_v1_v2(state: dict[str, Any]) -> None:
        """v2 dropped `open_overpayment_minor`, which was written and never read."""
        state.pop("open_overpayment_minor", None)

    @staticmethod
    def upcast_v2_v3(state: dict[str, Any]) -> None:
        """v3 tracks the protocol: overpayments, payments, invoices, refunds, coupons and
        follow-ups (a v2 snapshot knows none of those it had seen), closure, last activity."""
        for name in ("overpayments", "payments", "invoices", "refunds", "coupons", "follow_ups"):
            state.setdefault(name, {})
        state.setdefault("closed", False)
        state.setdefault("last_activity", state.get("_modified_on") or state.get("_created_on"))

    @staticmethod
    def upcast_v3_v4(state: dict[str, Any]) -> None:
        """v4 tracks disputes (and the processors' dispute ids)."""
        state.setdefault("disputes", {})
        state.setdefault("dispute_ids", {})

    @staticmethod
    def upcast_v4_v5(state: dict[str, Any]) -> None:
        """v5 indexes the overpayments whose credit settles invoices (`crediting`)."""
        state["crediting"] = {
            overpayment_id: None
            for overpayment_id, overpayment in state.get("overpayments", {}).items()
            if not overpayment["places"].keys().isdisjoint(APPLIES_TO_INVOICES)
        }

    @staticmethod
    def upcast_v5_v6(state: dict[str, Any]) -> None:
        """v6 remembers, on each invoice, the last payment that named it (`paid_by`). A v5
        snapshot never recorded it: its invoices read as paid by no named payment, and a void of
        one is attributed to the account's last payment, as v5 did."""
        for invoice in state.get("invoices", {}).values():
            invoice.setdefault("paid_by", None)

    class Snapshot(LibrarySnapshot):
        """A snapshot of an account's state (the library's, under a stable name)."""

        TOPIC = "account_snapshot"

    class Created(Aggregate.Created):
        """The library's default creation event: never triggered (accounts are `Opened`)."""

        TOPIC = "account_created"

    class Opened(Aggregate.Created):
        """The processor reported a new customer account."""

        TOPIC = "account_opened"

        account_id: str
        customer_id: str
        kind: str
        jurisdiction: str
        currency: str
        source: str
        source_event_id: str
        reported_at: str

    class Event(Aggregate.Event):
        """Every event of an account names the account, for readers of the log."""

        account_id: str

    class MoneyFact(Event):
        """A processor's fact that moves money, posted exactly once by this event."""

        TOPIC = "account_money_fact"
        """Abstract: never triggered itself, named because the library names every event."""

        source: str
        source_event_id: str
        reported_at: str
        amount_minor: int
        currency: str
        postings: tuple[Posting, ...]

        def apply(self, aggregate: Any) -> None:
            """Move the balances by this event's postings."""
            aggregate.apply_postings(self.postings)

    class InvoiceIssued(MoneyFact):
        """The customer was billed: receivable up, revenue recognised."""

        TOPIC = "invoice_issued"

        invoice_id: str
        due_date: str

        def apply(self, aggregate: Any) -> None:
            """Move the balances; remember the invoice (it may be voided)."""
            aggregate.apply_postings(self.postings)
            aggregate.invoices[self.invoice_id] = {
                "amount": self.amount_minor,
                "voided": False,
                "paid_by": None,
            }

    class PaymentReceived(MoneyFact):
        """Money arrived: it settles the receivable and any excess becomes customer credit."""

        TOPIC = "payment_received"

        payment_id: str
        method: str
        invoice_id: str | None

        def apply(self, aggregate: Any) -> None:
            """Move the balances; remember the payment (it may come back) and the activity."""
            aggregate.apply_postings(self.postings)
            settled = sum(
                p.amount_minor for p in self.postings if p.credit == LedgerAccount.RECEIVABLE
            )
            aggregate.payments[self.payment_id] = {
                "amount": self.amount_minor,
                "method": self.method,
                "settled": settled,
                "overpayment_id": None,
                "returned": False,
            }
            named = aggregate.invoices.get(self.invoice_id) if self.invoice_id else None
            if named is not None:
                named["paid_by"] = self.payment_id
            aggregate.last_activity = later(aggregate.last_activity, self.reported_at)

    class OverpaymentDetected(Event):
        """A payment exceeded the whole receivable (or a paid invoice was voided); the excess,
        already posted as customer credit, is owed back. Names the departments that must verify
        it and the resolutions the policy allows, for the customer's notification."""

        TOPIC = "overpayment_detected"
        class_version = 2

        overpayment_id: str
        payment_id: str
        amount_minor: int
        currency: str
        policy_version: str
        postings: tuple[Posting, ...]
        departments: list[str]
        options: list[str]

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            """v2 names the departments (none: by the policy at verification) and options."""
            state.setdefault("departments", [])
            state.setdefault("options", [])

        def apply(self, aggregate: Any) -> None:
            """Open the overpayment: its whole amount is unresolved credit."""
            aggregate.overpayments[self.overpayment_id] = {
                "id": self.overpayment_id,
                "payment_id": self.payment_id,
                "amount": self.amount_minor,
                "status": "detected",
                "departments": list(self.departments),
                "verified": {},
                "resolution": None,
                "places": {"credit": self.amount_minor},
                "detected_at": self.timestamp.isoformat(),
            }
            payment = aggregate.payments.get(self.payment_id)
            if payment is not None and payment["overpayment_id"] is None:
                payment["overpayment_id"] = self.overpayment_id

    def __init__(
        self,
        account_id: str,
        customer_id: str,
        kind: str,
        jurisdiction: str,
        currency: str,
        source: str,
        source_event_id: str,
        reported_at: str,
    ) -> None:
        self.account_id = account_id
        self.customer_id = customer_id
        self.kind = kind
        self.jurisdiction = jurisdiction
        self.currency = currency
        self.balances: dict[str, int] = {}
        self.closed = False
        self.last_activity = reported_at
        self.overpayments: dict[str, dict[str, Any]] = {}
        self.crediting: dict[str, None] = {}
        """The overpayments holding credit that settles invoices (`kept`, `next_bill`): an
        index kept by the events' moves, so an invoice never scans the account's history."""
        self.payments: dict[str, dict[str, Any]] = {}
        self.invoices: dict[str, dict[str, Any]] = {}
        self.refunds: dict[str, dict[str, Any]] = {}
        self.coupons: dict[str, str] = {}
        self.follow_ups: dict[str, dict[str, Any]] = {}
        self.disputes: dict[str, dict[str, Any]] = {}
        self.dispute_ids: dict[str, str] = {}

    def trigger_event(self, event_class: Any, **kwargs: Any) -> None:
        """The library's `trigger_event`, building the event without its dataclass `__init__`
        (`ledger.domain.event_shapes`) and applying it without `mutate`'s checks that hold by
        construction (`_trigger`): the same event, the same aggregate, a third of the cost."""
        self._trigger(event_class, kwargs)

    def _trigger(self, event_class: Any, fields: dict[str, Any]) -> None:
        """`trigger_event` with the event's fields as one dict (taken, not copied).

        Where the event's `mutate` is the library's, what it does without its checks that the
        event names this aggregate and its next version: they hold here by construction (an
        event loaded from the store still goes through `mutate` and its checks)."""
        shape = event_shape(event_class)
        if shape is None:
            super().trigger_event(event_class, **fields)
            return
        version = self.version + 1
        fields["originator_id"] = self.id
        fields["originator_version"] = version
        timestamp = fields.get("timestamp")
        if timestamp is None:
            timestamp = fields["timestamp"] = event_class.create_timestamp()
        event = build_event(event_class, shape, fields)
        if shape.plain_mutate:
            event.apply(self)
            self.version = version
            self.modified_on = timestamp
        else:
            event.mutate(self)
        self._pending_events.append(event)

    @classmethod
    def open(
        cls,
        *,
        account_id: str,
        customer_id: str,
        kind: str,
        jurisdiction: str,
        currency: str,
        origin: FactOrigin,
        now: datetime,
    ) -> Account:
        """Open a customer account."""
        if kind not in ACCOUNT_KINDS:
            raise DomainRuleError(f"unknown account kind {kind!r}")
        Money.zero(currency)
        return cls._create(
            cls.Opened,
            id=account_uuid(account_id),
            timestamp=now,
            account_id=account_id,
            customer_id=customer_id,
            kind=kind,
            jurisdiction=jurisdiction,
            currency=currency,
            **origin.event_fields(),
        )

    def balance(self, ledger_account: LedgerAccount) -> Money:
        """A balance on its natural side (what is owed to us or by us)."""
        raw = self.balances.get(ledger_account, 0)
        return Money(natural_balance(ledger_account, raw), self.currency)

    def issue_invoice(
        self,
        *,
        invoice_id: str,
        amount: Money,
        due_date: date,
        origin: FactOrigin,
        now: datetime,
        policy: Policy,
    ) -> None:
        """Bill the customer; credit waiting for the next bill settles it at once."""
        if self.closed:
            raise DomainRuleError(f"account {self.account_id} is cancelled: no more invoices")
        self._check_money(amount)
        postings = (
            Posting(
                LedgerAccount.RECEIVABLE, LedgerAccount.REVENUE, amount.amount_minor, self.currency
            ),
        )
        self._check_postings(postings)
        self._record_money_fact(
            self.InvoiceIssued,
            amount=amount,
            origin=origin,
            now=now,
            postings=postings,
            invoice_id=invoice_id,
            due_date=due_date.isoformat(),
        )
        self.apply_credit_to_invoice(invoice_id, policy, now)

    def receive_payment(
        self,
        *,
        payment_id: str,
        amount: Money,
        method: str,
        invoice_id: str | None,
        origin: FactOrigin,
        now: datetime,
        policy: Policy,
    ) -> None:
        """Take a payment: settle what is owed; any excess is customer credit and an overpayment."""
        self._check_money(amount)
        owed_minor = self.balances.get(LedgerAccount.RECEIVABLE, 0)
        settled_minor = min(amount.amount_minor, owed_minor)
        excess_minor = amount.amount_minor - settled_minor
        postings: list[Posting] = []
        if settled_minor:
            postings.append(
                Posting(LedgerAccount.CASH, LedgerAccount.RECEIVABLE, settled_minor, self.currency)
            )
        if excess_minor:
            postings.append(
                Posting(
                    LedgerAccount.CASH, LedgerAccount.CUSTOMER_CREDIT, excess_minor, self.currency
                )
            )
        self._check_postings(postings)
        self._record_money_fact(
            self.PaymentReceived,
            amount=amount,
            origin=origin,
            now=now,
            postings=tuple(postings),
            payment_id=payment_id,
            method=method,
            invoice_id=invoice_id,
        )
        self.match_installments(payment_id, settled_minor, policy, now)
        self.detect_overpayment(payment_id, excess_minor, policy, now)

    def void_invoice_and_detect(
        self, *, invoice_id: str, origin: FactOrigin, policy: Policy, now: datetime
    ) -> None:
        """Void an invoice; what was already paid of it is an overpayment like any other.

        The overpayment names the payment that paid the invoice (so a refund goes back to its
        method): the last payment that named the invoice, unless it came back (a returned
        payment paid nothing); else (payments settle the account's receivable, not an invoice)
        the account's last payment.
        """
        invoice = self.invoices.get(invoice_id)
        named = invoice.get("paid_by") if invoice is not None else None
        paid = self.void_invoice(
            invoice_id=invoice_id, origin=origin.event_fields(), policy=policy, now=now
        )
        if named is not None and named in self.payments and not self.payments[named]["returned"]:
            payer = named
        else:
            payer = next(reversed(self.payments), "") if self.payments else ""
        self.detect_overpayment(payer, paid, policy, now)

    def detect_overpayment(
        self, payment_id: str, excess_minor: int, policy: Policy, now: datetime
    ) -> None:
        """An excess owed back to the customer (already posted as credit): an overpayment,
        detected and notified like any other (below the policy's minimum: only credit)."""
        if excess_minor < policy.overpayment.detect_minimum_minor:
            return
        self.trigger_event(
            self.OverpaymentDetected,
            timestamp=now,
            account_id=self.account_id,
            overpayment_id=f"{self.account_id}:op:{self.version + 1}",
            payment_id=payment_id,
            amount_minor=excess_minor,
            currency=self.currency,
            policy_version=policy.version,
            postings=(),
            departments=list(policy.required_departments(excess_minor, self.currency)),
            options=list(policy.allowed_resolutions(self.kind)),
        )

    def _record_money_fact(
        self,
        event_class: type[MoneyFact],
        *,
        amount: Money,
        origin: FactOrigin,
        now: datetime,
        postings: tuple[Posting, ...],
        **own_fields: Any,
    ) -> None:
        own_fields["timestamp"] = now
        own_fields["account_id"] = self.account_id
        own_fields.update(origin.event_fields())
        own_fields["amount_minor"] = amount.amount_minor
        own_fields["currency"] = amount.currency
        own_fields["postings"] = postings
        self._trigger(event_class, own_fields)

    def apply_postings(self, postings: tuple[Posting, ...]) -> None:
        """Move balances (called only while applying an already validated event)."""
        add_movements(self.balances, movements(postings))

    def pending_event_count(self) -> int:
        """Events triggered and not yet collected."""
        return len(self.pending_events)

    def check_currency(self, currency: str) -> None:
        """Refuse money in another currency than the account's one."""
        if currency != self.currency:
            raise DomainRuleError(
                f"account {self.account_id} is in {self.currency}, not {currency}"
            )

    def _check_money(self, amount: Money) -> None:
        if amount.currency != self.currency:
            raise DomainRuleError(
                f"account {self.account_id} is in {self.currency}, not {amount.currency}"
            )
        if not 0 < amount.amount_minor <= limits.amount_minor_max:
            raise DomainRuleError(f"amount must be 1..{limits.amount_minor_max} minor units")

    def _check_postings(self, postings: tuple[Posting, ...] | list[Posting]) -> None:
        try:
            for posting in postings:
                posting.check()
                if posting.currency != self.currency:
                    raise UnbalancedPostingError(f"posting in {posting.currency}")
            check_postings_on(self.balances, postings)
        except UnbalancedPostingError as error:
            raise DomainRuleError(str(error)) from error


# The library's metaclass registers an aggregate's nested events under their TOPIC, but not its
# snapshot class: until a process had taken a snapshot itself, a stored `account_snapshot` did
# not resolve, and a restarted worker could not load an account that has one.
register_topic(Account.Snapshot.TOPIC, Account.Snapshot)
