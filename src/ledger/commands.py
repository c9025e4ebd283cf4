"""The staff-command service: applies `ledger.commands` batches to the accounts.

It shares the ingest service's account cache (and its hold/release of a batch being
committed): one process, one writer per account. Per command: parse (a malformed one is a
`contract` dead letter), de-duplicate by (account id, command id) against the recorded outcomes
(another body under a used id is refused as `contract`), check the actor, apply it to the
account, and record its outcome in the same transaction as its events: accepted with the
versions of the events it produced, refused with the reason, or a no-op for a stale firing.

A refusal of a well-formed command for a known account is also recorded on the account
(`command_refused`: who, what, why). A refused command goes to `ledger.commands.dlq` unless it
carries the outcome header (`OUTCOME_HEADER`): its caller is waiting and reads the outcome.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

import structlog
from eventsourcing.persistence import Tracking

from ledger.domain import protocol_events as ev
from ledger.domain.account import Account
from ledger.domain.errors import DomainRuleError, NotDueYet, StaleFiring, UnauthorizedError
from ledger.domain.money import MoneyError
from ledger.domain.overpayments import SCHEDULER, Actor, LegalBasis
from ledger.domain.policy import Policy
from ledger.ingest import DeadLetter, InboundMessage, IngestService, PreparedBatch
from ledger.persistence.event_store import EventStore
from ledger.persistence.outcomes import CommandOutcome, OutcomeStatus
from ledger.schemas.commands import (
    OUTCOME_HEADER,
    AdjustDisputeIn,
    AssignDisputeIn,
    DeferDisputeIn,
    DisputeFeedbackIn,
    EscalateDisputeIn,
    FireIn,
    LogContactIn,
    OpenDisputeIn,
    PlanDisputeIn,
    RejectOverpaymentIn,
    ReleaseEscrowIn,
    ResolveDisputeIn,
    ResolveOverpaymentIn,
    RetryRefundIn,
    StaffCommand,
    VerifyOverpaymentIn,
    parse_command,
)
from ledger.schemas.errors import ErrorKind, one_line_reason
from ledger.schemas.inbound import InboundRejected

log = structlog.get_logger(__name__)


def wants_outcome(message: InboundMessage) -> bool:
    """Whether the command's caller waits for its outcome (then no dead letter for it)."""
    return any(name == OUTCOME_HEADER for name, _ in message.headers)


