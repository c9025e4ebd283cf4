"""Staff commands from the CLI through `ledger run`: outcomes, refusals, the timeout and a retry
that applies a command once, on SQLite and PostgreSQL."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest

from ledger.kafka.broker import EmbeddedBroker
from tests.books import invoice, opened, payment
from tests.e2e.harness import (
    key_of,
    ledger_env,
    publish,
    read_topic,
    run_cli,
    running_ledger,
)
from tests.waiting import wait_for

OVERPAYMENT = "STAFF-1:op:4"
"""Opened (v1), billed (v2), paid (v3): the overpayment detected is the fourth event."""


def cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    result = run_cli(args, env)
    return result.returncode, result.stdout.decode(), result.stderr.decode()


def staff(env: dict[str, str], *args: str, actor: str, role: str) -> tuple[int, str, str]:
    return cli(env, *args, "--actor", actor, "--role", role, "--json")


def history_types(env: dict[str, str]) -> list[str]:
    code, out, err = cli(env, "history", "STAFF-1", "--json", "--wait")
    assert code == 0, err
    return [event["type"] for event in orjson.loads(out)]


def test_a_database_without_the_schema_is_refused_at_once(
    fresh_broker: EmbeddedBroker, database_url: str
) -> None:
    env = ledger_env(fresh_broker.bootstrap, database_url)
    code, _, err = staff(
        env, "overpayments", "verify", OVERPAYMENT, "--department", "accounting",
        actor="ann", role="accounting",
    )  # fmt: skip
    assert code == 2
    assert "no ledger schema" in err and len(err.strip().splitlines()) == 1


@pytest.mark.ci_backend("postgresql")
def test_staff_commands_from_the_cli(
    fresh_broker: EmbeddedBroker, database_url: str, tmp_path: Path
) -> None:
    env = ledger_env(fresh_broker.bootstrap, database_url)
    facts = [opened("s1", "STAFF-1", kind="retail"), invoice("s2", "STAFF-1", 12_000)]
    facts.append(payment("s3", "STAFF-1", 72_000))  # 600.00 too much: two departments verify
    verify = ("overpayments", "verify", OVERPAYMENT, "--department")
    with running_ledger(env, tmp_path / "run.log"):
        publish(fresh_broker.bootstrap, facts, key_of)

        shown: list[dict[str, object]] = []

        def detected() -> bool:
            code, out, _ = cli(env, "overpayments", "show", OVERPAYMENT, "--json")
            shown.extend([orjson.loads(out)] if code == 0 else [])
            return bool(shown)

        wait_for(detected, "the overpayment in the read model", 60)
        assert shown[0]["departments"] == ["accounting", "risk_management"]

        # Above authority: refused at once, nothing published.
        code, _, err = staff(env, *verify, "accounting", actor="al", role="agent")
        assert code == 2 and "unauthorized" in err and "needs accounting" in err

        code, out, err = staff(env, *verify, "accounting", actor="ann", role="accounting")
        assert code == 0, err
        accepted = orjson.loads(out)
        assert accepted["status"] == "accepted" and accepted["versions"] == [5]

        # The same command id again: the recorded outcome, nothing applied twice.
        code, out, err = staff(
            env, *verify, "accounting", "--command-id", accepted["command_id"],
            actor="ann", role="accounting",
        )  # fmt: skip
        assert code == 0, err
        assert orjson.loads(out) == accepted

        # A second verification by the same department: refused by the account, and recorded.
        code, out, err = staff(env, *verify, "accounting", actor="ann", role="accounting")
        assert code == 2 and "already verified by accounting" in err
        assert orjson.loads(out)["error_kind"] == "domain_rule"
        assert history_types(env).count("command_refused") == 1

        code, _, err = staff(env, *verify, "risk_management", actor="rob", role="risk_management")
        assert code == 0, err
        code, _, err = staff(
            env, "overpayments", "resolve", OVERPAYMENT, "--as", "escrow",
            actor="meg", role="manager",
        )  # fmt: skip
        assert code == 0, err
        code, out, err = cli(env, "balance", "STAFF-1", "--json", "--wait")
        assert (orjson.loads(out)["escrow"], orjson.loads(out)["customer_credit"]) == (60_000, 0)

        code, _, err = staff(
            env, "escrow", "release", OVERPAYMENT, "--to", "refund", actor="meg", role="manager"
        )
        assert code == 0, err
        code, out, err = cli(env, "balance", "STAFF-1", "--json", "--wait")
        balance = orjson.loads(out)
        assert (balance["escrow"], balance["refund_clearing"], balance["cash"]) == (
            0,
            60_000,
            72_000,
        )

        requests: list[dict[str, object]] = []

        def refund_requested() -> bool:
            records = read_topic(fresh_broker.bootstrap, "payments.outbound")
            requests[:] = [orjson.loads(record.value) for record in records]
            return bool(requests)

        wait_for(refund_requested, "the refund request on payments.outbound", 30)
        assert [(r["payment_id"], r["amount"], r["attempt"]) for r in requests] == [
            ("pay-s3", {"value": 60_000, "currency": "USD"}, 1)
        ]

    # No account worker: the outcome cannot come; exit 3 names the command id to wait again.
    reject = ("overpayments", "reject", OVERPAYMENT, "--department", "accounting")
    code, _, err = staff(
        env, *reject, "--reason", "late", "--timeout", "1", actor="a", role="accounting"
    )
    assert code == 3
    command_id = re.search(r"--command-id ([0-9a-f-]{36})", err)
    assert command_id is not None, err
    with running_ledger(env, tmp_path / "run2.log"):
        code, out, err = staff(
            env, *reject, "--reason", "late", "--command-id", command_id.group(1),
            "--timeout", "90", actor="a", role="accounting",
        )  # fmt: skip
        assert code == 2 and "is resolved, not awaiting verification" in err
        # Published twice (first run and retry), refused and recorded once.
        assert history_types(env).count("command_refused") == 2
