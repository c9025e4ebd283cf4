"""`ledger demo`'s closing tables: what the ledger recorded, where the money is, the books."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from ledger.domain.money import Money
from ledger.domain.postings import LedgerAccount


def _money(amount_minor: int, currency: str) -> str:
    return str(Money(amount_minor, currency))


def print_summary(summary: dict[str, Any], out: Console) -> None:
    """The history, balances, trial balance and follow-up queue at the end of the demo."""
    for account_id, events in summary["history"].items():
        table = Table(title=f"what the ledger recorded for {account_id}")
        for column in ("version", "event", "postings (debit / credit)"):
            table.add_column(column)
        for event in events:
            postings = "; ".join(
                f"{p['debit']} / {p['credit']} {_money(p['amount'], p['currency'])}"
                for p in event["postings"]
            )
            table.add_row(str(event["version"]), event["type"], postings or "-")
        out.print(table)
    balances = summary["balances"]
    table = Table(title="balances (natural side)")
    table.add_column("ledger account")
    for account_id in balances:
        table.add_column(account_id, justify="right")
    for ledger_account in LedgerAccount:
        amounts = [b[ledger_account.value] for b in balances.values()]
        if any(amounts):
            table.add_row(
                ledger_account.value,
                *(
                    _money(n, b["currency"])
                    for n, b in zip(amounts, balances.values(), strict=True)
                ),
            )
    out.print(table)
    owed = {
        account_id: _money(b["customer_credit"] + b["escrow"] + b["refund_clearing"], b["currency"])
        for account_id, b in balances.items()
    }
    out.print(
        "still owed to the customers (customer_credit, escrow, refund_clearing): "
        + ", ".join(f"{account_id} {amount}" for account_id, amount in owed.items()),
        highlight=False,
    )
    totals = {
        currency: _money(entry["total"], currency)
        for currency, entry in summary["trial_balance"]["currencies"].items()
    }
    out.print(
        "[bold]trial balance[/bold] (debits minus credits, every account): "
        + ", ".join(f"total {total}" for total in totals.values()),
        highlight=False,
    )
    queue = summary["follow_ups"]["follow_ups"]
    out.print(
        f"[bold]follow-up queue[/bold]: {len(queue)} open"
        + ("" if queue else " (nothing left for staff to chase)"),
        highlight=False,
    )
    for letter in summary["dead_letters"]:
        out.print(
            f"[yellow]dead letter[/yellow] ({letter.get('error_kind')}): "
            f"{letter.get('error_reason')}",
            highlight=False,
        )
