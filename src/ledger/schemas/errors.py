"""Why a message was refused: the `error_kind` header of a dead letter."""

from __future__ import annotations

from typing import Literal

ErrorKind = Literal[
    "not_json", "contract", "unknown_account", "domain_rule", "unauthorized", "too_large"
]
"""Every dead-letter `error_kind` (DESIGN.md, "Topics (the wire contract)")."""
