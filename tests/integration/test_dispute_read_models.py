"""The disputes read model and the dispute items of the follow-up queue, on SQLite and
PostgreSQL: a history written through the real account aggregate, projected live in small
batches, rebuilt to the same rows, and queried from the command line."""

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
from ledger.cli import DISPUTE_LIST_COLUMNS, DISPUTE_REPORT_COLUMNS, FOLLOW_UP_COLUMNS
from ledger.domain.dispute_events import PERSONAL_FIELDS
from ledger.generations import live_state
from ledger.persistence.database import Database
from ledger.persistence.event_store import EventStore, open_event_store
from ledger.persistence.urls import parse_database_url
from ledger.projection import Generation, Projection
from ledger.public_events import public_event
from ledger.rebuild import rebuild_aside
from ledger.tailing import run_tail
from projections import dispute_queries, follow_up_queries, queries
from projections.follow_ups_tables import FOLLOW_UP_HOLDS
from projections.queries import NotFound
from tests.dispute_books import SECRET_WORDS, DisputeBooks, write_history

LEDGER = [sys.executable, "-m", "ledger"]
PROJECTED = (read_models.DISPUTES, read_models.FOLLOW_UPS, read_models.BALANCES)
DAY_S = 86_400


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
def books(store: EventStore, database: Database) -> DisputeBooks:
    """The history, projected in batches of a few events."""
    written = write_history(store)
    for projection in PROJECTED:
        live = read_models.live(database, projection.name)
        run_tail(store, live, threading.Event(), batch_max=5, until_caught_up=True)
    return written


def by_id(database: Database, **filters: Any) -> dict[str, dict[str, Any]]:
    answer = dispute_queries.disputes(database, **filters)
    return {row["dispute_id"]: row for row in answer["disputes"]}


def iso(moment: datetime) -> str:
    return moment.isoformat()


def test_each_dispute_row_tells_where_it_stands(books: DisputeBooks, database: Database) -> None:
    ids, at = books.ids, books.at
    rows = by_id(database)
    assert list(rows) == [ids[name] for name in ("plan", "adjusted", "escalated")] + [
        ids["chargeback_won"],
        ids["chargeback_lost"],
    ]
    plan = rows[ids["plan"]]
    assert {k: plan[k] for k in ("account_id", "kind", "channel", "reason", "invoice_id")} == {
        "account_id": "P",
        "kind": "billing",
        "channel": "phone",
        "reason": "double charge",
        "invoice_id": "inv-P",
    }
    assert (plan["amount"], plan["held"], plan["currency"]) == (12_000, 0, "USD")
    assert (plan["status"], plan["open"], plan["outcome"]) == ("resolved", False, "plan_completed")
    assert plan["rep"] == "cid"
    assert plan["reps"] == [
        {"rep": rep, "from": iso(at[f"plan_to_{rep}"]), "by": "sue"}
        for rep in ("ann", "bob", "cid")
    ]
    assert plan["opened_at"] == iso(at["plan_opened"])
    assert plan["first_response_due"] == iso(at["plan_opened"] + timedelta(hours=4))
    assert plan["first_response_at"] == plan["last_contact_at"] == iso(at["plan_out"])
    assert plan["update_due"] == iso(at["plan_out"] + timedelta(days=3))
    assert plan["resolution_due"] == iso(at["plan_opened"] + timedelta(days=30))
    assert plan["resolved_at"] == iso(at["plan_resolved"]) and plan["contacts"] == 2
    assert plan["plan"] == [
        {"due": "2026-12-01", "amount": 4_000, "paid": 4_000, "status": "paid"},
        {"due": "2027-01-01", "amount": 8_000, "paid": 8_000, "status": "late"},
    ]
    assert (plan["feedback_score"], plan["next_step"]) == (4, None)
    assert [(f["reason"], f["owner"], f["status"]) for f in plan["follow_ups"]] == [
        ("dispute_first_response", "agent", "closed"),
        ("dispute_promise", "cid", "closed"),
        ("dispute_installment_missed", "cid", "closed"),
    ]

    adjusted = rows[ids["adjusted"]]
    assert (adjusted["amount"], adjusted["held"], adjusted["adjusted"]) == (30_000, 20_000, 10_000)
    assert (adjusted["status"], adjusted["open"], adjusted["rep"]) == ("open", True, "ann")
    # The supervisor's adjustment took the escalation.
    assert (adjusted["escalated_to"], adjusted["escalated_at"]) == (None, None)
    assert adjusted["next_step"] == f"first response due {adjusted['first_response_due']}"

    escalated = rows[ids["escalated"]]
    assert (escalated["rep"], escalated["reps"], escalated["held"]) == (None, [], 2_500)
    assert escalated["escalated_to"] == "manager"
    assert escalated["escalated_at"] == iso(at["escalated_escalated"])
    assert escalated["next_step"] == "escalated to manager"

    won, lost = rows[ids["chargeback_won"]], rows[ids["chargeback_lost"]]
    assert (won["kind"], won["channel"], won["external_id"]) == (
        "chargeback",
        "chargeback",
        "dp_won",
    )
    assert won["respond_by"] == iso(at["chargeback_won_opened"] + timedelta(days=7))
    assert (won["outcome"], won["held"], won["feedback_score"]) == ("won", 0, 5)
    assert (lost["outcome"], lost["payment_id"], lost["feedback_score"]) == ("lost", "pay-L", 2)
    assert all(row["policy_version"] == "test-1" for row in rows.values())


