"""`ledger demo --json`: the README's first command, end to end on its own broker."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import orjson

from ledger.kafka.broker import free_port

OPTIONS_MONTHLY = ["credit", "refund", "escrow", "coupon", "store_credit", "cancel_and_refund"]
OPTIONS_RETAIL = OPTIONS_MONTHLY


def _types(events: list[dict[str, Any]]) -> list[str]:
    return [event["type"] for event in events]


def test_demo_walks_two_overpayments_and_a_dispute_from_a_phone_call() -> None:
    port = free_port()
    env = dict(os.environ, LEDGER_BROKER_PORT=str(port), LEDGER_LOG_FORMAT="json")
    env.pop("LEDGER_KAFKA_BOOTSTRAP", None)
    env.pop("LEDGER_DATABASE_URL", None)
    env.pop("LEDGER_POLICY", None)
    result = subprocess.run(
        [sys.executable, "-m", "ledger", "demo", "--json"],
        env=env,
        capture_output=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    summary = orjson.loads(result.stdout)
    a, b = summary["account_id"], summary["escrow_account_id"]
    assert summary["policy"]["version"].endswith("-demo")
    assert summary["policy"]["escrow_period"] == "PT5S"

    history_a, history_b = summary["history"][a], summary["history"][b]
    assert _types(history_a) == [
        "account_opened",
        "invoice_issued",
        "payment_received",  # once: the duplicate changed nothing
        "overpayment_detected",
        "overpayment_verified",
        "overpayment_verified",
        "overpayment_resolved",
        "refund_requested",
        "refund_failed",
        "refund_requested",
        "refund_settled",
    ]
    assert _types(history_b) == [
        "account_opened",
        "invoice_issued",
        "payment_received",
        "overpayment_detected",
        "overpayment_verified",
        "overpayment_resolved",
        "escrow_released",
        "refund_requested",
        "refund_settled",
    ]
    verified = [e["data"] for e in history_a if e["type"] == "overpayment_verified"]
    assert [(v["department"], v["actor_role"], v["complete"]) for v in verified] == [
        ("accounting", "accounting", False),
        ("risk_management", "risk_management", True),
    ]
    release = next(e["data"] for e in history_b if e["type"] == "escrow_released")
    assert (release["actor_id"], release["at_expiry"], release["to"]) == (
        "scheduler",
        True,
        "refund",
    )

    # The notifications: sent at detection, with the amount and the options, before verification.
    c = summary["dispute_account_id"]
    notes = {n["account_id"]: n for n in summary["notifications"] if n["account_id"] != c}
    assert sorted(notes) == [a, b]
    assert notes[a] == {
        "notification_id": f"{a}:4:overpayment_detected",
        "account_id": a,
        "template": "overpayment_detected",
        "overpayment_id": f"{a}:op:4",
        "amount": {"value": 60000, "currency": "USD"},
        "options": OPTIONS_MONTHLY,
        "requested_at": history_a[3]["occurred_at"],
    }
    assert notes[b]["amount"] == {"value": 8000, "currency": "USD"}
    assert notes[b]["options"] == OPTIONS_RETAIL
    assert notes[a]["requested_at"] < history_a[4]["occurred_at"]

    # The refund requests on payments.outbound and the processor's answers.
    requests = sorted(summary["refund_requests"], key=lambda r: (r["account_id"], r["attempt"]))
    assert [
        (r["refund_id"], r["attempt"], r["amount"]["value"], r["method"]) for r in requests
    ] == [
        (f"{a}:rf:8", 1, 60000, "card"),
        (f"{a}:rf:10", 2, 60000, "card"),
        (f"{b}:rf:8", 1, 8000, "ach"),
    ]
    assert [(x["type"], x["refund_id"]) for x in summary["processor_answers"]] == [
        ("refund.failed", f"{a}:rf:8"),
        ("refund.settled", f"{a}:rf:10"),
        ("refund.settled", f"{b}:rf:8"),
    ]

    # Staff commands: every one accepted, each by the role the scenario names.
    assert [(o["type"], o["actor"]["role"], o["status"]) for o in summary["outcomes"]] == [
        ("overpayment.verify", "accounting", "accepted"),
        ("overpayment.verify", "risk_management", "accepted"),
        ("overpayment.resolve", "manager", "accepted"),
        ("refund.retry", "manager", "accepted"),
        ("overpayment.verify", "accounting", "accepted"),
        ("overpayment.resolve", "supervisor", "accepted"),
        ("dispute.open", "agent", "accepted"),
        ("dispute.assign", "supervisor", "accepted"),
        ("dispute.log", "agent", "accepted"),
        ("dispute.log", "agent", "accepted"),
        ("dispute.plan", "agent", "accepted"),
        ("dispute.feedback", "agent", "accepted"),
    ]
    assert [(o["overpayment_id"], o["places"], o["open"]) for o in summary["overpayments"]] == [
        (f"{a}:op:4", {"refunded": 60000}, False),
        (f"{b}:op:4", {"refunded": 8000}, False),
    ]

    assert sorted(letter["error_kind"] for letter in summary["dead_letters"]) == [
        "not_json",
        "unknown_account",
    ]

    # The books: every unit of both overpayments went back to the customers.
    zero = {
        "receivable": 0,
        "customer_credit": 0,
        "escrow": 0,
        "coupon": 0,
        "refund_clearing": 0,
        "dispute_hold": 0,
        "escheat_payable": 0,
        "losses": 0,
    }
    balances = summary["balances"]
    assert {k: v for k, v in balances[a].items() if k != "position"} == {
        "account_id": a,
        "currency": "USD",
        **zero,
        "cash": 12000,
        "revenue": 12000,
    }
    assert {k: v for k, v in balances[b].items() if k != "position"} == {
        "account_id": b,
        "currency": "USD",
        **zero,
        "cash": 4000,
        "revenue": 4000,
    }
    # The dispute from a phone call: held, planned, paid by installments, feedback recorded.
    assert {k: v for k, v in balances[c].items() if k != "position"} == {
        "account_id": c,
        "currency": "USD",
        **zero,
        "cash": 12000,
        "revenue": 12000,
    }
    history_c = summary["history"][c]
    assert [e for e in _types(history_c) if not e.startswith("follow_up")] == [
        "account_opened",
        "invoice_issued",
        "dispute_opened",
        "dispute_assigned",
        "dispute_contact_logged",
        "dispute_contact_logged",
        "dispute_plan_agreed",
        "payment_received",
        "dispute_installments_paid",
        "payment_received",
        "dispute_installments_paid",
        "dispute_resolved",
        "dispute_feedback_recorded",
    ]
    postings = {e["type"]: e["postings"] for e in history_c if e["postings"]}
    assert postings["dispute_opened"] == [
        {"debit": "dispute_hold", "credit": "receivable", "amount": 12000, "currency": "USD"}
    ]
    assert postings["dispute_plan_agreed"] == [
        {"debit": "receivable", "credit": "dispute_hold", "amount": 12000, "currency": "USD"}
    ]
    (dispute,) = summary["disputes"]
    assert (dispute["status"], dispute["outcome"], dispute["rep"]) == (
        "resolved",
        "plan_completed",
        "rita.rep",
    )
    assert dispute["feedback_score"] == 5
    assert [i["status"] for i in dispute["plan"]] == ["paid", "paid"]
    # The customer's words never reach ledger.events' public JSON, nor the notifications.
    text = orjson.dumps([history_c, summary["notifications"]]).decode()
    assert "outage week" not in text and "one call" not in text
    statuses = [n["status"] for n in summary["notifications"] if n["account_id"] == c]
    assert statuses[0] == "open" and statuses[-1] == "resolved"

    usd = summary["trial_balance"]["currencies"]["USD"]
    assert usd["total"] == 0
    assert usd["accounts"]["cash"] == 28000
    assert usd["accounts"]["refund_clearing"] == 0
    assert summary["follow_ups"]["follow_ups"] == []
