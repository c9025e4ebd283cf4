"""The inbound payment event, contract version 1, as received on `payments.inbound`.

`parse_inbound` checks one message value in memory, cheapest check first:

1. Size: more than `message_bytes_max` bytes is `too_large`, before any parsing.
2. JSON: one parse with pydantic-core's `from_json` (jiter, `allow_inf_nan=False`). Not UTF-8,
   a lone surrogate escape, NaN/Infinity, trailing data, a syntax error, or an integer of more
   than 4300 digits is `not_json`. Not orjson: it silently turns integers beyond 64 bits into
   floats (an amount of 2**70 would be misreported) and saved little (~0.4 us/message).
3. Shape: a top-level value that is not an object is `contract`. Depth: deeper than
   `json_depth_max` is `contract`. Only a message holding more than `json_depth_max` brackets
   (`{` plus `[`, counted in C) can be that deep, so only then is the value walked (iteratively).
   Nesting beyond jiter's own recursion limit (200) is refused by the parser before it reads on;
   that too is `contract` (too deep wins, even over a truncated text).
4. Contract: `validate_python` in strict mode: "100", 1.5 and true are not integers, unknown
   fields are ignored, an unknown `type` is refused. Strict Python mode would refuse every
   datetime given as a string, so timestamp and date fields alone are lax but guarded: a
   validator first requires a string of RFC 3339 shape (`2024-05-01T12:34:56Z`, offset required;
   `YYYY-MM-DD` for dates). Without that guard pydantic, even strict JSON mode, accepts
   "1700000000" as a timestamp and lax mode takes "2024-05-01T00:00:00" as a date.

Measured on a 371-byte payment.received (AMD EPYC, Python 3.11, pydantic 2.14): this path
4.6 us/message. orjson + strict `validate_json` (parsing twice) 4.2 us but unguarded dates;
`validate_json` alone 3.1 us, but its parser takes NaN and Infinity (not JSON) and the depth
check would still need a parse.

A refusal is raised as `InboundRejected`: its dead-letter kind and one human line naming the
field path and the problem.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from typing import Annotated, Any, Final, Literal, NoReturn, TypeVar

import pydantic_core
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
    TypeAdapter,
    ValidationError,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from ledger import limits
from ledger.domain.money import ISO_4217_CODES
from ledger.schemas.errors import ErrorKind, one_line_reason

T = TypeVar("T")

InboundErrorKind = Literal["not_json", "contract", "too_large"]
"""The dead-letter kinds `parse_inbound` can give; the others come from later stages."""

_RFC3339_TIMESTAMP: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})"
)
_RFC3339_DATE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_CONTROL_CHARACTER: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")
"""Unicode's control characters (category Cc: C0, DEL, C1): never in an identifier."""
_CONTROL_CHARACTER_IN_TEXT: Final = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
"""The control characters free text may not hold: all but tab, line feed and carriage return."""


def _require_timestamp(value: Any) -> Any:
    if type(value) is not str or _RFC3339_TIMESTAMP.fullmatch(value) is None:
        raise PydanticCustomError(
            "rfc3339_timestamp",
            "Input should be an RFC 3339 timestamp with offset, e.g. 2024-05-01T12:34:56Z",
        )
    return value


def _require_date(value: Any) -> Any:
    if type(value) is not str or _RFC3339_DATE.fullmatch(value) is None:
        raise PydanticCustomError("rfc3339_date", "Input should be a date as YYYY-MM-DD")
    return value


def _control_character_message(error: ErrorDetails) -> str | None:
    """For a control-character pattern mismatch: which character, where; else None."""
    pattern = str(error.get("ctx", {}).get("pattern", ""))
    if pattern not in (_IDENTIFIER_PATTERN, _TEXT_PATTERN):
        return None
    found = (
        _CONTROL_CHARACTER if pattern == _IDENTIFIER_PATTERN else _CONTROL_CHARACTER_IN_TEXT
    ).search(str(error.get("input", "")))
    where = f", found U+{ord(found.group()):04X} at {found.start()}" if found else ""
    return f"Input should hold no control character{where}"


def _check_currency(code: str) -> str:
    if code not in ISO_4217_CODES:
        shown = repr(code) if len(code) <= 8 else repr(code[:8]) + "..."
        raise PydanticCustomError(
            "currency",
            "Input should be an active ISO 4217 currency code in upper case, not {shown}",
            {"shown": shown},
        )
    return code