def test_filters_and_each_representatives_open_load(
    books: DisputeBooks, database: Database
) -> None:
    ids = books.ids
    assert set(by_id(database, open_only=True)) == {ids["adjusted"], ids["escalated"]}
    assert set(by_id(database, rep="ann")) == {
        ids["adjusted"],
        ids["chargeback_won"],
        ids["chargeback_lost"],
    }
    assert set(by_id(database, open_only=True, rep="ann")) == {ids["adjusted"]}
    assert set(by_id(database, account_id="L")) == {ids["chargeback_lost"]}
    load = [{"rep": "ann", "open": 1}, {"rep": None, "open": 1}]
    assert dispute_queries.disputes(database)["load"] == load
    assert dispute_queries.representative_load(database)["load"] == load
    # The staff verbs look a dispute up by our id or the processor's.
    assert dispute_queries.dispute(database, "dp_lost")["dispute_id"] == ids["chargeback_lost"]
    with pytest.raises(NotFound, match="unknown dispute 'L:dp:999'"):
        dispute_queries.dispute(database, "L:dp:999")


def test_show_tells_the_whole_story_with_the_customers_words(
    books: DisputeBooks, database: Database
) -> None:
    shown = dispute_queries.dispute(database, books.ids["plan"])
    assert [event["type"] for event in shown["events"]] == [
        "dispute_opened",
        "follow_up_raised",
        *["dispute_assigned"] * 3,
        "dispute_contact_logged",
        "dispute_contact_logged",
        "follow_up_raised",
        "follow_up_closed",
        "dispute_plan_agreed",
        "dispute_installments_paid",
        "dispute_installment_missed",
        "follow_up_raised",
        "dispute_installments_paid",
        "dispute_resolved",
        "follow_up_closed",
        "follow_up_closed",
        "dispute_feedback_recorded",
    ]
    positions = [event["position"] for event in shown["events"]]
    assert positions == sorted(positions) and shown["position"] >= positions[-1]
    heard, answered = shown["events"][5:7]
    assert heard["data_with_personal"]["summary"] == f"Customer: {SECRET_WORDS[0]}"
    assert answered["data_with_personal"]["direction"] == "out"
    assert answered["data_with_personal"]["promise"] == SECRET_WORDS[1]
    assert answered["data_with_personal"]["promise_by"] == "2026-11-27"
    assert shown["events"][0]["postings"] == [
        {"debit": "dispute_hold", "credit": "receivable", "amount": 12_000, "currency": "USD"}
    ]
    assert shown["events"][9]["postings"] == [
        {"debit": "receivable", "credit": "dispute_hold", "amount": 12_000, "currency": "USD"}
    ]
    lost = dispute_queries.dispute(database, books.ids["chargeback_lost"])
    assert [event["postings"] for event in lost["events"] if event["postings"]] == [
        [{"debit": "dispute_hold", "credit": "cash", "amount": 5_000, "currency": "USD"}],
        [{"debit": "losses", "credit": "dispute_hold", "amount": 5_000, "currency": "USD"}],
    ]
    assert lost["events"][-1]["data_with_personal"]["comment"] == f"I {SECRET_WORDS[2]}"


