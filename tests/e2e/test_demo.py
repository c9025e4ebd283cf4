"""`ledger demo --json`: the README's first command, end to end on its own broker."""

from __future__ import annotations

import os
import subprocess
import sys

import orjson

from ledger.kafka.broker import free_port


def test_demo_shows_overpayment_notification_dead_letters_and_credit() -> None:
    port = free_port()
    env = dict(os.environ, LEDGER_BROKER_PORT=str(port), LEDGER_LOG_FORMAT="json")
    env.pop("LEDGER_KAFKA_BOOTSTRAP", None)
    env.pop("LEDGER_DATABASE_URL", None)
    result = subprocess.run(
        [sys.executable, "-m", "ledger", "demo", "--json"],
        env=env,
        capture_output=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    summary = orjson.loads(result.stdout)
    account = summary["account_id"]
    assert [event["type"] for event in summary["history"]] == [
        "account_opened",
        "invoice_issued",
        "payment_received",
        "overpayment_detected",
    ]
    assert summary["notifications"] == [
        {
            "notification_id": f"{account}:4:overpayment_detected",
            "account_id": account,
            "template": "overpayment_detected",
            "overpayment_id": f"{account}:op:4",
            "amount": {"value": 3000, "currency": "USD"},
            "requested_at": summary["history"][3]["occurred_at"],
        }
    ]
    assert sorted(letter["error_kind"] for letter in summary["dead_letters"]) == [
        "not_json",
        "unknown_account",
    ]
    balance = summary["balance"]
    assert (balance["receivable"], balance["customer_credit"], balance["cash"]) == (0, 3000, 15000)
    assert summary["trial_balance"]["currencies"]["USD"]["total"] == 0
