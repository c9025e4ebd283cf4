"""One dispute as the staff verbs need it, folded from the account's history in the balances
read model (a stand-in until the open-disputes read model answers the same query)."""

from __future__ import annotations

from typing import Any

from ledger import limits
from ledger.domain.overpayments import account_of
from ledger.persistence.database import Database
from projections.queries import NotFound, history


def dispute(database: Database, dispute_id: str) -> dict[str, Any]:
    """The dispute's kind, status, amounts (minor units), currency and representative."""
    try:
        account_id = account_of(dispute_id)
    except ValueError as error:
        raise NotFound(str(error)) from error
    found: dict[str, Any] | None = None
    for event in history(database, account_id, limit=limits.history_page_max):
        data = event["data"]
        if data.get("dispute_id") != dispute_id:
            continue
        kind = event["type"]
        if kind == "dispute_opened":
            found = {
                "dispute_id": dispute_id,
                "account_id": account_id,
                "kind": data["kind"],
                "channel": data["channel"],
                "status": "open",
                "amount": data["amount_minor"],
                "held": data["held_minor"],
                "paid": data["amount_minor"] - data["held_minor"],
                "currency": data["currency"],
                "rep": None,
                "update_due": data["update_due"],
            }
        elif found is None:
            continue
        elif kind == "dispute_assigned":
            found["rep"] = data["rep"]
        elif kind == "dispute_adjusted":
            found["held"] -= data["amount_minor"]
        elif kind == "dispute_plan_agreed":
            found["held"], found["status"] = 0, "plan"
        elif kind == "dispute_deferred":
            found["status"] = "deferred"
        elif kind == "dispute_resolved":
            found["held"], found["status"] = 0, "resolved"
    if found is None:
        raise NotFound(f"unknown dispute {dispute_id!r} (not in the read model)")
    return found
