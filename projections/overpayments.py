"""The overpayments read model: one row per overpayment, and the events of each.

A row holds where the overpayment stands in the protocol: its status, who verified or rejected
it, its resolution, where its money is (`places`, from the events' `moves`), its refund
attempts, escrow expiry, coupon code and the policy version of the latest decision. An event
belongs to an overpayment when it names it (`overpayment_id`) or moves its money, so one event
(credit applied to an invoice, escheatment) may belong to several.

A batch reads back the rows it changes, applies its events in log order and writes the rows
again, in the transaction that moves the projection's position: a rebuild, whatever its batch
boundaries, writes the same rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import orjson
from eventsourcing.persistence import Notification

from ledger.clock import stored_moment
from ledger.domain import protocol_events as ev
from ledger.domain.account import Account
from ledger.domain.event_names import EVENT_CLASSES, event_name
from ledger.persistence.database import Cursor, Database
from ledger.projection import Generation, event_state
from ledger.public_events import public_data, public_postings
from projections.lookups import select_by_ids, upsert_suffix
from projections.overpayments_tables import (
    EVENT_COLUMNS,
    EVENT_PG_TYPES,
    JSON_COLUMNS,
    NAME,
    OPEN_INDEX,
    OVERPAYMENT_COLUMNS,
    OVERPAYMENT_EVENTS,
    OVERPAYMENT_PG_TYPES,
    OVERPAYMENTS,
    TABLES,
)

EVENT_TYPES = frozenset(EVENT_CLASSES)
"""Every event of the registry: those about no overpayment are read and left out."""

OPEN_PLACES: Final[tuple[str, ...]] = (
    "escrow",
    "refund_in_flight",
    "refund_failed",
    *ev.APPLIES_TO_INVOICES,
)
"""Places whose money is still on its way: held in escrow, a refund in flight or waiting for a
retry, credit waiting for the next invoice. An overpayment with money there is open."""

OPEN_STATUSES: Final[tuple[str, ...]] = ("detected", "verified")
"""Statuses waiting for staff: a verification, or a resolution."""

_BOOLEAN_COLUMNS = ("is_open", "resolved_automatically")


class UnknownOverpayment(LookupError):
    """Invariant: an event names an overpayment the log has not detected before it."""


def is_open(row: dict[str, Any]) -> bool:
    """Whether an overpayment still needs work or still has money on its way."""
    places: dict[str, int] = row["places"]
    return row["status"] in OPEN_STATUSES or any(places.get(place) for place in OPEN_PLACES)


def overpayment_ids(state: dict[str, Any]) -> list[str]:
    """The overpayments an event belongs to: the one it names, then those whose money it moves."""
    ids: list[str] = []
    named = state.get("overpayment_id")
    if isinstance(named, str):
        ids.append(named)
    for move in state.get("moves") or ():
        if move[0] not in ids:
            ids.append(move[0])
    return ids


def _detected(state: dict[str, Any], occurred_at: str) -> dict[str, Any]:
    return {
        "overpayment_id": state["overpayment_id"],
        "account_id": state["account_id"],
        "payment_id": state["payment_id"],
        "currency": state["currency"],
        "amount": state["amount_minor"],
        "status": "detected",
        "is_open": True,
        "departments": list(state.get("departments") or ()),
        "verifications": {},
        "rejection": None,
        "resolution": None,
        "resolved_automatically": None,
        "places": {"credit": state["amount_minor"]},
        "refunds": [],
        "escrow_expires_at": None,
        "escrow_released_to": None,
        "coupon_code": None,
        "policy_version": state["policy_version"],
        "detected_at": occurred_at,
        "updated_at": occurred_at,
    }


def _move(row: dict[str, Any], moves: Sequence[Sequence[Any]]) -> None:
    places: dict[str, int] = row["places"]
    for overpayment_id, source, target, amount in moves:
        if overpayment_id != row["overpayment_id"]:
            continue
        places[source] = places.get(source, 0) - amount
        if not places[source]:
            del places[source]
        places[target] = places.get(target, 0) + amount
    # Listed in the protocol's order of places, whatever order the moves came in.
    row["places"] = {place: places[place] for place in ev.PLACES if place in places}


def _refund(row: dict[str, Any], refund_id: str) -> dict[str, Any] | None:
    return next((r for r in row["refunds"] if r["refund_id"] == refund_id), None)


def _own_changes(row: dict[str, Any], type_name: str, state: dict[str, Any], at: str) -> None:
    """What an event that names this overpayment changes besides its money's places."""
    if type_name == ev.OverpaymentVerified.TOPIC:
        row["verifications"][state["department"]] = {
            "actor_id": state["actor_id"],
            "actor_role": state["actor_role"],
            "verified_at": at,
            "note": state.get("note"),
        }
        if state["complete"]:
            row["status"] = "verified"
    elif type_name == ev.OverpaymentRejected.TOPIC:
        row["status"] = "rejected"
        row["rejection"] = {
            "department": state["department"],
            "reason": state["reason"],
            "actor_id": state["actor_id"],
            "actor_role": state["actor_role"],
            "rejected_at": at,
        }
    elif type_name == ev.OverpaymentResolved.TOPIC:
        row["status"] = "resolved"
        row["resolution"] = state["resolution"]
        row["resolved_automatically"] = bool(state["automatic"])
        row["escrow_expires_at"] = state.get("escrow_expires_at")
        if state.get("coupon_code") is not None:
            row["coupon_code"] = state["coupon_code"]
    elif type_name == ev.RefundRequested.TOPIC:
        retried = state.get("retry_of")
        if retried is not None and (previous := _refund(row, retried)) is not None:
            previous["status"] = "retried"
        row["refunds"].append(
            {
                "refund_id": state["refund_id"],
                "attempt": state["attempt"],
                "amount": state["amount_minor"],
                "status": "requested",
                "reason": None,
                "retry_at": None,
                "requested_at": at,
            }
        )
    elif type_name in (ev.RefundSettled.TOPIC, ev.RefundFailed.TOPIC):
        refund = _refund(row, state["refund_id"])
        if refund is not None:
            if type_name == ev.RefundSettled.TOPIC:
                refund["status"] = "settled"
            else:
                refund["status"] = "failed"
                refund["reason"] = state["reason"]
                refund["retry_at"] = state.get("retry_at")
    elif type_name == ev.EscrowReleased.TOPIC:
        row["escrow_released_to"] = state["to"]


