"""The CLI's staff verbs: `ledger overpayments verify|reject|resolve`, `ledger refunds retry`,
`ledger escrow release` (registered on `ledger.cli`'s apps; see `ledger.staff` for the flow);
the dispute verbs are in `ledger.cli_disputes`.

Exit codes: 0 accepted, 2 refused (the reason on stderr), 3 no outcome within `--timeout` (the
command id is printed; run the same command with `--command-id ID` to wait again).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

import typer

from ledger import limits
from ledger.cli import (
    JsonOption,
    Refused,
    app,
    open_for_query,
    overpayments_app,
    print_json,
    say,
    settings_and_logging,
)
from ledger.persistence.database import Database

refunds_app = typer.Typer(help="Refunds: retry a failed one by hand.", rich_markup_mode=None)
app.add_typer(refunds_app, name="refunds")
escrow_app = typer.Typer(help="Escrow holds: release one.", rich_markup_mode=None)
app.add_typer(escrow_app, name="escrow")

ActorOption = Annotated[
    str | None, typer.Option("--actor", help="Who acts (default: LEDGER_ACTOR).")
]
RoleOption = Annotated[
    str | None, typer.Option("--role", help="Their role (default: LEDGER_ROLE).")
]
CommandIdOption = Annotated[
    str | None,
    typer.Option("--command-id", help="The command's id (a UUID): reuse one to wait again."),
]
CommandTimeoutOption = Annotated[
    float, typer.Option("--timeout", help="Longest wait in seconds for the outcome.")
]

Authority = tuple[tuple[str, int], ...]
"""(action, amount in minor units) pairs a command needs of the authority table."""


@dataclass(frozen=True)
class Target:
    """What the read model says a command needs: fields only it can give (amounts in the
    target's currency) and the authority the command needs (None: its type's own action)."""

    fields: dict[str, Any] = field(default_factory=dict)
    authority: Authority | None = None


Lookup = Callable[[Database], int | Target]
"""Finds the command's target in the read model (refused if absent): the amount at stake, or
what the command needs (`Target`)."""


def _overpayment_amount(overpayment_id: str, place: str | None) -> Lookup:
    def lookup(database: Database) -> int:
        from projections import overpayment_queries
        from projections.queries import NotFound

        try:
            row = overpayment_queries.overpayment(database, overpayment_id)
        except NotFound as error:
            raise Refused(f"{error}: wait for it (`ledger overpayments --wait`)") from error
        amount: int = row["amount"] if place is None else row["places"].get(place, 0)
        return amount

    return lookup


def _refund_amount(refund_id: str) -> Lookup:
    def lookup(database: Database) -> int:
        from ledger.domain.overpayments import account_of
        from projections import overpayment_queries

        for row in overpayment_queries.overpayments(database, account_id=account_of(refund_id))[
            "overpayments"
        ]:
            for refund in row["refunds"]:
                if refund["refund_id"] == refund_id:
                    amount: int = refund["amount"]
                    return amount
        raise Refused(f"unknown refund {refund_id!r} (not in the read model)")

    return lookup


def submit(
    command_type: str,
    item_id: str,
    fields: dict[str, Any],
    lookup: Lookup,
    *,
    actor: str | None,
    role: str | None,
    command_id: str | None,
    timeout: float,
    json_output: bool,
    account_id: str | None = None,
) -> None:
    """Check, publish and wait for one staff command; exit with the design's codes.

    `account_id` is the target's account when `item_id` is not an id that embeds it."""
    from ledger.domain.overpayments import account_of
    from ledger.kafka.clients import ResilientProducer
    from ledger.kafka.topics import LEDGER_COMMANDS
    from ledger.policy_file import load_policy
    from ledger.staff import (
        NoOutcome,
        StaffCommandRequest,
        StaffRefused,
        check_command,
        check_schema,
        existing_outcome,
        publish_command,
        wait_for_outcome,
    )

    settings = settings_and_logging()
    actor = actor or settings.actor
    role = role or settings.role
    if not actor or not role:
        raise Refused("who acts? pass --actor and --role, or set LEDGER_ACTOR and LEDGER_ROLE")
    if account_id is None:
        try:
            account_id = account_of(item_id)
        except ValueError as error:
            raise Refused(str(error)) from error
    policy = load_policy(settings.policy)
    database = open_for_query(settings.database_url)
    try:
        check_schema(database)
        found = lookup(database)
        target = found if isinstance(found, Target) else Target()
        request = StaffCommandRequest(
            command_type,
            account_id,
            {**fields, **target.fields},
            actor,
            role,
            command_id=command_id,
        )
        amount = found if isinstance(found, int) else None
        checked = check_command(request, policy, amount, authority=target.authority)
        outcome = None
        if command_id is not None:
            outcome = existing_outcome(database, account_id, checked.command_id)
            if outcome is not None and outcome.body_sha256 != checked.body_sha256:
                raise Refused(f"command id {command_id} was used already for another command")
        if outcome is None:
            from ledger.cli import _bootstrap

            producer = ResilientProducer(_bootstrap(settings))
            try:
                publish_command(producer, LEDGER_COMMANDS, checked)
            finally:
                producer.close()
            outcome = wait_for_outcome(database, account_id, checked.command_id, timeout)
    except StaffRefused as refused:
        raise Refused(str(refused)) from refused
    except NoOutcome:
        say(
            f"no outcome within {timeout:g}s for command {checked.command_id}: it was published"
            f" and will be applied once; to wait again, run the same command with"
            f" --command-id {checked.command_id}"
        )
        sys.exit(3)
    finally:
        database.close()
    if json_output:
        print_json(outcome.public())
    if outcome.status == "refused":
        say(f"ledger: refused: {outcome.reason}")
        sys.exit(2)
    if not json_output:
        versions = ", ".join(str(v) for v in outcome.versions) or "none"
        say(f"{outcome.status}: {command_type} {item_id} (events at versions {versions})")


