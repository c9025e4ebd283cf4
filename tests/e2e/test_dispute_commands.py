"""A dispute worked from the CLI through `ledger run`, on SQLite and PostgreSQL: opened from a
phone call, assigned, contacts logged (a promise becomes a follow-up), a plan agreed (one that
does not sum refused first), an installment paid, an adjustment above an agent's authority
refused, escalated and granted by a supervisor; the books exact, the customer notified of each
status change without a word of what they said."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from ledger.kafka.broker import EmbeddedBroker
from tests.books import invoice, opened, payment
from tests.e2e.harness import key_of, ledger_env, publish, read_topic, run_cli, running_ledger
from tests.waiting import wait_for

ACCOUNT = "DSP-1"
SAID = ("billed twice for October", "call back with the corrected bill", "thanks, agreed")


def cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    result = run_cli(args, env)
    return result.returncode, result.stdout.decode(), result.stderr.decode()


def staff(env: dict[str, str], *args: str, actor: str, role: str) -> tuple[int, str, str]:
    return cli(env, "disputes", *args, "--actor", actor, "--role", role, "--json")


def accepted(env: dict[str, str], *args: str, actor: str = "ann", role: str = "agent") -> Any:
    code, out, err = staff(env, *args, actor=actor, role=role)
    assert code == 0, err
    outcome = orjson.loads(out)
    assert outcome["status"] == "accepted", outcome
    return outcome


def balance(env: dict[str, str]) -> dict[str, int]:
    code, out, err = cli(env, "balance", ACCOUNT, "--json", "--wait")
    assert code == 0, err
    found: dict[str, int] = orjson.loads(out)
    return found


@pytest.mark.ci_backend("sqlite")
def test_a_dispute_from_a_phone_call_worked_from_the_cli(
    fresh_broker: EmbeddedBroker, database_url: str, tmp_path: Path
) -> None:
    env = ledger_env(fresh_broker.bootstrap, database_url)
    facts = [opened("d1", ACCOUNT, kind="retail"), invoice("d2", ACCOUNT, 12_000)]
    facts.append(invoice("d3", ACCOUNT, 20_000))
    with running_ledger(env, tmp_path / "run.log"):
        publish(fresh_broker.bootstrap, facts, key_of)
        wait_for(
            lambda: (
                cli(env, "balance", ACCOUNT, "--json")[0] == 0
                and orjson.loads(cli(env, "balance", ACCOUNT, "--json")[1])["receivable"] == 32_000
            ),
            "the account and its invoices in the read model",
            60,
        )

        # Opened from a phone call; an amount with more decimals than USD has is refused.
        opening = ("open", ACCOUNT, "--channel", "phone", "--reason", "billed twice")
        code, _, err = staff(
            env, *opening, "--amount", "120.001", "--currency", "USD", actor="ann", role="agent"
        )
        assert code == 2 and "3 decimals; USD has 2" in err
        outcome = accepted(
            env, *opening, "--amount", "120.00", "--currency", "USD", "--invoice", "inv-d2"
        )
        dispute = f"{ACCOUNT}:dp:{outcome['versions'][0]}"
        assert (balance(env)["receivable"], balance(env)["dispute_hold"]) == (20_000, 12_000)

        accepted(env, "assign", dispute, "--rep", "rita")
        log = ("log", dispute, "--channel", "phone")
        accepted(
            env, *log, "--direction", "in", "--summary", SAID[0],
            "--promise", SAID[1], "--by", "2026-12-01", actor="rita",
        )  # fmt: skip
        code, out, err = cli(env, "follow-ups", "--json", "--wait")
        assert code == 0, err
        promised = [
            item
            for item in orjson.loads(out)["follow_ups"]
            if item["reason"] == "dispute_promise" and item["subject_id"] == dispute
        ]
        assert [(item["owner"], item["due_at"][:10]) for item in promised] == [
            ("rita", "2026-12-01")
        ]
        # Calling the customer back answers the promise: its follow-up is closed.
        accepted(env, *log, "--direction", "out", "--summary", SAID[2], actor="rita")
        code, out, err = cli(env, "follow-ups", "--json", "--wait")
        assert not [
            item
            for item in orjson.loads(out)["follow_ups"]
            if item["reason"] == "dispute_promise" and item["subject_id"] == dispute
        ]

        # A plan that does not sum to what is owed is refused at once, with both numbers.
        plan = ("plan", dispute, "--installment", "2026-12-01=40.00")
        code, _, err = staff(
            env, *plan, "--installment", "2027-01-01=70.00", actor="rita", role="agent"
        )
        assert code == 2 and "sums to 11000" in err and "owes 12000" in err
        accepted(env, *plan, "--installment", "2027-01-01=80.00", actor="rita")
        assert (balance(env)["receivable"], balance(env)["dispute_hold"]) == (32_000, 0)

        # A payment of the first installment: it settles the receivable, paid on the plan.
        publish(fresh_broker.bootstrap, [payment("d9", ACCOUNT, 4_000)], key_of)

        def paid() -> bool:
            code, out, _ = cli(env, "history", ACCOUNT, "--json", "--wait")
            return code == 0 and any(
                e["type"] == "dispute_installments_paid" for e in orjson.loads(out)
            )

        wait_for(paid, "the installment paid", 60)

        # A second dispute (the other bill): an adjustment above an agent's authority is refused
        # at once naming who may, escalated, and granted by a supervisor.
        second = accepted(
            env, "open", ACCOUNT, "--channel", "email", "--reason", "wrong rate",
            "--amount", "200", "--currency", "USD", "--invoice", "inv-d3",
        )  # fmt: skip
        other = f"{ACCOUNT}:dp:{second['versions'][0]}"
        adjust = ("adjust", other, "--amount", "60.00", "--reason", "goodwill")
        code, _, err = staff(env, *adjust, actor="ann", role="agent")
        assert code == 2 and "unauthorized" in err and "needs supervisor" in err
        accepted(env, "escalate", other, "--to", "supervisor", "--reason", "above my limit")
        accepted(env, *adjust, actor="sue", role="supervisor")

        books = balance(env)
        assert {
            name: books[name]
            for name in ("receivable", "dispute_hold", "cash", "losses", "revenue")
        } == {
            "receivable": 8_000,
            "dispute_hold": 14_000,
            "cash": 4_000,
            "losses": 6_000,
            "revenue": 32_000,
        }
        assert (books["customer_credit"], books["refund_clearing"]) == (0, 0)
        code, out, err = cli(env, "trial-balance", "--json", "--wait")
        assert code == 0 and orjson.loads(out)["currencies"]["USD"]["total"] == 0

        notices: list[dict[str, Any]] = []

        def notified() -> bool:
            records = read_topic(fresh_broker.bootstrap, "ledger.notifications")
            notices[:] = [orjson.loads(r.value) for r in records]
            for record in records:
                assert not any(words in record.value.decode() for words in SAID)
                assert not {"summary", "promise", "comment"} & set(orjson.loads(record.value))
            return len(notices) == 3

        wait_for(notified, "three dispute notifications", 30)
        assert sorted((n["dispute_id"], n["status"]) for n in notices) == sorted(
            [(dispute, "open"), (dispute, "plan"), (other, "open")]
        )
        assert {n["template"] for n in notices} == {"dispute_status"}
        (planned,) = [n for n in notices if n["status"] == "plan"]
        assert (planned["next_at"], planned["next_amount"]) == (
            "2026-12-01",
            {"value": 4_000, "currency": "USD"},
        )
