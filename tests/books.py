"""Helpers that build inbound lines and check the books, shared by the tests."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import orjson

OCCURRED_AT = "2026-11-25T10:00:00+00:00"


def line(event_id: str, event_type: str, account_id: str, **fields: Any) -> bytes:
    """One inbound payment event as the processor would send it."""
    return orjson.dumps(
        {
            "event_id": event_id,
            "processor": fields.pop("processor", "acme-pay"),
            "account_id": account_id,
            "occurred_at": fields.pop("occurred_at", OCCURRED_AT),
            "type": event_type,
            **fields,
        }
    )


def opened(event_id: str, account_id: str, currency: str = "USD", kind: str = "monthly") -> bytes:
    """An account.opened line."""
    return line(
        event_id,
        "account.opened",
        account_id,
        customer_id=f"cust-{account_id}",
        kind=kind,
        jurisdiction="US-CA",
        currency=currency,
    )


def invoice(event_id: str, account_id: str, amount: int, currency: str = "USD") -> bytes:
    """An invoice.issued line."""
    return line(
        event_id,
        "invoice.issued",
        account_id,
        invoice_id=f"inv-{event_id}",
        amount={"value": amount, "currency": currency},
        due_date="2026-12-31",
    )


def payment(event_id: str, account_id: str, amount: int, currency: str = "USD") -> bytes:
    """A payment.received line."""
    return line(
        event_id,
        "payment.received",
        account_id,
        payment_id=f"pay-{event_id}",
        amount={"value": amount, "currency": currency},
        method="card",
    )


def expected_balances(lines: list[bytes]) -> dict[str, dict[str, int]]:
    """An independent model of the books for a list of lines (first event id wins)."""
    seen: set[tuple[str, str]] = set()
    accounts: dict[str, dict[str, Any]] = {}
    for raw in lines:
        try:
            fact = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(fact, dict):
            continue
        key = (fact.get("processor"), fact.get("event_id"))
        if key in seen:
            continue
        account_id = fact.get("account_id")
        kind = fact.get("type")
        if kind == "account.opened":
            if account_id in accounts:
                continue
            accounts[account_id] = {"currency": fact["currency"], "b": defaultdict(int)}
        elif kind in ("invoice.issued", "payment.received"):
            account = accounts.get(account_id)
            if account is None or fact["amount"]["currency"] != account["currency"]:
                continue
            amount = fact["amount"]["value"]
            books = account["b"]
            if kind == "invoice.issued":
                books["receivable"] += amount
                books["revenue"] += amount
            else:
                settled = min(amount, books["receivable"])
                books["receivable"] -= settled
                books["customer_credit"] += amount - settled
                books["cash"] += amount
        else:
            continue
        seen.add(key)
    return {
        account_id: {name: value for name, value in account["b"].items()}
        for account_id, account in accounts.items()
    }