@overpayments_app.command("verify")
def overpayments_verify(
    overpayment_id: Annotated[str, typer.Argument(metavar="ID")],
    department: Annotated[str, typer.Option("--department", help="Who verifies.")],
    note: Annotated[str | None, typer.Option("--note")] = None,
    actor: ActorOption = None,
    role: RoleOption = None,
    command_id: CommandIdOption = None,
    timeout: CommandTimeoutOption = limits.staff_command_timeout_s,
    json_output: JsonOption = False,
) -> None:
    """Verify an overpayment for one department."""
    fields: dict[str, Any] = {"overpayment_id": overpayment_id, "department": department}
    if note is not None:
        fields["note"] = note
    submit(
        "overpayment.verify",
        overpayment_id,
        fields,
        _overpayment_amount(overpayment_id, None),
        actor=actor,
        role=role,
        command_id=command_id,
        timeout=timeout,
        json_output=json_output,
    )


@overpayments_app.command("reject")
def overpayments_reject(
    overpayment_id: Annotated[str, typer.Argument(metavar="ID")],
    department: Annotated[str, typer.Option("--department", help="Who rejects.")],
    reason: Annotated[str, typer.Option("--reason", help="Why.")],
    actor: ActorOption = None,
    role: RoleOption = None,
    command_id: CommandIdOption = None,
    timeout: CommandTimeoutOption = limits.staff_command_timeout_s,
    json_output: JsonOption = False,
) -> None:
    """Reject an overpayment: its money stays as credit against future invoices."""
    submit(
        "overpayment.reject",
        overpayment_id,
        {"overpayment_id": overpayment_id, "department": department, "reason": reason},
        _overpayment_amount(overpayment_id, None),
        actor=actor,
        role=role,
        command_id=command_id,
        timeout=timeout,
        json_output=json_output,
    )


@overpayments_app.command("resolve")
def overpayments_resolve(
    overpayment_id: Annotated[str, typer.Argument(metavar="ID")],
    resolution: Annotated[
        str,
        typer.Option(
            "--as", help="credit, refund, escrow, coupon, store-credit or cancel-and-refund."
        ),
    ],
    legal_level: Annotated[
        str | None,
        typer.Option("--legal-basis", help="cancel-and-refund: local, state or federal."),
    ] = None,
    legal_reference: Annotated[
        str | None, typer.Option("--legal-reference", help="cancel-and-refund: the law cited.")
    ] = None,
    actor: ActorOption = None,
    role: RoleOption = None,
    command_id: CommandIdOption = None,
    timeout: CommandTimeoutOption = limits.staff_command_timeout_s,
    json_output: JsonOption = False,
) -> None:
    """Resolve a verified overpayment by one option the policy allows for the account."""
    fields: dict[str, Any] = {
        "overpayment_id": overpayment_id,
        "resolution": resolution.replace("-", "_"),
    }
    if legal_level is not None or legal_reference is not None:
        fields["legal_basis"] = {"level": legal_level, "reference": legal_reference}
    submit(
        "overpayment.resolve",
        overpayment_id,
        fields,
        _overpayment_amount(overpayment_id, "credit"),
        actor=actor,
        role=role,
        command_id=command_id,
        timeout=timeout,
        json_output=json_output,
    )


@refunds_app.command("retry")
def refunds_retry(
    refund_id: Annotated[str, typer.Argument(metavar="ID")],
    actor: ActorOption = None,
    role: RoleOption = None,
    command_id: CommandIdOption = None,
    timeout: CommandTimeoutOption = limits.staff_command_timeout_s,
    json_output: JsonOption = False,
) -> None:
    """Send a failed refund again, to the same payment method."""
    submit(
        "refund.retry",
        refund_id,
        {"refund_id": refund_id},
        _refund_amount(refund_id),
        actor=actor,
        role=role,
        command_id=command_id,
        timeout=timeout,
        json_output=json_output,
    )


@escrow_app.command("release")
def escrow_release(
    overpayment_id: Annotated[str, typer.Argument(metavar="ID")],
    to: Annotated[str, typer.Option("--to", help="refund, credit or escheat.")],
    actor: ActorOption = None,
    role: RoleOption = None,
    command_id: CommandIdOption = None,
    timeout: CommandTimeoutOption = limits.staff_command_timeout_s,
    json_output: JsonOption = False,
) -> None:
    """Release an overpayment's escrow hold."""
    submit(
        "escrow.release",
        overpayment_id,
        {"overpayment_id": overpayment_id, "to": to},
        _overpayment_amount(overpayment_id, "escrow"),
        actor=actor,
        role=role,
        command_id=command_id,
        timeout=timeout,
        json_output=json_output,
    )


import ledger.cli_disputes  # noqa: E402, F401  (registers the dispute verbs)