class CommandService:
    """Applies staff commands through the ingest service's accounts (the one writer)."""

    def __init__(self, accounts: IngestService) -> None:
        self.accounts = accounts
        self.refused = 0
        self.stale = 0
        self.early = 0

    @property
    def store(self) -> EventStore:
        """The event store (the consumer reads positions through it)."""
        return self.accounts.store

    def prepare(self, messages: Sequence[InboundMessage]) -> PreparedBatch:
        """Parse, de-duplicate and apply a batch of commands; nothing is written yet."""
        accounts = self.accounts
        batch = accounts.new_batch()
        parsed: list[tuple[InboundMessage, StaffCommand]] = []
        for message in messages:
            try:
                parsed.append((message, parse_command(message.value)))
            except InboundRejected as rejected:
                batch.dead_letters.append(DeadLetter(message, rejected.kind, rejected.reason))
        keys = {(command.account_id, command.command_id) for _, command in parsed}
        seen = accounts.store.key_recorder.select_outcomes(keys) if keys else {}
        seen.update(accounts.held_outcomes(keys))
        absent = accounts.absent_accounts(command for _, command in parsed)
        now = accounts.clock.now()
        for message, command in parsed:
            key = (command.account_id, command.command_id)
            digest = command.body_sha256()
            if key in seen:
                if seen[key] == digest:
                    batch.duplicates += 1
                else:
                    batch.dead_letters.append(
                        self._letter(
                            message,
                            command,
                            "contract",
                            f"contract: command_id {command.command_id} was used already"
                            " with another body",
                        )
                    )
                continue
            seen[key] = digest
            outcome = self._apply(batch, message, command, digest, absent, now)
            if outcome is None:  # a firing before its time: no outcome, fired again later
                del seen[key]
                self.early += 1
                continue
            batch.outcomes.append(outcome)
            if outcome.status == "refused":
                self.refused += 1
                if not wants_outcome(message):
                    kind: ErrorKind = outcome.error_kind  # type: ignore[assignment]
                    batch.dead_letters.append(
                        self._letter(message, command, kind, outcome.reason or "")
                    )
            elif outcome.status == "noop":
                self.stale += 1
            batch.applied += 1
        batch.snapshots = accounts.encode_snapshots(batch)
        return batch

    def _apply(
        self,
        batch: PreparedBatch,
        message: InboundMessage,
        command: StaffCommand,
        digest: str,
        absent: set[str],
        now: datetime,
    ) -> CommandOutcome | None:
        """Apply one new command (whose body has `digest`) to its account; its outcome
        (refusals recorded on the account too), or None for a firing before its time."""
        account = (
            None
            if command.account_id in absent
            else self.accounts.load(command.account_id, batch.accounts)
        )
        if account is None:
            return self._outcome(
                command,
                digest,
                now,
                "refused",
                "unknown_account",
                f"unknown_account: account {command.account_id} was never opened",
            )
        status: OutcomeStatus = "accepted"
        error_kind: ErrorKind | None = None
        reason: str | None = None
        try:
            handle(account, command, self.accounts.policy, now)
        except NotDueYet as early:
            log.info(
                "firing before its time: no outcome, the scheduler fires it again",
                account_id=command.account_id,
                command_id=command.command_id,
                reason=str(early),
            )
            return None
        except StaleFiring as stale:
            status, reason = "noop", f"stale: {stale}"
        except UnauthorizedError as error:
            status, error_kind, reason = "refused", "unauthorized", f"unauthorized: {error}"
        except (DomainRuleError, MoneyError) as error:
            status, error_kind, reason = "refused", "domain_rule", f"domain_rule: {error}"
        if status != "accepted" and account.pending_event_count():
            raise RuntimeError(  # a rule checked after an event: a bug, never half-apply
                f"command {command.command_id} refused after events were triggered: {reason}"
            )
        if status == "refused":
            assert error_kind is not None and reason is not None
            account.trigger_event(
                ev.CommandRefused,
                timestamp=now,
                account_id=account.account_id,
                postings=(),
                moves=[],
                command_id=command.command_id,
                command_type=command.type,
                actor_id=command.actor.id,
                actor_role=command.actor.role,
                error_kind=error_kind,
                reason=one_line_reason(reason),
            )
            log.info(
                "command refused",
                account_id=command.account_id,
                command_id=command.command_id,
                command_type=command.type,
                actor=command.actor.id,
                error_kind=error_kind,
                reason=reason,
                topic=message.topic,
                partition=message.partition,
                offset=message.offset,
            )
        events = account.collect_events()
        batch.accounts[account.account_id] = account
        batch.events.extend(events)
        return self._outcome(
            command,
            digest,
            now,
            status,
            error_kind,
            reason,
            tuple(event.originator_version for event in events if status == "accepted"),
        )

    @staticmethod
    def _outcome(
        command: StaffCommand,
        digest: str,
        now: datetime,
        status: OutcomeStatus,
        error_kind: str | None,
        reason: str | None,
        versions: tuple[int, ...] = (),
    ) -> CommandOutcome:
        return CommandOutcome(
            account_id=command.account_id,
            command_id=command.command_id,
            command_type=command.type,
            body_sha256=digest,
            status=status,
            error_kind=error_kind,
            reason=None if reason is None else one_line_reason(reason),
            versions=versions,
            recorded_at=now.isoformat(),
        )

    @staticmethod
    def _letter(
        message: InboundMessage, command: StaffCommand, kind: ErrorKind, reason: str
    ) -> DeadLetter:
        return DeadLetter(message, kind, one_line_reason(reason), command.account_id, None)

    def commit(self, batch: PreparedBatch, tracking: Tracking) -> None:
        """Write the batch's events, outcomes and Kafka position in one transaction."""
        self.accounts.commit(batch, tracking)

    def hold(self, batch: PreparedBatch) -> None:
        """The batch is being committed (see `IngestService.hold`)."""
        self.accounts.hold(batch)

    def release(self, batch: PreparedBatch) -> None:
        """The batch's commit is confirmed."""
        self.accounts.release(batch)

    def forget(self, account_ids: Iterable[str]) -> None:
        """Forget these accounts (shared with the ingest: a version conflict)."""
        self.accounts.forget(account_ids)

    def clear(self) -> None:
        """Forget every cached account (shared with the ingest)."""
        self.accounts.clear()


