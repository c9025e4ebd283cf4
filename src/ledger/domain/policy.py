"""Policy as data: every rule of the overpayment protocol, versioned, validated when loaded.

Pure: `ledger.policy_file` reads the TOML file, this module only validates and answers. Every
error of a rule names the key path that breaks it (`authority.agent.verify`). Each section has
the shipped default (`src/ledger/policy/default.toml`) as its default, so `Policy(version=...)`
is the shipped policy; a section written in a file is written whole.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Final, Literal, Self, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from ledger import limits


class PolicyError(ValueError):
    """The policy file is missing or invalid."""


Department = Literal["accounting", "risk_management", "operations"]
Role = Literal["agent", "supervisor", "manager", "accounting", "risk_management", "operations"]
Action = Literal["verify", "resolve", "release", "adjust", "write_off", "plan"]
Channel = Literal["phone", "email", "chat", "social", "chargeback"]
Resolution = Literal["credit", "refund", "escrow", "coupon", "store_credit", "cancel_and_refund"]
AccountKind = Literal["utility", "monthly", "retail"]
EscrowRelease = Literal["refund", "credit", "escheat"]

DEPARTMENTS: Final[tuple[Department, ...]] = get_args(Department)
"""Departments that verify an overpayment."""
ROLES: Final[tuple[Role, ...]] = get_args(Role)
"""Roles of the people who act on the ledger, in the order refusals list them."""
ACTIONS: Final[tuple[Action, ...]] = get_args(Action)
"""Actions the authority table bounds (disputes add theirs here and to `RoleAuthority`)."""
RESOLUTIONS: Final[tuple[Resolution, ...]] = get_args(Resolution)
"""Ways a verified overpayment may be resolved."""
CHANNELS: Final[tuple[Channel, ...]] = get_args(Channel)
"""Where a dispute comes from: a staff member on a channel, or the processor's chargeback."""
ACCOUNT_KINDS: Final[tuple[AccountKind, ...]] = get_args(AccountKind)
"""Kinds of customer account."""
ANY_CURRENCY: Final = "default"
"""The currency key whose rules apply to every currency not listed."""

_CURRENCY = re.compile(r"[A-Z]{3}")
_JURISDICTION = re.compile(r"[A-Z]{2}(-[A-Z0-9]{1,3})?")


