"""The scheduler's read model: every timed item, when it is due, and whether it is done.

A projection (`ledger.projection.Projection`) over every event of the account aggregate. Items of
an overpayment are keyed by (kind, overpayment id), follow-ups by (kind, follow-up id), so each
event changes rows by key and a batch folds its changes in memory before writing:

- escrow expiry: `overpayment_resolved` with `escrow_expires_at`; done once money leaves the
  overpayment's `escrow` place (released, escheated or reversed by a returned payment).
- refund retry: `refund_failed` with `retry_at` (attempt: the failed one); done once money leaves
  the overpayment's `refund_failed` place (the retry's `refund_requested`, or escheated, reversed).
- self-correction: complete `overpayment_verified` with `self_correct_at`; done at the
  overpayment's `overpayment_resolved` or `overpayment_rejected`.
- follow-up: `follow_up_raised`, moved by `follow_up_due`; done at `follow_up_closed`.
- dispute status update, per dispute: due at `dispute_opened`'s `update_due`, moved by an
  outbound `dispute_contact_logged` or a `dispute_status_update` (`next_update_due`); done at
  `dispute_resolved`.
- installment, per installment (`<dispute id>#<index>`; attempt: index + 1): due at the end of
  its due date (the scheduler adds the policy's grace); done once paid in full
  (`dispute_installments_paid`), missed (`dispute_installment_missed`) or the dispute resolved.
- deferral end, per dispute: due once `dispute_deferred`'s date has passed; done when its
  follow-up is raised, a plan is agreed, or the dispute is resolved.
- dormancy, per account (`rm_dormancy`): the jurisdiction, the last customer activity (when the
  processor says an opening, payment or redemption happened; never moved back by a late fact),
  the credit owed (customer_credit and escrow, from the postings) and the escheatments so far.

An item is done when the event its firing causes is recorded, never when it is fired.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from eventsourcing.persistence import Notification

from ledger.clock import epoch_us
from ledger.domain import dispute_events as dv
from ledger.domain import protocol_events as ev
from ledger.domain.account import Account
from ledger.domain.event_names import EVENT_CLASSES, event_name
from ledger.domain.postings import LedgerAccount
from ledger.persistence.database import Cursor, Database
from ledger.projection import Generation, event_state
from projections.schedule_tables import (
    DEFERRAL_END,
    DISPUTE_UPDATE,
    DORMANCY,
    DORMANCY_DUE_INDEX,
    ESCROW_EXPIRY,
    FOLLOW_UP,
    INSTALLMENT_DUE,
    INSTALLMENTS,
    ITEMS,
    ITEMS_DUE_INDEX,
    NAME,
    REFUND_RETRY,
    SELF_CORRECTION,
    TABLES,
)

ITEM_COLUMNS = (
    "kind",
    "subject_id",
    "item_id",
    "account_id",
    "due_at",
    "due_us",
    "attempt",
    "done",
)
ITEM_TYPES = ("text", "text", "text", "text", "text", "bigint", "integer", "integer")
DORMANCY_COLUMNS = (
    "account_id",
    "jurisdiction",
    "last_activity_at",
    "last_activity_us",
    "owed_minor",
    "escheatments",
)
DORMANCY_TYPES = ("text", "text", "text", "bigint", "bigint", "integer")

EVENT_TYPES = frozenset(EVENT_CLASSES)
"""Every event: any may post to customer_credit or escrow (the credit a dormant account owes)."""

ACTIVITY_TYPES = frozenset(
    {
        Account.Opened.TOPIC,
        Account.PaymentReceived.TOPIC,
        ev.CouponRedeemed.TOPIC,
        ev.StoreCreditRedeemed.TOPIC,
    }
)
"""Events that are the customer's own activity (they restart the dormancy period)."""

OWED_ACCOUNTS = frozenset({LedgerAccount.CUSTOMER_CREDIT.value, LedgerAccount.ESCROW.value})
"""Ledger accounts holding money the ledger owes the customer (escheated when dormant)."""

NO_ACTIVITY_US = -1
"""`last_activity_us` of a batch that saw no activity for an account (never wins the maximum)."""

ItemKey = tuple[str, str]


