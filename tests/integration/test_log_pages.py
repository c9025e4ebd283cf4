"""The log's pages as the relays and the projections read them (`select_notifications`), on
SQLite and PostgreSQL: the recorders' own reading gives what the library's gives, field for field.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from uuid import UUID

import pytest
from eventsourcing.persistence import Notification, Tracking
from eventsourcing.postgres import PostgresProcessRecorder
from eventsourcing.sqlite import SQLiteProcessRecorder

from ledger.clock import FixedClock
from ledger.domain.account import account_uuid
from ledger.domain.policy import Policy
from ledger.ingest import InboundMessage, IngestService
from ledger.persistence.database import Database
from ledger.persistence.event_store import EventStore, open_event_store
from ledger.persistence.urls import parse_database_url
from tests.books import invoice, opened, payment

POLICY = Policy(version="test-1")
CLOCK = FixedClock(datetime(2026, 11, 30, 12, 0, tzinfo=UTC))


@pytest.fixture
def store(database_url: str) -> Iterator[EventStore]:
    event_store = open_event_store(parse_database_url(database_url), create_table=True)
    service = IngestService(event_store, policy=POLICY, clock=CLOCK)
    lines = []
    for account in ("ACC-P1", "ACC-P2", "ACC-P3"):
        lines += [opened(f"{account}-1", account), invoice(f"{account}-2", account, 500)]
        lines.append(payment(f"{account}-3", account, 800))  # and its overpayment
    messages = [InboundMessage("t", 0, n, None, raw) for n, raw in enumerate(lines)]
    service.commit(service.prepare(messages), Tracking("t:pages", len(lines)))
    yield event_store
    event_store.close()


def library_page(
    store: EventStore, start: int, limit: int, *, inclusive_of_start: bool
) -> list[Notification]:
    recorder = store.process_recorder
    library = (
        SQLiteProcessRecorder
        if isinstance(recorder, SQLiteProcessRecorder)
        else PostgresProcessRecorder
    )
    page = library.select_notifications(
        recorder,  # type: ignore[arg-type]
        start,
        limit,
        inclusive_of_start=inclusive_of_start,
    )
    return list(page)


@pytest.mark.parametrize("inclusive_of_start", [True, False])
@pytest.mark.parametrize(("start", "limit"), [(0, 100), (1, 5), (4, 3), (12, 10), (13, 10)])
def test_a_page_is_the_librarys_page(
    store: EventStore, start: int, limit: int, inclusive_of_start: bool
) -> None:
    page = store.process_recorder.select_notifications(
        start, limit, inclusive_of_start=inclusive_of_start
    )

    expected = library_page(store, start, limit, inclusive_of_start=inclusive_of_start)
    assert list(page) == expected
    for ours, theirs in zip(page, expected, strict=True):
        assert vars(ours) == vars(theirs)
        assert type(ours) is Notification
        assert type(ours.originator_id) is UUID and type(ours.state) is bytes


def test_the_whole_log_in_order_with_the_accounts_ids(store: EventStore) -> None:
    page = store.process_recorder.select_notifications(0, 100, inclusive_of_start=False)

    assert [n.id for n in page] == list(range(1, 13))
    ids = {n.originator_id for n in page}
    assert ids == {account_uuid(account) for account in ("ACC-P1", "ACC-P2", "ACC-P3")}
    # The same id read twice is the same value, and a page with a stop or topics still reads.
    assert store.process_recorder.select_notifications(1, 3, stop=2)[-1].id == 2
    opened_only = store.process_recorder.select_notifications(1, 100, topics=[page[0].topic])
    assert [n.id for n in opened_only] == [n.id for n in page if n.topic == page[0].topic]


def test_no_plan_made_on_a_young_log_is_kept_for_the_grown_one(postgres_url: str) -> None:
    """PostgreSQL keeps a generic plan for a prepared statement (psycopg prepares one run five
    times; the library prepares the log's page query at once); made while the log was empty it
    is a sequential scan, kept after the log has grown. Every connection of the ledger, the
    event store's pool and the read models' sessions, plans each run for its parameters."""
    target = parse_database_url(postgres_url)
    event_store = open_event_store(target, create_table=True)
    try:
        recorder = event_store.process_recorder
        for _ in range(8):  # more than psycopg's threshold for preparing a statement
            recorder.select_notifications(0, 100, inclusive_of_start=False)
            recorder.select_inbound_keys(["k"])  # type: ignore[attr-defined]
            recorder.select_existing_originators([account_uuid("ACC-X")])  # type: ignore[attr-defined]
        with recorder.datastore.get_connection() as conn:  # type: ignore[attr-defined]
            mode = conn.execute("SHOW plan_cache_mode").fetchone()
            prepared = conn.execute(
                "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements"
            ).fetchall()
        assert mode is not None and mode["plan_cache_mode"] == "force_custom_plan"
        assert any("ledger_events" in str(row["statement"]) for row in prepared)
        assert [row for row in prepared if row["generic_plans"]] == []
    finally:
        event_store.close()
    database = Database(target)
    try:
        with database.read() as cursor:
            cursor.execute("SHOW plan_cache_mode")
            assert cursor.fetchone()[0] == "force_custom_plan"
    finally:
        database.close()
