"""The inbound payment event contract, version 1: what parses, and why the rest is refused."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger import limits
from ledger.schemas.inbound import (
    INBOUND_TYPES,
    AccountOpenedIn,
    DisputeClosedIn,
    DisputeOpenedIn,
    InboundRejected,
    InvoiceIssuedIn,
    MoneyIn,
    PaymentReceivedIn,
    RefundFailedIn,
    RefundSettledIn,
    inbound_account_id,
    parse_inbound,
)
from tests.hypothesis_settings import max_examples

COMMON: dict[str, Any] = {
    "event_id": "evt-1",
    "processor": "acme-pay",
    "account_id": "acct-42",
    "occurred_at": "2024-05-01T12:34:56.250+02:00",
}
AMOUNT = {"value": 12345, "currency": "USD"}

EXAMPLES: dict[str, dict[str, Any]] = {
    "account.opened": {
        "customer_id": "cust-7",
        "kind": "monthly",
        "jurisdiction": "US-CA",
        "currency": "USD",
    },
    "invoice.issued": {"invoice_id": "inv-1", "amount": AMOUNT, "due_date": "2024-06-01"},
    "payment.received": {
        "payment_id": "pay-1",
        "amount": AMOUNT,
        "method": "card",
        "invoice_id": "inv-1",
    },
    "refund.settled": {"refund_id": "ref-1", "amount": AMOUNT},
    "refund.failed": {"refund_id": "ref-1", "reason": "account closed"},
    "dispute.opened": {
        "dispute_id": "dsp-1",
        "amount": AMOUNT,
        "reason": "not received",
        "payment_id": "pay-1",
        "respond_by": "2024-05-15T23:59:59Z",
    },
    "dispute.closed": {"dispute_id": "dsp-1", "outcome": "won"},
    "payment.returned": {"payment_id": "pay-1", "amount": AMOUNT, "reason": "ACH return R01"},
    "invoice.voided": {"invoice_id": "inv-1"},
    "coupon.redeemed": {"coupon_code": "CPN-1", "amount": AMOUNT, "invoice_id": "inv-2"},
    "credit.redeemed": {"redemption_id": "red-1", "amount": AMOUNT},
    "feedback.received": {"dispute_id": "dsp-1", "score": 4, "comment": "quick and fair"},
}


def event(event_type: str = "payment.received", **changes: Any) -> dict[str, Any]:
    """A valid event of `event_type` as a dict; a change to `...` removes that field."""
    document = {**COMMON, "type": event_type, **EXAMPLES[event_type], **changes}
    return {key: value for key, value in document.items() if value is not ...}


def raw(document: Any) -> bytes:
    """`document` as JSON text: the standard library, because orjson refuses ints beyond 64 bits."""
    return json.dumps(document, ensure_ascii=False).encode()


def rejected(message: bytes | None) -> InboundRejected:
    with pytest.raises(InboundRejected) as caught:
        parse_inbound(message)
    error = caught.value
    assert error.reason and "\n" not in error.reason
    assert len(error.reason) <= limits.reason_chars_max
    assert error.reason.startswith(f"{error.kind}: ")
    return error


# --- valid events ------------------------------------------------------------------------------

OCCURRED_AT = dt.datetime(
    2024, 5, 1, 12, 34, 56, 250_000, tzinfo=dt.timezone(dt.timedelta(hours=2))
)


def test_account_opened() -> None:
    parsed = parse_inbound(raw(event("account.opened")))
    assert isinstance(parsed, AccountOpenedIn)
    assert (parsed.event_id, parsed.processor, parsed.account_id) == (
        "evt-1",
        "acme-pay",
        "acct-42",
    )
    assert parsed.occurred_at == OCCURRED_AT and parsed.occurred_at.utcoffset() is not None
    assert (parsed.customer_id, parsed.kind, parsed.jurisdiction, parsed.currency) == (
        "cust-7",
        "monthly",
        "US-CA",
        "USD",
    )


def test_invoice_issued() -> None:
    parsed = parse_inbound(raw(event("invoice.issued")))
    assert isinstance(parsed, InvoiceIssuedIn)
    assert parsed.invoice_id == "inv-1"
    assert parsed.amount == MoneyIn(value=12345, currency="USD")
    assert parsed.due_date == dt.date(2024, 6, 1)


def test_payment_received() -> None:
    parsed = parse_inbound(raw(event("payment.received")))
    assert isinstance(parsed, PaymentReceivedIn)
    assert (parsed.payment_id, parsed.method, parsed.invoice_id) == ("pay-1", "card", "inv-1")
    assert (parsed.amount.value, parsed.amount.currency) == (12345, "USD")
    assert parsed.occurred_at == OCCURRED_AT


def test_payment_received_without_invoice() -> None:
    parsed = parse_inbound(raw(event("payment.received", invoice_id=...)))
    assert isinstance(parsed, PaymentReceivedIn)
    assert parsed.invoice_id is None


def test_refund_settled() -> None:
    parsed = parse_inbound(raw(event("refund.settled")))
    assert isinstance(parsed, RefundSettledIn)
    assert parsed.refund_id == "ref-1" and parsed.amount.value == 12345


def test_refund_failed() -> None:
    parsed = parse_inbound(raw(event("refund.failed")))
    assert isinstance(parsed, RefundFailedIn)
    assert (parsed.refund_id, parsed.reason) == ("ref-1", "account closed")


def test_dispute_opened() -> None:
    parsed = parse_inbound(raw(event("dispute.opened")))
    assert isinstance(parsed, DisputeOpenedIn)
    assert (parsed.dispute_id, parsed.reason, parsed.payment_id) == (
        "dsp-1",
        "not received",
        "pay-1",
    )
    assert parsed.respond_by == dt.datetime(2024, 5, 15, 23, 59, 59, tzinfo=dt.UTC)


def test_dispute_opened_without_optional_fields() -> None:
    parsed = parse_inbound(raw(event("dispute.opened", payment_id=..., respond_by=...)))
    assert isinstance(parsed, DisputeOpenedIn)
    assert parsed.payment_id is None and parsed.respond_by is None


def test_dispute_closed() -> None:
    parsed = parse_inbound(raw(event("dispute.closed")))
    assert isinstance(parsed, DisputeClosedIn)
    assert parsed.outcome == "won"


def test_every_type_has_an_example() -> None:
    assert set(EXAMPLES) == INBOUND_TYPES


def test_unknown_fields_are_ignored() -> None:
    document = event("refund.settled", processor_trace={"id": [1, 2, 3]}, schema_version=7)
    document["amount"] = {**AMOUNT, "fx_rate": 1.0834}
    parsed = parse_inbound(raw(document))
    assert isinstance(parsed, RefundSettledIn)
    assert not hasattr(parsed, "processor_trace") and parsed.model_extra is None


def test_parsed_events_are_frozen() -> None:
    parsed = parse_inbound(raw(event()))
    with pytest.raises(ValueError, match="frozen"):
        parsed.account_id = "other"  # type: ignore[misc]


def test_utc_z_and_lower_case_separators_are_rfc3339() -> None:
    parsed = parse_inbound(raw(event(occurred_at="2024-05-01t12:34:56z")))
    assert parsed.occurred_at == dt.datetime(2024, 5, 1, 12, 34, 56, tzinfo=dt.UTC)


def test_largest_amount_is_accepted() -> None:
    parsed = parse_inbound(raw(event(amount={"value": limits.amount_minor_max, "currency": "JPY"})))
    assert isinstance(parsed, PaymentReceivedIn)
    assert parsed.amount.value == limits.amount_minor_max


# --- contract errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"occurred_at": "2024-05-01T12:34:56"}, "occurred_at"),
        ({"occurred_at": "2024-05-01 12:34:56+00:00"}, "occurred_at"),
        ({"occurred_at": "1714566896"}, "occurred_at"),
        ({"occurred_at": 1714566896}, "occurred_at"),
        ({"occurred_at": "2024-13-01T12:34:56Z"}, "occurred_at"),
        ({"occurred_at": ...}, "occurred_at"),
        ({"event_id": ""}, "event_id"),
        ({"event_id": "e" * (limits.identifier_chars_max + 1)}, "event_id"),
        ({"account_id": 42}, "account_id"),
        ({"processor": None}, "processor"),
        ({"payment_id": ...}, "payment_id"),
        ({"method": ""}, "method"),
        ({"method": "m" * 33}, "method"),
        ({"invoice_id": ""}, "invoice_id"),
        ({"amount": 12345}, "amount"),
        ({"amount": {"value": 0, "currency": "USD"}}, "amount.value"),
        ({"amount": {"value": -1, "currency": "USD"}}, "amount.value"),
        ({"amount": {"value": limits.amount_minor_max + 1, "currency": "USD"}}, "amount.value"),
        ({"amount": {"value": 2**70, "currency": "USD"}}, "amount.value"),
        ({"amount": {"value": 1.5, "currency": "USD"}}, "amount.value"),
        ({"amount": {"value": 100.0, "currency": "USD"}}, "amount.value"),
        ({"amount": {"value": "100", "currency": "USD"}}, "amount.value"),
        ({"amount": {"value": True, "currency": "USD"}}, "amount.value"),
        ({"amount": {"currency": "USD"}}, "amount.value"),
        ({"amount": {"value": 100, "currency": "ABC"}}, "amount.currency"),
        ({"amount": {"value": 100, "currency": "usd"}}, "amount.currency"),
        ({"amount": {"value": 100, "currency": "XXX"}}, "amount.currency"),
        ({"amount": {"value": 100, "currency": 840}}, "amount.currency"),
    ],
)
def test_payment_received_contract_errors(changes: dict[str, Any], field: str) -> None:
    error = rejected(raw(event("payment.received", **changes)))
    assert error.kind == "contract"
    assert error.reason.startswith(f"contract: {field}: "), error.reason


@pytest.mark.parametrize(
    ("event_type", "changes", "field"),
    [
        ("account.opened", {"kind": "savings"}, "kind"),
        ("account.opened", {"jurisdiction": "us-ca"}, "jurisdiction"),
        ("account.opened", {"jurisdiction": "USA"}, "jurisdiction"),
        ("account.opened", {"jurisdiction": "US-ABCD"}, "jurisdiction"),
        ("account.opened", {"currency": "usd"}, "currency"),
        ("account.opened", {"customer_id": ...}, "customer_id"),
        ("invoice.issued", {"due_date": "2024-06-01T00:00:00"}, "due_date"),
        ("invoice.issued", {"due_date": "01/06/2024"}, "due_date"),
        ("invoice.issued", {"due_date": "2024-02-30"}, "due_date"),
        ("invoice.issued", {"due_date": 19875}, "due_date"),
        ("invoice.issued", {"amount": {"value": 0, "currency": "EUR"}}, "amount.value"),
        ("refund.settled", {"amount": {"value": -10, "currency": "EUR"}}, "amount.value"),
        ("refund.failed", {"reason": ""}, "reason"),
        ("refund.failed", {"reason": "r" * (limits.text_chars_max + 1)}, "reason"),
        ("dispute.opened", {"respond_by": "2024-05-15T23:59:59"}, "respond_by"),
        ("dispute.opened", {"amount": {"value": 0, "currency": "USD"}}, "amount.value"),
        ("dispute.closed", {"outcome": "lost-ish"}, "outcome"),
    ],
)
def test_other_types_contract_errors(event_type: str, changes: dict[str, Any], field: str) -> None:
    error = rejected(raw(event(event_type, **changes)))
    assert error.kind == "contract"
    assert error.reason.startswith(f"contract: {field}: "), error.reason


def test_reasons_read_well() -> None:
    zero = rejected(raw(event(amount={"value": 0, "currency": "USD"})))
    assert zero.reason == "contract: amount.value: Input should be greater than or equal to 1"
    naive = rejected(raw(event(occurred_at="2024-05-01T12:34:56")))
    assert "offset" in naive.reason
    currency = rejected(raw(event(amount={"value": 1, "currency": "usd"})))
    assert "ISO 4217" in currency.reason and "'usd'" in currency.reason


def test_several_errors_are_counted() -> None:
    error = rejected(raw(event(event_id=..., processor="", method=...)))
    assert error.reason.startswith("contract: event_id: Field required")
    assert error.reason.endswith("(and 2 more errors)")


def test_unknown_type() -> None:
    error = rejected(raw(event() | {"type": "foo.bar"}))
    assert (error.kind, error.reason) == ("contract", "contract: unknown type 'foo.bar'")


@pytest.mark.parametrize("tag", [None, 3, ["payment.received"], "Payment.Received", ""])
def test_type_that_is_not_a_known_string(tag: Any) -> None:
    error = rejected(raw(event() | {"type": tag}))
    assert error.kind == "contract"
    assert error.reason.startswith("contract: unknown type ")


def test_missing_type() -> None:
    document = event()
    del document["type"]
    error = rejected(raw(document))
    assert (error.kind, error.reason) == ("contract", "contract: type: Field required")


def test_control_characters_in_an_unknown_type_stay_on_one_line() -> None:
    error = rejected(raw(event() | {"type": "evil\r\nerror_kind: none" * 40}))
    assert error.kind == "contract" and "\r" not in error.reason


@pytest.mark.parametrize(
    ("message", "kind_name"),
    [(b"[]", "an array"), (b"3", "a number"), (b'"x"', "a string"), (b"null", "null")],
)
def test_top_level_must_be_an_object(message: bytes, kind_name: str) -> None:
    error = rejected(message)
    assert error.kind == "contract"
    assert error.reason == f"contract: top-level JSON value is {kind_name}, not an object"


# --- not JSON, too large, too deep -------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        None,
        b"",
        b"   ",
        b"\xff\xfe\x00",
        b'{"event_id": "\xc3\x28"}',
        raw(event())[:-7],
        b"{'type': 'payment.received'}",
        b'{"a": NaN}',
        b'{"a": Infinity}',
        b'{"a": "\\udc00"}',
        raw(event()) + b" {}",
        b'{"a": ' + b"7" * 5000 + b"}",
    ],
)
def test_not_json(message: bytes | None) -> None:
    assert rejected(message).kind == "not_json"


def test_oversized_message_is_too_large_before_parsing() -> None:
    padded = raw(event()).ljust(limits.message_bytes_max + 1, b" ")
    assert len(padded) == limits.message_bytes_max + 1
    error = rejected(padded)
    assert error.kind == "too_large"
    assert str(limits.message_bytes_max + 1) in error.reason
    garbage = b"\xff" * (limits.message_bytes_max + 1)
    assert rejected(garbage).kind == "too_large"


def test_message_of_exactly_the_limit_is_parsed() -> None:
    document = event(padding="")
    document["padding"] = "p" * (limits.message_bytes_max - len(raw(document)))
    assert len(raw(document)) == limits.message_bytes_max
    assert isinstance(parse_inbound(raw(document)), PaymentReceivedIn)


def nested(depth: int) -> Any:
    value: Any = []
    for level in range(depth - 1):
        value = [value] if level % 2 else {"k": value}
    return value


def test_nesting_up_to_the_limit_is_accepted() -> None:
    # The event object itself is level 1.
    parsed = parse_inbound(raw(event(extra=nested(limits.json_depth_max - 1))))
    assert isinstance(parsed, PaymentReceivedIn)


def test_nesting_beyond_the_limit_is_a_contract_error() -> None:
    error = rejected(raw(event(extra=nested(limits.json_depth_max))))
    assert error.kind == "contract"
    assert error.reason == f"contract: JSON nested deeper than {limits.json_depth_max} levels"


def test_many_brackets_inside_strings_are_not_nesting() -> None:
    parsed = parse_inbound(raw(event(note="[{" * 100)))
    assert isinstance(parsed, PaymentReceivedIn)


@pytest.mark.parametrize(
    "message",
    [
        b"[" * 10_000,
        b"[" * 10_000 + b"]" * 10_000,
        b'{"a":' * 10_000,
        b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
        b"[" * 60_000,
        raw(event())[:-1] + b',"deep":' + b"[" * 5_000 + b"]" * 5_000 + b"}",
    ],
)
def test_very_deep_nesting_never_crashes(message: bytes) -> None:
    assert rejected(message).kind == "contract"


# --- the Kafka key ------------------------------------------------------------------------------


def test_inbound_account_id() -> None:
    assert inbound_account_id(raw(event())) == "acct-42"
    assert inbound_account_id(raw({"account_id": "a-1", "type": "nonsense"})) == "a-1"
    assert inbound_account_id(b"not json") is None
    assert inbound_account_id(b"[]") is None
    assert inbound_account_id(b"") is None
    assert inbound_account_id(b'{"account_id": 42}') is None
    assert inbound_account_id(b'{"account_id": ""}') is None
    assert inbound_account_id(b"[" * 10_000) is None


# --- fuzzing ------------------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=30,
)
field_names = st.sampled_from(
    sorted({*COMMON, "type", "value", "currency"} | {f for e in EXAMPLES.values() for f in e})
)
field_values = (
    json_values
    | st.sampled_from(
        [
            "2024-05-01T12:34:56Z",
            "2024-05-01T12:34:56",
            "2024-06-01",
            "USD",
            "usd",
            "card",
            "won",
            "monthly",
            "US-CA",
            0,
            1,
            -1,
            limits.amount_minor_max,
            limits.amount_minor_max + 1,
        ]
    )
    | st.fixed_dictionaries({"value": json_values, "currency": st.sampled_from(["USD", "abc"])})
)


def typed_documents() -> st.SearchStrategy[dict[str, Any]]:
    """Objects with a valid `type`: a valid event with fields changed, added or dropped."""

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        document = event(draw(st.sampled_from(sorted(INBOUND_TYPES))))
        for name in draw(st.lists(field_names, max_size=4)):
            if draw(st.booleans()):
                document[name] = draw(field_values)
            else:
                document.pop(name, None)
        return document

    return build()


def check_parse_outcome(message: bytes) -> None:
    try:
        parsed = parse_inbound(message)
    except InboundRejected as error:
        assert error.kind in ("not_json", "contract", "too_large")
        assert error.reason and "\n" not in error.reason and "\r" not in error.reason
        assert len(error.reason) <= limits.reason_chars_max
        return
    assert parsed.type in INBOUND_TYPES
    # Whatever passes must be storable as JSON again (no lone surrogates, no floats in money).
    orjson.dumps(parsed.model_dump(mode="json"))
    amount = getattr(parsed, "amount", None)
    if amount is not None:
        assert type(amount.value) is int and 1 <= amount.value <= limits.amount_minor_max


@settings(max_examples=max_examples(), suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_fuzz_arbitrary_bytes(message: bytes) -> None:
    check_parse_outcome(message)


@settings(max_examples=max_examples(), suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_fuzz_arbitrary_json(value: Any) -> None:
    check_parse_outcome(raw(value))


@settings(max_examples=max_examples(), suppress_health_check=[HealthCheck.too_slow])
@given(typed_documents())
def test_fuzz_objects_with_a_valid_type(document: dict[str, Any]) -> None:
    check_parse_outcome(raw(document))


@settings(max_examples=max_examples(), suppress_health_check=[HealthCheck.too_slow])
@given(typed_documents(), st.integers(min_value=0, max_value=400), st.binary(max_size=8))
def test_fuzz_truncated_and_spliced_events(
    document: dict[str, Any], cut: int, noise: bytes
) -> None:
    message = raw(document)
    check_parse_outcome(message[:cut] + noise + message[cut:])


# --- what text may hold ------------------------------------------------------------------------

IDENTIFIER_FIELDS = [
    ("payment.received", "event_id"),
    ("payment.received", "processor"),
    ("payment.received", "account_id"),
    ("payment.received", "payment_id"),
    ("payment.received", "invoice_id"),
    ("payment.received", "method"),
    ("account.opened", "customer_id"),
    ("refund.failed", "refund_id"),
    ("dispute.opened", "dispute_id"),
]


@pytest.mark.parametrize(("event_type", "field"), IDENTIFIER_FIELDS)
@pytest.mark.parametrize("control", ["\u0000", "\u0007", "\t", "\n", "\u007f", "\u0085"])
def test_identifiers_refuse_control_characters(event_type: str, field: str, control: str) -> None:
    error = rejected(raw(event(event_type, **{field: f"id{control}x"})))
    assert error.kind == "contract"
    assert f"{field}: Input should hold no control character, found U+{ord(control):04X} at 2" in (
        error.reason
    )


@pytest.mark.parametrize("whitespace", ["\t", "\n", "\r\n"])
def test_free_text_keeps_tabs_and_newlines(whitespace: str) -> None:
    reason = f"card{whitespace}expired"
    parsed = parse_inbound(raw(event("refund.failed", reason=reason)))
    assert isinstance(parsed, RefundFailedIn) and parsed.reason == reason


@pytest.mark.parametrize("control", ["\u0000", "\u001b", "\u009b"])
def test_free_text_refuses_other_control_characters(control: str) -> None:
    error = rejected(raw(event("dispute.opened", reason=f"not{control}received")))
    assert error.kind == "contract" and error.reason.startswith("contract: reason: ")


def test_identifiers_keep_other_unicode() -> None:
    parsed = parse_inbound(raw(event(event_id="évt-é-😀-\u200b", payment_id="支払い-1")))
    assert isinstance(parsed, PaymentReceivedIn)
    assert (parsed.event_id, parsed.payment_id) == ("évt-é-😀-\u200b", "支払い-1")


@settings(max_examples=max_examples(), suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(IDENTIFIER_FIELDS), st.text(max_size=40))
def test_fuzz_arbitrary_unicode_in_identifiers(where: tuple[str, str], text: str) -> None:
    event_type, field = where
    message = raw(event(event_type, **{field: text}))
    check_parse_outcome(message)
    try:
        parsed = parse_inbound(message)
    except InboundRejected:
        return
    assert getattr(parsed, field) == text
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in text)