# Text goes into both backends alike: PostgreSQL cannot store NUL in text at all, so the contract
# refuses control characters everywhere (free text keeps tab and newlines) rather than letting
# SQLite accept what PostgreSQL would fail on at commit.
# Checked in pydantic-core (Rust) as patterns: as Python validators they cost 1.8 us a message.
# `_describe_error` turns a mismatch into "no control character, found U+XXXX at N".
_IDENTIFIER_PATTERN: Final = r"^[^\x00-\x1f\x7f-\x9f]*$"
_TEXT_PATTERN: Final = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]*$"
Identifier = Annotated[
    str,
    StringConstraints(
        min_length=1, max_length=limits.identifier_chars_max, pattern=_IDENTIFIER_PATTERN
    ),
]
Text = Annotated[
    str,
    StringConstraints(min_length=1, max_length=limits.text_chars_max, pattern=_TEXT_PATTERN),
]
Currency = Annotated[str, AfterValidator(_check_currency)]
Jurisdiction = Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}(-[A-Z0-9]{1,3})?$")]
PaymentMethod = Annotated[
    str, StringConstraints(min_length=1, max_length=32, pattern=_IDENTIFIER_PATTERN)
]
Timestamp = Annotated[AwareDatetime, Strict(False), BeforeValidator(_require_timestamp)]
Date = Annotated[dt.date, Strict(False), BeforeValidator(_require_date)]


