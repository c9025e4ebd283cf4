"""Stable event names and versioned events, on SQLite and PostgreSQL.

The store records each event's stable name, not its class's module path; rows stored under the
old module paths (before the names existed) still read, snapshots included; a class that moves
or is renamed still reads every stored event and publishes the same `ce_type`; an event and a
snapshot stored in an older shape are read in the newer shape through their upcasters.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import orjson
import pytest
from eventsourcing.persistence import StoredEvent, Tracking
from eventsourcing.utils import register_topic

from ledger.clock import FixedClock
from ledger.domain import event_names
from ledger.domain.account import Account, account_uuid
from ledger.domain.policy import Policy
from ledger.ingest import InboundMessage, IngestService
from ledger.persistence.event_store import EventStore, open_event_store
from ledger.persistence.mapper import current_state
from ledger.persistence.urls import parse_database_url
from ledger.public_events import cloudevent_headers, public_event
from tests.books import invoice, opened, payment

POLICY = Policy(version="test-1")
CLOCK = FixedClock(datetime(2026, 11, 25, 12, 0, tzinfo=UTC))
NAMES = ["account_opened", "invoice_issued", "payment_received", "overpayment_detected"]


@pytest.fixture
def store(database_url: str) -> Iterator[EventStore]:
    event_store = open_event_store(parse_database_url(database_url), create_table=True)
    yield event_store
    event_store.close()


def ingest(store: EventStore, account_id: str) -> None:
    """Open, bill 500 and take 800 (an overpayment of 300): four events."""
    service = IngestService(store, policy=POLICY, clock=CLOCK)
    lines = [opened(f"{account_id}-1", account_id), invoice(f"{account_id}-2", account_id, 500)]
    lines.append(payment(f"{account_id}-3", account_id, 800))
    messages = [InboundMessage("t", 0, n, None, raw) for n, raw in enumerate(lines)]
    service.commit(service.prepare(messages), Tracking(f"t:names:{account_id}", len(lines)))


def published(store: EventStore) -> list[tuple[str, bytes, dict[str, Any]]]:
    """(type, ce_type, public JSON) of every stored event, as the relay publishes them."""
    answer = []
    for notification in store.process_recorder.select_notifications(start=0, limit=100):
        public = public_event(notification)
        headers = dict(cloudevent_headers(notification, public))
        answer.append((public["type"], headers["ce_type"], public))
    return answer


def test_the_store_records_stable_names(store: EventStore) -> None:
    ingest(store, "A")
    stored = store.process_recorder.select_notifications(start=0, limit=100)
    assert [n.topic for n in stored] == NAMES
    assert [p[1] for p in published(store)] == [f"ledger.{name}".encode() for name in NAMES]


def legacy_rows(store: EventStore, account_id: str) -> None:
    """Rewrite the account's rows as they were stored before stable names: module-path topics."""
    ingest(store, account_id)
    rows = store.process_recorder.select_events(account_uuid(account_id))
    legacy = {name: old for old, name in event_names.LEGACY_TOPICS.items()}
    old_rows = [
        StoredEvent(
            originator_id=account_uuid(f"{account_id}-old"),
            originator_version=row.originator_version,
            topic=legacy[row.topic],
            state=row.state.replace(
                f'"account_id":"{account_id}"'.encode(), f'"account_id":"{account_id}-old"'.encode()
            ),
        )
        for row in rows
    ]
    store.process_recorder.insert_events(old_rows)


def test_events_stored_under_module_paths_still_read(store: EventStore) -> None:
    legacy_rows(store, "B")
    old = store.repository.get(account_uuid("B-old"))
    new = store.repository.get(account_uuid("B"))
    assert isinstance(old, Account) and isinstance(new, Account)
    assert old.balances == new.balances and old.version == new.version == 4
    by_account: dict[str, list[tuple[str, bytes]]] = {}
    for type_name, ce_type, public in published(store):
        by_account.setdefault(public["account_id"], []).append((type_name, ce_type))
    assert by_account["B-old"] == by_account["B"]
    assert [t for t, _ in by_account["B-old"]] == NAMES


@contextmanager
def moved_and_renamed(classes: list[type[Any]]) -> Iterator[None]:
    """The classes as if moved to another module and renamed (restored afterwards)."""
    saved = [(cls, cls.__module__, cls.__qualname__) for cls in classes]
    try:
        for cls in classes:
            cls.__module__ = "ledger.somewhere.else"
            cls.__qualname__ = f"Renamed{cls.__name__}"
        yield
    finally:
        for cls, module, qualname in saved:
            cls.__module__, cls.__qualname__ = module, qualname


