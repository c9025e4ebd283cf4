"""`ledger demo`: a scripted scenario through the real broker, workers and a temporary database."""

from __future__ import annotations

import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaProducer
from rich.console import Console
from rich.table import Table

from ledger import limits
from ledger.kafka.topics import (
    LEDGER_NOTIFICATIONS,
    PAYMENTS_INBOUND,
    PAYMENTS_INBOUND_DLQ,
    read_topic,
)
from ledger.runner import Supervisor
from ledger.settings import Settings
from ledger.storage import open_storage
from projections import queries

DEMO_TIMEOUT_S = 60.0


def scenario(suffix: str) -> list[tuple[str, bytes]]:
    """The scripted inbound lines: (what it shows, the raw line)."""
    account = f"ACC-DEMO-{suffix}"
    now = datetime.now(UTC).isoformat()

    def line(event_id: str, event_type: str, **fields: Any) -> bytes:
        body = {
            "event_id": f"{event_id}-{suffix}",
            "processor": "demo-pay",
            "account_id": fields.pop("account_id", account),
            "occurred_at": now,
            "type": event_type,
            **fields,
        }
        return orjson.dumps(body)

    usd = "USD"
    payment = line(
        "evt-3",
        "payment.received",
        payment_id="pay-1",
        amount={"value": 15000, "currency": usd},
        method="card",
        invoice_id="inv-1",
    )
    return [
        (
            "open a monthly account in USD",
            line(
                "evt-1",
                "account.opened",
                customer_id="cust-42",
                kind="monthly",
                jurisdiction="US-CA",
                currency=usd,
            ),
        ),
        (
            "bill it USD 120.00",
            line(
                "evt-2",
                "invoice.issued",
                invoice_id="inv-1",
                amount={"value": 12000, "currency": usd},
                due_date="2026-12-01",
            ),
        ),
        ("the customer pays USD 150.00: USD 30.00 too much", payment),
        ("the processor delivers the same payment again", payment),
        ("a line that is not JSON", b'{"event_id": "broken'),
        (
            "a payment for an account nobody opened",
            line(
                "evt-4",
                "payment.received",
                account_id=f"ACC-NOBODY-{suffix}",
                payment_id="pay-9",
                amount={"value": 500, "currency": usd},
                method="ach",
            ),
        ),
    ]


def _tail(bootstrap: str, topic: str, match: str) -> list[Any]:
    return [
        record
        for record in read_topic(bootstrap, topic)
        if match.encode() in (record.value or b"") or match.encode() in (record.key or b"")
    ]


def run_demo(settings: Settings, *, json_output: bool, out: Console, err: Console) -> None:
    """Run the scenario and print what happened."""
    suffix = uuid.uuid4().hex[:6]
    with tempfile.TemporaryDirectory(prefix="ledger-demo-") as directory:
        demo_settings = settings.model_copy(
            update={"database_url": f"sqlite:///{Path(directory) / 'demo.db'}"}
        )
        supervisor = Supervisor(demo_settings)
        err.print("starting the broker (if none listens), the workers and a temporary database")
        supervisor.start()
        try:
            summary = _drive(
                supervisor, demo_settings, suffix, out=out, err=err, json_output=json_output
            )
        finally:
            supervisor.stop()
    if json_output:
        sys.stdout.write(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode() + "\n")


def _drive(
    supervisor: Supervisor,
    settings: Settings,
    suffix: str,
    *,
    out: Console,
    err: Console,
    json_output: bool,
) -> dict[str, Any]:
    lines = scenario(suffix)
    account = f"ACC-DEMO-{suffix}"
    producer = KafkaProducer(bootstrap_servers=supervisor.bootstrap, acks="all")
    for what, raw in lines:
        key = account.encode() if b"ACC-NOBODY" not in raw else f"ACC-NOBODY-{suffix}".encode()
        producer.send(PAYMENTS_INBOUND, key=key, value=raw).get(timeout=10)
        if not json_output:
            out.print(f"[bold]published[/bold]: {what}")
    producer.close()
    storage = open_storage(settings)
    try:
        deadline = time.monotonic() + DEMO_TIMEOUT_S
        answer: dict[str, Any] = {}
        dead: list[Any] = []
        while time.monotonic() < deadline:
            try:
                answer = queries.balance(storage.database, account)
            except queries.NotFound:
                answer = {}
            dead = _tail(supervisor.bootstrap, PAYMENTS_INBOUND_DLQ, suffix)
            if answer.get("customer_credit") == 3000 and len(dead) >= 2:
                break
            time.sleep(limits.demo_poll_s)
        else:
            raise RuntimeError("the demo scenario did not complete in time")
        events = queries.history(storage.database, account, limit=100)
        notes = _tail(supervisor.bootstrap, LEDGER_NOTIFICATIONS, account)
        trial = queries.trial_balance(storage.database)
    finally:
        storage.close()
    summary = {
        "account_id": account,
        "history": events,
        "notifications": [orjson.loads(n.value) for n in notes],
        "dead_letters": [
            {k: v.decode() for k, v in (d.headers or []) if k.startswith(("error_", "source_"))}
            for d in dead
        ],
        "balance": answer,
        "trial_balance": trial,
    }
    if not json_output:
        _print_summary(summary, out)
    return summary


def _print_summary(summary: dict[str, Any], out: Console) -> None:
    table = Table(title=f"what the ledger recorded for {summary['account_id']}")
    for column in ("version", "event", "postings"):
        table.add_column(column)
    for event in summary["history"]:
        postings = (
            "; ".join(
                f"debit {p['debit']} / credit {p['credit']} {p['amount']}"
                for p in event["postings"]
            )
            or "-"
        )
        table.add_row(str(event["version"]), event["type"], postings)
    out.print(table)
    for request in summary["notifications"]:
        amount = request["amount"]
        out.print(
            f"[green]notification request sent[/green] to ledger.notifications: "
            f"{request['template']} for {request['account_id']}, "
            f"{amount['value']} minor units {amount['currency']}"
        )
    for letter in summary["dead_letters"]:
        out.print(
            f"[yellow]dead letter[/yellow] ({letter.get('error_kind')}): "
            f"{letter.get('error_reason')}"
        )
    out.print("the duplicate payment changed nothing (same processor event id)")
    balance = summary["balance"]
    out.print(
        f"[bold]balances[/bold]: receivable {balance['receivable']},"
        f" customer_credit {balance['customer_credit']} (owed to the customer),"
        f" cash {balance['cash']}, revenue {balance['revenue']} {balance['currency']} minor units"
    )
    totals = {c: e["total"] for c, e in summary["trial_balance"]["currencies"].items()}
    out.print(f"[bold]trial balance[/bold] totals per currency: {totals}")