class Changes:
    """One batch's changes to the schedule, folded by key before they are written."""

    def __init__(self) -> None:
        self.rows: dict[ItemKey, list[Any]] = {}
        """Items created in this batch (whole rows), changed in place by later events."""
        self.due: dict[ItemKey, tuple[str, int]] = {}
        """New due times of items created before this batch."""
        self.done: set[ItemKey] = set()
        """Items created before this batch that are done now."""
        self.left: dict[str, int] = {}
        """What is left to pay of installments created in this batch."""
        self.paid: dict[str, int] = {}
        """Amounts paid of installments created before this batch."""
        self.done_of: set[tuple[str, str]] = set()
        """(kind, item id) whose every item created before this batch is done now."""
        self.dormancy: dict[str, list[Any]] = {}

    def item(
        self,
        kind: str,
        subject_id: str,
        item_id: str,
        account_id: str,
        due_at: str,
        attempt: int,
    ) -> None:
        """A new item (or a new round of one, such as the next failed refund): not done."""
        due_us = epoch_us(datetime.fromisoformat(due_at))
        key = (kind, subject_id)
        self.rows[key] = [kind, subject_id, item_id, account_id, due_at, due_us, attempt, 0]
        self.due.pop(key, None)
        self.done.discard(key)

    def installment(
        self,
        subject_id: str,
        dispute_id: str,
        account_id: str,
        due_at: str,
        number: int,
        amount: int,
    ) -> None:
        """A new installment of a plan: due, with all of it left to pay."""
        self.item(INSTALLMENT_DUE, subject_id, dispute_id, account_id, due_at, number)
        self.left[subject_id] = amount
        self.paid.pop(subject_id, None)

    def pay(self, subject_id: str, amount_minor: int) -> None:
        """Part of an installment is paid; it is done once nothing is left."""
        if subject_id in self.left:
            self.left[subject_id] -= amount_minor
            if self.left[subject_id] <= 0:
                self.finish(INSTALLMENT_DUE, subject_id)
        else:
            self.paid[subject_id] = self.paid.get(subject_id, 0) + amount_minor

    def finish_every(self, kind: str, item_id: str) -> None:
        """Every item of this kind naming `item_id` is done (a dispute's installments)."""
        for row in self.rows.values():
            if row[0] == kind and row[2] == item_id:
                row[7] = 1
        self.done_of.add((kind, item_id))

    def move_due(self, kind: str, subject_id: str, due_at: str) -> None:
        """An item is due again at a later time (a follow-up's next contact)."""
        due_us = epoch_us(datetime.fromisoformat(due_at))
        row = self.rows.get((kind, subject_id))
        if row is not None:
            row[4], row[5] = due_at, due_us
        else:
            self.due[(kind, subject_id)] = (due_at, due_us)

    def finish(self, kind: str, subject_id: str) -> None:
        """The event an item's firing causes (or one that makes it moot) is recorded."""
        row = self.rows.get((kind, subject_id))
        if row is not None:
            row[7] = 1
        else:
            self.done.add((kind, subject_id))

    def account(self, account_id: str) -> list[Any]:
        """The account's dormancy row of this batch (a delta on the stored one)."""
        row = self.dormancy.get(account_id)
        if row is None:
            row = self.dormancy[account_id] = [account_id, "", "", NO_ACTIVITY_US, 0, 0]
        return row


def fold_event(batch: Changes, type_name: str, state: dict[str, Any]) -> None:
    """Fold one event's changes into the batch."""
    account_id: str = state["account_id"]
    account = batch.account(account_id)
    if type_name == Account.Opened.TOPIC:
        account[1] = state["jurisdiction"]
    if type_name in ACTIVITY_TYPES:
        moment = datetime.fromisoformat(state["reported_at"])
        if epoch_us(moment) > account[3]:
            account[2], account[3] = moment.isoformat(), epoch_us(moment)
    for posting in state.get("postings") or ():
        if posting["credit"] in OWED_ACCOUNTS:
            account[4] += posting["amount_minor"]
        if posting["debit"] in OWED_ACCOUNTS:
            account[4] -= posting["amount_minor"]
    if type_name == ev.CreditEscheated.TOPIC:
        account[5] += 1
    for overpayment_id, source, _target, _amount in state.get("moves") or ():
        if source == "escrow":
            batch.finish(ESCROW_EXPIRY, overpayment_id)
        elif source == "refund_failed":
            batch.finish(REFUND_RETRY, overpayment_id)
    if type_name == ev.OverpaymentVerified.TOPIC:
        if state["complete"] and state["self_correct_at"] is not None:
            overpayment_id = state["overpayment_id"]
            batch.item(
                SELF_CORRECTION,
                overpayment_id,
                overpayment_id,
                account_id,
                state["self_correct_at"],
                0,
            )
    elif type_name == ev.OverpaymentResolved.TOPIC:
        overpayment_id = state["overpayment_id"]
        batch.finish(SELF_CORRECTION, overpayment_id)
        if state["escrow_expires_at"] is not None:
            batch.item(
                ESCROW_EXPIRY,
                overpayment_id,
                overpayment_id,
                account_id,
                state["escrow_expires_at"],
                0,
            )
    elif type_name == ev.OverpaymentRejected.TOPIC:
        batch.finish(SELF_CORRECTION, state["overpayment_id"])
    elif type_name == ev.RefundFailed.TOPIC:
        if state["retry_at"] is not None:
            batch.item(
                REFUND_RETRY,
                state["overpayment_id"],
                state["refund_id"],
                account_id,
                state["retry_at"],
                state["attempt"],
            )
    elif type_name == ev.FollowUpRaised.TOPIC:
        follow_up_id = state["follow_up_id"]
        batch.item(FOLLOW_UP, follow_up_id, follow_up_id, account_id, state["due_at"], 0)
        if state.get("reason") == "dispute_deferral_ended":
            batch.finish(DEFERRAL_END, state["subject_id"])
    elif type_name == ev.FollowUpDue.TOPIC:
        batch.move_due(FOLLOW_UP, state["follow_up_id"], state["due_at"])
    elif type_name == ev.FollowUpClosed.TOPIC:
        batch.finish(FOLLOW_UP, state["follow_up_id"])
    elif type_name in DISPUTE_TYPES:
        fold_dispute_event(batch, type_name, state)


