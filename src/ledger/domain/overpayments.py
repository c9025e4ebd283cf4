"""The overpayment protocol after detection: verification, every resolution, refunds, escrow,
coupons, store credit, cancellation, self-correction, escheatment, returned payments, voided
invoices and follow-ups. A mixin of the account aggregate (`ledger.domain.account.Account`).

Every method checks everything first and then triggers its events; a broken rule raises
`DomainRuleError` (or `UnauthorizedError` for an actor above their authority) before any event,
so a refused command changes nothing. Money moves only by the postings of the events, and each
unit of an overpayment moves between places by the events' `moves` (see `protocol_events`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ledger.domain import protocol_events as ev
from ledger.domain.errors import DomainRuleError, NotDueYet, StaleFiring, UnauthorizedError
from ledger.domain.policy import DEPARTMENTS, Policy
from ledger.domain.postings import LedgerAccount, Posting, check_postings_on

SCHEDULER = "scheduler"
"""The actor id and role of decisions the scheduler's firings make."""

PROCESSOR = "processor"
"""The role of a processor whose fact is a decision (a chargeback opened or closed)."""

CUSTOMER_CREDIT = LedgerAccount.CUSTOMER_CREDIT
RECEIVABLE = LedgerAccount.RECEIVABLE


@dataclass(frozen=True, slots=True)
class Actor:
    """Who gives a command: their id and role (policy's authority table)."""

    id: str
    role: str


SCHEDULER_ACTOR = Actor(SCHEDULER, SCHEDULER)


@dataclass(frozen=True, slots=True)
class LegalBasis:
    """Why a cancellation is allowed: local, state or federal law, with a reference."""

    level: str
    reference: str


def account_of(item_id: str) -> str:
    """The account id an overpayment, refund or follow-up id embeds (`<account>:<tag>:<n>`)."""
    parts = item_id.rsplit(":", 2)
    if len(parts) != 3 or not parts[0] or not parts[2].isdigit():
        raise ValueError(f"{item_id!r} is not an id of the form <account id>:<tag>:<number>")
    return parts[0]


def coupon_code(overpayment_id: str) -> str:
    """The coupon code issued for an overpayment (derived, so a replay issues the same)."""
    digest = hashlib.sha256(overpayment_id.encode()).hexdigest()[:12].upper()
    return f"CPN-{digest}"


def _oldest_first(overpayment_ids: Collection[str]) -> list[str]:
    """Overpayment ids in the order they were detected (their number is the account's version
    at detection): credit enters `kept` or `next_bill` in any order."""
    if len(overpayment_ids) < 2:
        return list(overpayment_ids)
    return sorted(overpayment_ids, key=lambda item_id: int(item_id.rpartition(":")[2]))


