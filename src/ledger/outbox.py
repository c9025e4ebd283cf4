"""The outbox relay: publishes stored domain events to `ledger.events`, in log order.

It reads the event store's notification log after its own position, sends each event (and, for a
detected overpayment, a customer notification request), flushes, and only then records the new
position. A crash between the flush and the record re-sends one batch: at least once, and every
message carries the same `ce_id` each time so downstream can de-duplicate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
import structlog
from eventsourcing.persistence import Notification

from ledger.kafka.clients import ResilientProducer
from ledger.kafka.topics import LEDGER_EVENTS, LEDGER_NOTIFICATIONS
from ledger.persistence.database import Database
from ledger.persistence.mapper import decode_state
from ledger.persistence.positions import POSITIONS_DDL, read_position, write_position
from ledger.public_events import cloudevent_headers, public_event

log = structlog.get_logger(__name__)

RELAY_POSITION_NAME = "outbox:ledger.events"


def notification_request(public: dict[str, Any]) -> dict[str, Any]:
    """The customer notification request for a detected overpayment."""
    return {
        "notification_id": f"{public['account_id']}:{public['version']}:overpayment_detected",
        "account_id": public["account_id"],
        "template": "overpayment_detected",
        "overpayment_id": public["overpayment_id"],
        "amount": {"value": public["amount_minor"], "currency": public["currency"]},
        "requested_at": public["occurred_at"],
    }


class OutboxRelay:
    """Sends stored events to Kafka and records how far it got."""

    def __init__(
        self,
        database: Database,
        producer: ResilientProducer,
        *,
        position_name: str = RELAY_POSITION_NAME,
        notifications: bool = True,
    ) -> None:
        self.name = position_name
        self.notifications = notifications
        self.database = database
        self.producer = producer
        with database.transaction() as cursor:
            cursor.execute(POSITIONS_DDL)

    def position(self) -> int:
        """The last notification id known to be acknowledged by the broker."""
        with self.database.read() as cursor:
            return read_position(cursor, self.name)

    def handle(self, notifications: Sequence[Notification]) -> None:
        """Publish a batch, wait for every acknowledgement, then record the position."""
        for notification in notifications:
            state = decode_state(notification.state)
            public = public_event(notification, state)
            key = str(public["account_id"]).encode()
            headers = cloudevent_headers(notification, public)
            self.producer.send(LEDGER_EVENTS, key=key, value=orjson.dumps(public), headers=headers)
            if self.notifications and public["type"] == "overpayment_detected":
                request = notification_request(public)
                self.producer.send(
                    LEDGER_NOTIFICATIONS,
                    key=key,
                    value=orjson.dumps(request),
                    headers=[("ce_id", request["notification_id"].encode()), *headers[1:]],
                )
                log.info(
                    "notification requested",
                    account_id=public["account_id"],
                    overpayment_id=public["overpayment_id"],
                    amount_minor=public["amount_minor"],
                    currency=public["currency"],
                )
        self.producer.flush()
        with self.database.transaction() as cursor:
            write_position(cursor, self.name, notifications[-1].id)
