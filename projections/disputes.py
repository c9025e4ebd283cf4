"""The disputes read model: one row per dispute, and its story event by event.

A row holds where the dispute stands: kind, channel, amount and what is still held (from the
postings on `dispute_hold` of the events that name it), status, the representative and every
reassignment, escalation, deadlines (the processor's `respond_by`, the policy's first response,
update and resolution targets), contacts, the plan's installments, a deferral, the outcome and
the customer's score, the dispute's follow-ups, and the next step derived from all of these.

An event belongs to a dispute when it names it (`dispute_id`), when it raises a follow-up about
it (`subject_id`, a dispute reason), or when it moves one of the dispute's follow-ups. The story
table keeps each event's data with the customer's words (`data_with_personal`): it is the
staff's view; `ledger.events` and `ledger history` never carry those fields.

A batch reads back the rows it changes, applies its events in log order and writes the rows
again, in the transaction that moves the projection's position: a rebuild, whatever its batch
boundaries, writes the same rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from eventsourcing.persistence import Notification

from ledger.clock import stored_moment
from ledger.domain import dispute_events as dv
from ledger.domain import protocol_events as ev
from ledger.domain.disputes import FOLLOW_UP_REASONS
from ledger.domain.event_names import EVENT_CLASSES, event_name
from ledger.domain.postings import LedgerAccount
from ledger.persistence.database import Cursor, Database
from ledger.projection import Generation, event_state
from ledger.public_events import public_postings
from projections.disputes_tables import (
    DISPUTE_COLUMNS,
    DISPUTE_EVENTS,
    DISPUTE_PG_TYPES,
    DISPUTES,
    EVENT_COLUMNS,
    EVENT_PG_TYPES,
    JSON_COLUMNS,
    NAME,
    OPEN_INDEX,
    REP_INDEX,
    TABLES,
)
from projections.lookups import select_by_ids, upsert_suffix

EVENT_TYPES = frozenset(EVENT_CLASSES)
"""Every event of the registry: those about no dispute are read and left out."""

HOLD = LedgerAccount.DISPUTE_HOLD.value
_STORE_INTERNALS = frozenset({"timestamp", "originator_topic", "postings", "class_version"})
_FOLLOW_UP_MOVES = frozenset({ev.FollowUpDue.TOPIC, ev.FollowUpClosed.TOPIC})
_MAY_NAME_A_DISPUTE = frozenset(
    {
        *(event_class.TOPIC for event_class in dv.DISPUTE_EVENTS),
        ev.RefundRequested.TOPIC,
        ev.FollowUpRaised.TOPIC,
    }
)
"""Events that may name a dispute (`dispute_id`, or a follow-up's `subject_id`): only these
are decoded, besides a follow-up's due and closed events."""


class UnknownDispute(LookupError):
    """Invariant: an event names a dispute the log has not opened before it."""


def data_with_personal(state: dict[str, Any]) -> dict[str, Any]:
    """An event's own fields for staff: the store's internals left out, the customer's words
    (`PERSONAL_FIELDS`) kept."""
    return {key: value for key, value in state.items() if key not in _STORE_INTERNALS}


def named_dispute(type_name: str, state: dict[str, Any]) -> str | None:
    """The dispute an event names itself (its own field, or a follow-up raised about it)."""
    named = state.get("dispute_id")
    if isinstance(named, str):
        return named
    if type_name == ev.FollowUpRaised.TOPIC and state["reason"] in FOLLOW_UP_REASONS:
        return str(state["subject_id"])
    return None


def next_step(row: dict[str, Any]) -> str | None:
    """What the dispute waits for, in words (None when nothing is left to do)."""
    if row["status"] == "resolved":
        return None if row["feedback_score"] is not None else "feedback awaited"
    if row["escalated_to"] is not None:
        return f"escalated to {row['escalated_to']}"
    if row["status"] == "plan":
        for installment in row["plan"]:
            if installment["status"] in ("due", "missed"):
                return f"installment {installment['status']} {installment['due']}"
        return "plan paid"
    if row["status"] == "deferred":
        return f"deferred until {row['deferred_until']}"
    if row["first_response_at"] is None:
        return f"first response due {row['first_response_due']}"
    if row["kind"] == "chargeback":
        return f"awaiting processor (respond by {row['respond_by']})"
    return f"update due {row['update_due']}"


def _opened(state: dict[str, Any], at: str) -> dict[str, Any]:
    return {
        "dispute_id": state["dispute_id"],
        "account_id": state["account_id"],
        "external_id": state.get("external_id"),
        "kind": state["kind"],
        "channel": state["channel"],
        "reason": state["reason"],
        "invoice_id": state.get("invoice_id"),
        "payment_id": state.get("payment_id"),
        "amount": state["amount_minor"],
        "held": 0,  # the postings below add what moved to dispute_hold
        "adjusted": 0,
        "currency": state["currency"],
        "status": "open",
        "is_open": True,
        "rep": None,
        "reps": [],
        "escalated_to": None,
        "escalated_at": None,
        "opened_at": at,
        "respond_by": state.get("respond_by"),
        "first_response_due": state["first_response_due"],
        "first_response_at": None,
        "update_due": state["update_due"],
        "resolution_due": state["resolution_due"],
        "resolved_at": None,
        "outcome": None,
        "settlement": None,
        "contacts": 0,
        "last_contact_at": None,
        "next_step": None,
        "plan": [],
        "forgiven": 0,
        "deferred_until": None,
        "feedback_score": None,
        "follow_ups": [],
        "policy_version": state["policy_version"],
        "updated_at": at,
    }


def _hold_moves(row: dict[str, Any], state: dict[str, Any]) -> None:
    for posting in state.get("postings") or ():
        if posting["debit"] == HOLD:
            row["held"] += posting["amount_minor"]
        if posting["credit"] == HOLD:
            row["held"] -= posting["amount_minor"]


def _take_escalation(row: dict[str, Any], state: dict[str, Any]) -> None:
    """The role the dispute was escalated to has acted on it (as the aggregate decides)."""
    if row["escalated_to"] == state.get("actor_role"):
        row["escalated_to"] = None
        row["escalated_at"] = None


def _own_changes(row: dict[str, Any], type_name: str, state: dict[str, Any], at: str) -> None:
    """What an event that names this dispute changes besides what it holds."""
    if type_name == dv.DisputeAssigned.TOPIC:
        row["rep"] = state["rep"]
        row["reps"].append({"rep": state["rep"], "from": at, "by": state["actor_id"]})
    elif type_name == dv.ContactLogged.TOPIC:
        row["contacts"] += 1
        row["last_contact_at"] = at
        if state["direction"] == "out":
            if row["first_response_at"] is None:
                row["first_response_at"] = at
            row["update_due"] = state["next_update_due"]
    elif type_name == dv.DisputeEscalated.TOPIC:
        row["escalated_to"] = state["to_role"]
        row["escalated_at"] = at
    elif type_name == dv.DisputeAdjusted.TOPIC:
        row["adjusted"] += state["amount_minor"]
        _take_escalation(row, state)
    elif type_name == dv.PlanAgreed.TOPIC:
        row["status"] = "plan"
        row["forgiven"] = state["forgiven_minor"]
        row["plan"] = [
            {"due": due, "amount": amount, "paid": 0, "status": "due"}
            for due, amount in state["installments"]
        ]
        _take_escalation(row, state)
    elif type_name == dv.InstallmentsPaid.TOPIC:
        for index, amount, late in state["paid"]:
            installment = row["plan"][index]
            installment["paid"] += amount
            if installment["paid"] >= installment["amount"]:
                installment["status"] = "late" if late else "paid"
    elif type_name == dv.InstallmentMissed.TOPIC:
        row["plan"][state["index"]]["status"] = "missed"
    elif type_name == dv.DisputeDeferred.TOPIC:
        row["status"] = "deferred"
        row["deferred_until"] = state["until"]
    elif type_name == dv.DisputeStatusUpdate.TOPIC:
        row["update_due"] = state["next_update_due"]
    elif type_name == dv.DisputeResolved.TOPIC:
        row["status"] = "resolved"
        row["is_open"] = False
        row["resolved_at"] = at
        row["outcome"] = state["outcome"]
        row["settlement"] = state.get("settlement")
        row["escalated_to"] = None
        row["escalated_at"] = None
    elif type_name == dv.FeedbackRecorded.TOPIC:
        row["feedback_score"] = state["score"]
    elif type_name == ev.FollowUpRaised.TOPIC:
        row["follow_ups"].append(
            {
                "follow_up_id": state["follow_up_id"],
                "reason": state["reason"],
                "due_at": state["due_at"],
                "owner": state["owner"],
                "status": "open",
            }
        )


def _follow_up_moved(row: dict[str, Any], type_name: str, state: dict[str, Any]) -> None:
    """A follow-up of the dispute came due again or closed."""
    for follow_up in row["follow_ups"]:
        if follow_up["follow_up_id"] == state["follow_up_id"]:
            if type_name == ev.FollowUpDue.TOPIC:
                follow_up["due_at"] = state["due_at"]
                follow_up["owner"] = state["owner"]
            else:
                follow_up["status"] = "closed"


def _decoded(row: dict[str, Any]) -> dict[str, Any]:
    """A stored row as the projection works on it (JSON parsed, booleans as bool)."""
    for column in JSON_COLUMNS:
        row[column] = orjson.loads(row[column])
    row["is_open"] = bool(row["is_open"])
    return row


def _encoded(row: dict[str, Any]) -> tuple[Any, ...]:
    row["next_step"] = next_step(row)
    return tuple(
        orjson.dumps(row[column]).decode() if column in JSON_COLUMNS else row[column]
        for column in DISPUTE_COLUMNS
    )


class DisputesProjection:
    """Keeps rm_disputes and rm_dispute_events (of one generation) up to date."""

    name: str = NAME
    tables: tuple[str, ...] = TABLES
    event_types: frozenset[str] = EVENT_TYPES

    def create_statements(self, generation: Generation) -> tuple[str, ...]:
        """The generation's tables."""
        columns = ", ".join(
            f"{column} {pg_type.upper()}"
            + (" PRIMARY KEY" if column == "dispute_id" else "")
            + (" NOT NULL" if column in _NOT_NULL else "")
            for column, pg_type in zip(DISPUTE_COLUMNS, DISPUTE_PG_TYPES, strict=True)
        )
        return (
            f"CREATE TABLE IF NOT EXISTS {generation.table(DISPUTES)} ({columns})",
            f"CREATE TABLE IF NOT EXISTS {generation.table(DISPUTE_EVENTS)} ("
            "dispute_id TEXT NOT NULL, position BIGINT NOT NULL, account_id TEXT NOT NULL,"
            " version INTEGER NOT NULL, type TEXT NOT NULL, occurred_at TEXT NOT NULL,"
            " data_with_personal TEXT NOT NULL, postings TEXT NOT NULL,"
            " PRIMARY KEY (dispute_id, position))",
        )

    def index_statements(self, generation: Generation) -> tuple[str, ...]:
        """The indexes behind `ledger disputes --open`, `--account` and `--rep`."""
        return (
            f"CREATE INDEX IF NOT EXISTS {generation.table(OPEN_INDEX)}"
            f" ON {generation.table(DISPUTES)} (account_id, is_open)",
            f"CREATE INDEX IF NOT EXISTS {generation.table(REP_INDEX)}"
            f" ON {generation.table(DISPUTES)} (rep, is_open)",
        )

    def apply(
        self,
        database: Database,
        cursor: Cursor,
        generation: Generation,
        notifications: Sequence[Notification],
    ) -> None:
        """Write a batch into the generation's tables in the open transaction."""
        table = generation.table(DISPUTES)
        decoded: list[tuple[Notification, str, dict[str, Any], str | None]] = []
        named: set[str] = set()
        follow_up_accounts: set[str] = set()
        for notification in notifications:
            type_name = event_name(notification.topic)
            if type_name in _FOLLOW_UP_MOVES:
                state = event_state(notification)
                follow_up_accounts.add(state["account_id"])
                decoded.append((notification, type_name, state, None))
                continue
            if type_name not in _MAY_NAME_A_DISPUTE:
                continue
            state = event_state(notification)
            dispute_id = named_dispute(type_name, state)
            if dispute_id is not None:
                named.add(dispute_id)
                decoded.append((notification, type_name, state, dispute_id))
        if not named and not follow_up_accounts:
            return
        rows = {
            row["dispute_id"]: _decoded(row)
            for row in select_by_ids(cursor, table, DISPUTE_COLUMNS, "dispute_id", named)
        }
        # A follow-up's due and closed events name only the follow-up: look among the
        # disputes of its account (an account has few).
        for row in select_by_ids(cursor, table, DISPUTE_COLUMNS, "account_id", follow_up_accounts):
            rows.setdefault(row["dispute_id"], _decoded(row))
        dispute_of_follow_up = {
            follow_up["follow_up_id"]: row["dispute_id"]
            for row in rows.values()
            for follow_up in row["follow_ups"]
        }
        changed: dict[str, dict[str, Any]] = {}
        events: list[tuple[Any, ...]] = []
        for notification, type_name, state, dispute_id in decoded:
            at = stored_moment(state["timestamp"])[0]
            if dispute_id is None:
                owner = dispute_of_follow_up.get(state["follow_up_id"])
                if owner is None:  # a follow-up about something else (an overpayment)
                    continue
                row = rows[owner]
                _follow_up_moved(row, type_name, state)
            else:
                if type_name == dv.DisputeOpened.TOPIC:
                    rows[dispute_id] = _opened(state, at)
                if dispute_id not in rows:  # the log never names a dispute before its opening
                    raise UnknownDispute(
                        f"{type_name} at position {notification.id} names dispute"
                        f" {dispute_id!r}, never opened"
                    )
                row = rows[dispute_id]
                _hold_moves(row, state)
                _own_changes(row, type_name, state, at)
                if type_name == ev.FollowUpRaised.TOPIC:
                    dispute_of_follow_up[state["follow_up_id"]] = dispute_id
            if "policy_version" in state and type_name.startswith("dispute_"):
                row["policy_version"] = state["policy_version"]
            row["updated_at"] = at
            changed[row["dispute_id"]] = row
            events.append(
                (
                    row["dispute_id"],
                    notification.id,
                    state["account_id"],
                    notification.originator_version,
                    type_name,
                    at,
                    orjson.dumps(data_with_personal(state)).decode(),
                    orjson.dumps(public_postings(state)).decode(),
                )
            )
        if not changed:
            return
        database.insert_rows(
            cursor,
            table,
            DISPUTE_COLUMNS,
            [_encoded(row) for row in changed.values()],
            pg_types=DISPUTE_PG_TYPES,
            suffix=upsert_suffix("dispute_id", DISPUTE_COLUMNS),
        )
        database.insert_rows(
            cursor,
            generation.table(DISPUTE_EVENTS),
            EVENT_COLUMNS,
            events,
            pg_types=EVENT_PG_TYPES,
        )


_NOT_NULL = frozenset(
    {
        "account_id",
        "kind",
        "channel",
        "reason",
        "amount",
        "held",
        "adjusted",
        "currency",
        "status",
        "is_open",
        "reps",
        "opened_at",
        "first_response_due",
        "update_due",
        "resolution_due",
        "contacts",
        "plan",
        "forgiven",
        "follow_ups",
        "policy_version",
        "updated_at",
    }
)
