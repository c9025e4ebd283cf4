"""The policy's rules: each query answers from the data, each broken rule names its key path."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from ledger.domain import account
from ledger.domain.policy import (
    ACCOUNT_KINDS,
    ACTIONS,
    DEPARTMENTS,
    RESOLUTIONS,
    ROLES,
    AuthorityPolicy,
    Policy,
    ResolutionsPolicy,
    RoleAuthority,
    iso_duration,
)

POLICY = Policy(version="test-1")
"""The shipped rules (every section's default is the shipped one)."""


def document() -> dict[str, Any]:
    """The shipped policy as a TOML file would write it, to break one rule at a time."""
    return copy.deepcopy(POLICY.model_dump(mode="json"))


def problems(change: Callable[[dict[str, Any]], object]) -> list[tuple[str, str]]:
    """The (key path, message) of each error after `change` breaks the shipped document."""
    broken = document()
    change(broken)
    with pytest.raises(ValidationError) as caught:
        Policy.model_validate(broken)
    return [
        (".".join(str(part) for part in error["loc"]), error["msg"])
        for error in caught.value.errors()
    ]


def only_problem(change: Callable[[dict[str, Any]], object]) -> tuple[str, str]:
    """The one error after `change`."""
    found = problems(change)
    assert len(found) == 1, found
    return found[0]


# The constants and the models agree.


def test_the_constants_are_the_models_fields() -> None:
    assert tuple(RoleAuthority.model_fields) == ACTIONS
    assert tuple(AuthorityPolicy.model_fields) == ROLES
    assert tuple(ResolutionsPolicy.model_fields) == ACCOUNT_KINDS
    assert ACCOUNT_KINDS == ("utility", "monthly", "retail")
    assert account.ACCOUNT_KINDS is ACCOUNT_KINDS
    assert DEPARTMENTS == ("accounting", "risk_management", "operations")
    assert set(RESOLUTIONS) == {
        "credit",
        "refund",
        "escrow",
        "coupon",
        "store_credit",
        "cancel_and_refund",
    }


def test_the_shipped_rules_as_a_document_validate_to_the_same_policy() -> None:
    assert Policy.model_validate(document()) == POLICY


def test_durations_are_written_in_iso_8601() -> None:
    assert POLICY.model_dump(mode="json")["refunds"]["retry_backoff"] == ["PT1H", "PT6H", "P1D"]
    assert POLICY.model_dump(mode="json")["escheatment"]["default_dormancy"] == "P1095D"
    assert iso_duration(timedelta(days=1, minutes=30, seconds=1.5)) == "P1DT30M1.5S"
    assert iso_duration(timedelta(0)) == "PT0S"
    assert iso_duration(-timedelta(hours=2)) == "-PT2H"


# Queries.


@pytest.mark.parametrize(
    ("amount_minor", "currency", "departments"),
    [
        (0, "USD", ("accounting",)),
        (49_999, "USD", ("accounting",)),
        (50_000, "USD", ("accounting", "risk_management")),
        (499_999, "EUR", ("accounting", "risk_management")),
        (500_000, "JPY", ("accounting", "risk_management", "operations")),
        (10**12, "GBP", ("accounting", "risk_management", "operations")),
    ],
)
def test_required_departments_follow_the_highest_threshold_at_or_below(
    amount_minor: int, currency: str, departments: tuple[str, ...]
) -> None:
    assert POLICY.required_departments(amount_minor, currency) == departments


def test_a_listed_currency_uses_its_own_thresholds() -> None:
    rules = document()
    rules["verification"]["thresholds"] += [
        {"currency": "JPY", "from_minor": 0, "departments": ["operations"]},
        {"currency": "JPY", "from_minor": 1_000, "departments": ["risk_management"]},
    ]
    policy = Policy.model_validate(rules)
    assert policy.required_departments(999, "JPY") == ("operations",)
    assert policy.required_departments(60_000, "JPY") == ("risk_management",)
    assert policy.required_departments(60_000, "EUR") == ("accounting", "risk_management")


def test_required_departments_refuse_a_negative_amount() -> None:
    with pytest.raises(ValueError, match="amount_minor"):
        POLICY.required_departments(-1, "USD")


def test_resolutions_per_kind() -> None:
    assert POLICY.allowed_resolutions("utility") == (
        "credit",
        "refund",
        "escrow",
        "coupon",
        "store_credit",
    )
    assert "cancel_and_refund" in POLICY.allowed_resolutions("monthly")
    assert POLICY.allowed_resolutions("retail") == RESOLUTIONS
    assert POLICY.default_resolution("utility") == "credit"
    assert POLICY.default_resolution("monthly") == "credit"
    assert POLICY.default_resolution("retail") == "refund"


@pytest.mark.parametrize("query", [Policy.allowed_resolutions, Policy.default_resolution])
def test_resolutions_of_an_unknown_kind_are_refused(query: Callable[[Policy, str], object]) -> None:
    with pytest.raises(ValueError, match="unknown account kind 'yearly'"):
        query(POLICY, "yearly")


def test_authority_limit() -> None:
    assert POLICY.authority_limit("agent", "resolve") == 20_000
    assert POLICY.authority_limit("agent", "verify") == 0
    assert POLICY.authority_limit("accounting", "verify") == 1_000_000_000
    assert POLICY.authority_limit("intern", "resolve") is None
    assert POLICY.authority_limit("agent", "approve") is None
    # Every role has every action.
    assert all(
        POLICY.authority_limit(role, action) is not None for role in ROLES for action in ACTIONS
    )


def test_may_up_to_the_limit_and_never_at_zero() -> None:
    assert POLICY.may("agent", "resolve", 20_000)
    assert not POLICY.may("agent", "resolve", 20_001)
    assert not POLICY.may("agent", "verify", 0)
    assert not POLICY.may("agent", "verify", 1)
    assert not POLICY.may("intern", "resolve", 1)
    assert not POLICY.may("agent", "approve", 1)
    with pytest.raises(ValueError, match="amount_minor"):
        POLICY.may("agent", "resolve", -1)


def test_roles_that_may_name_who_to_ask() -> None:
    assert POLICY.roles_that_may("resolve", 20_000) == (
        "agent",
        "supervisor",
        "manager",
        "accounting",
        "risk_management",
        "operations",
    )
    assert POLICY.roles_that_may("resolve", 60_000) == ("supervisor", "manager")
    assert POLICY.roles_that_may("resolve", 10**9) == ()
    assert POLICY.roles_that_may("verify", 1) == ("accounting", "risk_management", "operations")
    assert POLICY.roles_that_may("approve", 1) == ()


def test_refund_retry_delay_uses_the_last_backoff_once_the_list_runs_out() -> None:
    rules = document()
    rules["refunds"] = {"retry_max": 5, "retry_backoff": ["PT1H", "P1D"]}
    policy = Policy.model_validate(rules)
    delays = [policy.refund_retry_delay(attempt) for attempt in range(1, 7)]
    day = timedelta(days=1)
    assert delays == [timedelta(hours=1), day, day, day, day, None]


def test_refund_retry_delay_of_the_shipped_policy() -> None:
    assert POLICY.refund_retry_delay(1) == timedelta(hours=1)
    assert POLICY.refund_retry_delay(2) == timedelta(hours=6)
    assert POLICY.refund_retry_delay(3) == timedelta(days=1)
    assert POLICY.refund_retry_delay(4) is None
    with pytest.raises(ValueError, match="attempt"):
        POLICY.refund_retry_delay(0)


def test_no_retries_at_all() -> None:
    rules = document()
    rules["refunds"]["retry_max"] = 0
    assert Policy.model_validate(rules).refund_retry_delay(1) is None


def test_dormancy_per_jurisdiction_else_the_default() -> None:
    assert POLICY.dormancy("US-DE") == timedelta(days=1825)
    assert POLICY.dormancy("US-CA") == timedelta(days=1095)
    assert POLICY.dormancy("US-TX") == timedelta(days=1095)


def test_small_credit_per_currency_else_the_default() -> None:
    rules = document()
    rules["overpayment"]["small_credit_minor"] = {"default": 700, "JPY": 100}
    policy = Policy.model_validate(rules)
    assert policy.small_credit_minor("JPY") == 100
    assert policy.small_credit_minor("USD") == 700
    assert POLICY.small_credit_minor("EUR") == 500


def test_the_existing_fields_still_answer() -> None:
    assert POLICY.version == "test-1"
    assert POLICY.overpayment.detect_minimum_minor == 1


def test_a_policy_is_frozen() -> None:
    with pytest.raises(ValidationError, match="frozen"):
        POLICY.refunds.retry_max = 9  # type: ignore[misc]


# Each rule, broken, names its key path.


def test_an_unknown_department() -> None:
    def change(rules: dict[str, Any]) -> None:
        rules["verification"]["thresholds"][1]["departments"] = ["accounting", "legal"]

    path, message = only_problem(change)
    assert path == "verification.thresholds.1.departments.1"
    assert "'accounting', 'risk_management' or 'operations'" in message


def test_a_department_named_twice() -> None:
    def change(rules: dict[str, Any]) -> None:
        rules["verification"]["thresholds"][0]["departments"] = ["accounting", "accounting"]

    assert only_problem(change) == ("verification.thresholds.0.departments.1", "named twice")


def test_thresholds_start_at_zero() -> None:
    def change(rules: dict[str, Any]) -> None:
        rules["verification"]["thresholds"][3]["from_minor"] = 100  # the first USD one

    path, message = only_problem(change)
    assert path == "verification.thresholds.3.from_minor"
    assert "first threshold of USD should be from 0" in message


@pytest.mark.parametrize("from_minor", [50_000, 40_000])
def test_thresholds_strictly_ascend(from_minor: int) -> None:
    def change(rules: dict[str, Any]) -> None:
        rules["verification"]["thresholds"][2]["from_minor"] = from_minor

    path, message = only_problem(change)
    assert path == "verification.thresholds.2.from_minor"
    assert "should be above 50000" in message


def test_thresholds_need_the_default_currency() -> None:
    def change(rules: dict[str, Any]) -> None:
        rules["verification"]["thresholds"] = rules["verification"]["thresholds"][3:]

    path, message = only_problem(change)
    assert path == "verification.thresholds"
    assert "'default'" in message


def test_the_default_resolution_must_be_allowed() -> None:
    def change(rules: dict[str, Any]) -> None:
        rules["resolutions"]["monthly"]["allowed"] = ["credit", "refund"]
        rules["resolutions"]["monthly"]["default"] = "escrow"

    assert only_problem(change) == ("resolutions.monthly.default", "should be one of allowed")


def test_an_unknown_resolution() -> None:
    def change(rules: dict[str, Any]) -> None:
        rules["resolutions"]["retail"]["allowed"] = ["credit", "gift"]

    path, _ = only_problem(change)
    assert path == "resolutions.retail.allowed.1"


def test_cancel_and_refund_is_never_allowed_on_utility() -> None:
    def change(rules: dict[str, Any]) -> None:
        rules["resolutions"]["utility"]["allowed"] = ["credit", "cancel_and_refund"]

    path, message = only_problem(change)
    assert path == "resolutions.utility.allowed.1"
    assert "never allowed on a utility account" in message


@pytest.mark.parametrize("kind", ACCOUNT_KINDS)
def test_every_account_kind_is_present(kind: str) -> None:
    def change(rules: dict[str, Any]) -> None:
        del rules["resolutions"][kind]

    assert only_problem(change) == (f"resolutions.{kind}", "Field required")


@pytest.mark.parametrize("role", ROLES)
def test_every_role_is_present(role: str) -> None:
    def change(rules: dict[str, Any]) -> None:
        del rules["authority"][role]

    assert only_problem(change) == (f"authority.{role}", "Field required")


@pytest.mark.parametrize("action", ACTIONS)
def test_every_action_is_present(action: str) -> None:
    def change(rules: dict[str, Any]) -> None:
        del rules["authority"]["manager"][action]

    assert only_problem(change) == (f"authority.manager.{action}", "Field required")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (-1, "Input should be greater than or equal to 0"),
        ("5000", "Input should be a valid integer"),
        (1.5, "Input should be a valid integer"),
    ],
)
def test_authority_limits_are_non_negative_integers(value: object, message: str) -> None:
    def change(rules: dict[str, Any]) -> None:
        rules["authority"]["agent"]["verify"] = value

    assert only_problem(change) == ("authority.agent.verify", message)