class OverpaymentHandling:
    """The protocol's methods on the account aggregate (state lives on the aggregate)."""

    account_id: str
    kind: str
    jurisdiction: str
    currency: str
    balances: dict[str, int]
    closed: bool
    last_activity: str
    overpayments: dict[str, dict[str, Any]]
    crediting: dict[str, None]
    payments: dict[str, dict[str, Any]]
    invoices: dict[str, dict[str, Any]]
    refunds: dict[str, dict[str, Any]]
    coupons: dict[str, str]
    follow_ups: dict[str, dict[str, Any]]
    disputes: dict[str, dict[str, Any]]
    version: int

    if TYPE_CHECKING:  # the aggregate's own (stubs here would shadow them)

        def trigger_event(self, event_class: Any, **kwargs: Any) -> None: ...

        def detect_overpayment(
            self, payment_id: str, excess_minor: int, policy: Policy, now: datetime
        ) -> None: ...

        def dispute_settled(self, item: dict[str, Any]) -> str | None: ...

    def _emit(self, event_class: type[ev.AccountEvent], **fields: Any) -> None:
        """Trigger an event after checking its postings against the books.

        Every rule is checked before a method's first event, so this never refuses what the
        rules allowed; if it does, it is a bug, raised as `UnbalancedPostingError` (not a
        domain rule: the caller drops the half-moved aggregate).
        """
        postings = fields["postings"]
        for posting in postings:
            posting.check()
        check_postings_on(self.balances, postings)
        self.trigger_event(event_class, **fields)

    # ----------------------------------------------------------------- verification

    def verify_overpayment(
        self,
        *,
        overpayment_id: str,
        department: str,
        note: str | None,
        actor: Actor,
        policy: Policy,
        now: datetime,
    ) -> None:
        """A department verifies an overpayment; the last required one completes it."""
        overpayment = self._awaiting_verification(overpayment_id)
        required = self.required_departments(overpayment_id, policy)
        self._check_department(overpayment, department, required, actor, policy)
        complete = set(overpayment["verified"]) | {department} >= set(required)
        self_correct_at = None
        if complete and self.kind == "monthly":
            self_correct_at = (now + policy.monthly.self_correction_window).isoformat()
        self._decide(
            ev.OverpaymentVerified,
            actor,
            policy,
            now,
            overpayment_id=overpayment_id,
            department=department,
            note=note,
            complete=complete,
            self_correct_at=self_correct_at,
        )
        amount = overpayment["places"].get("credit", 0)
        if complete and 0 < amount < policy.small_credit_minor(self.currency):
            self._resolve(overpayment_id, "credit", SCHEDULER_ACTOR, policy, now, automatic=True)

    def reject_overpayment(
        self,
        *,
        overpayment_id: str,
        department: str,
        reason: str,
        actor: Actor,
        policy: Policy,
        now: datetime,
    ) -> None:
        """A department rejects an overpayment: its money is kept as credit for future bills."""
        overpayment = self._awaiting_verification(overpayment_id)
        required = self.required_departments(overpayment_id, policy)
        self._check_department(overpayment, department, required, actor, policy)
        amount = overpayment["places"].get("credit", 0)
        self._decide(
            ev.OverpaymentRejected,
            actor,
            policy,
            now,
            moves=[[overpayment_id, "credit", "kept", amount]] if amount else [],
            overpayment_id=overpayment_id,
            department=department,
            reason=reason,
        )

    def required_departments(self, overpayment_id: str, policy: Policy) -> tuple[str, ...]:
        """The departments that must verify (fixed when detected; else by today's policy)."""
        overpayment = self._overpayment(overpayment_id)
        fixed = overpayment.get("departments") or ()
        if fixed:
            return tuple(fixed)
        return policy.required_departments(overpayment["amount"], self.currency)

    def _check_department(
        self,
        overpayment: dict[str, Any],
        department: str,
        required: Iterable[str],
        actor: Actor,
        policy: Policy,
    ) -> None:
        if department not in required:
            raise DomainRuleError(
                f"{department} does not verify overpayment {overpayment['id']}"
                f" (required: {', '.join(required)})"
            )
        if department in overpayment["verified"]:
            raise DomainRuleError(
                f"overpayment {overpayment['id']} is already verified by {department}"
            )
        if actor.role in DEPARTMENTS and actor.role != department:
            raise UnauthorizedError(
                f"{actor.id} ({actor.role}) may not act for {department}"
                f"; needs {department} or a role the authority table allows"
            )
        self._authorize(actor, "verify", overpayment["amount"], policy)

    # ----------------------------------------------------------------- resolution

    def resolve_overpayment(
        self,
        *,
        overpayment_id: str,
        resolution: str,
        actor: Actor,
        policy: Policy,
        now: datetime,
        legal_basis: LegalBasis | None = None,
    ) -> None:
        """Resolve a verified overpayment by one option the policy allows for this account."""
        overpayment = self._overpayment(overpayment_id)
        if overpayment["status"] != "verified":
            raise DomainRuleError(
                f"overpayment {overpayment_id} is {overpayment['status']}: only a verified"
                " overpayment is resolved"
            )
        allowed = policy.allowed_resolutions(self.kind)
        if resolution not in allowed:
            raise DomainRuleError(
                f"{resolution} is not allowed on a {self.kind} account"
                f" (allowed: {', '.join(allowed)})"
            )
        amount = overpayment["places"].get("credit", 0)
        self._authorize(actor, "resolve", amount, policy)
        if resolution == "cancel_and_refund":
            if legal_basis is None:
                raise DomainRuleError("cancel and refund needs its legal basis (level, reference)")
            if legal_basis.level not in ("local", "state", "federal"):
                raise DomainRuleError(
                    f"legal basis level {legal_basis.level!r}: local, state or federal"
                )
        self._resolve(overpayment_id, resolution, actor, policy, now, legal_basis=legal_basis)

    def _resolve(
        self,
        overpayment_id: str,
        resolution: str,
        actor: Actor,
        policy: Policy,
        now: datetime,
        *,
        automatic: bool = False,
        self_corrected: bool = False,
        legal_basis: LegalBasis | None = None,
    ) -> None:
        amount = self.overpayments[overpayment_id]["places"].get("credit", 0)
        postings: tuple[Posting, ...] = ()
        moves: list[list[Any]] = []
        expires_at = code = None
        if resolution in ("credit", "store_credit") and amount:
            moves = [[overpayment_id, "credit", _RESOLUTION_PLACE[resolution], amount]]
        elif resolution in ("escrow", "coupon") and amount:
            target = LedgerAccount.ESCROW if resolution == "escrow" else LedgerAccount.COUPON
            postings = (Posting(CUSTOMER_CREDIT, target, amount, self.currency),)
            moves = [[overpayment_id, "credit", resolution, amount]]
            if resolution == "escrow":
                expires_at = (now + policy.escrow.period).isoformat()
            else:
                code = coupon_code(overpayment_id)
        self._decide(
            ev.OverpaymentResolved,
            actor,
            policy,
            now,
            postings=postings,
            moves=moves,
            overpayment_id=overpayment_id,
            resolution=resolution,
            automatic=automatic,
            escrow_expires_at=expires_at,
            coupon_code=code,
            self_corrected=self_corrected,
        )
        if resolution == "refund" and amount:
            self._request_refund(overpayment_id, {"credit": amount}, actor, policy, now)
        elif resolution == "cancel_and_refund":
            assert legal_basis is not None
            self._decide(
                ev.AccountCancelled,
                actor,
                policy,
                now,
                overpayment_id=overpayment_id,
                legal_basis_level=legal_basis.level,
                legal_basis_reference=legal_basis.reference,
            )
            for other_id, other in self.overpayments.items():
                owed = {
                    place: other["places"][place]
                    for place in ev.OWED_CREDIT
                    if other["places"].get(place)
                }
                if owed:
                    self._request_refund(other_id, owed, actor, policy, now)
        self._close_settled_follow_ups(actor, policy, now)

    def _request_refund(
        self,
        overpayment_id: str,
        sources: dict[str, int],
        actor: Actor,
        policy: Policy,
        now: datetime,
        *,
        retry_of: str | None = None,
        attempt: int = 1,
    ) -> None:
        """Send owed credit back to the payment method it came from (money to refund_clearing)."""
        overpayment = self.overpayments[overpayment_id]
        payment = self.payments.get(overpayment["payment_id"], {})
        amount = sum(sources.values())
        self._decide(
            ev.RefundRequested,
            actor,
            policy,
            now,
            postings=(
                Posting(CUSTOMER_CREDIT, LedgerAccount.REFUND_CLEARING, amount, self.currency),
            ),
            moves=[[overpayment_id, place, "refund_in_flight", n] for place, n in sources.items()],
            refund_id=f"{self.account_id}:rf:{self.version + 1}",
            overpayment_id=overpayment_id,
            dispute_id=None,
            payment_id=overpayment["payment_id"],
            method=payment.get("method", "original"),
            amount_minor=amount,
            currency=self.currency,
            attempt=attempt,
            retry_of=retry_of,
        )

    def retry_refund(
        self, *, refund_id: str, actor: Actor, policy: Policy, now: datetime, attempt: int | None
    ) -> None:
        """Send a failed refund again (by staff, or the scheduler naming the failed attempt)."""
        refund = self.refunds.get(refund_id)
        if refund is None:
            raise DomainRuleError(f"no refund {refund_id} on account {self.account_id}")
        if refund["status"] != "failed" or (attempt is not None and attempt != refund["attempt"]):
            if actor.role == SCHEDULER:
                raise StaleFiring(f"refund {refund_id} is {refund['status']}")
            raise DomainRuleError(f"refund {refund_id} is {refund['status']}, not failed")
        if refund["overpayment_id"] is None:
            # A dispute's failed refund became an overpayment when it failed: resolve that one.
            raise DomainRuleError(f"refund {refund_id} of a dispute is owed back as an overpayment")
        # Its money may have left since (escheated, refunded on cancellation, payment returned).
        waiting = self.overpayments[refund["overpayment_id"]]["places"].get("refund_failed", 0)
        if waiting < refund["amount"]:
            reason = f"refund {refund_id}'s money is no longer waiting for a retry"
            if actor.role == SCHEDULER:
                raise StaleFiring(reason)
            raise DomainRuleError(reason)
        if actor.role == SCHEDULER:
            if refund["retry_at"] is None:
                raise StaleFiring(f"refund {refund_id} has no retry due (retries spent)")
            if now < datetime.fromisoformat(refund["retry_at"]):
                raise NotDueYet(f"refund {refund_id} is due for a retry at {refund['retry_at']}")
        else:
            self._authorize(actor, "resolve", refund["amount"], policy)
        self._request_refund(
            refund["overpayment_id"],
            {"refund_failed": refund["amount"]},
            actor,
            policy,
            now,
            retry_of=refund_id,
            attempt=refund["attempt"] + 1,
        )

    def settle_refund(
        self,
        *,
        refund_id: str,
        amount_minor: int,
        origin: dict[str, str],
        policy: Policy,
        now: datetime,
    ) -> None:
        """The processor paid a refund out: the money leaves `refund_clearing` for good."""
        refund = self._refund_in_flight(refund_id)
        if amount_minor != refund["amount"]:
            raise DomainRuleError(
                f"refund {refund_id} was for {refund['amount']}, settled for {amount_minor}"
            )
        overpayment_id = refund["overpayment_id"]
        self._emit(
            ev.RefundSettled,
            timestamp=now,
            account_id=self.account_id,
            postings=(
                Posting(
                    LedgerAccount.REFUND_CLEARING, LedgerAccount.CASH, amount_minor, self.currency
                ),
            ),
            moves=[]
            if overpayment_id is None
            else [[overpayment_id, "refund_in_flight", "refunded", amount_minor]],
            refund_id=refund_id,
            overpayment_id=overpayment_id,
            amount_minor=amount_minor,
            **origin,
        )
        self._close_settled_follow_ups(SCHEDULER_ACTOR, policy, now)

    def fail_refund(
        self, *, refund_id: str, reason: str, origin: dict[str, str], policy: Policy, now: datetime
    ) -> None:
        """The processor could not pay a refund: owed as credit again, retried per policy, and
        after the last retry a follow-up goes to staff."""
        refund = self._refund_in_flight(refund_id)
        overpayment_id = refund["overpayment_id"]
        delay = None if overpayment_id is None else policy.refund_retry_delay(refund["attempt"])
        retry_at = None if delay is None else (now + delay).isoformat()
        self._emit(
            ev.RefundFailed,
            timestamp=now,
            account_id=self.account_id,
            postings=(
                Posting(
                    LedgerAccount.REFUND_CLEARING, CUSTOMER_CREDIT, refund["amount"], self.currency
                ),
            ),
            moves=[]
            if overpayment_id is None
            else [[overpayment_id, "refund_in_flight", "refund_failed", refund["amount"]]],
            refund_id=refund_id,
            overpayment_id=overpayment_id,
            reason=reason,
            attempt=refund["attempt"],
            retry_at=retry_at,
            policy_version=policy.version,
            **origin,
        )
        if overpayment_id is None:
            # A dispute's refund that failed: the money is owed back like any overpayment.
            self.detect_overpayment(refund.get("payment_id", ""), refund["amount"], policy, now)
        elif retry_at is None:
            self._raise_follow_up("refund_retries_exhausted", refund_id, policy, now, due=now)

    def _refund_in_flight(self, refund_id: str) -> dict[str, Any]:
        refund = self.refunds.get(refund_id)
        if refund is None:
            raise DomainRuleError(f"no refund {refund_id} on account {self.account_id}")
        if refund["status"] != "requested":
            raise DomainRuleError(f"refund {refund_id} is {refund['status']}, not in flight")
        return refund

    # ----------------------------------------------------------------- escrow

    def release_escrow(
        self,
        *,
        overpayment_id: str,
        to: str,
        actor: Actor,
        policy: Policy,
        now: datetime,
        at_expiry: bool = False,
    ) -> None:
        """End an escrow hold exactly once: to a refund, to credit on the next bill, or escheat."""
        overpayment = self._overpayment(overpayment_id)
        held = overpayment["places"].get("escrow", 0)
        if not held:
            if at_expiry:
                raise StaleFiring(f"overpayment {overpayment_id} holds nothing in escrow")
            raise DomainRuleError(f"overpayment {overpayment_id} holds nothing in escrow")
        if to not in ("refund", "credit", "escheat"):
            raise DomainRuleError(f"escrow is released to refund, credit or escheat, not {to!r}")
        if at_expiry:
            expires_at = datetime.fromisoformat(overpayment["escrow_expires_at"])
            if now < expires_at:
                raise NotDueYet(f"escrow of {overpayment_id} expires at {expires_at.isoformat()}")
        else:
            self._authorize(actor, "release", held, policy)
        target_account = {
            "refund": CUSTOMER_CREDIT,
            "credit": CUSTOMER_CREDIT,
            "escheat": LedgerAccount.ESCHEAT_PAYABLE,
        }[to]
        target_place = {"refund": "credit", "credit": "next_bill", "escheat": "escheated"}[to]
        self._decide(
            ev.EscrowReleased,
            actor,
            policy,
            now,
            postings=(Posting(LedgerAccount.ESCROW, target_account, held, self.currency),),
            moves=[[overpayment_id, "escrow", target_place, held]],
            overpayment_id=overpayment_id,
            to=to,
            amount_minor=held,
            at_expiry=at_expiry,
        )
        if to == "refund":
            self._request_refund(overpayment_id, {"credit": held}, actor, policy, now)

    # ----------------------------------------------------------------- invoices and redemptions

    def apply_credit_to_invoice(self, invoice_id: str, policy: Policy, now: datetime) -> None:
        """After an invoice: kept and next-bill credit settles it, oldest overpayment first; a
        self-corrected credit the cycle does not absorb raises a proactive follow-up."""
        owed = self.balances.get(RECEIVABLE, 0)
        moves: list[list[Any]] = []
        holding: list[tuple[str, dict[str, Any]]] = []
        for overpayment_id in _oldest_first(self.crediting):
            overpayment = self.overpayments[overpayment_id]
            places = overpayment["places"]
            holding.append((overpayment_id, overpayment))
            for place in ev.APPLIES_TO_INVOICES:
                take = min(owed, places.get(place, 0))
                if take:
                    moves.append([overpayment_id, place, "applied", take])
                    owed -= take
        if moves:
            applied = sum(move[3] for move in moves)
            self._emit(
                ev.CreditApplied,
                timestamp=now,
                account_id=self.account_id,
                postings=(Posting(CUSTOMER_CREDIT, RECEIVABLE, applied, self.currency),),
                moves=moves,
                invoice_id=invoice_id,
                amount_minor=applied,
                currency=self.currency,
            )
        for overpayment_id, overpayment in holding:  # applying moves next-bill credit only out
            if (
                overpayment["places"].get("next_bill")
                and overpayment.get("self_corrected")
                and not self._open_follow_up(overpayment_id)
            ):
                self._raise_follow_up("credit_not_absorbed", overpayment_id, policy, now)
        self._close_settled_follow_ups(SCHEDULER_ACTOR, policy, now)

    def redeem_coupon(
        self,
        *,
        code: str,
        amount_minor: int,
        invoice_id: str | None,
        origin: dict[str, str],
        now: datetime,
    ) -> None:
        """A coupon used: it settles what is owed first, the rest pays for a purchase."""
        overpayment_id = self.coupons.get(code)
        if overpayment_id is None:
            raise DomainRuleError(f"no coupon {code} on account {self.account_id}")
        left = self.overpayments[overpayment_id]["places"].get("coupon", 0)
        if amount_minor > left:
            raise DomainRuleError(f"coupon {code} has {left} left, not {amount_minor}")
        self._emit(
            ev.CouponRedeemed,
            timestamp=now,
            account_id=self.account_id,
            postings=self._redemption_postings(LedgerAccount.COUPON, amount_minor),
            moves=[[overpayment_id, "coupon", "redeemed", amount_minor]],
            coupon_code=code,
            amount_minor=amount_minor,
            currency=self.currency,
            invoice_id=invoice_id,
            **origin,
        )

    def redeem_store_credit(
        self,
        *,
        redemption_id: str,
        amount_minor: int,
        invoice_id: str | None,
        origin: dict[str, str],
        now: datetime,
    ) -> None:
        """Store credit used for a purchase (never applied automatically), oldest first."""
        moves: list[list[Any]] = []
        left = amount_minor
        for overpayment_id, overpayment in self.overpayments.items():
            take = min(left, overpayment["places"].get("store_credit", 0))
            if take:
                moves.append([overpayment_id, "store_credit", "redeemed", take])
                left -= take
        if left:
            raise DomainRuleError(
                f"account {self.account_id} has {amount_minor - left} of store credit,"
                f" not {amount_minor}"
            )
        self._emit(
            ev.StoreCreditRedeemed,
            timestamp=now,
            account_id=self.account_id,
            postings=self._redemption_postings(CUSTOMER_CREDIT, amount_minor),
            moves=moves,
            redemption_id=redemption_id,
            amount_minor=amount_minor,
            currency=self.currency,
            invoice_id=invoice_id,
            **origin,
        )

    def _redemption_postings(self, source: str, amount_minor: int) -> tuple[Posting, ...]:
        to_receivable = min(amount_minor, self.balances.get(RECEIVABLE, 0))
        postings = []
        if to_receivable:
            postings.append(Posting(source, RECEIVABLE, to_receivable, self.currency))
        if amount_minor - to_receivable:
            postings.append(
                Posting(source, LedgerAccount.REVENUE, amount_minor - to_receivable, self.currency)
            )
        return tuple(postings)

    # ----------------------------------------------------------------- money that comes back

    def return_payment(
        self,
        *,
        payment_id: str,
        amount_minor: int,
        reason: str,
        origin: dict[str, str],
        now: datetime,
    ) -> None:
        """Reverse a returned payment's postings; credit it produced that has since been
        refunded or used becomes receivable (never negative credit)."""
        payment = self.payments.get(payment_id)
        if payment is None:
            raise DomainRuleError(f"no payment {payment_id} on account {self.account_id}")
        if payment["returned"]:
            raise DomainRuleError(f"payment {payment_id} was returned already")
        if amount_minor != payment["amount"]:
            raise DomainRuleError(
                f"payment {payment_id} was {payment['amount']}; a return of {amount_minor}"
                " (partial returns are not supported)"
            )
        postings: list[Posting] = []
        moves: list[list[Any]] = []
        # What the return takes back: first from credit still held, the rest is owed again.
        # Never more than the payment: a voided invoice's overpayment names the payment that
        # paid it (or the last one), and may hold more than that payment brought.
        remaining = payment["amount"]
        overpayment_id = payment.get("overpayment_id")
        excess = payment["amount"] - payment["settled"]
        if overpayment_id is not None:
            places = self.overpayments[overpayment_id]["places"]
            for place in (*ev.OWED_CREDIT, "escrow", "coupon"):
                held = min(places.get(place, 0), remaining)
                if held:
                    account = ev.PLACE_ACCOUNTS[place]
                    assert account is not None
                    postings.append(Posting(account, LedgerAccount.CASH, held, self.currency))
                    moves.append([overpayment_id, place, "reversed", held])
                    remaining -= held
        elif excess:
            from_credit = min(excess, -self.balances.get(CUSTOMER_CREDIT, 0))
            if from_credit:
                postings.append(
                    Posting(CUSTOMER_CREDIT, LedgerAccount.CASH, from_credit, self.currency)
                )
                remaining -= from_credit
        if remaining:
            postings.append(Posting(RECEIVABLE, LedgerAccount.CASH, remaining, self.currency))
        self._emit(
            ev.PaymentReturned,
            timestamp=now,
            account_id=self.account_id,
            postings=tuple(postings),
            moves=moves,
            payment_id=payment_id,
            amount_minor=amount_minor,
            currency=self.currency,
            reason=reason,
            shortfall_minor=max(remaining - payment["settled"], 0),
            **origin,
        )

    def void_invoice(
        self, *, invoice_id: str, origin: dict[str, str], policy: Policy, now: datetime
    ) -> int:
        """Reverse an invoice; what was already paid of it becomes credit (an overpayment to
        detect). Returns that paid amount."""
        invoice = self.invoices.get(invoice_id)
        if invoice is None:
            raise DomainRuleError(f"no invoice {invoice_id} on account {self.account_id}")
        if invoice["voided"]:
            raise DomainRuleError(f"invoice {invoice_id} was voided already")
        disputed = [
            dispute_id
            for dispute_id, dispute in self.disputes.items()
            if dispute.get("invoice_id") == invoice_id and dispute["status"] != "resolved"
        ]
        if disputed:
            raise DomainRuleError(
                f"invoice {invoice_id} is disputed ({', '.join(disputed)}): resolve the dispute"
                " before voiding it"
            )
        amount = int(invoice["amount"])
        unpaid = min(amount, self.balances.get(RECEIVABLE, 0))
        paid = amount - unpaid
        postings = []
        if unpaid:
            postings.append(Posting(LedgerAccount.REVENUE, RECEIVABLE, unpaid, self.currency))
        if paid:
            postings.append(Posting(LedgerAccount.REVENUE, CUSTOMER_CREDIT, paid, self.currency))
        self._emit(
            ev.InvoiceVoided,
            timestamp=now,
            account_id=self.account_id,
            postings=tuple(postings),
            moves=[],
            invoice_id=invoice_id,
            amount_minor=amount,
            currency=self.currency,
            paid_minor=paid,
            **origin,
        )
        return paid

    # ----------------------------------------------------------------- the scheduler's firings

    def self_correct(self, *, overpayment_id: str, policy: Policy, now: datetime) -> None:
        """Monthly account: a verified overpayment left unresolved past the window is applied
        to the next invoice."""
        overpayment = self._overpayment(overpayment_id)
        due = overpayment.get("self_correct_at")
        if overpayment["status"] != "verified" or due is None:
            raise StaleFiring(f"overpayment {overpayment_id} is {overpayment['status']}")
        if now < datetime.fromisoformat(due):
            raise NotDueYet(f"self-correction of {overpayment_id} is due at {due}")
        self._resolve(
            overpayment_id,
            "credit",
            SCHEDULER_ACTOR,
            policy,
            now,
            automatic=True,
            self_corrected=True,
        )

    def escheat(self, *, policy: Policy, now: datetime) -> None:
        """Credit owed and unclaimed past the jurisdiction's dormancy period goes to the state."""
        dormant_since = datetime.fromisoformat(self.last_activity)
        if now < dormant_since + policy.dormancy(self.jurisdiction):
            raise NotDueYet(f"account {self.account_id} was active at {self.last_activity}")
        postings: dict[str, int] = {}
        moves: list[list[Any]] = []
        for overpayment_id, overpayment in self.overpayments.items():
            for place in (*ev.OWED_CREDIT, "escrow"):
                held = overpayment["places"].get(place, 0)
                if held:
                    account = ev.PLACE_ACCOUNTS[place]
                    assert account is not None
                    postings[account] = postings.get(account, 0) + held
                    moves.append([overpayment_id, place, "escheated", held])
        if not moves:
            raise StaleFiring(f"account {self.account_id} owes no credit")
        self._decide(
            ev.CreditEscheated,
            SCHEDULER_ACTOR,
            policy,
            now,
            postings=tuple(
                Posting(account, LedgerAccount.ESCHEAT_PAYABLE, amount, self.currency)
                for account, amount in sorted(postings.items())
            ),
            moves=moves,
            jurisdiction=self.jurisdiction,
            amount_minor=sum(postings.values()),
            currency=self.currency,
            dormant_since=self.last_activity,
        )
        self._close_settled_follow_ups(SCHEDULER_ACTOR, policy, now)

    def follow_up_due(
        self, *, follow_up_id: str, due_at: str, policy: Policy, now: datetime
    ) -> None:
        """A follow-up's contact came due: the next one is scheduled, escalated after the
        policy's number of contacts."""
        follow_up = self.follow_ups.get(follow_up_id)
        if follow_up is None or follow_up["status"] != "open":
            raise StaleFiring(f"follow-up {follow_up_id} is not open")
        if follow_up["due_at"] != due_at:
            raise StaleFiring(f"follow-up {follow_up_id} is due at {follow_up['due_at']} now")
        if now < datetime.fromisoformat(due_at):
            raise NotDueYet(f"follow-up {follow_up_id} is due at {due_at}")
        contacts = follow_up["contacts"] + 1
        escalated = contacts >= policy.follow_ups.escalate_after_contacts
        self._decide(
            ev.FollowUpDue,
            SCHEDULER_ACTOR,
            policy,
            now,
            follow_up_id=follow_up_id,
            contacts=contacts,
            due_at=(now + policy.follow_ups.repeat_every).isoformat(),
            owner=policy.follow_ups.escalate_to if escalated else follow_up["owner"],
            escalated=escalated,
        )

    def _raise_follow_up(
        self,
        reason: str,
        subject_id: str,
        policy: Policy,
        now: datetime,
        *,
        due: datetime | None = None,
        owner: str | None = None,
    ) -> None:
        due_at = due if due is not None else now + policy.follow_ups.first_contact_after
        self._decide(
            ev.FollowUpRaised,
            SCHEDULER_ACTOR,
            policy,
            now,
            follow_up_id=f"{self.account_id}:fu:{self.version + 1}",
            reason=reason,
            subject_id=subject_id,
            due_at=due_at.isoformat(),
            owner=owner or self._follow_up_owner(reason, policy),
        )

    @staticmethod
    def _follow_up_owner(reason: str, policy: Policy) -> str:
        """Who owns a follow-up nobody is named for: the disputes' owner or the ledger's."""
        if reason.startswith(("dispute_", "chargeback_")):
            return policy.disputes.owner
        return policy.follow_ups.owner

    def _open_follow_up(self, subject_id: str) -> bool:
        return any(
            item["subject_id"] == subject_id and item["status"] == "open"
            for item in self.follow_ups.values()
        )

    def _close_settled_follow_ups(self, actor: Actor, policy: Policy, now: datetime) -> None:
        """Close every open follow-up whose subject is settled."""
        still_open = [
            (follow_up_id, item)
            for follow_up_id, item in self.follow_ups.items()
            if item["status"] == "open"
        ]
        for follow_up_id, item in still_open:
            settled = self._settled(item)
            if settled is not None:
                self._decide(
                    ev.FollowUpClosed,
                    actor,
                    policy,
                    now,
                    follow_up_id=follow_up_id,
                    reason=settled,
                )

    def _settled(self, item: dict[str, Any]) -> str | None:
        """Why a follow-up's subject needs no more contact, or None while it still does."""
        reason, subject_id = item["reason"], item["subject_id"]
        if reason == "refund_retries_exhausted":
            refund = self.refunds.get(subject_id)
            overpayment = self.overpayments[refund["overpayment_id"]] if refund else None
            if overpayment is None or not overpayment["places"].get("refund_failed"):
                return "the refund's money is no longer waiting for a retry"
            return None
        if reason == "credit_not_absorbed":
            if not self.overpayments[subject_id]["places"].get("next_bill"):
                return "the credit has been applied"
            return None
        if reason.startswith(("dispute_", "chargeback_")):
            return self.dispute_settled(item)
        return None

    # ----------------------------------------------------------------- shared checks

    def _overpayment(self, overpayment_id: str) -> dict[str, Any]:
        overpayment = self.overpayments.get(overpayment_id)
        if overpayment is None:
            raise DomainRuleError(f"no overpayment {overpayment_id} on account {self.account_id}")
        return overpayment

    def _awaiting_verification(self, overpayment_id: str) -> dict[str, Any]:
        overpayment = self._overpayment(overpayment_id)
        if overpayment["status"] != "detected":
            raise DomainRuleError(
                f"overpayment {overpayment_id} is {overpayment['status']}, not awaiting"
                " verification"
            )
        return overpayment

    @staticmethod
    def _authorize(actor: Actor, action: str, amount_minor: int, policy: Policy) -> None:
        if actor.role in (SCHEDULER, PROCESSOR):
            raise UnauthorizedError(f"{actor.role}: no staff authority")
        if not policy.may(actor.role, action, amount_minor):
            allowed = policy.roles_that_may(action, amount_minor)
            needs = " or ".join(allowed) if allowed else "no role under this policy"
            raise UnauthorizedError(
                f"{actor.id} ({actor.role}) may not {action} {amount_minor} minor units;"
                f" needs {needs}"
            )

    def _decide(
        self,
        event_class: type[ev.Decision],
        actor: Actor,
        policy: Policy,
        now: datetime,
        *,
        postings: tuple[Posting, ...] = (),
        moves: list[list[Any]] | None = None,
        **fields: Any,
    ) -> None:
        self._emit(
            event_class,
            timestamp=now,
            account_id=self.account_id,
            postings=postings,
            moves=moves or [],
            actor_id=actor.id,
            actor_role=actor.role,
            policy_version=policy.version,
            **fields,
        )


_RESOLUTION_PLACE = {"credit": "next_bill", "store_credit": "store_credit"}
