"""The overpayments and follow-up read models, on SQLite and PostgreSQL: a history written
through the real account aggregate, projected live in small batches, rebuilt to the same rows,
and queried from the command line."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import orjson
import pytest

from ledger import read_models
from ledger.cli import FOLLOW_UP_COLUMNS, OVERPAYMENT_LIST_COLUMNS
from ledger.generations import live_state
from ledger.persistence.database import Database
from ledger.persistence.event_store import EventStore, open_event_store
from ledger.persistence.urls import parse_database_url
from ledger.projection import Projection
from ledger.rebuild import rebuild_aside
from ledger.tailing import run_tail
from projections import follow_up_queries, overpayment_queries
from projections.follow_ups_tables import FOLLOW_UP_HOLDS
from tests.overpayment_books import Books, write_history

LEDGER = [sys.executable, "-m", "ledger"]
PROJECTED = (read_models.OVERPAYMENTS, read_models.FOLLOW_UPS)


@pytest.fixture
def store(database_url: str) -> Iterator[EventStore]:
    read_models.prepare(parse_database_url(database_url))
    event_store = open_event_store(parse_database_url(database_url))
    yield event_store
    event_store.close()


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    connection = Database(parse_database_url(database_url))
    yield connection
    connection.close()


@pytest.fixture
def books(store: EventStore, database: Database) -> Books:
    """The history, projected by both read models in batches of a few events."""
    written = write_history(store)
    for projection in PROJECTED:
        live = read_models.live(database, projection.name)
        run_tail(store, live, threading.Event(), batch_max=5, until_caught_up=True)
    return written


def by_id(database: Database, **filters: Any) -> dict[str, dict[str, Any]]:
    answer = overpayment_queries.overpayments(database, **filters)
    return {row["overpayment_id"]: row for row in answer["overpayments"]}


def test_each_overpayment_row_follows_the_protocol(books: Books, database: Database) -> None:
    ids = books.ids
    rows = by_id(database)
    assert len(rows) == 8
    refunded = rows[ids["refunded"]]
    assert refunded["account_id"] == "A" and refunded["currency"] == "USD"
    assert (refunded["amount"], refunded["status"], refunded["open"]) == (60_000, "resolved", False)
    assert refunded["departments"] == ["accounting", "risk_management"]
    assert refunded["verifications"]["accounting"]["actor_id"] == "ann"
    assert refunded["verifications"]["accounting"]["note"] == "bank statement matches"
    assert refunded["verifications"]["risk_management"]["actor_role"] == "risk_management"
    assert refunded["resolution"] == "refund" and refunded["resolved_automatically"] is False
    assert refunded["places"] == {"refunded": 60_000}
    assert [
        (r["refund_id"], r["attempt"], r["status"], r["reason"]) for r in refunded["refunds"]
    ] == [
        (ids["refund_1"], 1, "retried", "card expired"),
        (ids["refund_2"], 2, "settled", None),
    ]
    # The refund was decided under the later policy; the settlement is no decision.
    assert refunded["policy_version"] == "test-2"
    assert refunded["detected_at"] < refunded["updated_at"]

    rejected = rows[ids["rejected"]]
    assert rejected["status"] == "rejected" and rejected["open"] is True
    assert rejected["rejection"]["department"] == "accounting"
    assert rejected["rejection"]["reason"] == "duplicate of pay-b0"
    assert rejected["places"] == {"kept": 500, "applied": 1_500}
    assert rows[ids["detected"]]["status"] == "detected" and rows[ids["detected"]]["open"]

    escrow = rows[ids["escrow"]]
    assert escrow["places"] == {"escrow": 30_000} and escrow["open"] is True
    assert escrow["escrow_expires_at"] is not None and escrow["coupon_code"] is None
    coupon = rows[ids["coupon"]]
    assert coupon["places"] == {"coupon": 1_000} and coupon["open"] is False
    assert coupon["coupon_code"].startswith("CPN-")

    failing = rows[ids["refund_failing"]]
    assert failing["places"] == {"refund_failed": 10_000} and failing["open"] is True
    assert [r["status"] for r in failing["refunds"]] == ["retried"] * 3 + ["failed"]
    assert failing["refunds"][-1]["retry_at"] is None

    absorbed = rows[ids["absorbed"]]
    assert (absorbed["resolution"], absorbed["resolved_automatically"]) == ("credit", True)
    assert absorbed["places"] == {"applied": 20_000} and absorbed["open"] is False
    assert rows[ids["not_absorbed"]]["places"] == {"next_bill": 15_000, "applied": 5_000}

    open_ones = by_id(database, open_only=True)
    assert set(open_ones) == {
        ids[name] for name in ("rejected", "detected", "escrow", "refund_failing", "not_absorbed")
    }
    assert set(by_id(database, account_id="C")) == {ids["escrow"], ids["coupon"]}
    assert set(by_id(database, open_only=True, account_id="C")) == {ids["escrow"]}


def test_show_lists_every_event_of_the_overpayment_in_order(
    books: Books, database: Database
) -> None:
    shown = overpayment_queries.overpayment(database, books.ids["refunded"])
    assert [event["type"] for event in shown["events"]] == [
        "overpayment_detected",
        "overpayment_verified",
        "overpayment_verified",
        "overpayment_resolved",
        "refund_requested",
        "refund_failed",
        "refund_requested",
        "refund_settled",
    ]
    positions = [event["position"] for event in shown["events"]]
    assert positions == sorted(positions) and shown["position"] >= positions[-1]
    versions = [event["version"] for event in shown["events"]]
    assert versions == sorted(versions)
    requested = shown["events"][4]
    assert requested["data"]["overpayment_id"] == books.ids["refunded"]
    assert requested["postings"] == [
        {
            "debit": "customer_credit",
            "credit": "refund_clearing",
            "amount": 60_000,
            "currency": "USD",
        }
    ]
    # Credit applied to an invoice belongs to the overpayment whose money it moves.
    rejected = overpayment_queries.overpayment(database, books.ids["rejected"])
    assert [event["type"] for event in rejected["events"]] == [
        "overpayment_detected",
        "overpayment_rejected",
        "credit_applied",
    ]


def test_the_follow_up_queue_holds_open_items_oldest_due_first(
    books: Books, database: Database
) -> None:
    ids = books.ids
    queue = follow_up_queries.follow_ups(database)["follow_ups"]
    assert [item["follow_up_id"] for item in queue] == [ids["escalated"], ids["waiting"]]
    escalated, waiting = queue
    assert escalated["reason"] == "refund_retries_exhausted"
    assert escalated["subject_id"].startswith("D:rf:")
    assert (escalated["contacts"], escalated["escalated"], escalated["owner"]) == (
        3,
        True,
        "supervisor",
    )
    assert (escalated["owed_account"], escalated["owed"], escalated["currency"]) == (
        "customer_credit",
        10_000,
        "USD",
    )
    assert escalated["status"] == "open" and escalated["closed_at"] is None
    assert (
        waiting["reason"] == "credit_not_absorbed" and waiting["subject_id"] == ids["not_absorbed"]
    )
    assert (waiting["owed_account"], waiting["owed"], waiting["contacts"]) == (
        "customer_credit",
        15_000,
        0,
    )
    assert waiting["owner"] == "operations" and waiting["escalated"] is False

    between = datetime.fromisoformat(escalated["due_at"]) + timedelta(seconds=1)
    due = follow_up_queries.follow_ups(database, due_by=between)["follow_ups"]
    assert [item["follow_up_id"] for item in due] == [ids["escalated"]]
    before = datetime.fromisoformat(escalated["due_at"]) - timedelta(seconds=1)
    assert follow_up_queries.follow_ups(database, due_by=before)["follow_ups"] == []
    mine = follow_up_queries.follow_ups(database, owner="operations")["follow_ups"]
    assert [item["follow_up_id"] for item in mine] == [ids["waiting"]]


def table_rows(database: Database, projection: Projection) -> dict[str, list[Any]]:
    with database.read() as cursor:
        live = live_state(cursor, projection.name)
        rows = {}
        for table in projection.tables:
            cursor.execute(f"SELECT * FROM {live.generation.table(table)} ORDER BY 1, 2")
            rows[table] = [tuple(row) for row in cursor.fetchall()]
        return rows


def test_a_rebuild_gives_the_same_rows(books: Books, store: EventStore, database: Database) -> None:
    for projection in PROJECTED:
        before = table_rows(database, projection)
        # This history has no disputes: nothing is held for one.
        assert all(rows for table, rows in before.items() if table != FOLLOW_UP_HOLDS), before
        rebuilt = rebuild_aside(database, store, projection, batch_max=7)
        assert (rebuilt.generation, rebuilt.replaced) == (2, 1)
        assert table_rows(database, projection) == before


def run_cli(args: list[str], database_url: str) -> subprocess.CompletedProcess[bytes]:
    # Wide enough that no table folds a column's name.
    env = dict(os.environ, LEDGER_DATABASE_URL=database_url, LEDGER_LOG_FORMAT="json")
    env["COLUMNS"] = "400"
    done = subprocess.run([*LEDGER, *args], env=env, capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr.decode()
    return done


def test_the_cli_prints_json_whose_names_are_the_table_words(
    books: Books, database_url: str, database: Database
) -> None:
    ids = books.ids
    listed = orjson.loads(run_cli(["overpayments", "--open", "--json"], database_url).stdout)
    assert listed == orjson.loads(
        orjson.dumps(overpayment_queries.overpayments(database, open_only=True))
    )
    table = run_cli(["overpayments", "--account", "A"], database_url).stdout.decode()
    for word in OVERPAYMENT_LIST_COLUMNS:
        assert word in table and all(word in row for row in listed["overpayments"])
    assert "USD 600.00" in table and ids["refunded"] in table and ids["escrow"] not in table

    shown = orjson.loads(
        run_cli(["overpayments", "show", ids["refunded"], "--json"], database_url).stdout
    )
    assert shown["overpayment_id"] == ids["refunded"] and len(shown["events"]) == 8
    assert {"version", "type", "occurred_at", "position", "data", "postings"} == set(
        shown["events"][0]
    )
    shown_table = run_cli(["overpayments", "show", ids["refunded"]], database_url).stdout.decode()
    for word in shown:
        assert word in shown_table
    assert "refund_settled" in shown_table and "USD 600.00" in shown_table

    queue = orjson.loads(run_cli(["follow-ups", "--json"], database_url).stdout)
    assert [item["follow_up_id"] for item in queue["follow_ups"]] == [
        ids["escalated"],
        ids["waiting"],
    ]
    queue_table = run_cli(["follow-ups"], database_url).stdout.decode()
    for word in FOLLOW_UP_COLUMNS:
        assert word in queue_table and all(word in item for item in queue["follow_ups"])
    assert "USD 100.00" in queue_table and "USD 150.00" in queue_table
    first_due = queue["follow_ups"][0]["due_at"]
    due = orjson.loads(
        run_cli(["follow-ups", "--due", "--at", first_due, "--json"], database_url).stdout
    )
    assert [item["follow_up_id"] for item in due["follow_ups"]] == [ids["escalated"]]
    owned = orjson.loads(
        run_cli(["follow-ups", "--owner", "supervisor", "--json"], database_url).stdout
    )
    assert [item["follow_up_id"] for item in owned["follow_ups"]] == [ids["escalated"]]
    assert due["position"] == owned["position"] == queue["position"] > 0


def test_an_unknown_overpayment_is_refused(books: Books, database_url: str) -> None:
    env = dict(os.environ, LEDGER_DATABASE_URL=database_url, LEDGER_LOG_FORMAT="json")
    done = subprocess.run(
        [*LEDGER, "overpayments", "show", "A:op:999", "--json"],
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2 and not done.stdout
    assert "unknown overpayment 'A:op:999'" in done.stderr.decode()