def _decoded(row: dict[str, Any]) -> dict[str, Any]:
    """A stored row as the projection works on it (JSON parsed, booleans as bool)."""
    for column in JSON_COLUMNS:
        row[column] = orjson.loads(row[column])
    for column in _BOOLEAN_COLUMNS:
        if row[column] is not None:
            row[column] = bool(row[column])
    return row


def _encoded(row: dict[str, Any]) -> tuple[Any, ...]:
    row["is_open"] = is_open(row)
    return tuple(
        orjson.dumps(row[column]).decode() if column in JSON_COLUMNS else row[column]
        for column in OVERPAYMENT_COLUMNS
    )


class OverpaymentsProjection:
    """Keeps rm_overpayments and rm_overpayment_events (of one generation) up to date."""

    name: str = NAME
    tables: tuple[str, ...] = TABLES
    event_types: frozenset[str] = EVENT_TYPES

    def create_statements(self, generation: Generation) -> tuple[str, ...]:
        """The generation's tables."""
        return (
            f"CREATE TABLE IF NOT EXISTS {generation.table(OVERPAYMENTS)} ("
            "overpayment_id TEXT PRIMARY KEY, account_id TEXT NOT NULL,"
            " payment_id TEXT NOT NULL, currency TEXT NOT NULL, amount BIGINT NOT NULL,"
            " status TEXT NOT NULL, is_open BOOLEAN NOT NULL, departments TEXT NOT NULL,"
            " verifications TEXT NOT NULL, rejection TEXT NOT NULL, resolution TEXT,"
            " resolved_automatically BOOLEAN, places TEXT NOT NULL, refunds TEXT NOT NULL,"
            " escrow_expires_at TEXT, escrow_released_to TEXT, coupon_code TEXT,"
            " policy_version TEXT NOT NULL, detected_at TEXT NOT NULL,"
            " updated_at TEXT NOT NULL)",
            f"CREATE TABLE IF NOT EXISTS {generation.table(OVERPAYMENT_EVENTS)} ("
            "overpayment_id TEXT NOT NULL, position BIGINT NOT NULL, account_id TEXT NOT NULL,"
            " version INTEGER NOT NULL, type TEXT NOT NULL, occurred_at TEXT NOT NULL,"
            " data TEXT NOT NULL, postings TEXT NOT NULL,"
            " PRIMARY KEY (overpayment_id, position))",
        )

    def index_statements(self, generation: Generation) -> tuple[str, ...]:
        """The index behind `ledger overpayments --open` and `--account`."""
        return (
            f"CREATE INDEX IF NOT EXISTS {generation.table(OPEN_INDEX)}"
            f" ON {generation.table(OVERPAYMENTS)} (account_id, is_open)",
        )

    def apply(
        self,
        database: Database,
        cursor: Cursor,
        generation: Generation,
        notifications: Sequence[Notification],
    ) -> None:
        """Write a batch into the generation's tables in the open transaction."""
        table = generation.table(OVERPAYMENTS)
        decoded: list[tuple[Notification, str, dict[str, Any], list[str]]] = []
        for notification in notifications:
            state = event_state(notification)
            ids = overpayment_ids(state)
            if ids:
                decoded.append((notification, event_name(notification.topic), state, ids))
        if not decoded:
            return
        wanted = {overpayment_id for *_, ids in decoded for overpayment_id in ids}
        rows = {
            row["overpayment_id"]: _decoded(row)
            for row in select_by_ids(cursor, table, OVERPAYMENT_COLUMNS, "overpayment_id", wanted)
        }
        changed: dict[str, dict[str, Any]] = {}
        events: list[tuple[Any, ...]] = []
        for notification, type_name, state, ids in decoded:
            at = stored_moment(state["timestamp"])[0]
            if type_name == Account.OverpaymentDetected.TOPIC:
                rows[state["overpayment_id"]] = _detected(state, at)
            data = orjson.dumps(public_data(state)).decode()
            postings = orjson.dumps(public_postings(state)).decode()
            for overpayment_id in ids:
                row = rows.get(overpayment_id)
                if row is None:  # the log never names an overpayment before its detection
                    raise UnknownOverpayment(
                        f"{type_name} at position {notification.id} names overpayment"
                        f" {overpayment_id!r}, never detected"
                    )
                _move(row, state.get("moves") or ())
                if overpayment_id == state.get("overpayment_id"):
                    _own_changes(row, type_name, state, at)
                if "policy_version" in state:
                    row["policy_version"] = state["policy_version"]
                row["updated_at"] = at
                changed[overpayment_id] = row
                events.append(
                    (
                        overpayment_id,
                        notification.id,
                        state["account_id"],
                        notification.originator_version,
                        type_name,
                        at,
                        data,
                        postings,
                    )
                )
        database.insert_rows(
            cursor,
            table,
            OVERPAYMENT_COLUMNS,
            [_encoded(row) for row in changed.values()],
            pg_types=OVERPAYMENT_PG_TYPES,
            suffix=upsert_suffix("overpayment_id", OVERPAYMENT_COLUMNS),
        )
        database.insert_rows(
            cursor,
            generation.table(OVERPAYMENT_EVENTS),
            EVENT_COLUMNS,
            events,
            pg_types=EVENT_PG_TYPES,
        )
