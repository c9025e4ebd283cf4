"""The follow-up queue: every follow-up raised, whoever raised it, until it is closed.

A row is generic (overpayments raise follow-ups today, disputes will): the account, why, about
what (`subject_id`), when the next contact is due and who owns it, how many contacts so far,
whether it was escalated, and what is owed: the account's `customer_credit` (what we owe the
customer) or `receivable` (what the customer owes us), or a dispute's `dispute_hold` (what the
dispute holds), whichever the follow-up is about, as of its latest contact (raised or due); a
dispute's hold as it stands now (an adjustment shows at once). So the queue keeps those two
balances per account and what each dispute holds itself, from every event's postings: it never
reads another read model, which may stand elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

from eventsourcing.persistence import Notification

from ledger.clock import epoch_us, stored_moment
from ledger.domain import protocol_events as ev
from ledger.domain.disputes import FOLLOW_UP_REASONS as DISPUTE_REASONS
from ledger.domain.event_names import ACCOUNT_OPENED, EVENT_CLASSES, event_name
from ledger.domain.postings import LedgerAccount, natural_balance
from ledger.persistence.database import Cursor, Database
from ledger.projection import Generation, event_state
from projections.follow_ups_tables import (
    ACCOUNT_COLUMNS,
    ACCOUNT_PG_TYPES,
    FOLLOW_UP_ACCOUNTS,
    FOLLOW_UP_COLUMNS,
    FOLLOW_UP_HOLDS,
    FOLLOW_UP_PG_TYPES,
    FOLLOW_UPS,
    HOLD_COLUMNS,
    HOLD_PG_TYPES,
    NAME,
    QUEUE_INDEX,
    SUBJECT_INDEX,
    TABLES,
)
from projections.lookups import select_by_ids, upsert_suffix

EVENT_TYPES = frozenset(EVENT_CLASSES)
"""Every event of the registry: any may move the balances a follow-up reports."""

OWED_BALANCES: Final[tuple[str, ...]] = (
    LedgerAccount.RECEIVABLE.value,
    LedgerAccount.CUSTOMER_CREDIT.value,
)

HOLD = LedgerAccount.DISPUTE_HOLD.value

OWED_BY_REASON: Final[dict[str, str]] = {
    "credit_not_absorbed": LedgerAccount.CUSTOMER_CREDIT.value,
    "refund_retries_exhausted": LedgerAccount.CUSTOMER_CREDIT.value,
    # A dispute's follow-ups are about what the dispute holds, except once a plan has moved it
    # back to what the customer owes on the installments' schedule.
    **{reason: HOLD for reason in DISPUTE_REASONS},
    "dispute_installment_missed": LedgerAccount.RECEIVABLE.value,
}
"""The balance a follow-up of each reason is about (`dispute_hold`: what its dispute, the
`subject_id`, holds). A reason not listed (one a newer feature raises) reports the customer's
credit if any is owed, else the receivable."""

_RAISED = ev.FollowUpRaised.TOPIC
_DUE = ev.FollowUpDue.TOPIC
_CLOSED = ev.FollowUpClosed.TOPIC


def owed_account(reason: str, account: dict[str, Any]) -> str:
    """The ledger account a follow-up of `reason` reports as owed."""
    chosen = OWED_BY_REASON.get(reason)
    if chosen is not None:
        return chosen
    credit = natural_balance(LedgerAccount.CUSTOMER_CREDIT, account["customer_credit"])
    return LedgerAccount.CUSTOMER_CREDIT.value if credit > 0 else LedgerAccount.RECEIVABLE.value


def _concerns_queue(type_name: str, state: dict[str, Any]) -> bool:
    """Whether an event changes a follow-up or a balance one may report."""
    if type_name in (ACCOUNT_OPENED, _RAISED, _DUE, _CLOSED):
        return True
    return any(
        posting["debit"] in _WATCHED or posting["credit"] in _WATCHED
        for posting in state.get("postings") or ()
    )


_WATCHED = frozenset({*OWED_BALANCES, HOLD})


def _new_account(account_id: str, currency: str) -> dict[str, Any]:
    return {"account_id": account_id, "currency": currency, "receivable": 0, "customer_credit": 0}


def _set_owed(row: dict[str, Any], account: dict[str, Any], holds: dict[str, int]) -> None:
    chosen = owed_account(row["reason"], account)
    row["owed_account"] = chosen
    if chosen == HOLD:
        row["owed"] = holds.get(row["subject_id"], 0)
    else:
        row["owed"] = natural_balance(chosen, account[chosen])
    row["currency"] = account["currency"]


def _hold_moves(state: dict[str, Any]) -> int:
    """What an event adds to (or takes from) its dispute's hold."""
    moved = 0
    for posting in state.get("postings") or ():
        if posting["debit"] == HOLD:
            moved += posting["amount_minor"]
        if posting["credit"] == HOLD:
            moved -= posting["amount_minor"]
    return moved