def test_the_customers_words_are_never_published(
    books: DisputeBooks, store: EventStore, database: Database
) -> None:
    stored = store.process_recorder.select_notifications(0, 10_000)
    published = orjson.dumps([public_event(notification) for notification in stored]).decode()
    history = orjson.dumps(
        [queries.history(database, account, limit=1_000) for account in "PQRCL"]
    ).decode()
    for text in (published, history):
        assert "dispute_contact_logged" in text and "dispute_feedback_recorded" in text
        assert not any(words in text for words in SECRET_WORDS)
        assert not any(f'"{field}"' in text for field in PERSONAL_FIELDS)


def test_the_feedback_report_is_exact(books: DisputeBooks, database: Database) -> None:
    at = books.at
    report = dispute_queries.feedback_report(database)
    plan_response_s = 2 * 3600 + 5 * 60  # 12:02 to 14:07
    plan_resolution_s = 41 * DAY_S + 20 * 3600 + 58 * 60  # 2026-11-25 12:02 to 2027-01-06 09:00
    chargeback_response_s = 3 * 3600 + 2 * 60
    chargeback_resolution_s = 2 * DAY_S + 3 * 3600 + 3 * 60
    assert (at["plan_out"] - at["plan_opened"]).total_seconds() == plan_response_s
    assert (at["plan_resolved"] - at["plan_opened"]).total_seconds() == plan_resolution_s

    def summary(count: int, mean: float, response: float, resolution: float, within: float) -> Any:
        return {
            "count": count,
            "scored": count,
            "mean_score": mean,
            "median_first_response_s": response,
            "median_resolution_s": resolution,
            "within_sla": within,
        }

    chargebacks = summary(2, 3.5, chargeback_response_s, chargeback_resolution_s, 1.0)
    plan = summary(1, 4.0, plan_response_s, plan_resolution_s, 0.0)
    one_chargeback = summary(1, 0.0, chargeback_response_s, chargeback_resolution_s, 1.0)
    assert report["total"] == summary(
        3, round(11 / 3, 2), chargeback_response_s, chargeback_resolution_s, 0.6667
    )
    assert report["by_channel"] == [
        {"channel": "chargeback", **chargebacks},
        {"channel": "phone", **plan},
    ]
    assert report["by_rep"] == [{"rep": "ann", **chargebacks}, {"rep": "cid", **plan}]
    assert report["by_reason"] == [
        {"reason": "double charge", **plan},
        {"reason": "fraudulent", **one_chargeback, "mean_score": 5.0},
        {"reason": "product not received", **one_chargeback, "mean_score": 2.0},
    ]
    assert report["by_outcome"] == [
        {"outcome": "lost", **one_chargeback, "mean_score": 2.0},
        {"outcome": "plan_completed", **plan},
        {"outcome": "won", **one_chargeback, "mean_score": 5.0},
    ]
    assert (report["since"], report["truncated"]) == (None, False)
    since = dispute_queries.feedback_report(database, since=at["chargeback_won_resolved"])
    assert since["total"]["count"] == 2 and since["since"] == iso(at["chargeback_won_resolved"])
    assert dispute_queries.feedback_report(database, since=books.now)["total"] == {
        "count": 0,
        "scored": 0,
        "mean_score": None,
        "median_first_response_s": None,
        "median_resolution_s": None,
        "within_sla": None,
    }


