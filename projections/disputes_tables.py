"""The disputes read model's name, tables and columns: what its queries need, without its
writing code (which imports the event store's types)."""

from __future__ import annotations

NAME = "disputes"

DISPUTES = "rm_disputes"
DISPUTE_EVENTS = "rm_dispute_events"
TABLES = (DISPUTES, DISPUTE_EVENTS)
OPEN_INDEX = "rm_disputes_open"
REP_INDEX = "rm_disputes_rep"

DISPUTE_COLUMNS = (
    "dispute_id",
    "account_id",
    "external_id",
    "kind",
    "channel",
    "reason",
    "invoice_id",
    "payment_id",
    "amount",
    "held",
    "adjusted",
    "currency",
    "status",
    "is_open",
    "rep",
    "reps",
    "escalated_to",
    "escalated_at",
    "opened_at",
    "respond_by",
    "first_response_due",
    "first_response_at",
    "update_due",
    "resolution_due",
    "resolved_at",
    "outcome",
    "settlement",
    "contacts",
    "last_contact_at",
    "next_step",
    "plan",
    "forgiven",
    "deferred_until",
    "feedback_score",
    "follow_ups",
    "policy_version",
    "updated_at",
)
"""Every column of `rm_disputes`, in order; JSON columns hold text (see `JSON_COLUMNS`)."""

JSON_COLUMNS = frozenset({"reps", "plan", "follow_ups"})
INTEGER_COLUMNS = frozenset({"amount", "held", "adjusted", "contacts", "forgiven"})

DISPUTE_PG_TYPES = tuple(
    "boolean"
    if column == "is_open"
    else "bigint"
    if column in INTEGER_COLUMNS
    else "integer"
    if column == "feedback_score"
    else "text"
    for column in DISPUTE_COLUMNS
)

EVENT_COLUMNS = (
    "dispute_id",
    "position",
    "account_id",
    "version",
    "type",
    "occurred_at",
    "data_with_personal",
    "postings",
)
"""The dispute's story, event by event. `data_with_personal` keeps the customer's words (the
fields `PERSONAL_FIELDS` names): this table is the staff's view, never published."""
EVENT_PG_TYPES = ("text", "bigint", "text", "integer", "text", "text", "text", "text")