def handle(account: Account, command: StaffCommand, policy: Policy, now: datetime) -> None:
    """Apply one staff command to its account (raises the domain's refusals)."""
    actor = Actor(command.actor.id, command.actor.role)
    if isinstance(command, FireIn):
        if actor.role != SCHEDULER:
            raise UnauthorizedError(f"{actor.id} ({actor.role}): only the scheduler fires items")
        fire(account, command, policy, now)
        return
    if actor.role == SCHEDULER:
        raise UnauthorizedError("the scheduler gives no staff commands")
    if isinstance(command, VerifyOverpaymentIn):
        account.verify_overpayment(
            overpayment_id=command.overpayment_id,
            department=command.department,
            note=command.note,
            actor=actor,
            policy=policy,
            now=now,
        )
    elif isinstance(command, RejectOverpaymentIn):
        account.reject_overpayment(
            overpayment_id=command.overpayment_id,
            department=command.department,
            reason=command.reason,
            actor=actor,
            policy=policy,
            now=now,
        )
    elif isinstance(command, ResolveOverpaymentIn):
        basis = command.legal_basis
        account.resolve_overpayment(
            overpayment_id=command.overpayment_id,
            resolution=command.resolution,
            actor=actor,
            policy=policy,
            now=now,
            legal_basis=None if basis is None else LegalBasis(basis.level, basis.reference),
        )
    elif isinstance(command, RetryRefundIn):
        account.retry_refund(
            refund_id=command.refund_id, actor=actor, policy=policy, now=now, attempt=None
        )
    elif isinstance(command, ReleaseEscrowIn):
        account.release_escrow(
            overpayment_id=command.overpayment_id,
            to=command.to,
            actor=actor,
            policy=policy,
            now=now,
        )
    else:
        handle_dispute(account, command, actor, policy, now)


def handle_dispute(
    account: Account, command: StaffCommand, actor: Actor, policy: Policy, now: datetime
) -> None:
    """Apply one dispute command to its account."""
    if isinstance(command, OpenDisputeIn):
        account.check_currency(command.amount.currency)
        account.open_dispute(
            channel=command.channel,
            reason=command.reason,
            amount_minor=command.amount.value,
            actor=actor,
            policy=policy,
            now=now,
            invoice_id=command.invoice_id,
            payment_id=command.payment_id,
        )
    elif isinstance(command, AssignDisputeIn):
        account.assign_dispute(
            dispute_id=command.dispute_id, rep=command.rep, actor=actor, policy=policy, now=now
        )
    elif isinstance(command, LogContactIn):
        account.log_contact(
            dispute_id=command.dispute_id,
            channel=command.channel,
            direction=command.direction,
            summary=command.summary,
            promise=command.promise,
            promise_by=command.promise_by,
            actor=actor,
            policy=policy,
            now=now,
        )
    elif isinstance(command, PlanDisputeIn):
        account.agree_plan(
            dispute_id=command.dispute_id,
            installments=[(i.due_date, i.amount_minor) for i in command.installments],
            forgiven_minor=command.forgiven_minor,
            actor=actor,
            policy=policy,
            now=now,
        )
    elif isinstance(command, DeferDisputeIn):
        account.defer_dispute(
            dispute_id=command.dispute_id, until=command.until, actor=actor, policy=policy, now=now
        )
    elif isinstance(command, EscalateDisputeIn):
        account.escalate_dispute(
            dispute_id=command.dispute_id,
            to_role=command.to_role,
            reason=command.reason,
            actor=actor,
            policy=policy,
            now=now,
        )
    elif isinstance(command, AdjustDisputeIn):
        account.adjust_dispute(
            dispute_id=command.dispute_id,
            amount_minor=command.amount_minor,
            reason=command.reason,
            actor=actor,
            policy=policy,
            now=now,
        )
    elif isinstance(command, ResolveDisputeIn):
        account.resolve_dispute(
            dispute_id=command.dispute_id,
            outcome=command.outcome,
            settlement=command.settlement,
            actor=actor,
            policy=policy,
            now=now,
        )
    elif isinstance(command, DisputeFeedbackIn):
        account.record_feedback(
            dispute_id=command.dispute_id,
            score=command.score,
            comment=command.comment,
            actor=actor,
            policy=policy,
            now=now,
        )


def fire(account: Account, command: FireIn, policy: Policy, now: datetime) -> None:
    """Apply one scheduler firing (a stale one raises `StaleFiring`)."""
    if command.item == "escrow_expiry":
        account.release_escrow(
            overpayment_id=command.item_id,
            to=policy.escrow.expiry_release_to,
            actor=Actor(SCHEDULER, SCHEDULER),
            policy=policy,
            now=now,
            at_expiry=True,
        )
    elif command.item == "refund_retry":
        account.retry_refund(
            refund_id=command.item_id,
            actor=Actor(SCHEDULER, SCHEDULER),
            policy=policy,
            now=now,
            attempt=command.attempt,
        )
    elif command.item == "self_correction":
        account.self_correct(overpayment_id=command.item_id, policy=policy, now=now)
    elif command.item == "follow_up":
        account.follow_up_due(
            follow_up_id=command.item_id, due_at=command.due_at, policy=policy, now=now
        )
    elif command.item == "dispute_update":
        account.status_update_due(
            dispute_id=command.item_id, due_at=command.due_at, policy=policy, now=now
        )
    elif command.item == "installment_due":
        account.installment_due(
            dispute_id=command.item_id, index=(command.attempt or 1) - 1, policy=policy, now=now
        )
    elif command.item == "deferral_end":
        account.deferral_ended(dispute_id=command.item_id, policy=policy, now=now)
    else:
        account.escheat(policy=policy, now=now)
