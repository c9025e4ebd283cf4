"""The scheduler against a real broker and a real database (SQLite and PostgreSQL).

The clock is a FixedClock moved past each due time. One scheduler pass publishes `schedule.fire`
commands on `ledger.commands`; applying them with the CommandService (as the account worker
will) moves the money, and the schedule read model then marks each item done.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from eventsourcing.persistence import Tracking

from ledger import limits, read_models
from ledger.clock import FixedClock
from ledger.commands import CommandService
from ledger.domain.policy import Policy
from ledger.ingest import InboundMessage, IngestService, PreparedBatch
from ledger.kafka.broker import EmbeddedBroker
from ledger.kafka.clients import ResilientProducer
from ledger.kafka.topics import LEDGER_COMMANDS, ensure_topics, read_topic
from ledger.persistence.database import Database
from ledger.persistence.event_store import EventStore, open_event_store
from ledger.persistence.urls import parse_database_url
from ledger.scheduler import Scheduler, dormancy_periods, firing
from ledger.schemas.commands import firing_command_id
from ledger.tailing import run_tail
from projections import queries
from projections.schedule_queries import DueItem, due_items
from tests.books import invoice, line, opened, payment

POLICY = Policy(version="test-1")
START = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


@dataclass
class Ledger:
    """The pieces a test drives by hand: facts, commands, projections, the scheduler."""

    clock: FixedClock
    store: EventStore
    database: Database
    service: IngestService
    commands: CommandService
    producer: ResilientProducer
    bootstrap: str
    offsets: dict[str, int]

    def ingest(self, lines: list[bytes]) -> PreparedBatch:
        return self._commit(self.service, "payments.inbound", lines)

    def command(self, values: list[bytes]) -> PreparedBatch:
        return self._commit(self.commands, LEDGER_COMMANDS, values)

    def _commit(self, service: Any, topic: str, values: list[bytes]) -> PreparedBatch:
        start = self.offsets.get(topic, 0)
        batch: PreparedBatch = service.prepare(
            [InboundMessage(topic, 0, start + n, b"k", value) for n, value in enumerate(values)]
        )
        self.offsets[topic] = start + len(values)
        service.commit(batch, Tracking(f"{topic}:t:0", start + len(values)))
        assert not batch.dead_letters, batch.dead_letters
        return batch

    def project(self) -> None:
        for name in read_models.names():
            handler = read_models.live(self.database, name)
            run_tail(self.store, handler, threading.Event(), until_caught_up=True)

    def scheduler(self) -> Scheduler:
        return Scheduler(self.database, self.producer, policy=POLICY, clock=self.clock)

    def published(self) -> list[Any]:
        return read_topic(self.bootstrap, LEDGER_COMMANDS, idle_ms=500)

    def balance(self, account_id: str) -> dict[str, Any]:
        return queries.balance(self.database, account_id)

    def history_types(self, account_id: str) -> list[str]:
        return [e["type"] for e in queries.history(self.database, account_id, limit=1000)]


@pytest.fixture
def ledger(database_url: str, fresh_broker: EmbeddedBroker) -> Iterator[Ledger]:
    target = parse_database_url(database_url)
    read_models.prepare(target)
    ensure_topics(fresh_broker.bootstrap, 4, [LEDGER_COMMANDS])
    store = open_event_store(target)
    database = Database(target)
    clock = FixedClock(START)
    service = IngestService(store, policy=POLICY, clock=clock)
    producer = ResilientProducer(fresh_broker.bootstrap)
    yield Ledger(
        clock,
        store,
        database,
        service,
        CommandService(service),
        producer,
        fresh_broker.bootstrap,
        {},
    )
    producer.close()
    database.close()
    store.close()


def staff(account_id: str, command_type: str, role: str, **fields: Any) -> bytes:
    return orjson.dumps(
        {
            "command_id": str(uuid.uuid4()),
            "type": command_type,
            "account_id": account_id,
            "actor": {"id": f"{role}-1", "role": role},
            "issued_at": START.isoformat(),
            **fields,
        }
    )


def overpay(ledger: Ledger, account_id: str, kind: str) -> str:
    """Open an account, bill 100.00, receive 400.00: an overpayment of 300.00 (its id)."""
    ledger.ingest(
        [
            opened(f"{account_id}-1", account_id, kind=kind),
            invoice(f"{account_id}-2", account_id, 10_000),
            payment(f"{account_id}-3", account_id, 40_000),
        ]
    )
    account = ledger.service.load(account_id, {})
    assert account is not None
    (overpayment_id,) = account.overpayments
    return overpayment_id


def verify(ledger: Ledger, account_id: str, overpayment_id: str) -> None:
    ledger.command(
        [
            staff(
                account_id,
                "overpayment.verify",
                "accounting",
                overpayment_id=overpayment_id,
                department="accounting",
            )
        ]
    )


def resolve(ledger: Ledger, account_id: str, overpayment_id: str, resolution: str) -> None:
    ledger.command(
        [
            staff(
                account_id,
                "overpayment.resolve",
                "accounting",
                overpayment_id=overpayment_id,
                resolution=resolution,
            )
        ]
    )


def test_due_items_fire_once_and_move_the_money(ledger: Ledger) -> None:
    # Escrow (retail), a failed refund (retail), a verified overpayment on a monthly account.
    escrow_op = overpay(ledger, "E", "retail")
    verify(ledger, "E", escrow_op)
    resolve(ledger, "E", escrow_op, "escrow")
    refund_op = overpay(ledger, "R", "retail")
    verify(ledger, "R", refund_op)
    resolve(ledger, "R", refund_op, "refund")
    account_r = ledger.service.load("R", {})
    assert account_r is not None
    (refund_id,) = account_r.refunds
    ledger.ingest([line("R-4", "refund.failed", "R", refund_id=refund_id, reason="card closed")])
    monthly_op = overpay(ledger, "M", "monthly")
    verify(ledger, "M", monthly_op)
    ledger.project()
    assert ledger.balance("E")["escrow"] == 30_000
    assert ledger.balance("R")["customer_credit"] == 30_000

    # Nothing is due yet.
    scheduler = ledger.scheduler()
    assert scheduler.run_pass() == 0
    assert ledger.published() == []

    # Past every due time (escrow 90 days, refund retry 1 hour, self-correction 30 days).
    ledger.clock.advance(timedelta(days=91))
    assert scheduler.run_pass() == 3
    records = ledger.published()
    escrow_due = (START + POLICY.escrow.period).isoformat()
    retry_due = (START + POLICY.refunds.retry_backoff[0]).isoformat()
    correct_due = (START + POLICY.monthly.self_correction_window).isoformat()
    expected = {
        firing_command_id("escrow_expiry", escrow_op, escrow_due, None): b"E",
        firing_command_id("refund_retry", refund_id, retry_due, 1): b"R",
        firing_command_id("self_correction", monthly_op, correct_due, None): b"M",
    }
    assert {orjson.loads(r.value)["command_id"]: r.key for r in records} == expected
    assert all(
        orjson.loads(r.value)["actor"] == {"id": "scheduler", "role": "scheduler"} for r in records
    )

    # Within the re-fire interval nothing goes out again; after it, the same firings do.
    assert scheduler.run_pass() == 0
    ledger.clock.advance(timedelta(seconds=limits.scheduler_refire_interval_s + 1))
    assert scheduler.run_pass() == 3
    records = ledger.published()
    assert len(records) == 6
    assert {orjson.loads(r.value)["command_id"] for r in records} == set(expected)

    # The account applies each firing once: the re-published ones are duplicates.
    batch = ledger.command([r.value for r in records])
    assert [o.status for o in batch.outcomes] == ["accepted"] * 3
    assert batch.duplicates == 3
    ledger.project()

    # Escrow released at expiry to the policy's destination (a refund): money in flight.
    assert POLICY.escrow.expiry_release_to == "refund"
    e = ledger.balance("E")
    assert (e["escrow"], e["customer_credit"], e["refund_clearing"]) == (0, 0, 30_000)
    assert ledger.history_types("E")[-2:] == ["escrow_released", "refund_requested"]
    # The failed refund requested again, as attempt 2.
    r_events = queries.history(ledger.database, "R", limit=1000)
    assert r_events[-1]["type"] == "refund_requested"
    assert (r_events[-1]["data"]["attempt"], r_events[-1]["data"]["retry_of"]) == (2, refund_id)
    assert ledger.balance("R")["refund_clearing"] == 30_000
    # The monthly overpayment self-corrected: resolved as credit for the next bill.
    m_events = queries.history(ledger.database, "M", limit=1000)
    assert m_events[-1]["type"] == "overpayment_resolved"
    assert m_events[-1]["data"]["resolution"] == "credit"
    assert m_events[-1]["data"]["actor_id"] == "scheduler"
    assert ledger.balance("M")["customer_credit"] == 30_000
    assert queries.trial_balance(ledger.database)["currencies"]["USD"]["total"] == 0

    # Done once the read model has the events: a scheduler that forgot what it sent sends nothing.
    periods = dormancy_periods(POLICY)
    assert due_items(ledger.database, ledger.clock.now(), periods, limit=100) == []
    ledger.clock.advance(timedelta(seconds=limits.scheduler_refire_interval_s + 1))
    assert scheduler.run_pass() == 0
    assert ledger.scheduler().run_pass() == 0
    assert len(ledger.published()) == 6

    # The same firing again changes nothing; a firing no longer due is a recorded no-op.
    versions = len(ledger.history_types("E"))
    again = ledger.command([records[0].value])
    assert again.duplicates == 1 and not again.outcomes
    late = DueItem("escrow_expiry", escrow_op, "E", ledger.clock.now().isoformat(), 0, None)
    stale = ledger.command([orjson.dumps(firing(late, ledger.clock.now()))])
    assert [(o.status, o.reason) for o in stale.outcomes] == [
        ("noop", f"stale: overpayment {escrow_op} holds nothing in escrow")
    ]
    ledger.project()
    assert len(ledger.history_types("E")) == versions


def test_dormant_credit_is_escheated_once(ledger: Ledger) -> None:
    ledger.ingest([opened("D-1", "D", kind="retail"), payment("D-2", "D", 25_000)])
    ledger.ingest([opened("A-1", "A", kind="retail"), payment("A-2", "A", 100)])
    ledger.project()
    scheduler = ledger.scheduler()
    dormancy = POLICY.dormancy("US-CA")
    ledger.clock.advance(dormancy - timedelta(days=1))
    # A's customer is active again (a redemption counts too); D's is not.
    ledger.ingest(
        [
            line(
                "A-3",
                "payment.received",
                "A",
                payment_id="pay-A-3",
                amount={"value": 100, "currency": "USD"},
                method="card",
                occurred_at=ledger.clock.now().isoformat(),
            )
        ]
    )
    ledger.project()
    assert scheduler.run_pass() == 0
    ledger.clock.advance(timedelta(days=2))
    assert scheduler.run_pass() == 1
    (record,) = ledger.published()
    fire = orjson.loads(record.value)
    due_at = (datetime.fromisoformat("2026-11-25T10:00:00+00:00") + dormancy).isoformat()
    assert (record.key, fire["item"], fire["item_id"], fire["due_at"], fire["attempt"]) == (
        b"D",
        "dormancy",
        "D",
        due_at,
        1,
    )
    batch = ledger.command([record.value])
    assert [o.status for o in batch.outcomes] == ["accepted"]
    ledger.project()
    d = ledger.balance("D")
    assert (d["customer_credit"], d["escheat_payable"]) == (0, 25_000)
    assert ledger.history_types("D")[-1] == "credit_escheated"
    assert ledger.scheduler().run_pass() == 0


def fire_new(ledger: Ledger, seen: set[str], kind: str) -> list[dict[str, Any]]:
    """One scheduler pass, its new firings applied (as the account worker would): those of
    `kind`."""
    ledger.scheduler().run_pass()
    fresh = [orjson.loads(r.value) for r in ledger.published()]
    fresh = [f for f in fresh if f["command_id"] not in seen]
    seen.update(f["command_id"] for f in fresh)
    if fresh:
        ledger.command([orjson.dumps(f) for f in fresh])
        ledger.project()
    return [f for f in fresh if f["item"] == kind]


def to(ledger: Ledger, moment: datetime) -> None:
    ledger.clock.advance(moment - ledger.clock.now())


def test_dispute_updates_installments_and_deferrals_fire_when_due(ledger: Ledger) -> None:
    grace = POLICY.disputes.installment_grace
    update_every = POLICY.dispute_sla("phone").update_every
    refire = timedelta(seconds=limits.scheduler_refire_interval_s + 1)
    ledger.ingest([opened("DS-1", "DS", kind="retail"), invoice("DS-2", "DS", 12_000)])
    ledger.ingest([opened("DF-1", "DF", kind="retail"), invoice("DF-2", "DF", 5_000)])
    opening = {"channel": "phone", "reason": "billed twice"}
    ds_amount = {"value": 12_000, "currency": "USD"}
    df_amount = {"value": 5_000, "currency": "USD"}
    ledger.command(
        [
            staff("DS", "dispute.open", "agent", **opening, amount=ds_amount),
            staff("DF", "dispute.open", "agent", **opening, amount=df_amount),
        ]
    )
    plan = [{"due_date": "2026-12-01", "amount_minor": 4_000}]
    plan.append({"due_date": "2027-01-01", "amount_minor": 8_000})
    ledger.command(
        [
            staff("DS", "dispute.plan", "agent", dispute_id="DS:dp:3", installments=plan),
            staff("DF", "dispute.defer", "agent", dispute_id="DF:dp:3", until="2026-12-10"),
        ]
    )
    ledger.project()
    seen: set[str] = set()
    assert fire_new(ledger, seen, "dispute_update") == []

    # The status updates fall due: the customer is told, the next one is due an interval later.
    ledger.clock.advance(update_every)
    updates = fire_new(ledger, seen, "dispute_update")
    due_at = (START + update_every).isoformat()
    assert sorted((f["item_id"], f["due_at"]) for f in updates) == [
        ("DF:dp:3", due_at),
        ("DS:dp:3", due_at),
    ]
    assert ledger.history_types("DS").count("dispute_status_update") == 1
    ledger.clock.advance(refire)
    assert fire_new(ledger, seen, "dispute_update") == []

    # The first installment: not fired within its grace; paid late, it is done.
    to(ledger, datetime(2026, 12, 2, 12, 0, tzinfo=UTC))
    assert fire_new(ledger, seen, "installment_due") == []
    ledger.ingest([payment("DS-9", "DS", 4_000)])
    ledger.project()
    to(ledger, datetime(2026, 12, 1, 23, 59, 59, 999_999, tzinfo=UTC) + grace)
    assert fire_new(ledger, seen, "installment_due") == []

    # The deferral ends the day after its date: a follow-up, then done.
    to(ledger, datetime(2026, 12, 11, 0, 0, tzinfo=UTC))
    (ended,) = fire_new(ledger, seen, "deferral_end")
    assert (ended["item_id"], ended["due_at"]) == ("DF:dp:3", "2026-12-11T00:00:00+00:00")
    ledger.clock.advance(refire)
    assert fire_new(ledger, seen, "deferral_end") == []

    # The second installment unpaid past its grace: missed (a follow-up), fired once.
    to(ledger, datetime(2027, 1, 1, 23, 59, 59, 999_999, tzinfo=UTC) + grace)
    (due,) = fire_new(ledger, seen, "installment_due")
    assert (due["item_id"], due["attempt"]) == ("DS:dp:3", 2)
    assert due["due_at"] == "2027-01-01T23:59:59.999999+00:00"
    assert ledger.history_types("DS").count("dispute_installment_missed") == 1
    ledger.clock.advance(refire)
    assert fire_new(ledger, seen, "installment_due") == []
    # The books: 40.00 paid of the plan, 80.00 still owed on it, nothing held.
    ds = ledger.balance("DS")
    assert (ds["receivable"], ds["dispute_hold"], ds["cash"]) == (8_000, 0, 4_000)

    # Paid in full, late: the dispute resolves; of its items nothing is due any more.
    ledger.ingest([payment("DS-10", "DS", 8_000)])
    ledger.project()
    assert "dispute_resolved" in ledger.history_types("DS")
    ledger.clock.advance(timedelta(days=30))
    assert [f["item_id"] for f in fire_new(ledger, seen, "dispute_update")] == ["DF:dp:3"]
    periods = dormancy_periods(POLICY)
    pending = due_items(ledger.database, ledger.clock.now(), periods, limit=100)
    assert [item for item in pending if item.kind != "follow_up"] == []
    assert queries.trial_balance(ledger.database)["currencies"]["USD"]["total"] == 0
