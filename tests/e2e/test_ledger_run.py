"""`ledger run` end to end over a real broker, on SQLite and PostgreSQL."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import orjson
import psutil
import pytest

from ledger import read_models
from ledger.kafka.broker import EmbeddedBroker
from tests.books import expected_balances, invoice, opened, payment
from tests.e2e.harness import (
    key_of,
    ledger_env,
    natural,
    publish,
    read_balances,
    read_topic,
    run_cli,
    running_ledger,
    start_ledger_run,
    stop_ledger_run,
    trial_balance,
)
from tests.faults.harness import max_notification_id, positions, store_events
from tests.processes import gone
from tests.waiting import wait_for


def history_lines(accounts: int, events: int, seed: int) -> list[bytes]:
    """A known history: every account opened, then invoices and payments at random."""
    rng = random.Random(seed)
    lines = [opened(f"open-{n}", f"ACC-{n}") for n in range(accounts)]
    for n in range(events - accounts):
        account = f"ACC-{rng.randrange(accounts)}"
        if rng.random() < 0.5:
            lines.append(invoice(f"inv-{n}", account, rng.randrange(1, 50_000)))
        else:
            lines.append(payment(f"pay-{n}", account, rng.randrange(1, 60_000)))
    return lines


@pytest.mark.ci_backend("postgresql")
def test_publish_twice_dead_letters_and_outbox(
    fresh_broker: EmbeddedBroker, database_url: str, tmp_path: Path
) -> None:
    env = ledger_env(fresh_broker.bootstrap, database_url)
    good = [
        opened("e1", "A"),
        invoice("e2", "A", 12_000),
        payment("e3", "A", 15_000),
        opened("e4", "B", currency="EUR"),
        payment("e5", "B", 700, currency="EUR"),
    ]
    bad = [b"this is not json", payment("e6", "NOBODY", 100), b'{"type":"payment.received"}']
    source = tmp_path / "facts.jsonl"
    source.write_bytes(b"\n".join([good[0], bad[0], *good[1:3], bad[1], *good[3:], bad[2]]) + b"\n")
    with running_ledger(env, tmp_path / "run.log") as ledger:
        for _ in range(2):
            published = run_cli(["publish", str(source), "--json"], env)
            assert published.returncode == 0, published.stderr.decode()
            assert orjson.loads(published.stdout) == {
                "published": 8,
                "topic": "payments.inbound",
                "refused_lines": [],
            }
        expected = natural(expected_balances(good))
        assert expected["A"] == {"cash": 15_000, "customer_credit": 3_000, "revenue": 12_000}
        wait_for(lambda: read_balances(database_url, ["A", "B"]) == expected, "balances")
        wait_for(
            lambda: len(read_topic(fresh_broker.bootstrap, "payments.inbound.dlq")) == 6,
            "six dead letters",
        )
        dead = read_topic(fresh_broker.bootstrap, "payments.inbound.dlq")
        kinds = sorted(dict(d.headers)["error_kind"].decode() for d in dead)
        assert kinds == [
            "contract",
            "contract",
            "not_json",
            "not_json",
            "unknown_account",
            "unknown_account",
        ]
        for letter in dead:
            headers = dict(letter.headers)
            assert headers["source_topic"] == b"payments.inbound"
            assert int(headers["source_offset"]) >= 0
            assert letter.value in bad
        balance = run_cli(["balance", "A", "--json", "--wait"], env)
        assert balance.returncode == 0, balance.stderr.decode()
        answer = orjson.loads(balance.stdout)
        assert answer["customer_credit"] == 3_000 and answer["receivable"] == 0
        assert answer["currency"] == "USD" and answer["position"] >= 6
        trial = orjson.loads(run_cli(["trial-balance", "--json", "--wait"], env).stdout)
        assert {c: e["total"] for c, e in trial["currencies"].items()} == {"EUR": 0, "USD": 0}
        history = orjson.loads(run_cli(["history", "A", "--json"], env).stdout)
        assert [e["type"] for e in history] == [
            "account_opened",
            "invoice_issued",
            "payment_received",
            "overpayment_detected",
        ]
        unknown = run_cli(["balance", "NOBODY", "--json"], env)
        assert unknown.returncode == 2 and b"unknown account" in unknown.stderr
        wait_for(
            lambda: len(read_topic(fresh_broker.bootstrap, "ledger.events")) >= 7, "events relayed"
        )
        events = read_topic(fresh_broker.bootstrap, "ledger.events")
        ids = [dict(e.headers)["ce_id"].decode() for e in events]
        assert sorted(set(ids)) == sorted(["A:1", "A:2", "A:3", "A:4", "B:1", "B:2", "B:3"])
        first = next(e for e in events if dict(e.headers)["ce_id"] == b"A:4")
        headers = dict(first.headers)
        assert headers["ce_type"] == b"ledger.overpayment_detected"
        assert headers["ce_source"] == b"ledger" and headers["ce_specversion"] == b"1.0"
        assert len(headers["ce_sequence"]) == 20
        body = orjson.loads(first.value)
        assert body["type"] == "overpayment_detected" and body["amount_minor"] == 3_000
        assert first.key == b"A"
        wait_for(
            lambda: len(read_topic(fresh_broker.bootstrap, "ledger.notifications")) == 2,
            "two notification requests",
        )
        notes = [
            orjson.loads(n.value)
            for n in read_topic(fresh_broker.bootstrap, "ledger.notifications")
        ]
        assert sorted((n["account_id"], n["amount"]["value"]) for n in notes) == [
            ("A", 3_000),
            ("B", 700),
        ]
        relayed = len(read_topic(fresh_broker.bootstrap, "ledger.events"))
        republished = run_cli(["republish", "--from", "1", "--json"], env)
        assert republished.returncode == 0, republished.stderr.decode()
        assert orjson.loads(republished.stdout)["events"] == 7
        again = read_topic(fresh_broker.bootstrap, "ledger.events")
        assert len(again) == relayed + 7
        assert {dict(e.headers)["ce_id"].decode() for e in again} == set(ids)
        assert len(read_topic(fresh_broker.bootstrap, "ledger.notifications")) == 2
        rebuilt = run_cli(["projections", "rebuild", "--json"], env)
        assert rebuilt.returncode == 0, rebuilt.stderr.decode()
        # Every registered read model is rebuilt; those that read every event read all 7.
        counts = {p["name"]: p["events"] for p in orjson.loads(rebuilt.stdout)["projections"]}
        assert set(counts) == set(read_models.names())
        assert counts["balances"] == counts["schedule"] == 7
        assert orjson.loads(run_cli(["trial-balance", "--json"], env).stdout) == trial
    assert ledger.returncode == 0


@pytest.mark.ci_backend("sqlite")
def test_kill_9_mid_publish_then_restart(
    fresh_broker: EmbeddedBroker, database_url: str, tmp_path: Path
) -> None:
    env = ledger_env(fresh_broker.bootstrap, database_url)
    lines = history_lines(accounts=200, events=10_000, seed=7)
    expected = natural(expected_balances(lines))
    log_path = tmp_path / "run.log"
    ledger = start_ledger_run(env, log_path)
    wait_for(lambda: "partition assigned" in log_path.read_text(), "ingest joined its group")
    # Spread over a few seconds, so the kill lands while facts are still arriving.
    publisher = threading.Thread(
        target=publish,
        args=(fresh_broker.bootstrap, lines, key_of),
        kwargs={"chunk": 250, "pause_s": 0.1},
    )
    publisher.start()
    # Kill in the middle: once some facts are applied, while the rest are still coming.
    wait_for(lambda: read_balances(database_url, list(expected)) != {}, "ingest under way")
    workers = psutil.Process(ledger.pid).children(recursive=True)
    assert len(workers) == 4
    stop_ledger_run(ledger, kill=True)
    # The parent-death signal takes every worker down with the supervisor.
    wait_for(lambda: all(gone(worker.pid) for worker in workers), "workers gone", timeout_s=10)
    publisher.join()
    partial = read_balances(database_url, list(expected))
    assert partial != expected, "the kill came too late to test anything"
    with running_ledger(env, tmp_path / "run.log"):
        wait_for(
            lambda: read_balances(database_url, list(expected)) == expected,
            "balances equal to a clean run",
            timeout_s=180,
        )
        trial = trial_balance(database_url)
        assert trial["currencies"]["USD"]["total"] == 0


@pytest.mark.ci_backend("postgresql")
@pytest.mark.slow
def test_broker_restart_under_running_ledger(
    fresh_broker: EmbeddedBroker, database_url: str, tmp_path: Path
) -> None:
    env = ledger_env(fresh_broker.bootstrap, database_url)
    before = [opened("e1", "A"), payment("e2", "A", 100)]
    after = [payment("e3", "A", 200), opened("e4", "C"), invoice("e5", "C", 50)]
    log_path = tmp_path / "run.log"
    with running_ledger(env, log_path):
        publish(fresh_broker.bootstrap, before, key_of)
        wait_for(
            lambda: read_balances(database_url, ["A"]) == natural(expected_balances(before)),
            "first balances",
        )
        fresh_broker.stop()
        fresh_broker.start()
        # The restarted broker is empty; the old facts come again (as processors would retry).
        publish(fresh_broker.bootstrap, [*before, *after], key_of)
        expected = natural(expected_balances([*before, *after]))
        wait_for(
            lambda: read_balances(database_url, ["A", "C"]) == expected,
            "balances after the broker restart",
            timeout_s=120,
        )
        wait_for(
            lambda: any(
                e["type"] == "payment_received"
                for e in [
                    orjson.loads(r.value)
                    for r in read_topic(fresh_broker.bootstrap, "ledger.events")
                ]
            ),
            "relay publishing again after the restart",
        )
        # Noticed at the next assignment or, at the latest, the next periodic check
        # (limits.topic_check_interval_s): never skipped silently.
        wait_for(
            lambda: "topic recreated" in log_path.read_text(),
            "the recreated topic noticed and logged",
            timeout_s=60,
        )


def test_two_ingest_workers_share_the_partitions(
    fresh_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    database_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    env = ledger_env(fresh_broker.bootstrap, database_url, LEDGER_INGEST_WORKERS="2")
    lines = history_lines(accounts=40, events=2_000, seed=11)
    expected = natural(expected_balances(lines))
    with running_ledger(env, tmp_path / "run.log") as ledger:
        wait_for(lambda: len(psutil.Process(ledger.pid).children()) == 5, "five workers")
        publish(fresh_broker.bootstrap, lines, key_of)
        wait_for(
            lambda: read_balances(database_url, list(expected)) == expected,
            "balances equal to a single worker's",
        )
    log_text = (tmp_path / "run.log").read_text()
    assigned = [
        orjson.loads(entry)["partition"]
        for entry in log_text.splitlines()
        if '"partition assigned"' in entry
    ]
    # Each ingest worker owns part of the partitions after the group settles.
    assert set(assigned) == {0, 1, 2, 3}
    assert log_text.count('"ingest started"') == 2


def test_two_ledger_runs_on_one_database_publish_each_event_once(
    fresh_broker: EmbeddedBroker, database_url: str, tmp_path: Path
) -> None:
    env = ledger_env(fresh_broker.bootstrap, database_url, LEDGER_RELAY_WORKERS="2")
    lines = history_lines(accounts=40, events=2_000, seed=5)
    expected = natural(expected_balances(lines))
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    with running_ledger(env, first_log) as first, running_ledger(env, second_log) as second:
        for run in (first, second):
            wait_for(lambda run=run: len(psutil.Process(run.pid).children()) == 5, "workers")
        publish(fresh_broker.bootstrap, lines, key_of)
        wait_for(
            lambda: read_balances(database_url, list(expected)) == expected,
            "balances of the history",
        )
        wait_for(
            lambda: positions(database_url)["relay"] == max_notification_id(database_url),
            "every share relayed",
        )
        # Four relays for two shares: two hold one each, two stand by (until one stops).
        log_text = first_log.read_text() + second_log.read_text()
        assert log_text.count('"relay share acquired"') == 2
        assert log_text.count('"relay standby: every share is held by another relay"') == 2
    ce_ids = [
        dict(record.headers)["ce_id"].decode()
        for record in read_topic(fresh_broker.bootstrap, "ledger.events")
    ]
    assert len(ce_ids) == len(set(ce_ids)) == len(store_events(database_url))
