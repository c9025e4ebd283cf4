"""The schedule read model's rules, event by event, with nothing running."""

from __future__ import annotations

from typing import Any

from projections.schedule import Changes, fold_event

AT = "2026-11-25T12:00:00+00:00"
LATER = "2026-12-02T12:00:00+00:00"


def fold(*events: tuple[str, dict[str, Any]]) -> Changes:
    changes = Changes()
    for type_name, fields in events:
        fold_event(changes, type_name, {"account_id": "A", **fields})
    return changes


def test_follow_up_raised_moved_and_closed() -> None:
    raised = ("follow_up_raised", {"follow_up_id": "A:fu:9", "due_at": AT})
    changes = fold(raised, ("follow_up_due", {"follow_up_id": "A:fu:9", "due_at": LATER}))
    assert changes.rows[("follow_up", "A:fu:9")][2:] == [
        "A:fu:9",
        "A",
        LATER,
        1_796_212_800_000_000,
        0,
        0,
    ]
    closed = fold(raised, ("follow_up_closed", {"follow_up_id": "A:fu:9"}))
    assert closed.rows[("follow_up", "A:fu:9")][7] == 1
    # An item written by an earlier batch: only the change goes out.
    later = fold(("follow_up_due", {"follow_up_id": "A:fu:9", "due_at": LATER}))
    assert later.due == {("follow_up", "A:fu:9"): (LATER, 1_796_212_800_000_000)}
    assert fold(("follow_up_closed", {"follow_up_id": "A:fu:9"})).done == {("follow_up", "A:fu:9")}


def test_refund_retry_done_when_its_money_leaves_refund_failed() -> None:
    failed = (
        "refund_failed",
        {
            "refund_id": "A:rf:5",
            "overpayment_id": "A:op:3",
            "attempt": 1,
            "retry_at": AT,
            "moves": [["A:op:3", "refund_in_flight", "refund_failed", 700]],
        },
    )
    retried = (
        "refund_requested",
        {"moves": [["A:op:3", "refund_failed", "refund_in_flight", 700]]},
    )
    failed_again = (
        "refund_failed",
        {
            "refund_id": "A:rf:7",
            "overpayment_id": "A:op:3",
            "attempt": 2,
            "retry_at": LATER,
            "moves": [["A:op:3", "refund_in_flight", "refund_failed", 700]],
        },
    )
    assert fold(failed, retried).rows[("refund_retry", "A:op:3")][7] == 1
    row = fold(failed, retried, failed_again).rows[("refund_retry", "A:op:3")]
    assert (row[2], row[6], row[7]) == ("A:rf:7", 2, 0)
    # Escheated while waiting for its retry: nothing left to retry.
    escheated = ("credit_escheated", {"moves": [["A:op:3", "refund_failed", "escheated", 700]]})
    assert fold(escheated).done == {("refund_retry", "A:op:3")}


def test_dormancy_tracks_activity_and_owed_credit() -> None:
    changes = fold(
        (
            "account_opened",
            {"jurisdiction": "US-NY", "reported_at": "2026-11-01T00:00:00+00:00"},
        ),
        (
            "payment_received",
            {
                "reported_at": "2026-11-20T00:00:00+00:00",
                "postings": [
                    {"debit": "cash", "credit": "customer_credit", "amount_minor": 900},
                ],
            },
        ),
        # A late fact never moves the activity back.
        ("payment_received", {"reported_at": "2026-11-10T00:00:00+00:00"}),
        (
            "overpayment_resolved",
            {
                "overpayment_id": "A:op:3",
                "escrow_expires_at": LATER,
                "postings": [{"debit": "customer_credit", "credit": "escrow", "amount_minor": 900}],
            },
        ),
    )
    assert changes.dormancy["A"] == [
        "A",
        "US-NY",
        "2026-11-20T00:00:00+00:00",
        1_795_132_800_000_000,
        900,
        0,
    ]
    assert changes.rows[("escrow_expiry", "A:op:3")][4] == LATER
    assert changes.done == {("self_correction", "A:op:3")}