DISPUTE_TYPES = frozenset(
    {
        dv.DisputeOpened.TOPIC,
        dv.ContactLogged.TOPIC,
        dv.DisputeStatusUpdate.TOPIC,
        dv.PlanAgreed.TOPIC,
        dv.InstallmentsPaid.TOPIC,
        dv.InstallmentMissed.TOPIC,
        dv.DisputeDeferred.TOPIC,
        dv.DisputeResolved.TOPIC,
    }
)
"""Dispute events that create, move or finish the dispute's timed items."""


def _end_of_day(day: str) -> str:
    """The last moment of a date (UTC): an installment is due through its whole day."""
    return datetime.combine(date.fromisoformat(day), time.max, tzinfo=UTC).isoformat()


def _day_after(day: str) -> str:
    """The first moment after a date (UTC): when a deferral until that date has ended."""
    return datetime.combine(date.fromisoformat(day) + timedelta(days=1), time(), UTC).isoformat()


def installment_subject(dispute_id: str, index: int) -> str:
    """The schedule key of one installment of a dispute's plan."""
    return f"{dispute_id}#{index}"


def fold_dispute_event(batch: Changes, type_name: str, state: dict[str, Any]) -> None:
    """Fold one dispute event's changes to its status updates, installments and deferral."""
    account_id: str = state["account_id"]
    dispute_id: str = state["dispute_id"]
    if type_name == dv.DisputeOpened.TOPIC:
        batch.item(DISPUTE_UPDATE, dispute_id, dispute_id, account_id, state["update_due"], 0)
    elif type_name in (dv.ContactLogged.TOPIC, dv.DisputeStatusUpdate.TOPIC):
        if state["next_update_due"] is not None:  # an inbound contact is no update
            batch.move_due(DISPUTE_UPDATE, dispute_id, state["next_update_due"])
    elif type_name == dv.PlanAgreed.TOPIC:
        batch.finish(DEFERRAL_END, dispute_id)
        for index, (due, amount_minor) in enumerate(state["installments"]):
            subject = installment_subject(dispute_id, index)
            batch.installment(
                subject, dispute_id, account_id, _end_of_day(due), index + 1, amount_minor
            )
    elif type_name == dv.InstallmentsPaid.TOPIC:
        for index, amount_minor, _late in state["paid"]:
            batch.pay(installment_subject(dispute_id, index), amount_minor)
    elif type_name == dv.InstallmentMissed.TOPIC:
        batch.finish(INSTALLMENT_DUE, installment_subject(dispute_id, state["index"]))
    elif type_name == dv.DisputeDeferred.TOPIC:
        batch.item(DEFERRAL_END, dispute_id, dispute_id, account_id, _day_after(state["until"]), 0)
    elif type_name == dv.DisputeResolved.TOPIC:
        batch.finish(DISPUTE_UPDATE, dispute_id)
        batch.finish(DEFERRAL_END, dispute_id)
        batch.finish_every(INSTALLMENT_DUE, dispute_id)


