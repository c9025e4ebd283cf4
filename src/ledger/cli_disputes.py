"""The CLI's dispute verbs: `ledger disputes open|assign|log|plan|defer|escalate|adjust|resolve|
feedback` (the same flow as the overpayment verbs: `ledger.cli_staff.submit`).

Amounts are typed in the currency's major unit and converted by its own exponent (the account's
currency for `open`, the dispute's for the others); more decimals than the currency has are
refused. A verb above the actor's authority is refused at once, naming the roles that may take it:
`adjust` (the amount), `plan` (the installments) and `write_off` (any part forgiven), and
`resolve --outcome customer-favour` (`write_off` of what is held and what was paid).
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

import typer

from ledger import limits
from ledger.cli import JsonOption, Refused, disputes_app
from ledger.cli_staff import (
    ActorOption,
    CommandIdOption,
    CommandTimeoutOption,
    Lookup,
    RoleOption,
    Target,
    submit,
)
from ledger.persistence.database import Database

ChannelOption = Annotated[str, typer.Option("--channel", help="phone, email, chat or social.")]


def _minor(text: str, currency: str, what: str) -> int:
    """An amount typed in major units as minor units of `currency` (refused if malformed)."""
    from ledger.domain.money import MoneyError, parse_major_units

    try:
        return parse_major_units(text, currency)
    except (MoneyError, ValueError) as error:
        raise Refused(f"{what}: {error}") from error


def _date(text: str, what: str) -> str:
    """An ISO date typed on the command line (refused if it is not one)."""
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError as error:
        raise Refused(f"{what}: {text!r} is not a date (YYYY-MM-DD)") from error


def _dispute(database: Database, dispute_id: str) -> dict[str, Any]:
    """The dispute in the read model (refused, saying to wait for it, if it is not there)."""
    from projections import dispute_queries
    from projections.queries import NotFound

    try:
        return dispute_queries.dispute(database, dispute_id)
    except NotFound as error:
        raise Refused(f"{error}: wait for it (`ledger disputes --wait`)") from error


def _exists(dispute_id: str) -> Lookup:
    def lookup(database: Database) -> Target:
        _dispute(database, dispute_id)
        return Target(authority=())

    return lookup


def _send(
    command_type: str,
    dispute_id: str,
    fields: dict[str, Any],
    lookup: Lookup,
    actor: str | None,
    role: str | None,
    command_id: str | None,
    timeout: float,
    json_output: bool,
) -> None:
    submit(
        command_type,
        dispute_id,
        {"dispute_id": dispute_id, **fields},
        lookup,
        actor=actor,
        role=role,
        command_id=command_id,
        timeout=timeout,
        json_output=json_output,
    )


@disputes_app.command("open")
def disputes_open(
    account_id: Annotated[str, typer.Argument(metavar="ACCOUNT")],
    channel: ChannelOption,
    reason: Annotated[str, typer.Option("--reason", help="What the customer disputes.")],
    amount: Annotated[str, typer.Option("--amount", help="Disputed, in major units: 120.00.")],
    currency: Annotated[str, typer.Option("--currency", help="The account's currency.")],
    invoice_id: Annotated[str | None, typer.Option("--invoice", help="The bill.")] = None,
    payment_id: Annotated[str | None, typer.Option("--payment", help="The payment.")] = None,
    actor: ActorOption = None,
    role: RoleOption = None,
    command_id: CommandIdOption = None,
    timeout: CommandTimeoutOption = limits.staff_command_timeout_s,
    json_output: JsonOption = False,
) -> None:
    """Open a dispute a customer raised on a channel (chargebacks come from the processor)."""
    if invoice_id is not None and payment_id is not None:
        raise Refused("a dispute names an invoice or a payment, not both")
    amount_minor = _minor(amount, currency, "--amount")
    fields: dict[str, Any] = {
        "channel": channel,
        "reason": reason,
        "amount": {"value": amount_minor, "currency": currency},
    }
    if invoice_id is not None:
        fields["invoice_id"] = invoice_id
    if payment_id is not None:
        fields["payment_id"] = payment_id

    def lookup(database: Database) -> Target:
        from projections import queries

        try:
            held_in = queries.balance(database, account_id)["currency"]
        except queries.NotFound as error:
            raise Refused(f"{error}: wait for it (`ledger balance {account_id} --wait`)") from error
        if held_in != currency:
            raise Refused(f"account {account_id} is in {held_in}, not {currency}")
        return Target(authority=())

    submit(
        "dispute.open",
        account_id,
        fields,
        lookup,
        actor=actor,
        role=role,
        command_id=command_id,
        timeout=timeout,
        json_output=json_output,
        account_id=account_id,
    )


@disputes_app.command("assign")
def disputes_assign(
    dispute_id: Annotated[str, typer.Argument(metavar="ID")],
    rep: Annotated[str, typer.Option("--rep", help="The dedicated representative.")],
    actor: ActorOption = None,
    role: RoleOption = None,
    command_id: CommandIdOption = None,
    timeout: CommandTimeoutOption = limits.staff_command_timeout_s,
    json_output: JsonOption = False,
) -> None:
    """Give the dispute a dedicated representative (or a new one)."""
    _send(
        "dispute.assign",
        dispute_id,
        {"rep": rep},
        _exists(dispute_id),
        actor,
        role,
        command_id,
        timeout,
        json_output,
    )


@disputes_app.command("log")
def disputes_log(
    dispute_id: Annotated[str, typer.Argument(metavar="ID")],
    channel: ChannelOption,
    direction: Annotated[str, typer.Option("--direction", help="in or out.")],
    summary: Annotated[str, typer.Option("--summary", help="What was said (personal data).")],
    promise: Annotated[
        str | None, typer.Option("--promise", help="What was promised (with --by).")
    ] = None,
    promise_by: Annotated[
        str | None, typer.Option("--by", help="When the promise is due: YYYY-MM-DD.")
    ] = None,
    actor: ActorOption = None,
    role: RoleOption = None,
    command_id: CommandIdOption = None,
    timeout: CommandTimeoutOption = limits.staff_command_timeout_s,
    json_output: JsonOption = False,
) -> None:
    """Record one contact with the customer; a promise becomes a follow-up on its date."""
    if (promise is None) != (promise_by is None):
        raise Refused("a promise needs its date: pass --promise with --by")
    fields: dict[str, Any] = {"channel": channel, "direction": direction, "summary": summary}
    if promise is not None and promise_by is not None:
        fields["promise"] = promise
        fields["promise_by"] = _date(promise_by, "--by")
    _send(
        "dispute.log",
        dispute_id,
        fields,
        _exists(dispute_id),
        actor,
        role,
        command_id,
        timeout,
        json_output,
    )


@disputes_app.command("plan")
def disputes_plan(
    dispute_id: Annotated[str, typer.Argument(metavar="ID")],
    installments: Annotated[
        list[str],
        typer.Option("--installment", help="DATE=AMOUNT, e.g. 2026-12-01=40.00; repeat it."),
    ],
    forgive: Annotated[
        str | None, typer.Option("--forgive", help="A part written off, in major units.")
    ] = None,
    actor: ActorOption = None,
    role: RoleOption = None,
    command_id: CommandIdOption = None,
    timeout: CommandTimeoutOption = limits.staff_command_timeout_s,
    json_output: JsonOption = False,
) -> None:
    """Agree an installment plan for what is owed in the dispute (installments + forgiven)."""
    typed: list[tuple[str, str]] = []
    for given in installments:
        due, equals, amount = given.partition("=")
        if not equals:
            raise Refused(f"--installment {given!r}: DATE=AMOUNT, e.g. 2026-12-01=40.00")
        typed.append((_date(due, "--installment"), amount))

    def lookup(database: Database) -> Target:
        dispute = _dispute(database, dispute_id)
        currency = dispute["currency"]
        amounts = [_minor(amount, currency, "--installment") for _, amount in typed]
        planned = [
            {"due_date": due, "amount_minor": amount_minor}
            for (due, _), amount_minor in zip(typed, amounts, strict=True)
        ]
        forgiven = 0 if forgive is None else _minor(forgive, currency, "--forgive")
        total = sum(amounts)
        if total + forgiven != dispute["held"]:
            raise Refused(
                f"the plan sums to {total + forgiven} minor units ({total} in installments,"
                f" {forgiven} forgiven); dispute {dispute_id} owes {dispute['held']}"
            )
        authority = (("plan", total), *((("write_off", forgiven),) if forgiven else ()))
        return Target({"installments": planned, "forgiven_minor": forgiven}, authority)

    _send("dispute.plan", dispute_id, {}, lookup, actor, role, command_id, timeout, json_output)


@disputes_app.command("defer")
def disputes_defer(
    dispute_id: Annotated[str, typer.Argument(metavar="ID")],
    until: Annotated[str, typer.Option("--until", help="Deferred until: YYYY-MM-DD.")],
    actor: ActorOption = None,
    role: RoleOption = None,
    command_id: CommandIdOption = None,
    timeout: CommandTimeoutOption = limits.staff_command_timeout_s,
    json_output: JsonOption = False,
) -> None:
    """Defer payment of what is disputed until a date."""
    _send(
        "dispute.defer",
        dispute_id,
        {"until": _date(until, "--until")},
        _exists(dispute_id),
        actor,
        role,
        command_id,
        timeout,
        json_output,
    )


@disputes_app.command("escalate")
def disputes_escalate(
    dispute_id: Annotated[str, typer.Argument(metavar="ID")],
    to_role: Annotated[str, typer.Option("--to", help="The role it goes to, e.g. supervisor.")],
    reason: Annotated[str | None, typer.Option("--reason", help="Why.")] = None,
    actor: ActorOption = None,
    role: RoleOption = None,
    command_id: CommandIdOption = None,
    timeout: CommandTimeoutOption = limits.staff_command_timeout_s,
    json_output: JsonOption = False,
) -> None:
    """Hand the dispute up to a role (it waits in that role's follow-up queue)."""
    from ledger.domain.policy import ROLES

    if to_role not in ROLES:
        raise Refused(f"unknown role {to_role!r}: one of {', '.join(ROLES)}")
    fields: dict[str, Any] = {"to_role": to_role}
    if reason is not None:
        fields["reason"] = reason
    _send(
        "dispute.escalate",
        dispute_id,
        fields,
        _exists(dispute_id),
        actor,
        role,
        command_id,
        timeout,
        json_output,
    )


@disputes_app.command("adjust")
def disputes_adjust(
    dispute_id: Annotated[str, typer.Argument(metavar="ID")],
    amount: Annotated[str, typer.Option("--amount", help="Written off, in major units.")],
    reason: Annotated[str, typer.Option("--reason", help="Why.")],
    actor: ActorOption = None,
    role: RoleOption = None,
    command_id: CommandIdOption = None,
    timeout: CommandTimeoutOption = limits.staff_command_timeout_s,
    json_output: JsonOption = False,
) -> None:
    """Write off part of a disputed bill (goodwill), within the actor's authority."""

    def lookup(database: Database) -> Target:
        dispute = _dispute(database, dispute_id)
        amount_minor = _minor(amount, dispute["currency"], "--amount")
        return Target({"amount_minor": amount_minor}, (("adjust", amount_minor),))

    _send(
        "dispute.adjust",
        dispute_id,
        {"reason": reason},
        lookup,
        actor,
        role,
        command_id,
        timeout,
        json_output,
    )


@disputes_app.command("resolve")
def disputes_resolve(
    dispute_id: Annotated[str, typer.Argument(metavar="ID")],
    outcome: Annotated[
        str, typer.Option("--outcome", help="customer-favour, upheld or withdrawn.")
    ],
    refund: Annotated[
        bool, typer.Option("--refund", help="customer-favour: refund what was paid.")
    ] = False,
    credit: Annotated[
        bool, typer.Option("--credit", help="customer-favour: keep what was paid as credit.")
    ] = False,
    actor: ActorOption = None,
    role: RoleOption = None,
    command_id: CommandIdOption = None,
    timeout: CommandTimeoutOption = limits.staff_command_timeout_s,
    json_output: JsonOption = False,
) -> None:
    """Decide a disputed bill; the hold is released once, as the postings table says."""
    if refund and credit:
        raise Refused("--refund or --credit, not both")
    decided = outcome.replace("-", "_")
    fields: dict[str, Any] = {"outcome": decided}
    if refund or credit:
        fields["settlement"] = "refund" if refund else "credit"

    def lookup(database: Database) -> Target:
        dispute = _dispute(database, dispute_id)
        if decided != "customer_favour":
            return Target(authority=())
        # What was paid of the bill before it was disputed (it was never held).
        paid = dispute["amount"] - dispute["held"] - dispute["adjusted"]
        written_off = dispute["held"] + max(0, paid)
        return Target(authority=(("write_off", written_off),))

    _send(
        "dispute.resolve", dispute_id, fields, lookup, actor, role, command_id, timeout, json_output
    )


@disputes_app.command("feedback")
def disputes_feedback(
    dispute_id: Annotated[str, typer.Argument(metavar="ID")],
    score: Annotated[int, typer.Option("--score", help="1 to 5.")],
    comment: Annotated[
        str | None, typer.Option("--comment", help="The customer's words (personal data).")
    ] = None,
    actor: ActorOption = None,
    role: RoleOption = None,
    command_id: CommandIdOption = None,
    timeout: CommandTimeoutOption = limits.staff_command_timeout_s,
    json_output: JsonOption = False,
) -> None:
    """Record the customer's feedback on a resolved dispute."""
    fields: dict[str, Any] = {"score": score}
    if comment is not None:
        fields["comment"] = comment
    _send(
        "dispute.feedback",
        dispute_id,
        fields,
        _exists(dispute_id),
        actor,
        role,
        command_id,
        timeout,
        json_output,
    )
