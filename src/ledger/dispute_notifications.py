"""The customer's notification of a dispute's status, built from the event's public JSON.

Each status change (opened, plan agreed, deferred, resolved) and each status update the policy's
schedule makes due tells the customer where the dispute stands, what happens next and when. The
request names only the dispute's facts: never the customer's own words (the event's personal
fields are not in its public JSON, and this builder copies named fields only).
"""

from __future__ import annotations

from typing import Any, Final

TEMPLATE: Final = "dispute_status"

_RESOLVED_NEXT: Final[dict[str | None, str]] = {
    "refund": "what you paid is refunded to your payment method",
    "credit": "what you paid is kept as credit on your account",
    None: "nothing: the dispute is closed",
}


def _request(
    public: dict[str, Any], status: str, next_step: str, next_at: str | None
) -> dict[str, Any]:
    return {
        "notification_id": f"{public['account_id']}:{public['version']}:{TEMPLATE}",
        "account_id": public["account_id"],
        "template": TEMPLATE,
        "dispute_id": public["dispute_id"],
        "status": status,
        "next_step": next_step,
        "next_at": next_at,
        "requested_at": public["occurred_at"],
    }


def dispute_opened(public: dict[str, Any]) -> dict[str, Any]:
    """Opened: who decides next, and when the customer hears from us next."""
    next_step = (
        "the processor decides the chargeback"
        if public["kind"] == "chargeback"
        else "a representative reviews the dispute"
    )
    request = _request(public, "open", next_step, public["update_due"])
    request["amount"] = {"value": public["amount_minor"], "currency": public["currency"]}
    return request


def plan_agreed(public: dict[str, Any]) -> dict[str, Any]:
    """A plan: the first installment, its date and amount."""
    due, amount_minor = public["installments"][0]
    request = _request(public, "plan", "pay the next installment", due)
    currency = public["postings"][0]["currency"] if public["postings"] else None
    request["installments"] = len(public["installments"])
    request["next_amount"] = {"value": amount_minor, "currency": currency}
    return request


def dispute_deferred(public: dict[str, Any]) -> dict[str, Any]:
    """Deferred: payment waits until the date."""
    return _request(public, "deferred", "payment is deferred until this date", public["until"])


def status_update(public: dict[str, Any]) -> dict[str, Any]:
    """A scheduled update: where it stands, the next step, the next update."""
    return _request(public, public["status"], public["next_step"], public["next_update_due"])


def dispute_resolved(public: dict[str, Any]) -> dict[str, Any]:
    """Resolved: the outcome and what happens to any money paid."""
    next_step = _RESOLVED_NEXT.get(public["settlement"], _RESOLVED_NEXT[None])
    request = _request(public, "resolved", next_step, None)
    request["outcome"] = public["outcome"]
    return request
