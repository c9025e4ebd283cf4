"""The overpayments read model's name, tables and columns: what its queries need, without its
writing code (which imports the event store's types)."""

from __future__ import annotations

NAME = "overpayments"

OVERPAYMENTS = "rm_overpayments"
OVERPAYMENT_EVENTS = "rm_overpayment_events"
TABLES = (OVERPAYMENTS, OVERPAYMENT_EVENTS)
OPEN_INDEX = "rm_overpayments_open"

OVERPAYMENT_COLUMNS = (
    "overpayment_id",
    "account_id",
    "payment_id",
    "currency",
    "amount",
    "status",
    "is_open",
    "departments",
    "verifications",
    "rejection",
    "resolution",
    "resolved_automatically",
    "places",
    "refunds",
    "escrow_expires_at",
    "escrow_released_to",
    "coupon_code",
    "policy_version",
    "detected_at",
    "updated_at",
)
"""Every column of `rm_overpayments`, in order; JSON columns hold text (see `JSON_COLUMNS`)."""

JSON_COLUMNS = frozenset({"departments", "verifications", "rejection", "places", "refunds"})

OVERPAYMENT_PG_TYPES = (
    "text",
    "text",
    "text",
    "text",
    "bigint",
    "text",
    "boolean",
    "text",
    "text",
    "text",
    "text",
    "boolean",
    "text",
    "text",
    "text",
    "text",
    "text",
    "text",
    "text",
    "text",
)

EVENT_COLUMNS = (
    "overpayment_id",
    "position",
    "account_id",
    "version",
    "type",
    "occurred_at",
    "data",
    "postings",
)
EVENT_PG_TYPES = ("text", "bigint", "text", "integer", "text", "text", "text", "text")
