"""Staff commands from the CLI: check at once, publish, wait for the outcome.

A staff command is checked here for what can be checked without the account: its shape (the
same parser the account worker uses), the actor's role and authority under the loaded policy
(when the amount is known from the read model), and that its target is in the read model (so a
command never overtakes the fact it refers to). It is then published to `ledger.commands`, keyed
by its account, with the outcome header, and the outcome the account's writer records (in the
same transaction as the events) is awaited, bounded by the timeout.

Exit codes: 0 accepted (or a duplicate of an accepted command), 2 refused (the reason on stderr),
3 no outcome within the timeout (the command id is printed: `--command-id ID` waits again, and
publishing it again is harmless, the account applies a command id once).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson

from ledger import limits
from ledger.domain.policy import ROLES, Policy
from ledger.persistence.database import Database
from ledger.persistence.outcomes import OUTCOMES_TABLE, CommandOutcome, read_outcome
from ledger.schemas.commands import AUTHORITY_ACTIONS, OUTCOME_HEADER, parse_command
from ledger.schemas.inbound import InboundRejected


class StaffRefused(Exception):
    """Refused before or by the account: exit 2 with this one line."""


class NoOutcome(Exception):
    """No outcome within the timeout: exit 3."""


@dataclass(frozen=True)
class StaffCommandRequest:
    """One staff command as the CLI builds it."""

    command_type: str
    account_id: str
    fields: dict[str, Any]
    actor_id: str
    role: str
    command_id: str | None = None

    def document(self) -> dict[str, Any]:
        """The command as published on `ledger.commands`."""
        return {
            "command_id": self.command_id or str(uuid.uuid4()),
            "type": self.command_type,
            "account_id": self.account_id,
            "actor": {"id": self.actor_id, "role": self.role},
            "issued_at": datetime.now(UTC).isoformat(),
            **self.fields,
        }


@dataclass(frozen=True)
class CheckedCommand:
    """A command ready to publish."""

    command_id: str
    account_id: str
    raw: bytes
    body_sha256: str


Authority = tuple[tuple[str, int], ...]
"""What a command needs of the authority table: (action, amount in minor units) pairs."""


def check_command(
    request: StaffCommandRequest,
    policy: Policy,
    amount_minor: int | None,
    *,
    authority: Authority | None = None,
) -> CheckedCommand:
    """The command ready to publish, refused (StaffRefused) if its shape or actor is wrong.

    `authority` names what the command needs when it depends on the command's fields (a plan's
    forgiven part, a dispute decided in the customer's favour); otherwise the command type's own
    action (`AUTHORITY_ACTIONS`) on `amount_minor` is checked."""
    if request.role not in ROLES:
        raise StaffRefused(f"unknown role {request.role!r}: one of {', '.join(ROLES)}")
    raw = orjson.dumps(request.document())
    try:
        command = parse_command(raw)
    except InboundRejected as rejected:
        raise StaffRefused(rejected.reason) from rejected
    if authority is None:
        action = AUTHORITY_ACTIONS.get(request.command_type)
        authority = () if action is None or amount_minor is None else ((action, amount_minor),)
    for action, amount in authority:
        check_authority(request, policy, action, amount)
    return CheckedCommand(command.command_id, command.account_id, raw, command.body_sha256())


def check_authority(
    request: StaffCommandRequest, policy: Policy, action: str, amount_minor: int
) -> None:
    """Refuse (StaffRefused) an action above the actor's authority, naming the roles that may."""
    if policy.may(request.role, action, amount_minor):
        return
    allowed = policy.roles_that_may(action, amount_minor)
    needs = " or ".join(allowed) if allowed else "no role under this policy"
    raise StaffRefused(
        f"unauthorized: {request.actor_id} ({request.role}) may not {action}"
        f" {amount_minor} minor units; needs {needs}"
    )


def check_schema(database: Database) -> None:
    """Refuse at once a database without the ledger's schema (nothing could answer)."""
    if not database.query(lambda cursor: database.has_tables(cursor, (OUTCOMES_TABLE,))):
        raise StaffRefused(
            "the database has no ledger schema: start `ledger run` first, or check"
            " LEDGER_DATABASE_URL"
        )


def wait_for_outcome(
    database: Database,
    account_id: str,
    command_id: str,
    timeout_s: float,
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> CommandOutcome:
    """The command's recorded outcome, polled until the timeout (NoOutcome)."""
    deadline = time.monotonic() + timeout_s
    delay_s = limits.outcome_poll_initial_s
    while True:
        outcome = database.query(lambda cursor: read_outcome(cursor, account_id, command_id))
        if outcome is not None:
            return outcome
        if time.monotonic() >= deadline:
            raise NoOutcome(command_id)
        sleep(min(delay_s, max(0.0, deadline - time.monotonic())))
        delay_s = min(delay_s * 2, limits.outcome_poll_max_s)


def outcome_headers() -> list[tuple[str, bytes]]:
    """The headers of a command whose caller waits for its outcome."""
    return [(OUTCOME_HEADER, b"outcome")]


class CommandProducer(Protocol):
    """What publishing a command needs of a producer (`ResilientProducer` is one)."""

    def send(
        self,
        topic: str,
        *,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]],
    ) -> None:
        """Queue one message."""

    def flush(self) -> None:
        """Deliver every queued message."""


def publish_command(producer: CommandProducer, topic: str, checked: CheckedCommand) -> None:
    """Send a checked command keyed by its account, asking for its outcome, and deliver it."""
    producer.send(
        topic, key=checked.account_id.encode(), value=checked.raw, headers=outcome_headers()
    )
    producer.flush()


def existing_outcome(database: Database, account_id: str, command_id: str) -> CommandOutcome | None:
    """An outcome already recorded for this command id (a retry of a command that timed out)."""
    return database.query(lambda cursor: read_outcome(cursor, account_id, command_id))
