"""What `ledger demo` sends: the processors' facts, its accounts, its policy and its staff."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import orjson

DEMO_ESCROW_PERIOD = "PT5S"
"""The demo policy's escrow period: short, so the scheduler releases the hold within the demo."""

PROCESSOR = "demo-pay"


@dataclass(frozen=True)
class StaffMember:
    """Who gives one of the demo's staff commands."""

    actor_id: str
    role: str


ACCOUNTING = StaffMember("ana.accounting", "accounting")
RISK = StaffMember("raj.risk", "risk_management")
MANAGER = StaffMember("mia.manager", "manager")
SUPERVISOR = StaffMember("sam.supervisor", "supervisor")
AGENT = StaffMember("al.agent", "agent")
REP = StaffMember("rita.rep", "agent")


@dataclass(frozen=True)
class DemoAccounts:
    """The demo's accounts (ids carry a random suffix: a shared broker keeps old runs)."""

    suffix: str

    @property
    def refund(self) -> str:
        """The monthly account whose USD 600.00 overpayment is refunded (fails once)."""
        return f"ACC-DEMO-{self.suffix}"

    @property
    def escrow(self) -> str:
        """The retail account whose USD 80.00 overpayment goes into escrow."""
        return f"ACC-ESCROW-{self.suffix}"

    @property
    def dispute(self) -> str:
        """The utility account whose USD 120.00 bill is disputed by phone."""
        return f"ACC-DISPUTE-{self.suffix}"

    @property
    def nobody(self) -> str:
        """An account nobody opened."""
        return f"ACC-NOBODY-{self.suffix}"


def usd(value_minor: int) -> dict[str, Any]:
    """A wire amount in USD."""
    return {"value": value_minor, "currency": "USD"}


def fact(suffix: str, account_id: str, event_id: str, event_type: str, **fields: Any) -> bytes:
    """One inbound line from the demo's processor (event ids carry the run's suffix)."""
    body = {
        "event_id": f"{event_id}-{suffix}",
        "processor": PROCESSOR,
        "account_id": account_id,
        "occurred_at": datetime.now(UTC).isoformat(),
        "type": event_type,
        **fields,
    }
    return orjson.dumps(body)


def opening_facts(accounts: DemoAccounts) -> list[tuple[str, str, bytes]]:
    """The facts that open, bill and overpay both accounts: (what it shows, key, line)."""
    s = accounts.suffix
    a, b = accounts.refund, accounts.escrow
    payment = fact(
        s,
        a,
        "evt-3",
        "payment.received",
        payment_id=f"{a}-pay-1",
        amount=usd(72000),
        method="card",
        invoice_id="inv-1",
    )
    return [
        (
            f"{a}: open a monthly account in USD",
            a,
            fact(
                s,
                a,
                "evt-1",
                "account.opened",
                customer_id="cust-42",
                kind="monthly",
                jurisdiction="US-CA",
                currency="USD",
            ),
        ),
        (
            f"{a}: bill it USD 120.00",
            a,
            fact(
                s,
                a,
                "evt-2",
                "invoice.issued",
                invoice_id="inv-1",
                amount=usd(12000),
                due_date="2026-12-01",
            ),
        ),
        (f"{a}: the customer pays USD 720.00 by card: USD 600.00 too much", a, payment),
        (f"{a}: the processor delivers the same payment again", a, payment),
        (f"{a}: a line that is not JSON", a, b'{"event_id": "broken'),
        (
            "a payment for an account nobody opened",
            accounts.nobody,
            fact(
                s,
                accounts.nobody,
                "evt-4",
                "payment.received",
                payment_id="pay-9",
                amount=usd(500),
                method="ach",
            ),
        ),
        (
            f"{b}: open a retail account in USD",
            b,
            fact(
                s,
                b,
                "evt-5",
                "account.opened",
                customer_id="cust-77",
                kind="retail",
                jurisdiction="US-NY",
                currency="USD",
            ),
        ),
        (
            f"{b}: bill it USD 40.00",
            b,
            fact(
                s,
                b,
                "evt-6",
                "invoice.issued",
                invoice_id="inv-7",
                amount=usd(4000),
                due_date="2026-12-01",
            ),
        ),
        (
            f"{b}: the customer pays USD 120.00 by ACH: USD 80.00 too much",
            b,
            fact(
                s,
                b,
                "evt-7",
                "payment.received",
                payment_id=f"{b}-pay-1",
                amount=usd(12000),
                method="ach",
                invoice_id="inv-7",
            ),
        ),
    ]


def dispute_facts(accounts: DemoAccounts) -> list[tuple[str, str, bytes]]:
    """The facts of the disputed account: opened and billed USD 120.00."""
    s, c = accounts.suffix, accounts.dispute
    return [
        (
            f"{c}: open a utility account in USD",
            c,
            fact(
                s,
                c,
                "evt-8",
                "account.opened",
                customer_id="cust-99",
                kind="utility",
                jurisdiction="US-CA",
                currency="USD",
            ),
        ),
        (
            f"{c}: bill it USD 120.00",
            c,
            fact(
                s,
                c,
                "evt-9",
                "invoice.issued",
                invoice_id="inv-9",
                amount=usd(12000),
                due_date="2026-12-15",
            ),
        ),
    ]


def installment_payment(accounts: DemoAccounts, number: int, amount_minor: int) -> bytes:
    """The customer pays one installment of the plan."""
    c = accounts.dispute
    return fact(
        accounts.suffix,
        c,
        f"evt-plan-{number}",
        "payment.received",
        payment_id=f"{c}-installment-{number}",
        amount=usd(amount_minor),
        method="card",
    )


def write_demo_policy(directory: Path) -> Path:
    """The shipped policy with the escrow period shortened (and its version saying so)."""
    shipped = resources.files("ledger").joinpath("policy/default.toml").read_text("utf-8")
    text, periods = re.subn(
        r'(?m)^(\[escrow\]\n(?:#.*\n)*)period = "[^"]*"',
        rf'\1period = "{DEMO_ESCROW_PERIOD}"',
        shipped,
    )
    text, versions = re.subn(r'(?m)^version = "([^"]*)"', r'version = "\1-demo"', text)
    if periods != 1 or versions != 1:
        raise RuntimeError("the shipped policy no longer has one escrow period and one version")
    path = directory / "demo-policy.toml"
    path.write_text(text, "utf-8")
    return path
