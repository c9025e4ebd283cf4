"""The customer's dispute notifications, built from events' public JSON with nothing running."""

from __future__ import annotations

from typing import Any

import pytest

from ledger import dispute_notifications as dn
from ledger.domain.dispute_events import PERSONAL_FIELDS
from ledger.outbox import ROUTES

AT = "2026-11-25T12:00:00+00:00"


def public(type_name: str, **fields: Any) -> dict[str, Any]:
    return {
        "type": type_name,
        "account_id": "A",
        "version": 7,
        "occurred_at": AT,
        "dispute_id": "A:dp:3",
        "actor_id": "ann",
        "actor_role": "agent",
        "policy_version": "test-1",
        "postings": [],
        **fields,
    }


def test_opened_names_the_next_step_and_the_next_update() -> None:
    billing = public(
        "dispute_opened", kind="billing", amount_minor=12_000, currency="USD",
        update_due="2026-11-28T12:00:00+00:00", reason="billed twice",
    )  # fmt: skip
    assert dn.dispute_opened(billing) == {
        "notification_id": "A:7:dispute_status",
        "account_id": "A",
        "template": "dispute_status",
        "dispute_id": "A:dp:3",
        "status": "open",
        "next_step": "a representative reviews the dispute",
        "next_at": "2026-11-28T12:00:00+00:00",
        "amount": {"value": 12_000, "currency": "USD"},
        "requested_at": AT,
    }
    chargeback = {**billing, "kind": "chargeback"}
    assert dn.dispute_opened(chargeback)["next_step"] == "the processor decides the chargeback"


def test_plan_deferral_update_and_resolution() -> None:
    postings = [
        {"debit": "receivable", "credit": "dispute_hold", "amount": 12_000, "currency": "USD"}
    ]
    plan = public(
        "dispute_plan_agreed", installments=[["2026-12-01", 4_000], ["2027-01-01", 8_000]],
        forgiven_minor=0, postings=postings,
    )  # fmt: skip
    request = dn.plan_agreed(plan)
    assert (request["status"], request["next_at"], request["installments"]) == (
        "plan",
        "2026-12-01",
        2,
    )
    assert request["next_amount"] == {"value": 4_000, "currency": "USD"}
    deferred = dn.dispute_deferred(public("dispute_deferred", until="2026-12-10"))
    assert (deferred["status"], deferred["next_at"]) == ("deferred", "2026-12-10")
    update = dn.status_update(
        public(
            "dispute_status_update", status="plan", next_step="pay the next installment",
            next_update_due="2026-12-01T12:00:00+00:00",
        )
    )  # fmt: skip
    assert (update["status"], update["next_step"], update["next_at"]) == (
        "plan", "pay the next installment", "2026-12-01T12:00:00+00:00",
    )  # fmt: skip
    resolved = dn.dispute_resolved(
        public("dispute_resolved", outcome="customer_favour", settlement="refund")
    )
    assert (resolved["status"], resolved["outcome"], resolved["next_at"]) == (
        "resolved", "customer_favour", None,
    )  # fmt: skip
    assert "refunded" in resolved["next_step"]
    withdrawn = dn.dispute_resolved(
        public("dispute_resolved", outcome="withdrawn", settlement=None)
    )
    assert withdrawn["next_step"] == "nothing: the dispute is closed"


@pytest.mark.parametrize(
    "type_name",
    [
        "dispute_opened",
        "dispute_plan_agreed",
        "dispute_deferred",
        "dispute_status_update",
        "dispute_resolved",
    ],
)
def test_every_status_change_is_routed_and_copies_no_personal_field(type_name: str) -> None:
    (route,) = ROUTES[type_name]
    assert (route.topic, route.id_field) == ("ledger.notifications", "notification_id")
    # Even were a personal field in the public JSON, the builder copies named fields only.
    event = public(
        type_name, kind="billing", amount_minor=1, currency="USD", update_due=AT,
        installments=[["2026-12-01", 1]], until="2026-12-10", status="open", next_step="x",
        next_update_due=AT, outcome="upheld", settlement=None,
        **{field: "the customer's words" for field in PERSONAL_FIELDS},
    )  # fmt: skip
    message = route.message(event)
    assert message is not None
    assert not PERSONAL_FIELDS & set(message)
    assert "the customer's words" not in str(message)


def test_escalations_and_contacts_notify_nobody() -> None:
    assert "dispute_escalated" not in ROUTES
    assert "dispute_contact_logged" not in ROUTES