class ScheduleProjection:
    """Keeps rm_schedule and rm_dormancy (of one generation) up to date."""

    name: str = NAME
    tables: tuple[str, ...] = TABLES
    event_types: frozenset[str] = EVENT_TYPES

    def create_statements(self, generation: Generation) -> tuple[str, ...]:
        """The generation's tables."""
        return (
            f"CREATE TABLE IF NOT EXISTS {generation.table(ITEMS)} ("
            "kind TEXT NOT NULL, subject_id TEXT NOT NULL, item_id TEXT NOT NULL,"
            " account_id TEXT NOT NULL, due_at TEXT NOT NULL, due_us BIGINT NOT NULL,"
            " attempt INTEGER NOT NULL, done INTEGER NOT NULL,"
            " PRIMARY KEY (kind, subject_id))",
            f"CREATE TABLE IF NOT EXISTS {generation.table(DORMANCY)} ("
            "account_id TEXT PRIMARY KEY, jurisdiction TEXT NOT NULL,"
            " last_activity_at TEXT NOT NULL, last_activity_us BIGINT NOT NULL,"
            " owed_minor BIGINT NOT NULL, escheatments INTEGER NOT NULL)",
            f"CREATE TABLE IF NOT EXISTS {generation.table(INSTALLMENTS)} ("
            "subject_id TEXT PRIMARY KEY, left_minor BIGINT NOT NULL)",
        )

    def index_statements(self, generation: Generation) -> tuple[str, ...]:
        """The due-time indexes, over the items still to fire only."""
        return (
            f"CREATE INDEX IF NOT EXISTS {generation.table(ITEMS_DUE_INDEX)}"
            f" ON {generation.table(ITEMS)} (due_us) WHERE done = 0",
            f"CREATE INDEX IF NOT EXISTS {generation.table(DORMANCY_DUE_INDEX)}"
            f" ON {generation.table(DORMANCY)} (last_activity_us) WHERE owed_minor > 0",
        )

    def apply(
        self,
        database: Database,
        cursor: Cursor,
        generation: Generation,
        notifications: Sequence[Notification],
    ) -> None:
        """Write a batch into the generation's tables in the open transaction."""
        batch = Changes()
        for notification in notifications:
            state = event_state(notification)
            fold_event(batch, event_name(notification.topic), state)
        items = generation.table(ITEMS)
        database.insert_rows(
            cursor,
            items,
            ITEM_COLUMNS,
            list(batch.rows.values()),
            pg_types=ITEM_TYPES,
            suffix="ON CONFLICT (kind, subject_id) DO UPDATE SET"
            " item_id = excluded.item_id, account_id = excluded.account_id,"
            " due_at = excluded.due_at, due_us = excluded.due_us,"
            " attempt = excluded.attempt, done = excluded.done",
        )
        installments = generation.table(INSTALLMENTS)
        database.insert_rows(
            cursor,
            installments,
            ("subject_id", "left_minor"),
            [[subject, left] for subject, left in batch.left.items()],
            pg_types=("text", "bigint"),
            suffix="ON CONFLICT (subject_id) DO UPDATE SET left_minor = excluded.left_minor",
        )
        if batch.due:
            cursor.executemany(
                f"UPDATE {items} SET due_at = %s, due_us = %s WHERE kind = %s AND subject_id = %s",
                [(at, us, kind, subject) for (kind, subject), (at, us) in batch.due.items()],
            )
        if batch.paid:
            paid = sorted(batch.paid.items())
            cursor.executemany(
                f"UPDATE {installments} SET left_minor = left_minor - %s WHERE subject_id = %s",
                [(amount, subject) for subject, amount in paid],
            )
            cursor.executemany(
                f"UPDATE {items} SET done = 1 WHERE kind = %s AND subject_id = %s AND"
                f" (SELECT left_minor FROM {installments} WHERE subject_id = %s) <= 0",
                [(INSTALLMENT_DUE, subject, subject) for subject, _ in paid],
            )
        if batch.done:
            cursor.executemany(
                f"UPDATE {items} SET done = 1 WHERE kind = %s AND subject_id = %s",
                sorted(batch.done),
            )
        if batch.done_of:
            cursor.executemany(
                f"UPDATE {items} SET done = 1 WHERE kind = %s AND item_id = %s",
                sorted(batch.done_of),
            )
        dormancy = generation.table(DORMANCY)
        database.insert_rows(
            cursor,
            dormancy,
            DORMANCY_COLUMNS,
            list(batch.dormancy.values()),
            pg_types=DORMANCY_TYPES,
            suffix="ON CONFLICT (account_id) DO UPDATE SET"
            f" last_activity_at = CASE WHEN excluded.last_activity_us > {dormancy}.last_activity_us"
            f" THEN excluded.last_activity_at ELSE {dormancy}.last_activity_at END,"
            f" last_activity_us = CASE WHEN excluded.last_activity_us > {dormancy}.last_activity_us"
            f" THEN excluded.last_activity_us ELSE {dormancy}.last_activity_us END,"
            f" owed_minor = {dormancy}.owed_minor + excluded.owed_minor,"
            f" escheatments = {dormancy}.escheatments + excluded.escheatments",
        )
