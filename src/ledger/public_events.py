"""The public face of stored events: JSON for `ledger.events`, CloudEvents headers, history rows."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from eventsourcing.persistence import Notification

from ledger.domain.dispute_events import PERSONAL_FIELDS
from ledger.domain.event_names import event_name
from ledger.persistence.mapper import current_state

_INTERNAL_FIELDS = frozenset(
    {"timestamp", "originator_topic", "postings", "class_version", *PERSONAL_FIELDS}
)
"""Never published: the store's internals and the customer's own words (`PERSONAL_FIELDS`:
kept in the store for the dispute's story, erasable)."""


def public_postings(state: dict[str, Any]) -> list[dict[str, Any]]:
    """An event's postings as public JSON (`debit`, `credit`, `amount`, `currency`)."""
    return [
        {
            "debit": posting["debit"],
            "credit": posting["credit"],
            "amount": posting["amount_minor"],
            "currency": posting["currency"],
        }
        for posting in state.get("postings") or ()
    ]


def public_data(state: dict[str, Any]) -> dict[str, Any]:
    """An event's own fields, without the store's internals."""
    data = dict(state)  # a copy in C, then a few pops: a third of a filtering comprehension
    for internal in _INTERNAL_FIELDS:
        data.pop(internal, None)
    return data


_CANONICAL_TIMESTAMP = re.compile(
    r"\d{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])T(?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d"
    r"(?:\.\d{6})?(?:[+-](?:[01]\d|2[0-3]):[0-5]\d)?"
).fullmatch
"""Text that `datetime.isoformat()` writes for a datetime, as the store's mapper (orjson) writes
every timestamp (offsets in whole minutes): such text comes back unchanged from the round trip."""


def occurred_at(state: dict[str, Any]) -> str:
    """The event's timestamp as RFC 3339 text."""
    stored: str = state["timestamp"]
    if _CANONICAL_TIMESTAMP(stored):
        return stored  # already what the round trip below gives, at a third of its cost
    return datetime.fromisoformat(stored).isoformat()


def public_event(notification: Notification, state: dict[str, Any] | None = None) -> dict[str, Any]:
    """The domain event as the public JSON published on `ledger.events`."""
    if state is None:
        state = current_state(notification.topic, notification.state)
    data = public_data(state)
    return {
        "type": event_name(notification.topic),
        "account_id": state["account_id"],
        "version": notification.originator_version,
        "occurred_at": occurred_at(state),
        **{key: value for key, value in data.items() if key != "account_id"},
        "postings": public_postings(state),
    }


def cloudevent_headers(
    notification: Notification, public: dict[str, Any]
) -> list[tuple[str, bytes]]:
    """CloudEvents binary-mode headers for one published event."""
    return [
        ("ce_id", f"{public['account_id']}:{public['version']}".encode()),
        ("ce_type", f"ledger.{public['type']}".encode()),
        ("ce_source", b"ledger"),
        ("ce_time", public["occurred_at"].encode()),
        ("ce_specversion", b"1.0"),
        ("ce_sequence", f"{notification.id:020d}".encode()),
        ("content-type", b"application/json"),
    ]
