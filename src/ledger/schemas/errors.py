"""Why a message was refused: the `error_kind` header of a dead letter."""

from __future__ import annotations

from typing import Literal

from ledger import limits

ErrorKind = Literal[
    "not_json",
    "contract",
    "unknown_account",
    "domain_rule",
    "unauthorized",
    "too_large",
    "unprocessable",
]
"""Every dead-letter `error_kind` (DESIGN.md, "Topics (the wire contract)").

`unprocessable` is ours: the message passed every check, yet applying or storing it failed for
a reason that is not an outage, alone and again (the reason names the error). It is set aside so
that the partition moves on; it is a bug to report, not a processor's mistake."""


def one_line_reason(text: str) -> str:
    """A refusal's reason as one line of at most `limits.reason_chars_max` (cut with "...")."""
    flat = " ".join(text.split())
    if len(flat) > limits.reason_chars_max:
        return flat[: limits.reason_chars_max - 3] + "..."
    return flat
