"""Money: integer minor units plus an ISO 4217 currency; never a float.

`ISO_4217_CODES` is the list of active ISO 4217 currency codes (ISO 4217 list one, 2025),
without fund codes (BOV, CHE, CHW, CLF, COU, MXV, USN, UYI, UYW), precious metals (XAU, XAG,
XPD, XPT), bond-market and other special units (XBA..XBD, XDR, XSU, XUA) and the testing and
"no currency" codes (XTS, XXX). Withdrawn codes (HRK, ZWL, SLL, CUC, ...) are refused; ANG stays
during its replacement by XCG, so processors mid-transition are not dead-lettered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

from ledger import limits


def _codes(text: str) -> frozenset[str]:
    """Currency codes written as whitespace-separated words (a table, easy to review)."""
    return frozenset(text.split())


ISO_4217_CODES: frozenset[str] = _codes(
    """
    AED AFN ALL AMD ANG AOA ARS AUD AWG AZN
    BAM BBD BDT BGN BHD BIF BMD BND BOB BRL BSD BTN BWP BYN BZD
    CAD CDF CHF CLP CNY COP CRC CUP CVE CZK
    DJF DKK DOP DZD
    EGP ERN ETB EUR
    FJD FKP
    GBP GEL GHS GIP GMD GNF GTQ GYD
    HKD HNL HTG HUF
    IDR ILS INR IQD IRR ISK
    JMD JOD JPY
    KES KGS KHR KMF KPW KRW KWD KYD KZT
    LAK LBP LKR LRD LSL LYD
    MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MYR MZN
    NAD NGN NIO NOK NPR NZD
    OMR
    PAB PEN PGK PHP PKR PLN PYG
    QAR
    RON RSD RUB RWF
    SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL
    THB TJS TMT TND TOP TRY TTD TWD TZS
    UAH UGX USD UYU UZS
    VED VES VND VUV
    WST
    XAF XCD XCG XOF XPF
    YER
    ZAR ZMW ZWG
    """
)
"""Active ISO 4217 currency codes accepted anywhere money appears."""

_MINOR_UNIT_EXPONENTS: dict[str, int] = {
    **dict.fromkeys(_codes("BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX VND VUV XAF XOF XPF"), 0),
    **dict.fromkeys(_codes("BHD IQD JOD KWD LYD OMR TND"), 3),
}
"""Minor-unit exponents that differ from the usual 2 (ISO 4217 "minor unit" column)."""


class CurrencyError(ValueError):
    """An unknown currency code, or two amounts in different currencies combined."""


class MoneyError(ValueError):
    """An amount that is not an integer number of minor units."""


def check_currency(code: str) -> str:
    """Return `code` if it is an active ISO 4217 code (upper case), else raise CurrencyError."""
    if type(code) is not str or code not in ISO_4217_CODES:
        shown = repr(code[:8]) + "..." if type(code) is str and len(code) > 8 else repr(code)
        raise CurrencyError(f"not an active ISO 4217 currency code: {shown}")
    return code


def minor_unit_exponent(currency: str) -> int:
    """Digits after the decimal point in `currency` (0 for JPY, 3 for KWD, usually 2)."""
    return _MINOR_UNIT_EXPONENTS.get(check_currency(currency), 2)


@dataclass(frozen=True, slots=True)
class Money:
    """An amount of one currency in integer minor units (cents for USD, yen for JPY)."""

    amount_minor: int
    currency: str

    def __post_init__(self) -> None:
        # `type(...) is int` refuses bool (an int subclass) and every float.
        if type(self.amount_minor) is not int:
            raise MoneyError(f"amount_minor must be an int, not {type(self.amount_minor).__name__}")
        check_currency(self.currency)

    @classmethod
    def zero(cls, currency: str) -> Self:
        """No money in `currency`."""
        return cls(0, currency)

    def is_zero(self) -> bool:
        """True when the amount is exactly zero."""
        return self.amount_minor == 0

    def is_positive(self) -> bool:
        """True when the amount is above zero."""
        return self.amount_minor > 0

    def is_negative(self) -> bool:
        """True when the amount is below zero."""
        return self.amount_minor < 0

    def _same_currency(self, other: Money) -> None:
        if not isinstance(other, Money):
            raise TypeError(f"expected Money, not {type(other).__name__}")
        if other.currency != self.currency:
            raise CurrencyError(f"currency mismatch: {self.currency} and {other.currency}")

    def __add__(self, other: Money) -> Money:
        """The sum of two amounts of one currency."""
        self._same_currency(other)
        return Money(self.amount_minor + other.amount_minor, self.currency)

    def __sub__(self, other: Money) -> Money:
        """The difference of two amounts of one currency."""
        self._same_currency(other)
        return Money(self.amount_minor - other.amount_minor, self.currency)

    def __neg__(self) -> Money:
        """The same amount with the opposite sign."""
        return Money(-self.amount_minor, self.currency)

    def min(self, other: Money) -> Money:
        """The smaller of two amounts of one currency."""
        self._same_currency(other)
        return self if self.amount_minor <= other.amount_minor else other

    def max(self, other: Money) -> Money:
        """The larger of two amounts of one currency."""
        self._same_currency(other)
        return self if self.amount_minor >= other.amount_minor else other

    def __lt__(self, other: Money) -> bool:
        """Less than, for amounts of one currency only."""
        self._same_currency(other)
        return self.amount_minor < other.amount_minor

    def __le__(self, other: Money) -> bool:
        """Less than or equal, for amounts of one currency only."""
        self._same_currency(other)
        return self.amount_minor <= other.amount_minor

    def __gt__(self, other: Money) -> bool:
        """Greater than, for amounts of one currency only."""
        self._same_currency(other)
        return self.amount_minor > other.amount_minor

    def __ge__(self, other: Money) -> bool:
        """Greater than or equal, for amounts of one currency only."""
        self._same_currency(other)
        return self.amount_minor >= other.amount_minor

    def __str__(self) -> str:
        """The amount in major units, e.g. "USD 12.34", "JPY 500", "KWD -1.005"."""
        exponent = _MINOR_UNIT_EXPONENTS.get(self.currency, 2)
        sign = "-" if self.amount_minor < 0 else ""
        if exponent == 0:
            return f"{self.currency} {sign}{abs(self.amount_minor)}"
        major, minor = divmod(abs(self.amount_minor), 10**exponent)
        return f"{self.currency} {sign}{major}.{minor:0{exponent}d}"


def parse_major_units(text: str, currency: str) -> int:
    """Minor units of a decimal amount typed in the currency's major unit ("120.00" USD is
    12000, "500" JPY is 500); refuses a sign, an exponent, or more decimals than it has."""
    exponent = minor_unit_exponent(currency)
    whole, dot, fraction = text.strip().partition(".")
    digits = bool(whole or fraction) and (whole + fraction).isascii()
    if not digits or not (whole or "0").isdigit() or (dot and not fraction.isdigit()):
        raise MoneyError(f"not an amount: {text!r} (digits, optionally a point and decimals)")
    if len(fraction) > exponent:
        raise MoneyError(f"{text!r} has {len(fraction)} decimals; {currency} has {exponent}")
    scale: int = 10**exponent
    amount_minor = int(whole or "0") * scale + int(fraction.ljust(exponent, "0") or "0")
    if amount_minor > limits.amount_minor_max:
        raise MoneyError(f"{text!r} is more than the largest amount ({limits.amount_minor_max})")
    return amount_minor