def test_a_moved_and_renamed_class_reads_and_publishes_the_same(store: EventStore) -> None:
    ingest(store, "C")
    legacy_rows(store, "D")
    before = published(store)
    with moved_and_renamed([Account, Account.Snapshot, *event_names.EVENT_CLASSES.values()]):
        assert published(store) == before
        account = store.repository.get(account_uuid("C"))
        assert isinstance(account, Account)
        assert account.balance("customer_credit").amount_minor == 300
        ingest(store, "E")  # new rows still get the stable names
        stored = store.process_recorder.select_notifications(start=0, limit=100)
        assert [n.topic for n in stored[-4:]] == NAMES


class Noted(Account.Event):
    """A test event that gained a field in its version 2."""

    TOPIC = "test_noted"
    class_version = 2

    note: str
    channel: str

    @staticmethod
    def upcast_v1_v2(state: dict[str, Any]) -> None:
        state["channel"] = "unknown"


register_topic(Noted.TOPIC, Noted)


def test_an_event_stored_in_an_older_shape_is_read_in_the_newer(store: EventStore) -> None:
    originator_id = account_uuid("noted")
    v1_state = {"timestamp": CLOCK.now().isoformat(), "account_id": "noted", "note": "hello"}
    store.process_recorder.insert_events(
        [StoredEvent(originator_id, 1, Noted.TOPIC, orjson.dumps(v1_state))]
    )
    v2 = Noted(
        originator_id=originator_id,
        originator_version=2,
        timestamp=CLOCK.now(),
        account_id="noted",
        note="again",
        channel="email",
    )
    stored_v2 = store.mapper.to_stored_event(v2)
    assert orjson.loads(stored_v2.state)["class_version"] == 2
    store.process_recorder.insert_events([stored_v2])

    rows = store.process_recorder.select_events(originator_id)
    events = [store.mapper.to_domain_event(row) for row in rows]
    assert [(e.note, e.channel) for e in events] == [("hello", "unknown"), ("again", "email")]
    assert [current_state(row.topic, row.state)["channel"] for row in rows] == ["unknown", "email"]


def test_a_snapshot_stored_in_the_older_shape_is_read_in_the_newer(store: EventStore) -> None:
    """Account v1 snapshots hold `open_overpayment_minor`; v2 dropped it (upcast_v1_v2)."""
    ingest(store, "S")
    account = store.repository.get(account_uuid("S"))
    assert isinstance(account, Account)
    snapshot_state = {
        key: value
        for key, value in vars(account).items()
        if key not in ("_id", "_version", "_pending_events")
    }
    snapshot_state["open_overpayment_minor"] = 300
    v1_snapshot = {
        "timestamp": CLOCK.now().isoformat(),
        "topic": "ledger.domain.account:Account",
        "state": {
            **snapshot_state,
            "_created_on": account.created_on.isoformat(),
            "_modified_on": account.modified_on.isoformat(),
        },
    }
    assert store.snapshots is not None
    store.snapshots.recorder.insert_events(
        [
            StoredEvent(
                account_uuid("S"),
                account.version,
                "eventsourcing.domain:Snapshot",
                orjson.dumps(v1_snapshot),
            )
        ]
    )

    loaded = store.repository.get(account_uuid("S"))

    assert isinstance(loaded, Account)
    assert not hasattr(loaded, "open_overpayment_minor")
    assert loaded.balances == account.balances and loaded.version == account.version
    taken = store.mapper.to_stored_event(Account.Snapshot.take(loaded))
    assert taken.topic == "account_snapshot"
    assert orjson.loads(taken.state)["state"]["class_version"] == Account.class_version


LOAD_IN_A_NEW_PROCESS = """
import sys
from ledger.domain.account import account_uuid
from ledger.persistence.event_store import open_event_store
from ledger.persistence.urls import parse_database_url
store = open_event_store(parse_database_url(sys.argv[1]))
print(store.repository.get(account_uuid("N")).version)
store.close()
"""


def test_a_new_process_loads_an_account_from_its_snapshot(
    database_url: str, store: EventStore
) -> None:
    """A restarted worker has taken no snapshot yet: the stored snapshot's name must resolve
    all the same (the library registers nested events' names, not the snapshot class's)."""
    ingest(store, "N")
    account = store.repository.get(account_uuid("N"))
    assert isinstance(account, Account)
    assert store.snapshots is not None
    store.snapshots.recorder.insert_events(
        [store.mapper.to_stored_event(Account.Snapshot.take(account))]
    )

    loaded = subprocess.run(
        [sys.executable, "-c", LOAD_IN_A_NEW_PROCESS, database_url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert loaded.returncode == 0, loaded.stderr
    assert int(loaded.stdout) == account.version == 4


def test_unknown_topics_are_named(store: EventStore) -> None:
    with pytest.raises(event_names.UnknownEventType, match="unknown event type 'ledger"):
        event_names.event_name("ledger.domain.account:Gone")
    assert event_names.event_name("payment_received") == "payment_received"
    assert isinstance(account_uuid("x"), UUID)
