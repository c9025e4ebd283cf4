"""The outbox relay: publishes stored domain events to `ledger.events`, in log order.

It reads the event store's notification log after its own position, sends each event (and, for a
detected overpayment or a dispute's status change, a customer notification request), flushes,
and only then records the new position (an escalation is internal: no notification). A crash
between the flush and the record re-sends one batch: at least once, and every message carries
the same `ce_id` each time so downstream can de-duplicate.

A relay publishes one share of `ledger.events` (see `ledger.kafka.partitioning`): the events
whose account id the client's partitioner puts in a partition of its share, sent to that
partition explicitly. It reads every notification; of the others' it only reads the account id
from the stored JSON (no upcasting, no public JSON, nothing sent).
The messages an event routes elsewhere (notification requests) go with it, keyed the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson
import structlog
from eventsourcing.persistence import Notification

from ledger import dispute_notifications as dn
from ledger.domain.event_names import (
    DISPUTE_DEFERRED,
    DISPUTE_OPENED,
    DISPUTE_PLAN_AGREED,
    DISPUTE_RESOLVED,
    DISPUTE_STATUS_UPDATE,
    OVERPAYMENT_DETECTED,
    OVERPAYMENT_RESOLVED,
    REFUND_REQUESTED,
)
from ledger.kafka.clients import ResilientProducer
from ledger.kafka.partitioning import Share
from ledger.kafka.topics import LEDGER_EVENTS, LEDGER_NOTIFICATIONS, PAYMENTS_OUTBOUND
from ledger.persistence.database import Database
from ledger.persistence.mapper import decode_state, upcast_state
from ledger.persistence.positions import read_position, write_position
from ledger.persistence.relay_leases import LeaseLost
from ledger.public_events import cloudevent_headers, public_event

log = structlog.get_logger(__name__)


def notification_request(public: dict[str, Any]) -> dict[str, Any]:
    """The customer notification request for a detected overpayment: the amount and the
    resolutions the policy allows for the account (sent before any verification)."""
    return {
        "notification_id": f"{public['account_id']}:{public['version']}:overpayment_detected",
        "account_id": public["account_id"],
        "template": "overpayment_detected",
        "overpayment_id": public["overpayment_id"],
        "amount": {"value": public["amount_minor"], "currency": public["currency"]},
        "options": public.get("options") or [],
        "requested_at": public["occurred_at"],
    }


def coupon_notification(public: dict[str, Any]) -> dict[str, Any] | None:
    """The customer's coupon (only for a resolution that issued one)."""
    if not public.get("coupon_code"):
        return None
    amount = sum(p["amount"] for p in public["postings"])
    currency = public["postings"][0]["currency"] if public["postings"] else None
    return {
        "notification_id": f"{public['account_id']}:{public['version']}:coupon_issued",
        "account_id": public["account_id"],
        "template": "coupon_issued",
        "overpayment_id": public["overpayment_id"],
        "coupon_code": public["coupon_code"],
        "amount": {"value": amount, "currency": currency},
        "requested_at": public["occurred_at"],
    }


def refund_request(public: dict[str, Any]) -> dict[str, Any]:
    """The refund request to the processor (`refund_id` is its idempotency key)."""
    return {
        "refund_id": public["refund_id"],
        "account_id": public["account_id"],
        "payment_id": public["payment_id"],
        "method": public["method"],
        "amount": {"value": public["amount_minor"], "currency": public["currency"]},
        "attempt": public["attempt"],
        "requested_at": public["occurred_at"],
    }


@dataclass(frozen=True)
class Route:
    """A message that an event sends besides itself on `ledger.events`."""

    topic: str
    message: Callable[[dict[str, Any]], dict[str, Any] | None]
    """Builds the message's JSON from the event's public JSON (None: this event sends none)."""
    id_field: str
    """The message field that is its `ce_id` (the same each time it is sent)."""


ROUTES: Final[dict[str, tuple[Route, ...]]] = {
    OVERPAYMENT_DETECTED: (Route(LEDGER_NOTIFICATIONS, notification_request, "notification_id"),),
    OVERPAYMENT_RESOLVED: (Route(LEDGER_NOTIFICATIONS, coupon_notification, "notification_id"),),
    REFUND_REQUESTED: (Route(PAYMENTS_OUTBOUND, refund_request, "refund_id"),),
    DISPUTE_OPENED: (Route(LEDGER_NOTIFICATIONS, dn.dispute_opened, "notification_id"),),
    DISPUTE_PLAN_AGREED: (Route(LEDGER_NOTIFICATIONS, dn.plan_agreed, "notification_id"),),
    DISPUTE_DEFERRED: (Route(LEDGER_NOTIFICATIONS, dn.dispute_deferred, "notification_id"),),
    DISPUTE_STATUS_UPDATE: (Route(LEDGER_NOTIFICATIONS, dn.status_update, "notification_id"),),
    DISPUTE_RESOLVED: (Route(LEDGER_NOTIFICATIONS, dn.dispute_resolved, "notification_id"),),
}
"""Which events send what beyond `ledger.events` (every event goes there), by stable name."""


class OutboxRelay:
    """Sends one share's stored events to Kafka and records how far it got."""

    def __init__(
        self,
        database: Database,
        producer: ResilientProducer,
        *,
        share: Share,
        position_name: str,
        notifications: bool = True,
        lease_held: Callable[[], bool] | None = None,
    ) -> None:
        """`lease_held`, when given, is asked before each batch; False stops the relay."""
        self.name = position_name
        self.share = share
        self.notifications = notifications
        self.database = database
        self.producer = producer
        self.lease_held = lease_held

    def position(self) -> int:
        """The last notification id known to be acknowledged by the broker."""
        with self.database.read() as cursor:
            return read_position(cursor, self.name)

    def handle(self, notifications: Sequence[Notification]) -> None:
        """Publish the batch's events of this share, wait for every acknowledgement, then record
        the position (past the other shares' events too)."""
        if self.lease_held is not None and not self.lease_held():
            raise LeaseLost(f"{self.name}: the share's lease is no longer held")
        # Asked once a batch: a filtered `log.debug` still binds a logger, 3 us a message.
        log_routed = log.is_enabled_for(logging.DEBUG)
        for notification in notifications:
            state = decode_state(notification.state)
            key = str(state["account_id"]).encode()
            partition = self.share.partition_if_owned(key)
            if partition is None:
                continue
            public = public_event(notification, upcast_state(notification.topic, state))
            headers = cloudevent_headers(notification, public)
            self.producer.send(
                LEDGER_EVENTS,
                key=key,
                value=orjson.dumps(public),
                headers=headers,
                partition=partition,
            )
            if not self.notifications:
                continue
            for route in ROUTES.get(public["type"], ()):
                message = route.message(public)
                if message is None:
                    continue
                # Same key, same share: the client's partitioner keeps one account's order.
                self.producer.send(
                    route.topic,
                    key=key,
                    value=orjson.dumps(message),
                    headers=[("ce_id", str(message[route.id_field]).encode()), *headers[1:]],
                )
                if log_routed:  # at INFO, a line a message cost the relay more than its send
                    log.debug(
                        "message routed",
                        account_id=public["account_id"],
                        event_type=public["type"],
                        topic=route.topic,
                        ce_id=message[route.id_field],
                    )
        self.producer.flush()
        with self.database.transaction() as cursor:
            write_position(cursor, self.name, notifications[-1].id)