class FollowUpsProjection:
    """Keeps rm_follow_ups, rm_follow_up_accounts and rm_follow_up_holds (of one generation)
    up to date."""

    name: str = NAME
    tables: tuple[str, ...] = TABLES
    event_types: frozenset[str] = EVENT_TYPES

    def create_statements(self, generation: Generation) -> tuple[str, ...]:
        """The generation's tables."""
        return (
            f"CREATE TABLE IF NOT EXISTS {generation.table(FOLLOW_UPS)} ("
            "follow_up_id TEXT PRIMARY KEY, account_id TEXT NOT NULL, reason TEXT NOT NULL,"
            " subject_id TEXT NOT NULL, due_at TEXT NOT NULL, due_us BIGINT NOT NULL,"
            " owner TEXT NOT NULL, contacts INTEGER NOT NULL, escalated BOOLEAN NOT NULL,"
            " status TEXT NOT NULL, owed_account TEXT NOT NULL, owed BIGINT NOT NULL,"
            " currency TEXT NOT NULL, raised_at TEXT NOT NULL, closed_at TEXT,"
            " closed_reason TEXT)",
            f"CREATE TABLE IF NOT EXISTS {generation.table(FOLLOW_UP_ACCOUNTS)} ("
            "account_id TEXT PRIMARY KEY, currency TEXT NOT NULL, receivable BIGINT NOT NULL,"
            " customer_credit BIGINT NOT NULL)",
            f"CREATE TABLE IF NOT EXISTS {generation.table(FOLLOW_UP_HOLDS)} ("
            "dispute_id TEXT PRIMARY KEY, held BIGINT NOT NULL)",
        )

    def index_statements(self, generation: Generation) -> tuple[str, ...]:
        """The queue's order (open items by due time), and a dispute's follow-ups."""
        return (
            f"CREATE INDEX IF NOT EXISTS {generation.table(QUEUE_INDEX)}"
            f" ON {generation.table(FOLLOW_UPS)} (status, due_us)",
            f"CREATE INDEX IF NOT EXISTS {generation.table(SUBJECT_INDEX)}"
            f" ON {generation.table(FOLLOW_UPS)} (subject_id)",
        )

    def apply(
        self,
        database: Database,
        cursor: Cursor,
        generation: Generation,
        notifications: Sequence[Notification],
    ) -> None:
        """Write a batch into the generation's tables in the open transaction."""
        decoded: list[tuple[str, dict[str, Any]]] = []
        account_ids: set[str] = set()
        follow_up_ids: set[str] = set()
        dispute_ids: set[str] = set()
        moving_holds: set[str] = set()
        for notification in notifications:
            type_name = event_name(notification.topic)
            state = event_state(notification)
            if not _concerns_queue(type_name, state):
                continue
            if type_name in (_DUE, _CLOSED):
                follow_up_ids.add(state["follow_up_id"])
            elif type_name == _RAISED:
                dispute_ids.add(state["subject_id"])
            elif isinstance(state.get("dispute_id"), str):
                dispute_ids.add(state["dispute_id"])
                if _hold_moves(state):
                    moving_holds.add(state["dispute_id"])
            account_ids.add(state["account_id"])
            decoded.append((type_name, state))
        if not decoded:
            return
        accounts_table = generation.table(FOLLOW_UP_ACCOUNTS)
        follow_ups_table = generation.table(FOLLOW_UPS)
        accounts = {
            row["account_id"]: row
            for row in select_by_ids(
                cursor, accounts_table, ACCOUNT_COLUMNS, "account_id", account_ids
            )
        }
        follow_ups = {
            row["follow_up_id"]: row
            for row in select_by_ids(
                cursor, follow_ups_table, FOLLOW_UP_COLUMNS, "follow_up_id", follow_up_ids
            )
        }
        # What a dispute's follow-up owes is what the dispute holds now: its open follow-ups
        # follow every change of the hold.
        for row in select_by_ids(
            cursor, follow_ups_table, FOLLOW_UP_COLUMNS, "subject_id", moving_holds
        ):
            if row["status"] == "open":
                follow_ups.setdefault(row["follow_up_id"], row)
        by_subject: dict[str, list[dict[str, Any]]] = {}
        for row in follow_ups.values():
            by_subject.setdefault(row["subject_id"], []).append(row)
        dispute_ids.update(by_subject)
        holds_table = generation.table(FOLLOW_UP_HOLDS)
        holds: dict[str, int] = {
            row["dispute_id"]: row["held"]
            for row in select_by_ids(cursor, holds_table, HOLD_COLUMNS, "dispute_id", dispute_ids)
        }
        changed_accounts: set[str] = set()
        changed_follow_ups: set[str] = set()
        changed_holds: set[str] = set()
        for type_name, state in decoded:
            account_id: str = state["account_id"]
            at = stored_moment(state["timestamp"])[0]
            if type_name == ACCOUNT_OPENED:
                accounts.setdefault(account_id, _new_account(account_id, state["currency"]))
                changed_accounts.add(account_id)
            for posting in state.get("postings") or ():
                for side, sign in (("debit", 1), ("credit", -1)):
                    if posting[side] in OWED_BALANCES:
                        account = accounts.setdefault(
                            account_id, _new_account(account_id, posting["currency"])
                        )
                        account[posting[side]] += sign * posting["amount_minor"]
                        changed_accounts.add(account_id)
            dispute_id = state.get("dispute_id")
            if isinstance(dispute_id, str) and (moved := _hold_moves(state)):
                holds[dispute_id] = holds.get(dispute_id, 0) + moved
                changed_holds.add(dispute_id)
                for row in by_subject.get(dispute_id, ()):
                    if row["status"] == "open" and row["owed_account"] == HOLD:
                        row["owed"] = holds[dispute_id]
                        changed_follow_ups.add(row["follow_up_id"])
            if type_name == _RAISED:
                row = {
                    "follow_up_id": state["follow_up_id"],
                    "account_id": account_id,
                    "reason": state["reason"],
                    "subject_id": state["subject_id"],
                    "due_at": state["due_at"],
                    "due_us": epoch_us(datetime.fromisoformat(state["due_at"])),
                    "owner": state["owner"],
                    "contacts": 0,
                    "escalated": False,
                    "status": "open",
                    "raised_at": at,
                    "closed_at": None,
                    "closed_reason": None,
                }
                _set_owed(row, accounts[account_id], holds)
                follow_ups[row["follow_up_id"]] = row
                by_subject.setdefault(row["subject_id"], []).append(row)
                changed_follow_ups.add(row["follow_up_id"])
            elif type_name in (_DUE, _CLOSED):
                row = follow_ups[state["follow_up_id"]]
                if type_name == _DUE:
                    row["contacts"] = state["contacts"]
                    row["due_at"] = state["due_at"]
                    row["due_us"] = epoch_us(datetime.fromisoformat(state["due_at"]))
                    row["owner"] = state["owner"]
                    row["escalated"] = bool(row["escalated"]) or bool(state["escalated"])
                    _set_owed(row, accounts[account_id], holds)
                else:
                    row["status"] = "closed"
                    row["closed_at"] = at
                    row["closed_reason"] = state["reason"]
                changed_follow_ups.add(row["follow_up_id"])
        database.insert_rows(
            cursor,
            accounts_table,
            ACCOUNT_COLUMNS,
            [
                tuple(accounts[account_id][column] for column in ACCOUNT_COLUMNS)
                for account_id in sorted(changed_accounts)
            ],
            pg_types=ACCOUNT_PG_TYPES,
            suffix=upsert_suffix("account_id", ACCOUNT_COLUMNS),
        )
        database.insert_rows(
            cursor,
            follow_ups_table,
            FOLLOW_UP_COLUMNS,
            [
                tuple(
                    bool(follow_ups[follow_up_id][column])
                    if column == "escalated"
                    else follow_ups[follow_up_id][column]
                    for column in FOLLOW_UP_COLUMNS
                )
                for follow_up_id in sorted(changed_follow_ups)
            ],
            pg_types=FOLLOW_UP_PG_TYPES,
            suffix=upsert_suffix("follow_up_id", FOLLOW_UP_COLUMNS),
        )
        database.insert_rows(
            cursor,
            holds_table,
            HOLD_COLUMNS,
            [(dispute_id, holds[dispute_id]) for dispute_id in sorted(changed_holds)],
            pg_types=HOLD_PG_TYPES,
            suffix=upsert_suffix("dispute_id", HOLD_COLUMNS),
        )
