"""Money: integer minor units in one ISO 4217 currency, never floats."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.domain.money import (
    ISO_4217_CODES,
    CurrencyError,
    Money,
    MoneyError,
    check_currency,
    minor_unit_exponent,
    parse_major_units,
)
from tests.hypothesis_settings import max_examples

amounts = st.integers(min_value=-(2**62), max_value=2**62)
currencies = st.sampled_from(sorted(ISO_4217_CODES))


def test_adds_and_subtracts_in_one_currency() -> None:
    assert Money(1050, "USD") + Money(250, "USD") == Money(1300, "USD")
    assert Money(1050, "USD") - Money(2000, "USD") == Money(-950, "USD")
    assert -Money(5, "EUR") == Money(-5, "EUR")


def test_zero_and_sign_helpers() -> None:
    zero = Money.zero("GBP")
    assert zero == Money(0, "GBP")
    assert zero.is_zero() and not zero.is_positive() and not zero.is_negative()
    assert Money(1, "GBP").is_positive()
    assert Money(-1, "GBP").is_negative()


def test_min_max_and_comparisons_in_one_currency() -> None:
    small, large = Money(5, "JPY"), Money(7, "JPY")
    assert small.min(large) == small and large.min(small) == small
    assert small.max(large) == large
    assert small < large and small <= large and large > small and large >= small
    assert small <= Money(5, "JPY") and small >= Money(5, "JPY")


@pytest.mark.parametrize(
    "operation",
    [
        lambda a, b: a + b,
        lambda a, b: a - b,
        lambda a, b: a.min(b),
        lambda a, b: a.max(b),
        lambda a, b: a < b,
        lambda a, b: a <= b,
        lambda a, b: a > b,
        lambda a, b: a >= b,
    ],
)
def test_refuses_to_combine_currencies(operation: Any) -> None:
    with pytest.raises(CurrencyError, match="USD and EUR"):
        operation(Money(100, "USD"), Money(100, "EUR"))


def test_different_currencies_are_never_equal() -> None:
    assert Money(100, "USD") != Money(100, "EUR")
    assert Money(0, "USD") != Money.zero("CAD")


@pytest.mark.parametrize("amount", [1.5, 1.0, True, False, "100", None, 10**20 * 1.0])
def test_refuses_amounts_that_are_not_int(amount: Any) -> None:
    with pytest.raises(MoneyError, match="must be an int"):
        Money(amount, "USD")


@pytest.mark.parametrize("code", ["ABC", "usd", "XXX", "XTS", "XAU", "HRK", "", "USDX", "US"])
def test_refuses_unknown_currency(code: str) -> None:
    with pytest.raises(CurrencyError, match="ISO 4217"):
        Money(1, code)
    with pytest.raises(CurrencyError):
        check_currency(code)


def test_refuses_a_currency_that_is_not_a_string() -> None:
    with pytest.raises(CurrencyError):
        check_currency(840)  # type: ignore[arg-type]


def test_known_currencies_are_accepted() -> None:
    for code in ("USD", "EUR", "GBP", "JPY", "CAD", "AUD", "CHF", "KWD", "XCG", "ZWG", "VES"):
        assert check_currency(code) == code
    assert len(ISO_4217_CODES) > 150
    assert all(len(code) == 3 and code.isupper() for code in ISO_4217_CODES)


def test_adding_anything_but_money_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        Money(1, "USD") + 1  # type: ignore[operator]


def test_money_is_immutable() -> None:
    money = Money(1, "USD")
    with pytest.raises(AttributeError):
        money.amount_minor = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    ("money", "text"),
    [
        (Money(1234, "USD"), "USD 12.34"),
        (Money(5, "USD"), "USD 0.05"),
        (Money(0, "EUR"), "EUR 0.00"),
        (Money(-1234, "USD"), "USD -12.34"),
        (Money(-5, "USD"), "USD -0.05"),
        (Money(500, "JPY"), "JPY 500"),
        (Money(-500, "KRW"), "KRW -500"),
        (Money(1005, "KWD"), "KWD 1.005"),
        (Money(7, "BHD"), "BHD 0.007"),
        (Money(-1005, "OMR"), "OMR -1.005"),
        (Money(10**15, "USD"), "USD 10000000000000.00"),
    ],
)
def test_str_uses_the_currency_minor_unit(money: Money, text: str) -> None:
    assert str(money) == text


def test_minor_unit_exponents() -> None:
    assert minor_unit_exponent("USD") == 2
    assert minor_unit_exponent("JPY") == 0
    assert minor_unit_exponent("KWD") == 3


@settings(max_examples=max_examples())
@given(amounts, amounts, currencies)
def test_add_then_subtract_round_trips(a: int, b: int, currency: str) -> None:
    first, second = Money(a, currency), Money(b, currency)
    assert (first + second) - second == first
    assert (first - second) + second == first


@settings(max_examples=max_examples())
@given(amounts, amounts, currencies)
def test_addition_commutes(a: int, b: int, currency: str) -> None:
    assert Money(a, currency) + Money(b, currency) == Money(b, currency) + Money(a, currency)


@settings(max_examples=max_examples())
@given(amounts, amounts, amounts, currencies)
def test_addition_associates(a: int, b: int, c: int, currency: str) -> None:
    x, y, z = Money(a, currency), Money(b, currency), Money(c, currency)
    assert (x + y) + z == x + (y + z)


@settings(max_examples=max_examples())
@given(amounts, currencies)
def test_str_round_trips_to_minor_units(a: int, currency: str) -> None:
    code, _, number = str(Money(a, currency)).partition(" ")
    assert code == currency
    assert int(number.replace(".", "")) == a
    exponent = minor_unit_exponent(currency)
    assert (len(number.partition(".")[2]) == exponent) if exponent else "." not in number


@settings(max_examples=max_examples())
@given(amounts, amounts, currencies)
def test_min_is_one_of_the_two_and_not_larger(a: int, b: int, currency: str) -> None:
    first, second = Money(a, currency), Money(b, currency)
    smallest = first.min(second)
    assert smallest in (first, second)
    assert smallest <= first and smallest <= second


@pytest.mark.parametrize(
    ("text", "currency", "amount_minor"),
    [
        ("120.00", "USD", 12_000),
        ("120", "USD", 12_000),
        ("0.5", "USD", 50),
        (".05", "USD", 5),
        ("500", "JPY", 500),
        ("1.005", "KWD", 1_005),
        ("1.5", "KWD", 1_500),
    ],
)
def test_major_units_typed_convert_by_the_currency_exponent(
    text: str, currency: str, amount_minor: int
) -> None:
    assert parse_major_units(text, currency) == amount_minor


@pytest.mark.parametrize(
    ("text", "currency", "reason"),
    [
        ("1.001", "USD", "3 decimals; USD has 2"),
        ("1.5", "JPY", "1 decimals; JPY has 0"),
        ("-1.00", "USD", "not an amount"),
        ("1e3", "USD", "not an amount"),
        ("1.", "USD", "not an amount"),
        ("", "USD", "not an amount"),
        ("1,00", "EUR", "not an amount"),
        ("\u0661\u0662", "USD", "not an amount"),
        ("10000000000000.01", "USD", "largest amount"),
    ],
)
def test_malformed_or_too_precise_amounts_are_refused(
    text: str, currency: str, reason: str
) -> None:
    with pytest.raises(MoneyError, match=reason):
        parse_major_units(text, currency)
