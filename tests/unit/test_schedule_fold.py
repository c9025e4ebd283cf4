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


DISPUTE = "A:dp:4"
DAY_END = "2026-12-01T23:59:59.999999+00:00"


def test_dispute_updates_due_moved_by_outbound_contacts_and_updates_done_at_resolution() -> None:
    opened = ("dispute_opened", {"dispute_id": DISPUTE, "update_due": AT})
    inbound = ("dispute_contact_logged", {"dispute_id": DISPUTE, "next_update_due": None})
    outbound = ("dispute_contact_logged", {"dispute_id": DISPUTE, "next_update_due": LATER})
    changes = fold(opened, inbound)
    assert changes.rows[("dispute_update", DISPUTE)][2:] == [
        DISPUTE, "A", AT, 1_795_608_000_000_000, 0, 0,
    ]  # fmt: skip
    assert fold(opened, outbound).rows[("dispute_update", DISPUTE)][4] == LATER
    update = ("dispute_status_update", {"dispute_id": DISPUTE, "next_update_due": LATER})
    assert fold(update).due == {("dispute_update", DISPUTE): (LATER, 1_796_212_800_000_000)}
    resolved = ("dispute_resolved", {"dispute_id": DISPUTE})
    assert fold(opened, resolved).rows[("dispute_update", DISPUTE)][7] == 1
    assert ("dispute_update", DISPUTE) in fold(resolved).done


def test_installments_due_at_the_end_of_their_day_done_when_paid_in_full_or_missed() -> None:
    plan = (
        "dispute_plan_agreed",
        {"dispute_id": DISPUTE, "installments": [["2026-12-01", 4_000], ["2027-01-01", 8_000]]},
    )
    changes = fold(plan)
    first, second = (
        changes.rows[("installment_due", f"{DISPUTE}#0")],
        changes.rows[("installment_due", f"{DISPUTE}#1")],
    )
    assert (first[2], first[4], first[6], first[7]) == (DISPUTE, DAY_END, 1, 0)
    assert (second[4], second[6]) == ("2027-01-01T23:59:59.999999+00:00", 2)
    assert changes.left == {f"{DISPUTE}#0": 4_000, f"{DISPUTE}#1": 8_000}
    partly = ("dispute_installments_paid", {"dispute_id": DISPUTE, "paid": [[0, 1_000, False]]})
    rest = ("dispute_installments_paid", {"dispute_id": DISPUTE, "paid": [[0, 3_000, True]]})
    assert fold(plan, partly).rows[("installment_due", f"{DISPUTE}#0")][7] == 0
    assert fold(plan, partly).left[f"{DISPUTE}#0"] == 3_000
    assert fold(plan, partly, rest).rows[("installment_due", f"{DISPUTE}#0")][7] == 1
    # Installments written by an earlier batch: the amounts paid go out, summed.
    assert fold(partly, rest).paid == {f"{DISPUTE}#0": 4_000}
    missed = ("dispute_installment_missed", {"dispute_id": DISPUTE, "index": 1})
    assert fold(missed).done == {("installment_due", f"{DISPUTE}#1")}
    resolved = ("dispute_resolved", {"dispute_id": DISPUTE})
    done = fold(plan, resolved)
    assert [row[7] for key, row in done.rows.items() if key[0] == "installment_due"] == [1, 1]
    assert ("installment_due", DISPUTE) in done.done_of


def test_deferral_ends_the_day_after_its_date_done_by_its_follow_up() -> None:
    deferred = ("dispute_deferred", {"dispute_id": DISPUTE, "until": "2026-12-01"})
    row = fold(deferred).rows[("deferral_end", DISPUTE)]
    assert (row[2], row[4], row[7]) == (DISPUTE, "2026-12-02T00:00:00+00:00", 0)
    ended = (
        "follow_up_raised",
        {
            "follow_up_id": "A:fu:9",
            "due_at": LATER,
            "reason": "dispute_deferral_ended",
            "subject_id": DISPUTE,
        },
    )
    assert fold(deferred, ended).rows[("deferral_end", DISPUTE)][7] == 1
    assert ("deferral_end", DISPUTE) in fold(ended).done
    plan = ("dispute_plan_agreed", {"dispute_id": DISPUTE, "installments": []})
    assert ("deferral_end", DISPUTE) in fold(plan).done
