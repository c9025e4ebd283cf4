"""The relay sends a notification request on `ledger.notifications` for each dispute status
change (none for an escalation), keyed by the account, without the customer's own words; real
broker, both databases."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from eventsourcing.persistence import Tracking

from ledger import read_models
from ledger.clock import FixedClock
from ledger.commands import CommandService
from ledger.domain.policy import Policy
from ledger.ingest import InboundMessage, IngestService
from ledger.kafka.broker import EmbeddedBroker
from ledger.kafka.clients import ResilientProducer
from ledger.kafka.partitioning import Share
from ledger.kafka.topics import LEDGER_EVENTS, LEDGER_NOTIFICATIONS, ensure_topics, read_topic
from ledger.outbox import OutboxRelay
from ledger.persistence.database import Database
from ledger.persistence.event_store import open_event_store
from ledger.persistence.urls import parse_database_url
from tests.books import invoice, opened

POLICY = Policy(version="test-1")
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
PERSONAL = ("summary", "promise", "comment", "said they were billed twice", "call back")


def command(account_id: str, command_type: str, **fields: Any) -> bytes:
    return orjson.dumps(
        {
            "command_id": str(uuid.uuid4()),
            "type": command_type,
            "account_id": account_id,
            "actor": {"id": "ann", "role": "agent"},
            "issued_at": NOW.isoformat(),
            **fields,
        }
    )


def test_dispute_status_changes_are_notified_without_personal_fields(
    database_url: str, fresh_broker: EmbeddedBroker
) -> None:
    target = parse_database_url(database_url)
    read_models.prepare(target)
    ensure_topics(fresh_broker.bootstrap, 4, [LEDGER_EVENTS, LEDGER_NOTIFICATIONS])
    store = open_event_store(target)
    database = Database(target)
    service = IngestService(store, policy=POLICY, clock=FixedClock(NOW))
    facts = [opened("n1", "N"), invoice("n2", "N", 12_000)]
    facts += [opened("m1", "M"), invoice("m2", "M", 5_000)]
    batch = service.prepare(
        [InboundMessage("payments.inbound", 0, n, b"k", raw) for n, raw in enumerate(facts)]
    )
    service.commit(batch, Tracking("payments.inbound:t:0", len(facts)))
    n_amount = {"value": 12_000, "currency": "USD"}
    m_amount = {"value": 5_000, "currency": "USD"}
    staff = [
        command("N", "dispute.open", channel="phone", reason="billed twice", amount=n_amount),
        command(
            "N", "dispute.log", dispute_id="N:dp:3", channel="phone", direction="in",
            summary="said they were billed twice", promise="call back", promise_by="2026-11-27",
        ),
        # Above an agent's authority (adjust 50.00): refused by the account as well.
        command("N", "dispute.adjust", dispute_id="N:dp:3", amount_minor=6_000, reason="goodwill"),
        command("N", "dispute.escalate", dispute_id="N:dp:3", to_role="supervisor"),
        command(
            "N", "dispute.plan", dispute_id="N:dp:3",
            installments=[{"due_date": "2026-12-01", "amount_minor": 4_000},
                          {"due_date": "2027-01-01", "amount_minor": 8_000}],
        ),
        command("M", "dispute.open", channel="email", reason="wrong rate", amount=m_amount),
        command("M", "dispute.defer", dispute_id="M:dp:3", until="2026-12-10"),
        command("M", "dispute.resolve", dispute_id="M:dp:3", outcome="withdrawn"),
    ]  # fmt: skip
    commands = CommandService(service)
    batch = commands.prepare(
        [InboundMessage("ledger.commands", 0, n, b"k", raw) for n, raw in enumerate(staff)]
    )
    commands.commit(batch, Tracking("ledger.commands:t:0", len(staff)))
    assert [o.status for o in batch.outcomes] == ["accepted"] * 2 + ["refused"] + ["accepted"] * 5
    refusal = batch.outcomes[2].reason or ""
    assert "may not adjust 6000 minor units; needs supervisor" in refusal
    # Without the outcome header nobody waits for it: it is dead-lettered with the reason.
    assert [letter.kind for letter in batch.dead_letters] == ["unauthorized"]

    producer = ResilientProducer(fresh_broker.bootstrap)
    try:
        relay = OutboxRelay(database, producer, share=Share(0, 1, 4), position_name="test-relay")
        relay.handle(store.process_recorder.select_notifications(start=1, limit=1_000))
    finally:
        producer.close()
        database.close()
        store.close()

    records = read_topic(fresh_broker.bootstrap, LEDGER_NOTIFICATIONS)
    sent = sorted((orjson.loads(r.value) for r in records), key=lambda n: n["notification_id"])
    assert [(n["notification_id"], n["status"], n["next_at"]) for n in sent] == [
        ("M:3:dispute_status", "open", "2026-11-30T12:00:00+00:00"),
        ("M:5:dispute_status", "deferred", "2026-12-10"),
        ("M:6:dispute_status", "resolved", None),
        ("N:10:dispute_status", "plan", "2026-12-01"),
        ("N:3:dispute_status", "open", "2026-11-28T12:00:00+00:00"),
    ]
    assert {n["template"] for n in sent} == {"dispute_status"}
    assert sent[2]["outcome"] == "withdrawn"
    assert sent[3]["next_amount"] == {"value": 4_000, "currency": "USD"}
    for record in records:
        assert record.key == orjson.loads(record.value)["account_id"].encode()
        assert (
            dict(record.headers)["ce_id"].decode() == orjson.loads(record.value)["notification_id"]
        )
        assert not any(word in record.value.decode() for word in PERSONAL)
