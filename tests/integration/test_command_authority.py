"""Authority through the command service on a real SQLite store: a command above its actor's
limit is refused, recorded on the account and as its outcome, and moves nothing."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from eventsourcing.application import project_aggregate

from ledger.clock import FixedClock
from ledger.commands import CommandService
from ledger.domain.account import Account, account_uuid
from ledger.ingest import IngestService
from ledger.persistence.database import Database
from ledger.persistence.event_store import EventStore, open_event_store
from ledger.persistence.outcomes import read_outcome
from ledger.persistence.urls import parse_database_url
from ledger.policy_file import load_policy
from tests.books import opened, payment
from tests.commands import Feeder, command

POLICY = load_policy()
NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
ACCOUNTING = ("ann", "accounting")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


@pytest.fixture
def store(sqlite_url: str) -> Iterator[EventStore]:
    event_store = open_event_store(parse_database_url(sqlite_url), create_table=True)
    yield event_store
    event_store.close()


def stored_account(store: EventStore) -> Account:
    account = project_aggregate(None, store.events.get(account_uuid("A")))
    assert isinstance(account, Account)
    return account


@pytest.mark.parametrize(
    ("command_type", "role", "fields"),
    [
        ("overpayment.resolve", "agent", {"resolution": "refund"}),
        ("overpayment.resolve", "risk_management", {"resolution": "escrow"}),
        ("escrow.release", "operations", {"to": "refund"}),
    ],
)
def test_refused_command_is_recorded_and_moves_nothing(
    sqlite_url: str, store: EventStore, command_type: str, role: str, fields: dict[str, str]
) -> None:
    clock = FixedClock(NOW)
    ingest = IngestService(store, policy=POLICY, clock=clock)
    feed = Feeder(ingest, CommandService(ingest))
    feed.facts(opened("e1", "A", kind="utility"), payment("e2", "A", 20_001))
    op = "A:op:3"
    feed.commands_(
        command(
            "overpayment.verify", "A", ACCOUNTING, NOW, overpayment_id=op, department="accounting"
        )
    )
    if command_type == "escrow.release":
        feed.commands_(
            command(
                "overpayment.resolve",
                "A",
                ("sam", "supervisor"),
                NOW,
                overpayment_id=op,
                resolution="escrow",
            )
        )
    before = stored_account(store)
    command_id = "5f0c6a52-3c9b-4a43-8d1e-0c2f6b1d9e77"
    batch = feed.commands_(
        command(
            command_type,
            "A",
            (f"staff-{role}", role),
            NOW,
            command_id=command_id,
            overpayment_id=op,
            **fields,
        )
    )
    assert not batch.dead_letters  # its caller waits for the outcome instead
    after = stored_account(store)
    # One event more: the refusal, naming who asked, what and why; nothing else moved.
    assert after.version == before.version + 1
    assert after.balances == before.balances
    assert after.overpayments == before.overpayments
    assert after.refunds == before.refunds == {}
    (refusal,) = store.events.get(account_uuid("A"), gt=before.version)
    assert type(refusal).__name__ == "CommandRefused"
    assert (refusal.command_id, refusal.command_type) == (command_id, command_type)  # type: ignore[attr-defined]
    assert (refusal.actor_role, refusal.error_kind) == (role, "unauthorized")  # type: ignore[attr-defined]
    assert "20001 minor units" in refusal.reason  # type: ignore[attr-defined]
    database = Database(parse_database_url(sqlite_url))
    try:
        with database.read() as cursor:
            outcome = read_outcome(cursor, "A", command_id)
    finally:
        database.close()
    assert outcome is not None
    assert (outcome.status, outcome.error_kind, outcome.versions) == ("refused", "unauthorized", ())
    assert outcome.reason is not None and "needs" in outcome.reason
    assert "manager" in outcome.reason.split("needs", 1)[1]


def test_command_at_the_limit_is_accepted(sqlite_url: str, store: EventStore) -> None:
    clock = FixedClock(NOW)
    ingest = IngestService(store, policy=POLICY, clock=clock)
    feed = Feeder(ingest, CommandService(ingest))
    feed.facts(opened("e1", "A", kind="utility"), payment("e2", "A", 20_000))
    feed.commands_(
        command(
            "overpayment.verify",
            "A",
            ACCOUNTING,
            NOW,
            overpayment_id="A:op:3",
            department="accounting",
        )
    )
    command_id = "0d6f0c4e-1f4a-4b59-93c3-5c2a7a8e1b10"
    batch = feed.commands_(
        command(
            "overpayment.resolve",
            "A",
            ("al", "agent"),
            NOW,
            command_id=command_id,
            overpayment_id="A:op:3",
            resolution="refund",
        )
    )
    (outcome,) = batch.outcomes
    assert (outcome.status, outcome.error_kind) == ("accepted", None)
    account = stored_account(store)
    assert list(outcome.versions) == [account.version - 1, account.version]
    assert {name: raw for name, raw in account.balances.items() if raw} == {
        "cash": 20_000,
        "refund_clearing": -20_000,
    }
