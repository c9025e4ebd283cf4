"""Payment disputes: opened from any channel or by a processor's chargeback, owned by a
representative, logged contact by contact, kept on the policy's schedule, settled by a plan, a
deferral, an adjustment or an outcome, followed by the customer's feedback. A mixin of the
account aggregate; the money stays on the account, so the never-negative checks cover holds.

The postings (README, "Disputes: the money"):

| path | debit | credit | amount |
| --- | --- | --- | --- |
| chargeback opened | dispute_hold | cash | the amount (the processor withheld it) |
| chargeback won or withdrawn | cash | dispute_hold | what is held |
| chargeback lost | losses | dispute_hold | what is held |
| bill disputed | dispute_hold | receivable | the amount, up to what is owed |
| bill upheld or withdrawn | receivable | dispute_hold | what is held |
| bill in the customer's favour | losses | dispute_hold | what is held |
| ... the part already paid, refunded | losses | refund_clearing | paid part (refund request) |
| ... the part already paid, as credit | losses | customer_credit | paid part (an overpayment) |
| adjustment (goodwill) | losses | dispute_hold | the adjustment |
| plan agreed | receivable | dispute_hold | the installments' total |
| ... a part forgiven | losses | dispute_hold | what is forgiven |
| deferral | (none) | | |

Every rule is checked before a method's first event (a refusal changes nothing).
"""

from __future__ import annotations

from datetime import date, datetime, time
from typing import TYPE_CHECKING, Any, Final

from ledger.domain import dispute_events as dv
from ledger.domain.errors import DomainRuleError, NotDueYet, StaleFiring
from ledger.domain.overpayments import SCHEDULER_ACTOR, Actor
from ledger.domain.policy import CHANNELS, ROLES, Policy
from ledger.domain.postings import LedgerAccount, Posting

HOLD = LedgerAccount.DISPUTE_HOLD
RECEIVABLE = LedgerAccount.RECEIVABLE
LOSSES = LedgerAccount.LOSSES

OUTCOMES_STAFF = ("customer_favour", "upheld", "withdrawn")
OUTCOMES_PROCESSOR = ("won", "lost", "withdrawn")

FOLLOW_UP_REASONS: Final[tuple[str, ...]] = (
    "dispute_first_response",
    "dispute_promise",
    "dispute_escalated",
    "dispute_update_due",
    "dispute_installment_missed",
    "dispute_deferral_ended",
    "chargeback_respond_by",
)
"""Why a dispute raises a follow-up (its `subject_id` is the dispute's id)."""


def _end_of(day: str) -> datetime:
    """The last moment of a date (UTC): an installment is due through its whole day."""
    from datetime import UTC

    return datetime.combine(date.fromisoformat(day), time.max, tzinfo=UTC)