class MoneyIn(BaseModel):
    """An amount on the wire: positive integer minor units and an ISO 4217 code."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    value: int = Field(ge=1, le=limits.amount_minor_max)
    currency: Currency


class _CommonIn(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    event_id: Identifier
    processor: Identifier
    account_id: Identifier
    occurred_at: Timestamp


class AccountOpenedIn(_CommonIn):
    """A processor opened a customer account (the account's one currency is fixed here)."""

    type: Literal["account.opened"]
    customer_id: Identifier
    kind: Literal["utility", "monthly", "retail"]
    jurisdiction: Jurisdiction
    currency: Currency


class InvoiceIssuedIn(_CommonIn):
    """An invoice was issued to the customer."""

    type: Literal["invoice.issued"]
    invoice_id: Identifier
    amount: MoneyIn
    due_date: Date


class PaymentReceivedIn(_CommonIn):
    """The customer paid, possibly naming the invoice the payment is for."""

    type: Literal["payment.received"]
    payment_id: Identifier
    amount: MoneyIn
    method: PaymentMethod
    invoice_id: Identifier | None = None


class RefundSettledIn(_CommonIn):
    """A refund the ledger requested was paid out by the processor."""

    type: Literal["refund.settled"]
    refund_id: Identifier
    amount: MoneyIn


class RefundFailedIn(_CommonIn):
    """A refund the ledger requested failed at the processor."""

    type: Literal["refund.failed"]
    refund_id: Identifier
    reason: Text


class DisputeOpenedIn(_CommonIn):
    """A dispute or chargeback was opened at the processor."""

    type: Literal["dispute.opened"]
    dispute_id: Identifier
    amount: MoneyIn
    reason: Text
    payment_id: Identifier | None = None
    respond_by: Timestamp | None = None


class DisputeClosedIn(_CommonIn):
    """The processor closed a dispute with its outcome."""

    type: Literal["dispute.closed"]
    dispute_id: Identifier
    outcome: Literal["won", "lost", "withdrawn"]


class PaymentReturnedIn(_CommonIn):
    """A payment came back: an ACH return, a bounced check, a card reversal."""

    type: Literal["payment.returned"]
    payment_id: Identifier
    amount: MoneyIn
    reason: Text


class InvoiceVoidedIn(_CommonIn):
    """An invoice was voided."""

    type: Literal["invoice.voided"]
    invoice_id: Identifier


class CouponRedeemedIn(_CommonIn):
    """A coupon the ledger issued was used."""

    type: Literal["coupon.redeemed"]
    coupon_code: Identifier
    amount: MoneyIn
    invoice_id: Identifier | None = None


class CreditRedeemedIn(_CommonIn):
    """Store credit was used for a purchase."""

    type: Literal["credit.redeemed"]
    redemption_id: Identifier
    amount: MoneyIn
    invoice_id: Identifier | None = None


class FeedbackReceivedIn(_CommonIn):
    """The customer's feedback on a dispute, from the processor's survey."""

    type: Literal["feedback.received"]
    dispute_id: Identifier
    score: int = Field(ge=1, le=5)
    comment: Text | None = None


InboundEvent = Annotated[
    AccountOpenedIn
    | InvoiceIssuedIn
    | PaymentReceivedIn
    | RefundSettledIn
    | RefundFailedIn
    | DisputeOpenedIn
    | DisputeClosedIn
    | PaymentReturnedIn
    | InvoiceVoidedIn
    | CouponRedeemedIn
    | CreditRedeemedIn
    | FeedbackReceivedIn,
    Field(discriminator="type"),
]
"""Any inbound payment event, selected by its `type`."""

INBOUND_TYPES: Final[frozenset[str]] = frozenset(
    {
        "account.opened",
        "invoice.issued",
        "payment.received",
        "refund.settled",
        "refund.failed",
        "dispute.opened",
        "dispute.closed",
        "payment.returned",
        "invoice.voided",
        "coupon.redeemed",
        "credit.redeemed",
        "feedback.received",
    }
)
"""Every `type` of contract version 1 (the last four added with the overpayment protocol)."""

_ADAPTER: Final[TypeAdapter[InboundEvent]] = TypeAdapter(InboundEvent)


class InboundRejected(Exception):
    """An inbound message refused before it reached the domain, with its dead-letter kind."""

    kind: InboundErrorKind
    reason: str

    def __init__(self, kind: InboundErrorKind, reason: str) -> None:
        self.kind = kind
        self.reason = one_line_reason(reason)
        super().__init__(kind, self.reason)

    def __str__(self) -> str:
        return self.reason

    @property
    def error_kind(self) -> ErrorKind:
        """The kind as the wider dead-letter `ErrorKind`."""
        return self.kind


def parse_inbound(raw: bytes | None) -> InboundEvent:
    """Parse one `payments.inbound` message value, or raise InboundRejected saying why not."""
    return parse_message(raw, _ADAPTER, INBOUND_TYPES)


def parse_message(raw: bytes | None, adapter: TypeAdapter[T], tags: frozenset[str]) -> T:
    """Parse one message value by the steps above into `adapter`'s type (a union selected by
    `type`, whose values are `tags`), or raise InboundRejected saying why not."""
    if not raw:
        _reject("not_json", "not_json: empty message")
    if len(raw) > limits.message_bytes_max:
        _reject("too_large", f"too_large: {len(raw)} bytes, above {limits.message_bytes_max}")
    try:
        value = pydantic_core.from_json(raw, allow_inf_nan=False, cache_strings=False)
    except ValueError as error:
        if str(error).startswith("recursion limit"):
            _reject_too_deep()
        _reject("not_json", f"not_json: {error}")
    if type(value) is not dict:
        _reject("contract", f"contract: top-level JSON value is {_json_kind(value)}, not an object")
    brackets = raw.count(b"{") + raw.count(b"[")
    if brackets > limits.json_depth_max and _depth_exceeds(value, limits.json_depth_max):
        _reject_too_deep()
    try:
        return adapter.validate_python(value)
    except ValidationError as error:
        _reject("contract", contract_reason(error, tags))


def inbound_account_id(raw: bytes) -> str | None:
    """Best-effort account id of a raw inbound line (the Kafka key), or None if it has none."""
    try:
        value = pydantic_core.from_json(raw, allow_inf_nan=False, cache_strings=False)
    except ValueError:
        return None
    if type(value) is not dict:
        return None
    account_id = value.get("account_id")
    if type(account_id) is str and account_id:
        return account_id
    return None


def _reject(kind: InboundErrorKind, reason: str) -> NoReturn:
    raise InboundRejected(kind, reason)


def _reject_too_deep() -> NoReturn:
    _reject("contract", f"contract: JSON nested deeper than {limits.json_depth_max} levels")


def _depth_exceeds(value: object, depth_max: int) -> bool:
    """True when `value` nests arrays and objects more than `depth_max` levels deep."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > depth_max:
            return True
        children: Iterable[object]
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        for child in children:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
    return False


def _json_kind(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "null"


def _describe_error(error: ErrorDetails, tags: frozenset[str]) -> str:
    """One validation error as "field.path: message", without the discriminator tag."""
    error_type = error["type"]
    if error_type == "union_tag_not_found":
        return "type: Field required"
    if error_type == "union_tag_invalid":
        tag = str(error.get("ctx", {}).get("tag", ""))
        shown = repr(tag) if len(tag) <= 40 else repr(tag[:40]) + "..."
        return f"unknown type {shown}"
    message = error["msg"]
    if error_type == "string_pattern_mismatch":
        message = _control_character_message(error) or message
    location = error["loc"]
    if location and location[0] in tags:
        location = location[1:]
    path = ".".join(str(part) for part in location)
    return f"{path}: {message}" if path else message


def contract_reason(error: ValidationError, tags: frozenset[str] = INBOUND_TYPES) -> str:
    """A validation error as one `contract: field.path: message` line."""
    # Inputs are read only to place a control character; no reason ever quotes them.
    errors = error.errors(include_url=False, include_input=True, include_context=True)
    reason = f"contract: {_describe_error(errors[0], tags)}"
    if len(errors) > 1:
        more = len(errors) - 1
        reason += f" (and {more} more error{'s' if more > 1 else ''})"
    return reason
