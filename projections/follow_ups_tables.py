"""The follow-up queue's name, tables and columns: what its queries need, without its writing
code (which imports the event store's types)."""

from __future__ import annotations

NAME = "follow_ups"

FOLLOW_UPS = "rm_follow_ups"
FOLLOW_UP_ACCOUNTS = "rm_follow_up_accounts"
FOLLOW_UP_HOLDS = "rm_follow_up_holds"
TABLES = (FOLLOW_UPS, FOLLOW_UP_ACCOUNTS, FOLLOW_UP_HOLDS)
QUEUE_INDEX = "rm_follow_ups_queue"
SUBJECT_INDEX = "rm_follow_ups_subject"

FOLLOW_UP_COLUMNS = (
    "follow_up_id",
    "account_id",
    "reason",
    "subject_id",
    "due_at",
    "due_us",
    "owner",
    "contacts",
    "escalated",
    "status",
    "owed_account",
    "owed",
    "currency",
    "raised_at",
    "closed_at",
    "closed_reason",
)
"""Every column of `rm_follow_ups`, in order (`due_us`: `due_at` in epoch microseconds)."""

FOLLOW_UP_PG_TYPES = (
    "text",
    "text",
    "text",
    "text",
    "text",
    "bigint",
    "text",
    "integer",
    "boolean",
    "text",
    "text",
    "bigint",
    "text",
    "text",
    "text",
    "text",
)

ACCOUNT_COLUMNS = ("account_id", "currency", "receivable", "customer_credit")
"""What the queue knows of each account: its currency and the two balances a follow-up may be
about, each as debits minus credits in minor units."""
ACCOUNT_PG_TYPES = ("text", "text", "bigint", "bigint")

HOLD_COLUMNS = ("dispute_id", "held")
"""What the queue knows of each dispute: what it holds on `dispute_hold` (minor units), from
the postings of the events that name it."""
HOLD_PG_TYPES = ("text", "bigint")
