"""Staff commands' outcomes: recorded by the account's writer in the same transaction as the
events a command produced (or the refusal), keyed by (account id, command id).

The row is also the command's idempotency key: a command whose key has a row is not applied
again (the same body) or is refused as `contract` (another body under the same id). The CLI
reads it to answer a staff command (`read_outcome`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

import orjson

from ledger.persistence.database import Cursor

OUTCOMES_TABLE: Final = "ledger_command_outcomes"

OutcomeStatus = Literal["accepted", "refused", "noop"]
"""accepted: applied, with the versions of its events; refused: with the kind and reason;
noop: a scheduler firing that had become stale (nothing to do, nothing wrong)."""

OutcomeKey = tuple[str, str]
"""(account id, command id)."""

COLUMNS: Final = (
    "account_id",
    "command_id",
    "command_type",
    "body_sha256",
    "status",
    "error_kind",
    "reason",
    "versions",
    "recorded_at",
)


def create_table_sql(qualified_name: str) -> str:
    """The table's DDL (the same text serves SQLite and PostgreSQL)."""
    return (
        f"CREATE TABLE IF NOT EXISTS {qualified_name} ("
        "account_id TEXT NOT NULL, command_id TEXT NOT NULL, command_type TEXT NOT NULL,"
        " body_sha256 TEXT NOT NULL, status TEXT NOT NULL, error_kind TEXT, reason TEXT,"
        " versions TEXT NOT NULL, recorded_at TEXT NOT NULL,"
        " PRIMARY KEY (account_id, command_id))"
    )


@dataclass(frozen=True, slots=True)
class CommandOutcome:
    """What became of one staff command."""

    account_id: str
    command_id: str
    command_type: str
    body_sha256: str
    status: OutcomeStatus
    error_kind: str | None
    reason: str | None
    versions: tuple[int, ...]
    recorded_at: str

    @property
    def key(self) -> OutcomeKey:
        """Its idempotency key."""
        return (self.account_id, self.command_id)

    def row(self) -> tuple[Any, ...]:
        """The table row, in `COLUMNS` order."""
        return (
            self.account_id,
            self.command_id,
            self.command_type,
            self.body_sha256,
            self.status,
            self.error_kind,
            self.reason,
            orjson.dumps(list(self.versions)).decode(),
            self.recorded_at,
        )

    @classmethod
    def from_row(cls, row: Any) -> CommandOutcome:
        """An outcome read back from the table."""
        values = dict(zip(COLUMNS, tuple(row), strict=True))
        values["versions"] = tuple(orjson.loads(values["versions"]))
        return cls(**values)

    def public(self) -> dict[str, Any]:
        """The outcome as JSON for people and programs."""
        return {
            "command_id": self.command_id,
            "account_id": self.account_id,
            "type": self.command_type,
            "status": self.status,
            "error_kind": self.error_kind,
            "reason": self.reason,
            "versions": list(self.versions),
            "recorded_at": self.recorded_at,
        }


def read_outcome(cursor: Cursor, account_id: str, command_id: str) -> CommandOutcome | None:
    """The recorded outcome of one command, or None while it has none."""
    cursor.execute(
        f"SELECT {', '.join(COLUMNS)} FROM {OUTCOMES_TABLE}"
        " WHERE account_id = %s AND command_id = %s",
        (account_id, command_id),
    )
    row = cursor.fetchone()
    return None if row is None else CommandOutcome.from_row(row)