class DisputeHandling:
    """The dispute methods of the account aggregate (state lives on the aggregate)."""

    account_id: str
    currency: str
    balances: dict[str, int]
    disputes: dict[str, dict[str, Any]]
    dispute_ids: dict[str, str]
    payments: dict[str, dict[str, Any]]
    invoices: dict[str, dict[str, Any]]
    follow_ups: dict[str, dict[str, Any]]
    version: int

    if TYPE_CHECKING:  # the aggregate's own (stubs here would shadow them)

        def _emit(self, event_class: Any, **fields: Any) -> None: ...

        def _decide(
            self, event_class: Any, actor: Actor, policy: Policy, now: datetime, **fields: Any
        ) -> None: ...

        def _authorize(
            self, actor: Actor, action: str, amount_minor: int, policy: Policy
        ) -> None: ...

        def _raise_follow_up(
            self,
            reason: str,
            subject_id: str,
            policy: Policy,
            now: datetime,
            *,
            due: datetime | None = None,
            owner: str | None = None,
        ) -> None: ...

        def _close_settled_follow_ups(
            self, actor: Actor, policy: Policy, now: datetime
        ) -> None: ...

        def detect_overpayment(
            self, payment_id: str, excess_minor: int, policy: Policy, now: datetime
        ) -> None: ...

    # ----------------------------------------------------------------- opening

    def open_dispute(
        self,
        *,
        channel: str,
        reason: str,
        amount_minor: int,
        actor: Actor,
        policy: Policy,
        now: datetime,
        invoice_id: str | None = None,
        payment_id: str | None = None,
        external_id: str | None = None,
        respond_by: datetime | None = None,
        source_event_id: str | None = None,
    ) -> str:
        """Open a dispute; a chargeback (channel `chargeback`) moves the withheld cash to
        `dispute_hold`, a disputed bill moves what is owed of it there. Returns its id."""
        if channel not in CHANNELS:
            raise DomainRuleError(f"unknown channel {channel!r}: one of {', '.join(CHANNELS)}")
        if external_id is not None and external_id in self.dispute_ids:
            raise DomainRuleError(f"dispute {external_id} was opened already")
        if payment_id is not None and payment_id not in self.payments:
            raise DomainRuleError(f"no payment {payment_id} on account {self.account_id}")
        if invoice_id is not None and invoice_id not in self.invoices:
            raise DomainRuleError(f"no invoice {invoice_id} on account {self.account_id}")
        chargeback = channel == "chargeback"
        if chargeback:
            held = amount_minor
            postings: tuple[Posting, ...] = (
                Posting(HOLD, LedgerAccount.CASH, amount_minor, self.currency),
            )
        else:
            held = min(amount_minor, self.balances.get(RECEIVABLE, 0))
            # The rest is claimed as paid (refunded or credited if the customer wins): never
            # more than was paid and is not claimed by another dispute already.
            paid_left = self._paid_undisputed(payment_id)
            if amount_minor - held > paid_left:
                raise DomainRuleError(
                    f"{amount_minor} minor units disputed: {held} owed and {paid_left} paid"
                    " (not disputed already)"
                )
            postings = (Posting(HOLD, RECEIVABLE, held, self.currency),) if held else ()
        sla = policy.dispute_sla(channel)
        dispute_id = f"{self.account_id}:dp:{self.version + 1}"
        self._decide(
            dv.DisputeOpened,
            actor,
            policy,
            now,
            postings=postings,
            dispute_id=dispute_id,
            external_id=external_id,
            kind="chargeback" if chargeback else "billing",
            channel=channel,
            reason=reason,
            amount_minor=amount_minor,
            currency=self.currency,
            held_minor=held,
            invoice_id=invoice_id,
            payment_id=payment_id,
            respond_by=None if respond_by is None else respond_by.isoformat(),
            first_response_due=(now + sla.first_response).isoformat(),
            update_due=(now + sla.update_every).isoformat(),
            resolution_due=(now + sla.resolution_target).isoformat(),
            source_event_id=source_event_id,
        )
        self._raise_follow_up(
            "dispute_first_response", dispute_id, policy, now, due=now + sla.first_response
        )
        if respond_by is not None:
            self._raise_follow_up("chargeback_respond_by", dispute_id, policy, now, due=respond_by)
        return dispute_id

    # ----------------------------------------------------------------- working it

    def assign_dispute(
        self, *, dispute_id: str, rep: str, actor: Actor, policy: Policy, now: datetime
    ) -> None:
        """Give the dispute a dedicated representative (or a new one)."""
        dispute = self._open_dispute(dispute_id)
        if dispute["rep"] == rep:
            raise DomainRuleError(f"dispute {dispute_id} is already assigned to {rep}")
        self._decide(
            dv.DisputeAssigned,
            actor,
            policy,
            now,
            dispute_id=dispute_id,
            rep=rep,
            previous_rep=dispute["rep"],
        )

    def log_contact(
        self,
        *,
        dispute_id: str,
        channel: str,
        direction: str,
        summary: str,
        promise: str | None,
        promise_by: date | None,
        actor: Actor,
        policy: Policy,
        now: datetime,
    ) -> None:
        """Record one contact; a promise with a date becomes a follow-up."""
        dispute = self._dispute(dispute_id)
        if direction not in ("in", "out"):
            raise DomainRuleError(f"direction is in or out, not {direction!r}")
        if (promise is None) != (promise_by is None):
            raise DomainRuleError("a promise needs its date (--promise with --by)")
        next_update = None
        if direction == "out":
            next_update = (now + policy.dispute_sla(dispute["channel"]).update_every).isoformat()
        self._decide(
            dv.ContactLogged,
            actor,
            policy,
            now,
            dispute_id=dispute_id,
            channel=channel,
            direction=direction,
            summary=summary,
            promise=promise,
            promise_by=None if promise_by is None else promise_by.isoformat(),
            next_update_due=next_update,
        )
        if promise_by is not None:
            self._raise_follow_up(
                "dispute_promise",
                dispute_id,
                policy,
                now,
                due=_end_of(promise_by.isoformat()),
                owner=dispute["rep"],
            )
        self._close_settled_follow_ups(actor, policy, now)

    def escalate_dispute(
        self,
        *,
        dispute_id: str,
        to_role: str,
        reason: str | None,
        actor: Actor,
        policy: Policy,
        now: datetime,
    ) -> None:
        """Hand the dispute up; the escalation waits in the queue of the role it went to."""
        dispute = self._open_dispute(dispute_id)
        if to_role not in ROLES:
            raise DomainRuleError(f"unknown role {to_role!r}: one of {', '.join(ROLES)}")
        if dispute["escalated_to"] == to_role:
            raise DomainRuleError(f"dispute {dispute_id} is already escalated to {to_role}")
        self._decide(
            dv.DisputeEscalated,
            actor,
            policy,
            now,
            dispute_id=dispute_id,
            to_role=to_role,
            reason=reason,
        )
        self._raise_follow_up("dispute_escalated", dispute_id, policy, now, due=now, owner=to_role)

    def adjust_dispute(
        self,
        *,
        dispute_id: str,
        amount_minor: int,
        reason: str,
        actor: Actor,
        policy: Policy,
        now: datetime,
    ) -> None:
        """Write off part of a disputed bill (goodwill), within the actor's authority."""
        dispute = self._open_dispute(dispute_id)
        if dispute["kind"] != "billing":
            raise DomainRuleError("a chargeback is decided by the processor, not adjusted")
        if not 0 < amount_minor <= dispute["held"]:
            raise DomainRuleError(
                f"an adjustment of dispute {dispute_id} is 1..{dispute['held']} minor units"
            )
        self._authorize(actor, "adjust", amount_minor, policy)
        self._decide(
            dv.DisputeAdjusted,
            actor,
            policy,
            now,
            postings=(Posting(LOSSES, HOLD, amount_minor, self.currency),),
            dispute_id=dispute_id,
            amount_minor=amount_minor,
            reason=reason,
        )
        self._close_settled_follow_ups(actor, policy, now)

    def agree_plan(
        self,
        *,
        dispute_id: str,
        installments: list[tuple[date, int]],
        forgiven_minor: int,
        actor: Actor,
        policy: Policy,
        now: datetime,
    ) -> None:
        """An installment plan for what is owed in the dispute: the installments plus any part
        forgiven must sum to it exactly."""
        dispute = self._open_dispute(dispute_id)
        if dispute["kind"] != "billing":
            raise DomainRuleError("a chargeback is decided by the processor: no plan")
        if not installments:
            raise DomainRuleError("a plan needs at least one installment")
        dates = [due for due, _ in installments]
        if dates != sorted(set(dates)):
            raise DomainRuleError("installments must fall on distinct dates, in order")
        if any(amount <= 0 for _, amount in installments) or forgiven_minor < 0:
            raise DomainRuleError("installments are positive amounts; forgiven is 0 or more")
        total = sum(amount for _, amount in installments)
        owed = dispute["held"]
        if total + forgiven_minor != owed:
            raise DomainRuleError(
                f"the plan sums to {total + forgiven_minor} minor units"
                f" ({total} in installments, {forgiven_minor} forgiven);"
                f" dispute {dispute_id} owes {owed}"
            )
        self._authorize(actor, "plan", total, policy)
        if forgiven_minor:
            self._authorize(actor, "write_off", forgiven_minor, policy)
        postings = [Posting(RECEIVABLE, HOLD, total, self.currency)]
        if forgiven_minor:
            postings.append(Posting(LOSSES, HOLD, forgiven_minor, self.currency))
        self._decide(
            dv.PlanAgreed,
            actor,
            policy,
            now,
            postings=tuple(postings),
            dispute_id=dispute_id,
            installments=[[due.isoformat(), amount] for due, amount in installments],
            forgiven_minor=forgiven_minor,
        )
        self._close_settled_follow_ups(actor, policy, now)

    def defer_dispute(
        self, *, dispute_id: str, until: date, actor: Actor, policy: Policy, now: datetime
    ) -> None:
        """Defer payment of what is disputed until a date (the hold stays)."""
        self._open_dispute(dispute_id)
        if _end_of(until.isoformat()) <= now:
            raise DomainRuleError(f"a deferral ends after today, not on {until.isoformat()}")
        self._decide(
            dv.DisputeDeferred, actor, policy, now, dispute_id=dispute_id, until=until.isoformat()
        )

    # ----------------------------------------------------------------- resolution

    def resolve_dispute(
        self,
        *,
        dispute_id: str,
        outcome: str,
        settlement: str | None,
        actor: Actor,
        policy: Policy,
        now: datetime,
        source_event_id: str | None = None,
    ) -> None:
        """Decide the dispute: the hold is released exactly once, as the postings table says.

        Staff decide a disputed bill (customer_favour, upheld, withdrawn); the processor decides
        a chargeback (won, lost, withdrawn; `actor` is then the processor).
        """
        dispute = self._open_dispute(dispute_id)
        held, paid = dispute["held"], dispute["paid"]
        chargeback = dispute["kind"] == "chargeback"
        allowed = OUTCOMES_PROCESSOR if chargeback else OUTCOMES_STAFF
        if outcome not in allowed:
            raise DomainRuleError(
                f"a {dispute['kind']} dispute ends {', '.join(allowed)}, not {outcome!r}"
            )
        if chargeback and source_event_id is None:
            raise DomainRuleError("a chargeback is decided by the processor's dispute.closed")
        if not chargeback and source_event_id is not None:
            raise DomainRuleError(f"dispute {dispute_id} is a customer's: staff decide it")
        if dispute["status"] == "plan":
            raise DomainRuleError(f"dispute {dispute_id} is settled by its plan")
        postings: list[Posting] = []
        refund = False
        if chargeback:
            back_to = LedgerAccount.CASH if outcome in ("won", "withdrawn") else LOSSES
            if held:
                postings.append(Posting(back_to, HOLD, held, self.currency))
        elif outcome == "customer_favour":
            if paid and settlement not in ("refund", "credit"):
                raise DomainRuleError(
                    f"{paid} minor units of dispute {dispute_id} were paid: settle them by"
                    " refund or credit"
                )
            self._authorize(actor, "write_off", held + paid, policy)
            if held:
                postings.append(Posting(LOSSES, HOLD, held, self.currency))
            if paid:
                refund = settlement == "refund"
                target = LedgerAccount.REFUND_CLEARING if refund else LedgerAccount.CUSTOMER_CREDIT
                postings.append(Posting(LOSSES, target, paid, self.currency))
        elif held:
            postings.append(Posting(RECEIVABLE, HOLD, held, self.currency))
        self._decide(
            dv.DisputeResolved,
            actor,
            policy,
            now,
            postings=tuple(postings),
            dispute_id=dispute_id,
            outcome=outcome,
            settlement=settlement if paid and outcome == "customer_favour" else None,
            source_event_id=source_event_id,
        )
        payment_id = dispute["payment_id"] or ""
        if refund:
            from ledger.domain.protocol_events import RefundRequested

            self._decide(
                RefundRequested,
                actor,
                policy,
                now,
                refund_id=f"{self.account_id}:rf:{self.version + 1}",
                overpayment_id=None,
                dispute_id=dispute_id,
                payment_id=payment_id,
                method=self.payments.get(payment_id, {}).get("method", "original"),
                amount_minor=paid,
                currency=self.currency,
                attempt=1,
                retry_of=None,
            )
        elif paid and outcome == "customer_favour":
            self.detect_overpayment(payment_id, paid, policy, now)
        self._close_settled_follow_ups(actor, policy, now)

    def record_feedback(
        self,
        *,
        dispute_id: str,
        score: int,
        comment: str | None,
        actor: Actor,
        policy: Policy,
        now: datetime,
        source_event_id: str | None = None,
    ) -> None:
        """The customer's feedback on a resolved dispute (once)."""
        dispute = self._dispute(dispute_id)
        if dispute["status"] != "resolved":
            raise DomainRuleError(f"dispute {dispute_id} is not resolved yet: no feedback")
        if dispute["feedback"] is not None:
            raise DomainRuleError(f"dispute {dispute_id} has its feedback already")
        if not 1 <= score <= 5:
            raise DomainRuleError(f"a score is 1 to 5, not {score}")
        self._decide(
            dv.FeedbackRecorded,
            actor,
            policy,
            now,
            dispute_id=dispute_id,
            score=score,
            comment=comment,
            source_event_id=source_event_id,
        )

    # ----------------------------------------------------------------- money and time

    def match_installments(
        self, payment_id: str, settled_minor: int, policy: Policy, now: datetime
    ) -> None:
        """After a payment: what it settled of the receivable pays the plans' next
        installments, oldest plan and earliest installment first."""
        left = settled_minor
        for dispute_id, dispute in self.disputes.items():
            if left <= 0:
                break
            if dispute["status"] != "plan":
                continue
            paid: list[list[Any]] = []
            for index, installment in enumerate(dispute["plan"]):
                due = installment["amount"] - installment["paid"]
                take = min(left, due)
                if take > 0:
                    late = now > _end_of(installment["due"])
                    paid.append([index, take, late])
                    left -= take
            if paid:
                self._emit(
                    dv.InstallmentsPaid,
                    timestamp=now,
                    account_id=self.account_id,
                    postings=(),
                    moves=[],
                    dispute_id=dispute_id,
                    payment_id=payment_id,
                    paid=paid,
                )
                if all(i["paid"] >= i["amount"] for i in dispute["plan"]):
                    self._decide(
                        dv.DisputeResolved,
                        SCHEDULER_ACTOR,
                        policy,
                        now,
                        dispute_id=dispute_id,
                        outcome="plan_completed",
                        settlement=None,
                        source_event_id=None,
                    )
        self._close_settled_follow_ups(SCHEDULER_ACTOR, policy, now)

    def installment_due(
        self, *, dispute_id: str, index: int, policy: Policy, now: datetime
    ) -> None:
        """The scheduler: an installment past its grace and unpaid is missed (a follow-up)."""
        dispute = self._dispute(dispute_id)
        plan = dispute["plan"]
        if dispute["status"] != "plan" or plan is None or not 0 <= index < len(plan):
            raise StaleFiring(f"dispute {dispute_id} has no installment {index} due")
        installment = plan[index]
        if installment["status"] != "due":
            raise StaleFiring(f"installment {index} of {dispute_id} is {installment['status']}")
        if now < _end_of(installment["due"]) + policy.disputes.installment_grace:
            raise NotDueYet(f"installment {index} of {dispute_id} is due {installment['due']}")
        self._decide(
            dv.InstallmentMissed, SCHEDULER_ACTOR, policy, now, dispute_id=dispute_id, index=index
        )
        self._raise_follow_up(
            "dispute_installment_missed", dispute_id, policy, now, due=now, owner=dispute["rep"]
        )

    def status_update_due(
        self, *, dispute_id: str, due_at: str, policy: Policy, now: datetime
    ) -> None:
        """The scheduler: a status update is due (no outbound contact in the interval): the
        customer is told where the dispute stands and the representative gets a follow-up."""
        dispute = self._dispute(dispute_id)
        if dispute["status"] == "resolved" or dispute["update_due"] != due_at:
            raise StaleFiring(f"dispute {dispute_id}: no update due at {due_at}")
        if now < datetime.fromisoformat(due_at):
            raise NotDueYet(f"dispute {dispute_id}: update due at {due_at}")
        next_due = now + policy.dispute_sla(dispute["channel"]).update_every
        self._decide(
            dv.DisputeStatusUpdate,
            SCHEDULER_ACTOR,
            policy,
            now,
            dispute_id=dispute_id,
            status=dispute["status"],
            next_step=_next_step(dispute),
            next_update_due=next_due.isoformat(),
        )
        self._raise_follow_up(
            "dispute_update_due", dispute_id, policy, now, due=now, owner=dispute["rep"]
        )

    def deferral_ended(self, *, dispute_id: str, policy: Policy, now: datetime) -> None:
        """The scheduler: a deferral's date has passed: a follow-up to settle the dispute."""
        dispute = self._dispute(dispute_id)
        until = dispute["deferred_until"]
        if dispute["status"] != "deferred" or until is None:
            raise StaleFiring(f"dispute {dispute_id} is not deferred")
        if now <= _end_of(until):
            raise NotDueYet(f"dispute {dispute_id} is deferred until {until}")
        if any(
            item["reason"] == "dispute_deferral_ended"
            and item["subject_id"] == dispute["id"]
            and item["status"] == "open"
            for item in self.follow_ups.values()
        ):
            raise StaleFiring(f"dispute {dispute_id}: its deferral's end is followed up already")
        self._raise_follow_up(
            "dispute_deferral_ended", dispute_id, policy, now, due=now, owner=dispute["rep"]
        )

    def dispute_settled(self, item: dict[str, Any]) -> str | None:
        """Why a dispute's follow-up needs no more work, or None while it does."""
        reason = item["reason"]
        dispute = self.disputes.get(item["subject_id"])
        if dispute is None or dispute["status"] == "resolved":
            return "the dispute is resolved"
        if reason == "dispute_first_response" and dispute["responded"]:
            return "the customer has been answered"
        if reason == "dispute_installment_missed" and all(
            i["status"] != "missed" for i in dispute["plan"] or ()
        ):
            return "the missed installment is paid"
        if reason == "dispute_escalated" and dispute["escalated_to"] is None:
            return "the escalation was taken"
        if reason in ("dispute_promise", "dispute_update_due") and _after(
            dispute.get("last_out"), item["raised_at"]
        ):
            return "the customer has been contacted since"
        return None

    # ----------------------------------------------------------------- shared checks

    def _dispute(self, dispute_id: str) -> dict[str, Any]:
        dispute = self.disputes.get(dispute_id) or self.disputes.get(
            self.dispute_ids.get(dispute_id, "")
        )
        if dispute is None:
            raise DomainRuleError(f"no dispute {dispute_id} on account {self.account_id}")
        return dispute

    def _paid_undisputed(self, payment_id: str | None) -> int:
        """What the customer paid (of one payment, if named) that no dispute claims back."""
        paid: int = sum(
            item["settled"]
            for key, item in self.payments.items()
            if not item["returned"] and payment_id in (None, key)
        )
        claimed: int = sum(
            dispute["paid"]
            for dispute in self.disputes.values()
            if dispute["kind"] == "billing"
            and dispute["outcome"] in (None, "customer_favour")
            and payment_id in (None, dispute["payment_id"])
        )
        return max(paid - claimed, 0)

    def _open_dispute(self, dispute_id: str) -> dict[str, Any]:
        dispute = self._dispute(dispute_id)
        if dispute["status"] == "resolved":
            raise DomainRuleError(f"dispute {dispute['id']} is resolved ({dispute['outcome']})")
        return dispute

    def dispute_id_of(self, given: str) -> str:
        """Our id of a dispute named by our id or the processor's."""
        return str(self._dispute(given)["id"])


def _after(moment: str | None, than: str) -> bool:
    return moment is not None and datetime.fromisoformat(moment) > datetime.fromisoformat(than)


def _next_step(dispute: dict[str, Any]) -> str:
    if dispute["status"] == "plan":
        return "pay the next installment"
    if dispute["status"] == "deferred":
        return f"payment deferred until {dispute['deferred_until']}"
    if dispute["kind"] == "chargeback":
        return "the processor decides the chargeback"
    return "a representative reviews the dispute"