def test_dispute_items_in_the_follow_up_queue_say_what_is_owed_and_their_age(
    books: DisputeBooks, database: Database
) -> None:
    ids, at = books.ids, books.at
    now = at["escalated_escalated"] + timedelta(hours=2)
    queue = follow_up_queries.follow_ups(database, at=now)["follow_ups"]
    assert [(item["reason"], item["subject_id"]) for item in queue] == [
        ("dispute_escalated", ids["escalated"]),
        ("dispute_first_response", ids["escalated"]),
        ("dispute_first_response", ids["adjusted"]),
    ]
    escalation, chat, email = queue
    assert escalation["follow_up_id"] == ids["escalation_follow_up"]
    assert (escalation["owner"], escalation["overdue"], escalation["age_s"]) == (
        "manager",
        True,
        2 * 3600,
    )
    assert escalation["raised_at"] == iso(at["escalated_escalated"])
    assert (escalation["owed_account"], escalation["owed"], escalation["currency"]) == (
        "dispute_hold",
        2_500,
        "USD",
    )
    assert chat["overdue"] is True and chat["due_at"] == iso(
        at["escalated_opened"] + timedelta(hours=1)
    )
    # What the dispute holds now: the supervisor's adjustment shows at once.
    assert (email["owed_account"], email["owed"], email["overdue"]) == (
        "dispute_hold",
        20_000,
        False,
    )
    assert email["age_s"] == (now - at["adjusted_opened"]).total_seconds()
    mine = follow_up_queries.follow_ups(database, owner="manager", at=now)["follow_ups"]
    assert [item["follow_up_id"] for item in mine] == [ids["escalation_follow_up"]]


def table_rows(database: Database, projection: Projection) -> dict[str, list[Any]]:
    with database.read() as cursor:
        live = live_state(cursor, projection.name)
        rows = {}
        for table in projection.tables:
            cursor.execute(f"SELECT * FROM {live.generation.table(table)} ORDER BY 1, 2")
            rows[table] = [tuple(row) for row in cursor.fetchall()]
        return rows


def test_a_rebuild_gives_the_same_rows(
    books: DisputeBooks, store: EventStore, database: Database
) -> None:
    for projection in (read_models.DISPUTES, read_models.FOLLOW_UPS):
        before = table_rows(database, projection)
        assert all(before.values()), projection.name
        rebuilt = rebuild_aside(database, store, projection, batch_max=3)
        assert (rebuilt.generation, rebuilt.replaced) == (2, 1)
        assert table_rows(database, projection) == before


def run_cli(args: list[str], database_url: str) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ, LEDGER_DATABASE_URL=database_url, LEDGER_LOG_FORMAT="json")
    env["COLUMNS"] = "500"  # wide enough that no table folds a column's name
    return subprocess.run([*LEDGER, *args], env=env, capture_output=True, timeout=120, check=False)


def answered(args: list[str], database_url: str) -> str:
    done = run_cli(args, database_url)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


def test_the_cli_prints_json_whose_names_are_the_table_words(
    books: DisputeBooks, database_url: str, database: Database
) -> None:
    ids = books.ids
    listed = orjson.loads(answered(["disputes", "--open", "--json"], database_url))
    assert listed == orjson.loads(orjson.dumps(dispute_queries.disputes(database, open_only=True)))
    table = answered(["disputes", "--rep", "ann"], database_url)
    for word in DISPUTE_LIST_COLUMNS:
        assert word in table and all(word in row for row in listed["disputes"])
    assert "USD 300.00" in table and "USD 200.00" in table and ids["escalated"] not in table
    assert "load (open per rep): ann 1, unassigned 1" in table

    shown = orjson.loads(answered(["disputes", "show", ids["plan"], "--json"], database_url))
    assert shown["dispute_id"] == ids["plan"] and len(shown["events"]) == 18
    assert set(shown["events"][0]) == {
        "version",
        "type",
        "occurred_at",
        "position",
        "data_with_personal",
        "postings",
    }
    story = answered(["disputes", "show", ids["plan"]], database_url)
    for word in (*shown, *shown["events"][0]):
        assert word in story
    assert f"in by phone, bob (agent): Customer: {SECRET_WORDS[0]}" in story
    assert f"promised {SECRET_WORDS[1]} by 2026-11-27" in story
    assert "dispute_hold / receivable USD 120.00" in story and "score 4: Slow but fair" in story
    assert "installment 2 missed" in story and "pay-p2 paid installment 2 USD 80.00 late" in story

    report = orjson.loads(answered(["disputes", "feedback-report", "--json"], database_url))
    assert report == orjson.loads(orjson.dumps(dispute_queries.feedback_report(database)))
    report_table = answered(["disputes", "feedback-report"], database_url)
    for word in ("total", "by_reason", "by_channel", "by_rep", "by_outcome"):
        assert word in report and word in report_table
    for word in DISPUTE_REPORT_COLUMNS:
        assert word in report_table and word in report["total"]
    since = orjson.loads(
        answered(["disputes", "feedback-report", "--since", "2027-01-09", "--json"], database_url)
    )
    assert since["total"]["count"] == 1 and since["since"] == "2027-01-09T00:00:00+00:00"

    queue = orjson.loads(answered(["follow-ups", "--json"], database_url))
    queue_table = answered(["follow-ups"], database_url)
    for word in FOLLOW_UP_COLUMNS:
        assert word in queue_table and all(word in item for item in queue["follow_ups"])
    assert "dispute_hold" in queue_table and "USD 25.00" in queue_table

    unknown = run_cli(["disputes", "show", "L:dp:999", "--json"], database_url)
    assert unknown.returncode == 2 and not unknown.stdout
    assert "unknown dispute 'L:dp:999'" in unknown.stderr.decode()


