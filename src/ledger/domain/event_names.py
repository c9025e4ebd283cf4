"""The registry of stable event names: what the store records, `ledger.events` and history show.

Every stored event class carries its name as its eventsourcing `TOPIC`, so the store records the
name, never a module path; `ce_type` is `ledger.<name>`; the history query, the projections and
the relay's routing all key on it. Moving or renaming a class changes none of them.

Rows stored before the names existed carry module paths (`ledger.domain.account:Account.X`).
`LEGACY_TOPICS` maps each such path, written out as text (never computed from today's classes,
which may move), to its name, and registers it with the library, so old rows, snapshots
included, keep reading. A topic missing from both is an event this code does not know: callers
decide (a live projection skips it, a rebuild stops).
"""

from __future__ import annotations

from typing import Any, Final

from eventsourcing.utils import register_topic

from ledger.domain import dispute_events as dv
from ledger.domain import protocol_events as ev
from ledger.domain.account import Account

ACCOUNT_OPENED: Final = Account.Opened.TOPIC
INVOICE_ISSUED: Final = Account.InvoiceIssued.TOPIC
PAYMENT_RECEIVED: Final = Account.PaymentReceived.TOPIC
OVERPAYMENT_DETECTED: Final = Account.OverpaymentDetected.TOPIC
OVERPAYMENT_RESOLVED: Final = ev.OverpaymentResolved.TOPIC
REFUND_REQUESTED: Final = ev.RefundRequested.TOPIC
DISPUTE_OPENED: Final = dv.DisputeOpened.TOPIC
DISPUTE_PLAN_AGREED: Final = dv.PlanAgreed.TOPIC
DISPUTE_DEFERRED: Final = dv.DisputeDeferred.TOPIC
DISPUTE_STATUS_UPDATE: Final = dv.DisputeStatusUpdate.TOPIC
DISPUTE_RESOLVED: Final = dv.DisputeResolved.TOPIC

_STORED_EVENTS: Final[tuple[type[Any], ...]] = (
    Account.Opened,
    Account.InvoiceIssued,
    Account.PaymentReceived,
    Account.OverpaymentDetected,
    *ev.PROTOCOL_EVENTS,
    *dv.DISPUTE_EVENTS,
)

EVENT_CLASSES: Final[dict[str, type[Any]]] = {cls.TOPIC: cls for cls in _STORED_EVENTS}
"""Every event that can be on the store's log, by its stable name."""

LEGACY_TOPICS: Final[dict[str, str]] = {
    "ledger.domain.account:Account": Account.TOPIC,
    "ledger.domain.account:Account.Opened": ACCOUNT_OPENED,
    "ledger.domain.account:Account.InvoiceIssued": INVOICE_ISSUED,
    "ledger.domain.account:Account.PaymentReceived": PAYMENT_RECEIVED,
    "ledger.domain.account:Account.OverpaymentDetected": OVERPAYMENT_DETECTED,
}
"""Topics stored before stable names (2026-11), and the name each now has."""

_STORED_CLASSES: Final[dict[str, type[Any]]] = {
    **EVENT_CLASSES,
    Account.TOPIC: Account,
    Account.Snapshot.TOPIC: Account.Snapshot,
}

_NAME_BY_TOPIC: Final[dict[str, str]] = {
    **{name: name for name in EVENT_CLASSES},
    **{old: name for old, name in LEGACY_TOPICS.items() if name in EVENT_CLASSES},
}


class UnknownEventType(LookupError):
    """A stored topic that no event class of this code answers to."""


def event_name(topic: str) -> str:
    """The stable name of a stored event's topic (today's or a legacy one)."""
    try:
        return _NAME_BY_TOPIC[topic]
    except KeyError:
        raise UnknownEventType(f"unknown event type {topic!r}") from None


def register_legacy_topics() -> None:
    """Make the library resolve every legacy topic to today's class (idempotent)."""
    for old, name in LEGACY_TOPICS.items():
        register_topic(old, _STORED_CLASSES[name])


register_legacy_topics()
