"""Helpers that build inbound lines and check the books, shared by the tests."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
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


@dataclass
class Model:
    """What a clean run of a history must produce."""

    balances: dict[str, dict[str, int]]
    applied: Counter[str]
    """Applied facts by inbound type."""
    refused: int
    """Lines that must be dead-lettered (at least once each)."""
    applied_payment_ids: set[str]


def model_of(lines: Sequence[bytes]) -> Model:
    """An independent clean-run model: natural-side balances, applied facts, refusals."""
    seen: set[tuple[str, str]] = set()
    accounts: dict[str, dict[str, Any]] = {}
    applied: Counter[str] = Counter()
    payment_ids: set[str] = set()
    refused = 0
    for raw in lines:
        try:
            fact = orjson.loads(raw)
            key = (fact["processor"], fact["event_id"])
            kind = fact["type"]
            account_id = fact["account_id"]
            fact["occurred_at"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            refused += 1
            continue
        if key in seen:
            continue
        account = accounts.get(account_id)
        if kind == "account.opened" and account is None:
            accounts[account_id] = {"currency": fact["currency"], "b": Counter()}
        elif kind in ("invoice.issued", "payment.received") and account is not None:
            if fact["amount"]["currency"] != account["currency"]:
                refused += 1
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
                payment_ids.add(fact["event_id"])
        else:
            refused += 1
            continue
        seen.add(key)
        applied[kind] += 1
    balances = {
        account_id: {name: value for name, value in account["b"].items() if value}
        for account_id, account in accounts.items()
    }
    return Model(balances, applied, refused, payment_ids)


def expected_balances(lines: Sequence[bytes]) -> dict[str, dict[str, int]]:
    """An independent model of the books for a list of lines (first event id wins)."""
    return model_of(lines).balances