def test_an_unknown_role_or_action() -> None:
    def change(rules: dict[str, Any]) -> None:
        rules["authority"]["intern"] = rules["authority"]["agent"]
        rules["authority"]["agent"]["approve"] = 1

    found = dict(problems(change))
    assert found == {
        "authority.intern": "Extra inputs are not permitted",
        "authority.agent.approve": "Extra inputs are not permitted",
    }


def test_retry_backoff_is_not_empty() -> None:
    def change(rules: dict[str, Any]) -> None:
        rules["refunds"]["retry_backoff"] = []

    path, message = only_problem(change)
    assert path == "refunds.retry_backoff"
    assert "at least 1 item" in message


@pytest.mark.parametrize(
    ("path", "set_to"),
    [
        ("refunds.retry_backoff.1", "PT0S"),
        ("escrow.period", "-P1D"),
        ("monthly.self_correction_window", "P0D"),
        ("follow_ups.first_contact_after", "PT0S"),
        ("follow_ups.repeat_every", "-PT1H"),
        ("escheatment.default_dormancy", "P0D"),
        ("escheatment.dormancy.US-DE", "PT0S"),
    ],
)
def test_durations_are_positive(path: str, set_to: str) -> None:
    def change(rules: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        table: Any = rules
        for key in parents:
            table = table[int(key)] if isinstance(table, list) else table[key]
        table[int(last) if isinstance(table, list) else last] = set_to

    assert only_problem(change) == (path, "Value error, should be a positive duration")


def test_a_duration_is_not_a_bare_number() -> None:
    def change(rules: dict[str, Any]) -> None:
        rules["escrow"]["period"] = 90

    path, message = only_problem(change)
    assert path == "escrow.period"
    assert "ISO 8601 duration" in message


def test_a_duration_is_bounded() -> None:
    def change(rules: dict[str, Any]) -> None:
        rules["escrow"]["period"] = "P100000D"

    path, message = only_problem(change)
    assert path == "escrow.period"
    assert "at most" in message


@pytest.mark.parametrize("key", ["usd", "US", "EURO", "Default", "US1"])
def test_currency_keys_are_three_upper_case_letters_or_default(key: str) -> None:
    def change(rules: dict[str, Any]) -> None:
        rules["overpayment"]["small_credit_minor"][key] = 100

    path, message = only_problem(change)
    assert path == f"overpayment.small_credit_minor.{key}.[key]"
    assert "3 upper-case letters" in message


def test_a_threshold_currency_is_three_upper_case_letters_or_default() -> None:
    def change(rules: dict[str, Any]) -> None:
        rules["verification"]["thresholds"][3]["currency"] = "usd"

    path, message = only_problem(change)
    assert path == "verification.thresholds.3.currency"
    assert "3 upper-case letters" in message


def test_small_credit_needs_the_default_currency() -> None:
    def change(rules: dict[str, Any]) -> None:
        del rules["overpayment"]["small_credit_minor"]["default"]

    path, _ = only_problem(change)
    assert path == "overpayment.small_credit_minor.default"


def test_a_jurisdiction_is_an_iso_3166_code() -> None:
    def change(rules: dict[str, Any]) -> None:
        rules["escheatment"]["dormancy"]["california"] = "P1D"

    path, message = only_problem(change)
    assert path == "escheatment.dormancy.california.[key]"
    assert "ISO 3166" in message


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("escrow", "expiry_release_to", "charity"),
        ("follow_ups", "escalate_to", "ceo"),
        ("follow_ups", "owner", "legal"),
        ("follow_ups", "escalate_after_contacts", 0),
        ("refunds", "retry_max", -1),
        ("refunds", "retry_max", 1000),
    ],
)
def test_choices_and_counts(section: str, key: str, value: object) -> None:
    def change(rules: dict[str, Any]) -> None:
        rules[section][key] = value

    path, _ = only_problem(change)
    assert path == f"{section}.{key}"


def test_an_unknown_key_anywhere() -> None:
    def change(rules: dict[str, Any]) -> None:
        rules["escrow"]["perid"] = "P1D"
        rules["chargebacks"] = {}

    assert dict(problems(change)) == {
        "escrow.perid": "Extra inputs are not permitted",
        "chargebacks": "Extra inputs are not permitted",
    }
