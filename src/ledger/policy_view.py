"""The policy as a person reads it on a terminal (`ledger policy show`): a few rich tables."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from ledger.domain.policy import ACTIONS


def policy_tables(document: dict[str, Any]) -> list[Table]:
    """Tables of a policy document (the JSON shape of `ledger policy show --json`)."""
    return [
        _summary(document),
        _thresholds(document["verification"]["thresholds"]),
        _resolutions(document["resolutions"]),
        _authority(document["authority"]),
        _dormancy(document["escheatment"]),
    ]


def _summary(document: dict[str, Any]) -> Table:
    table = Table(title=f"policy {document['version']} ({document['source']})")
    table.add_column("rule")
    table.add_column("value")
    small_credit = document["overpayment"]["small_credit_minor"]
    refunds, escrow = document["refunds"], document["escrow"]
    follow_ups = document["follow_ups"]
    rows = [
        ("overpayment.detect_minimum_minor", document["overpayment"]["detect_minimum_minor"]),
        ("overpayment.small_credit_minor", _pairs(small_credit)),
        ("refunds.retry_max", refunds["retry_max"]),
        ("refunds.retry_backoff", ", ".join(refunds["retry_backoff"])),
        ("escrow.period", escrow["period"]),
        ("escrow.expiry_release_to", escrow["expiry_release_to"]),
        ("monthly.self_correction_window", document["monthly"]["self_correction_window"]),
        *((f"follow_ups.{key}", value) for key, value in follow_ups.items()),
    ]
    for name, value in rows:
        table.add_row(name, str(value))
    return table


def _thresholds(thresholds: list[dict[str, Any]]) -> Table:
    table = Table(title="verification: departments from each amount (minor units)")
    for column in ("currency", "from_minor", "departments"):
        table.add_column(column, justify="right" if column == "from_minor" else "left")
    for threshold in thresholds:
        table.add_row(
            threshold["currency"],
            str(threshold["from_minor"]),
            ", ".join(threshold["departments"]),
        )
    return table


def _resolutions(resolutions: dict[str, Any]) -> Table:
    table = Table(title="resolutions per account kind")
    for column in ("kind", "default", "allowed"):
        table.add_column(column)
    for kind, rules in resolutions.items():
        table.add_row(kind, rules["default"], ", ".join(rules["allowed"]))
    return table


def _authority(authority: dict[str, Any]) -> Table:
    table = Table(title="authority: largest amount per action (minor units; 0: never)")
    table.add_column("role")
    for action in ACTIONS:
        table.add_column(action, justify="right")
    for role, limits in authority.items():
        table.add_row(role, *(str(limits[action]) for action in ACTIONS))
    return table


def _dormancy(escheatment: dict[str, Any]) -> Table:
    table = Table(title="escheatment: dormancy per jurisdiction")
    table.add_column("jurisdiction")
    table.add_column("dormancy")
    for jurisdiction, dormancy in escheatment["dormancy"].items():
        table.add_row(jurisdiction, dormancy)
    table.add_row("(any other)", escheatment["default_dormancy"])
    return table


def _pairs(amounts: dict[str, int]) -> str:
    return ", ".join(f"{currency} {amount}" for currency, amount in amounts.items())