def test_no_read_model_yet_means_no_disputes(database_url: str) -> None:
    target = parse_database_url(database_url)
    database = Database(target)
    try:
        assert dispute_queries.disputes(database) == {"position": 0, "disputes": [], "load": []}
        assert dispute_queries.feedback_report(database)["total"]["count"] == 0
        with pytest.raises(NotFound, match="no read model yet"):
            dispute_queries.dispute(database, "A:dp:1")
    finally:
        database.close()


def test_preparing_again_adds_a_table_the_live_generation_lacks(database_url: str) -> None:
    target = parse_database_url(database_url)
    read_models.prepare(target)
    database = Database(target)
    try:
        holds = Generation(1).table(FOLLOW_UP_HOLDS)
        with database.transaction() as cursor:
            cursor.execute(f"DROP TABLE {holds}")  # as a store prepared before disputes left it
        read_models.prepare(target)
        with database.read() as cursor:
            cursor.execute(f"SELECT COUNT(*) FROM {holds}")
            assert cursor.fetchone()[0] == 0
    finally:
        database.close()


def test_a_deferral_a_status_update_and_a_refund_in_the_customers_favour(
    books: DisputeBooks, store: EventStore, database: Database
) -> None:
    from datetime import date

    from tests.dispute_books import ANN, POLICY, SUE

    account = books.open("D", 6_000)
    books.pay(account, "pay-D", 2_000)
    deferred = account.open_dispute(
        channel="social",
        reason="price rise",
        amount_minor=6_000,
        invoice_id="inv-D",
        payment_id="pay-D",
        actor=ANN,
        policy=POLICY,
        now=books.now,
    )
    books.save(account)
    account.defer_dispute(
        dispute_id=deferred, until=date(2027, 2, 1), actor=ANN, policy=POLICY, now=books.now
    )
    books.save(account)
    due_at = account.disputes[deferred]["update_due"]
    books.now = datetime.fromisoformat(due_at)
    account.status_update_due(dispute_id=deferred, due_at=due_at, policy=POLICY, now=books.now)
    books.save(account)
    live = read_models.live(database, read_models.DISPUTES.name)
    run_tail(store, live, threading.Event(), batch_max=2, until_caught_up=True)
    row = dispute_queries.dispute(database, deferred)
    assert (row["status"], row["deferred_until"], row["held"]) == ("deferred", "2027-02-01", 4_000)
    assert row["next_step"] == "deferred until 2027-02-01"
    assert row["update_due"] == iso(books.now - timedelta(minutes=1) + timedelta(days=3))

    account.resolve_dispute(
        dispute_id=deferred,
        outcome="customer_favour",
        settlement="refund",
        actor=SUE,
        policy=POLICY,
        now=books.now,
    )
    books.save(account)
    run_tail(store, live, threading.Event(), batch_max=2, until_caught_up=True)
    row = dispute_queries.dispute(database, deferred)
    assert (row["status"], row["outcome"], row["settlement"], row["held"]) == (
        "resolved",
        "customer_favour",
        "refund",
        0,
    )
    assert row["next_step"] == "feedback awaited"
    types = [event["type"] for event in row["events"]]
    at = types.index("dispute_resolved")
    assert types[at + 1] == "refund_requested"
    resolved, refund = row["events"][at : at + 2]
    assert resolved["postings"] == [
        {"debit": "losses", "credit": "dispute_hold", "amount": 4_000, "currency": "USD"},
        {"debit": "losses", "credit": "refund_clearing", "amount": 2_000, "currency": "USD"},
    ]
    assert refund["data_with_personal"]["amount_minor"] == 2_000