def iso_duration(value: timedelta) -> str:
    """ISO 8601 text of a duration in days and time, as a policy file writes it (P90D, PT1H)."""
    if value < timedelta(0):
        return "-" + iso_duration(-value)
    hours, rest = divmod(value.seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    time = "".join(f"{count}{unit}" for count, unit in ((hours, "H"), (minutes, "M")) if count)
    if seconds or value.microseconds:
        time += f"{seconds}.{value.microseconds:06d}".rstrip("0").rstrip(".") + "S"
    if not value.days and not time:
        return "PT0S"
    return "P" + (f"{value.days}D" if value.days else "") + (f"T{time}" if time else "")


def _duration_text(value: object) -> object:
    # pydantic would read a bare number as seconds: `period = 90` is a mistake to report.
    if isinstance(value, str | timedelta):
        return value
    raise ValueError("should be an ISO 8601 duration such as P30D or PT1H")


def _positive_duration(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError("should be a positive duration")
    if value > timedelta(days=limits.policy_duration_max_days):
        raise ValueError(f"should be at most P{limits.policy_duration_max_days}D")
    return value


def _currency_key(value: str) -> str:
    if value != ANY_CURRENCY and not _CURRENCY.fullmatch(value):
        raise ValueError(f"should be 3 upper-case letters (ISO 4217) or {ANY_CURRENCY!r}")
    return value


def _jurisdiction(value: str) -> str:
    if not _JURISDICTION.fullmatch(value):
        raise ValueError("should be an ISO 3166 code such as US or US-CA")
    return value


Duration = Annotated[
    timedelta,
    BeforeValidator(_duration_text),
    AfterValidator(_positive_duration),
    PlainSerializer(iso_duration, return_type=str, when_used="json"),
]
CurrencyKey = Annotated[str, AfterValidator(_currency_key)]
Jurisdiction = Annotated[str, AfterValidator(_jurisdiction)]
AmountMinor = Annotated[int, Field(strict=True, ge=0, le=limits.amount_minor_max)]


def _rule_broken(loc: tuple[str | int, ...], message: str, value: object) -> ValidationError:
    """An error of a rule between fields, at the key path (below the model) that breaks it."""
    detail = InitErrorDetails(
        type=PydanticCustomError("policy_rule", message), loc=loc, input=value
    )
    return ValidationError.from_exception_data("Policy", [detail])


def _first_repeat(values: tuple[str, ...]) -> int | None:
    """The index of the first value that repeats an earlier one; None when all differ."""
    seen: set[str] = set()
    for index, value in enumerate(values):
        if value in seen:
            return index
        seen.add(value)
    return None


class _Rules(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OverpaymentPolicy(_Rules):
    """Rules for detecting overpayments and keeping small ones as credit."""

    detect_minimum_minor: int = Field(default=1, ge=1)
    small_credit_minor: dict[CurrencyKey, AmountMinor] = Field(
        default_factory=lambda: {ANY_CURRENCY: 500, "USD": 500, "EUR": 500, "JPY": 500}
    )
    """A verified overpayment below this (per currency) is kept as credit automatically."""

    @model_validator(mode="after")
    def _any_currency_present(self) -> Self:
        if ANY_CURRENCY not in self.small_credit_minor:
            raise _rule_broken(
                ("small_credit_minor", ANY_CURRENCY),
                f"missing: {ANY_CURRENCY!r} applies to every currency not listed",
                self.small_credit_minor,
            )
        return self


class Threshold(_Rules):
    """From this amount up (in one currency), these departments must verify."""

    currency: CurrencyKey
    from_minor: AmountMinor
    departments: tuple[Department, ...] = Field(min_length=1, max_length=len(DEPARTMENTS))

    @model_validator(mode="after")
    def _departments_differ(self) -> Self:
        repeat = _first_repeat(self.departments)
        if repeat is not None:
            raise _rule_broken(("departments", repeat), "named twice", self.departments[repeat])
        return self


class VerificationPolicy(_Rules):
    """Which departments verify an overpayment, by its currency and amount."""

    thresholds: tuple[Threshold, ...] = Field(
        default_factory=lambda: _default_thresholds(),
        min_length=1,
        max_length=limits.policy_thresholds_max,
    )

    @model_validator(mode="after")
    def _thresholds_ascend(self) -> Self:
        last: dict[str, int] = {}
        for index, threshold in enumerate(self.thresholds):
            previous = last.get(threshold.currency)
            if previous is None and threshold.from_minor != 0:
                message = f"the first threshold of {threshold.currency} should be from 0"
            elif previous is not None and threshold.from_minor <= previous:
                message = (
                    f"should be above {previous}, the previous threshold of {threshold.currency}"
                )
            else:
                last[threshold.currency] = threshold.from_minor
                continue
            raise _rule_broken(("thresholds", index, "from_minor"), message, threshold.from_minor)
        if ANY_CURRENCY not in last:
            raise _rule_broken(
                ("thresholds",),
                f"no threshold for {ANY_CURRENCY!r}, which applies to every currency not listed",
                None,
            )
        return self

    def departments_for(self, amount_minor: int, currency: str) -> tuple[Department, ...]:
        """The departments that must verify this amount: the highest threshold at or below it."""
        listed = any(threshold.currency == currency for threshold in self.thresholds)
        key = currency if listed else ANY_CURRENCY
        found: tuple[Department, ...] = ()
        for threshold in self.thresholds:
            if threshold.currency == key and threshold.from_minor <= amount_minor:
                found = threshold.departments
        return found


class ResolutionPolicy(_Rules):
    """The resolutions one kind of account allows, and the one chosen when nobody chooses."""

    allowed: tuple[Resolution, ...] = Field(min_length=1, max_length=len(RESOLUTIONS))
    default: Resolution

    @model_validator(mode="after")
    def _default_allowed(self) -> Self:
        repeat = _first_repeat(self.allowed)
        if repeat is not None:
            raise _rule_broken(("allowed", repeat), "named twice", self.allowed[repeat])
        if self.default not in self.allowed:
            raise _rule_broken(("default",), "should be one of allowed", self.default)
        return self


class ResolutionsPolicy(_Rules):
    """The resolutions of each account kind (every kind must be given)."""

    utility: ResolutionPolicy
    monthly: ResolutionPolicy
    retail: ResolutionPolicy

    @model_validator(mode="after")
    def _utility_never_cancels(self) -> Self:
        # A utility service cannot be cancelled to hand the money back.
        if "cancel_and_refund" in self.utility.allowed:
            index = self.utility.allowed.index("cancel_and_refund")
            raise _rule_broken(
                ("utility", "allowed", index),
                "cancel_and_refund is never allowed on a utility account",
                "cancel_and_refund",
            )
        return self

    def for_kind(self, kind: str) -> ResolutionPolicy:
        """The rules of one account kind; ValueError for a kind that is not one."""
        if kind not in ACCOUNT_KINDS:
            raise ValueError(f"unknown account kind {kind!r}: should be one of {ACCOUNT_KINDS}")
        rules: ResolutionPolicy = getattr(self, kind)
        return rules


class RoleAuthority(_Rules):
    """The largest amount (minor units, any currency) one role may act on, per action; 0: never."""

    verify: AmountMinor
    resolve: AmountMinor
    release: AmountMinor
    adjust: AmountMinor
    write_off: AmountMinor
    plan: AmountMinor
    """The largest installment plan (its total) the role may agree on a dispute."""

    def limit_minor(self, action: str) -> int | None:
        """The role's limit for this action; None for an action that is not one."""
        if action not in ACTIONS:
            return None
        limit: int = getattr(self, action)
        return limit


class AuthorityPolicy(_Rules):
    """What each role may do, and up to which amount (every role must be given)."""

    agent: RoleAuthority
    supervisor: RoleAuthority
    manager: RoleAuthority
    accounting: RoleAuthority
    risk_management: RoleAuthority
    operations: RoleAuthority

    def for_role(self, role: str) -> RoleAuthority | None:
        """The authority of one role; None for a role that is not one."""
        if role not in ROLES:
            return None
        authority: RoleAuthority = getattr(self, role)
        return authority


class RefundPolicy(_Rules):
    """Retries of a failed refund before a follow-up goes to staff."""

    retry_max: int = Field(default=3, strict=True, ge=0, le=limits.policy_refund_retry_max)
    """Retries after the first attempt."""
    retry_backoff: tuple[Duration, ...] = Field(
        default=(timedelta(hours=1), timedelta(hours=6), timedelta(days=1)),
        min_length=1,
        max_length=limits.policy_refund_retry_max,
    )
    """The wait before retry n is entry min(n-1, last)."""


class EscrowPolicy(_Rules):
    """How long money stays in escrow, and where it goes when nobody claims it."""

    period: Duration = timedelta(days=90)
    expiry_release_to: EscrowRelease = "refund"


class MonthlyPolicy(_Rules):
    """Rules of monthly accounts."""

    self_correction_window: Duration = timedelta(days=30)
    """How long an overpayment may correct itself against the next bill."""


class FollowUpPolicy(_Rules):
    """When staff contact a customer again, and when a follow-up escalates."""

    first_contact_after: Duration = timedelta(days=2)
    repeat_every: Duration = timedelta(days=7)
    escalate_after_contacts: int = Field(
        default=3, strict=True, ge=1, le=limits.policy_follow_up_contacts_max
    )
    escalate_to: Role = "supervisor"
    owner: Role = "operations"
    """Who owns the follow-ups the ledger raises."""


class EscheatmentPolicy(_Rules):
    """How long unclaimed money waits before it is escheated, per jurisdiction."""

    default_dormancy: Duration = timedelta(days=1095)
    dormancy: dict[Jurisdiction, Duration] = Field(
        default_factory=lambda: {
            "US-CA": timedelta(days=1095),
            "US-NY": timedelta(days=1095),
            "US-DE": timedelta(days=1825),
        }
    )


class DisputeSla(_Rules):
    """How soon a dispute from one channel is answered, updated and resolved."""

    first_response: Duration
    update_every: Duration
    resolution_target: Duration


class DisputePolicy(_Rules):
    """Disputes: service levels per channel, who owns the unassigned, installment grace."""

    owner: Role = "agent"
    """Whose queue a dispute's follow-ups join until a representative is assigned."""
    installment_grace: Duration = timedelta(days=3)
    """An installment unpaid this long after its due date is missed (a follow-up)."""
    sla: dict[Channel, DisputeSla] = Field(default_factory=lambda: _default_slas())

    @model_validator(mode="after")
    def _every_channel(self) -> Self:
        missing = [channel for channel in CHANNELS if channel not in self.sla]
        if missing:
            raise _rule_broken(("sla",), f"every channel needs its SLA: missing {missing}", None)
        return self


def _default_slas() -> dict[Channel, DisputeSla]:
    return {
        "phone": DisputeSla(
            first_response=timedelta(hours=4),
            update_every=timedelta(days=3),
            resolution_target=timedelta(days=30),
        ),
        "email": DisputeSla(
            first_response=timedelta(days=1),
            update_every=timedelta(days=5),
            resolution_target=timedelta(days=30),
        ),
        "chat": DisputeSla(
            first_response=timedelta(hours=1),
            update_every=timedelta(days=3),
            resolution_target=timedelta(days=30),
        ),
        "social": DisputeSla(
            first_response=timedelta(hours=4),
            update_every=timedelta(days=3),
            resolution_target=timedelta(days=30),
        ),
        "chargeback": DisputeSla(
            first_response=timedelta(days=1),
            update_every=timedelta(days=5),
            resolution_target=timedelta(days=45),
        ),
    }


def _default_thresholds() -> tuple[Threshold, ...]:
    steps: tuple[tuple[int, tuple[Department, ...]], ...] = (
        (0, ("accounting",)),
        (50_000, ("accounting", "risk_management")),
        (500_000, ("accounting", "risk_management", "operations")),
    )
    return tuple(
        Threshold(currency=currency, from_minor=from_minor, departments=departments)
        for currency in (ANY_CURRENCY, "USD")
        for from_minor, departments in steps
    )


def _authority(
    verify: int, resolve: int, release: int, adjust: int, write_off: int, plan: int = 0
) -> RoleAuthority:
    return RoleAuthority(
        verify=verify,
        resolve=resolve,
        release=release,
        adjust=adjust,
        write_off=write_off,
        plan=plan,
    )


_ALL_BUT_CANCEL: Final[tuple[Resolution, ...]] = (
    "credit",
    "refund",
    "escrow",
    "coupon",
    "store_credit",
)

DEFAULT_RESOLUTIONS: Final = ResolutionsPolicy(
    utility=ResolutionPolicy(allowed=_ALL_BUT_CANCEL, default="credit"),
    monthly=ResolutionPolicy(allowed=RESOLUTIONS, default="credit"),
    retail=ResolutionPolicy(allowed=RESOLUTIONS, default="refund"),
)
DEFAULT_AUTHORITY: Final = AuthorityPolicy(
    agent=_authority(verify=0, resolve=20_000, release=0, adjust=5_000, write_off=0, plan=50_000),
    supervisor=_authority(
        verify=0, resolve=100_000, release=50_000, adjust=25_000, write_off=10_000, plan=250_000
    ),
    manager=_authority(
        verify=0,
        resolve=1_000_000,
        release=1_000_000,
        adjust=250_000,
        write_off=100_000,
        plan=1_000_000,
    ),
    accounting=_authority(
        verify=1_000_000_000, resolve=50_000, release=100_000, adjust=100_000, write_off=50_000
    ),
    risk_management=_authority(
        verify=1_000_000_000, resolve=20_000, release=50_000, adjust=0, write_off=0
    ),
    operations=_authority(
        verify=1_000_000_000, resolve=20_000, release=20_000, adjust=10_000, write_off=0
    ),
)


class Policy(_Rules):
    """The whole policy; `version` is recorded by every decision it allows."""

    version: str = Field(min_length=1, max_length=64)
    overpayment: OverpaymentPolicy = OverpaymentPolicy()
    verification: VerificationPolicy = VerificationPolicy()
    resolutions: ResolutionsPolicy = DEFAULT_RESOLUTIONS
    authority: AuthorityPolicy = DEFAULT_AUTHORITY
    refunds: RefundPolicy = RefundPolicy()
    escrow: EscrowPolicy = EscrowPolicy()
    monthly: MonthlyPolicy = MonthlyPolicy()
    follow_ups: FollowUpPolicy = FollowUpPolicy()
    escheatment: EscheatmentPolicy = EscheatmentPolicy()
    disputes: DisputePolicy = DisputePolicy()

    def required_departments(self, amount_minor: int, currency: str) -> tuple[str, ...]:
        """The departments that must verify an overpayment of this amount and currency."""
        _check_amount(amount_minor)
        return self.verification.departments_for(amount_minor, currency)

    def allowed_resolutions(self, kind: str) -> tuple[str, ...]:
        """The resolutions an account of this kind allows; ValueError for an unknown kind."""
        return self.resolutions.for_kind(kind).allowed

    def default_resolution(self, kind: str) -> str:
        """The resolution chosen for this kind when nobody chooses; ValueError if unknown."""
        return self.resolutions.for_kind(kind).default

    def authority_limit(self, role: str, action: str) -> int | None:
        """The most this role may act on (0: never); None for an unknown role or action."""
        authority = self.authority.for_role(role)
        return None if authority is None else authority.limit_minor(action)

    def may(self, role: str, action: str, amount_minor: int) -> bool:
        """Whether this role may take this action on this amount."""
        _check_amount(amount_minor)
        limit = self.authority_limit(role, action)
        return limit is not None and limit > 0 and amount_minor <= limit

    def roles_that_may(self, action: str, amount_minor: int) -> tuple[str, ...]:
        """The roles that may take this action on this amount (for a refusal to name them)."""
        return tuple(role for role in ROLES if self.may(role, action, amount_minor))

    def refund_retry_delay(self, attempt: int) -> timedelta | None:
        """The wait after failed attempt `attempt` (from 1); None once retries are exhausted."""
        if attempt < 1:
            raise ValueError(f"attempt should be 1 or more, not {attempt}")
        if attempt > self.refunds.retry_max:
            return None
        backoff = self.refunds.retry_backoff
        return backoff[min(attempt - 1, len(backoff) - 1)]

    def dormancy(self, jurisdiction: str) -> timedelta:
        """How long unclaimed money waits in this jurisdiction before it is escheated."""
        return self.escheatment.dormancy.get(jurisdiction, self.escheatment.default_dormancy)

    def dispute_sla(self, channel: str) -> DisputeSla:
        """The service levels of disputes from this channel."""
        return self.disputes.sla[channel]  # type: ignore[index]

    def small_credit_minor(self, currency: str) -> int:
        """Below this amount a verified overpayment in this currency is kept as credit."""
        amounts = self.overpayment.small_credit_minor
        return amounts.get(currency, amounts[ANY_CURRENCY])


def _check_amount(amount_minor: int) -> None:
    if amount_minor < 0:
        raise ValueError(f"amount_minor should be 0 or more, not {amount_minor}")
