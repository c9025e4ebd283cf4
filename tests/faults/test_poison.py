"""Poison and abuse through the ingest service, on SQLite and PostgreSQL.

Arbitrary bytes and arbitrary JSON between valid events: the service never raises, refuses each
bad message as a dead letter with a kind and a one-line reason, and applies every valid one. Each
named limit is tested at its boundary through the service (the parser alone is covered by
tests/unit/test_inbound_contract.py).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, get_args

import orjson
import pytest
from eventsourcing.persistence import Tracking
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger import limits
from ledger.clock import FixedClock
from ledger.domain.account import Account, account_uuid
from ledger.domain.policy import Policy
from ledger.ingest import InboundMessage, IngestService, PreparedBatch
from ledger.persistence.event_store import EventStore, open_event_store
from ledger.persistence.urls import parse_database_url
from ledger.schemas.errors import ErrorKind
from tests.books import OCCURRED_AT, invoice, opened, payment
from tests.hypothesis_settings import max_examples

POLICY = Policy(version="test-1")
CLOCK = FixedClock(datetime(2026, 11, 25, 12, 0, tzinfo=UTC))
KINDS = set(get_args(ErrorKind))
_offsets = itertools.count()
_names = itertools.count()


@pytest.fixture
def store(database_url: str) -> Iterator[EventStore]:
    event_store = open_event_store(parse_database_url(database_url), create_table=True)
    yield event_store
    event_store.close()


def ingest(service: IngestService, lines: list[bytes | None]) -> tuple[PreparedBatch, int]:
    """One batch through prepare and commit, as the consumer does; the first offset used."""
    first = next(_offsets)
    for _ in range(len(lines) - 1):
        next(_offsets)
    batch = service.prepare(
        [InboundMessage("payments.inbound", 0, first + n, None, raw) for n, raw in enumerate(lines)]
    )
    service.commit(batch, Tracking("payments.inbound:poison:0", first + len(lines)))
    return batch, first


def check_dead_letters(batch: PreparedBatch) -> None:
    for letter in batch.dead_letters:
        assert letter.kind in KINDS
        assert letter.reason and "\n" not in letter.reason and "\r" not in letter.reason
        assert len(letter.reason) <= limits.reason_chars_max


def account(store: EventStore, account_id: str) -> Account:
    loaded = store.repository.get(account_uuid(account_id))
    assert isinstance(loaded, Account)
    return loaded


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children),
    max_leaves=20,
)
EVENT_TYPES = st.sampled_from(["account.opened", "invoice.issued", "payment.received", "x"])
NEAR_EVENTS = st.fixed_dictionaries(
    {"type": EVENT_TYPES}, optional={"event_id": JSON, "account_id": JSON, "amount": JSON}
)


def dumps(value: Any) -> bytes:
    """Any JSON value as text (the standard library writes big integers, infinities, surrogates)."""
    return json.dumps(value).encode()


POISON = st.one_of(
    st.binary(max_size=300),
    JSON.map(dumps),
    NEAR_EVENTS.map(dumps),
    st.just(b""),
)


@settings(
    max_examples=max_examples(default=40),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(poison=st.lists(POISON, min_size=1, max_size=6))
def test_poison_between_valid_events(store: EventStore, poison: list[bytes]) -> None:
    service = IngestService(store, policy=POLICY, clock=CLOCK)
    name = f"P{next(_names)}"
    good_before = [opened(f"{name}-1", name), invoice(f"{name}-2", name, 500)]
    good_after = [payment(f"{name}-3", name, 800)]
    lines: list[bytes | None] = [*good_before, *poison, *good_after]
    batch, first = ingest(service, lines)
    check_dead_letters(batch)
    bad_offsets = {first + len(good_before) + n for n in range(len(poison))}
    assert {letter.message.offset for letter in batch.dead_letters} == bad_offsets
    assert batch.applied == 3
    assert account(store, name).balances == {
        "receivable": 0,
        "revenue": -500,
        "cash": 800,
        "customer_credit": -300,
    }


def fact(**changes: Any) -> bytes:
    """A valid payment of 100 USD to account L, with changes (None removes a field)."""
    value: dict[str, Any] = {
        "event_id": f"lim-{next(_names)}",
        "processor": "acme-pay",
        "account_id": "L",
        "occurred_at": OCCURRED_AT,
        "type": "payment.received",
        "payment_id": "p",
        "amount": {"value": 100, "currency": "USD"},
        "method": "card",
    }
    value.update(changes)
    return orjson.dumps({k: v for k, v in value.items() if v is not None})


def padded_to(size: int) -> bytes:
    base = fact(pad="")
    return base.replace(b'"pad":""', b'"pad":"' + b"x" * (size - len(base)) + b'"')


def nested(depth: int) -> bytes:
    """A valid payment whose extra field makes the whole document `depth` levels deep."""
    inner: Any = 0
    for _ in range(depth - 1):
        inner = [inner]
    return fact(extra=inner)


def with_amount_text(digits: str) -> bytes:
    """A payment whose amount is written as these digits (orjson cannot write such numbers)."""
    return fact(amount={"value": 424242, "currency": "USD"}).replace(b"424242", digits.encode())


LIMIT_CASES = {
    "message_bytes_max": (
        padded_to(limits.message_bytes_max),
        padded_to(limits.message_bytes_max + 1),
        "too_large",
    ),
    "json_depth_max": (
        nested(limits.json_depth_max),
        nested(limits.json_depth_max + 1),
        "contract",
    ),
    "amount_minor_max": (
        fact(amount={"value": limits.amount_minor_max, "currency": "USD"}),
        fact(amount={"value": limits.amount_minor_max + 1, "currency": "USD"}),
        "contract",
    ),
    "amount beyond 64-bit": (
        fact(amount={"value": 1, "currency": "USD"}),
        with_amount_text(str(2**64 + 1)),
        "contract",
    ),
    "amount beyond any integer type": (
        fact(amount={"value": 1, "currency": "USD"}),
        with_amount_text("9" * 5000),
        "not_json",
    ),
    "negative amount": (
        fact(amount={"value": 1, "currency": "USD"}),
        fact(amount={"value": -1, "currency": "USD"}),
        "contract",
    ),
    "zero amount": (
        fact(amount={"value": 1, "currency": "USD"}),
        fact(amount={"value": 0, "currency": "USD"}),
        "contract",
    ),
    "unknown currency": (
        fact(amount={"value": 100, "currency": "USD"}),
        fact(amount={"value": 100, "currency": "ABC"}),
        "contract",
    ),
    "currency of another account": (
        fact(amount={"value": 100, "currency": "USD"}),
        fact(amount={"value": 100, "currency": "EUR"}),
        "domain_rule",
    ),
    "timestamp without offset": (
        fact(occurred_at="2026-11-25T10:00:00Z"),
        fact(occurred_at="2026-11-25T10:00:00"),
        "contract",
    ),
    "identifier_chars_max": (
        fact(payment_id="p" * limits.identifier_chars_max),
        fact(payment_id="p" * (limits.identifier_chars_max + 1)),
        "contract",
    ),
}


@pytest.mark.parametrize("limit", sorted(LIMIT_CASES))
def test_named_limit_at_its_boundary(store: EventStore, limit: str) -> None:
    service = IngestService(store, policy=POLICY, clock=CLOCK)
    ingest(service, [opened("lim-open", "L")])
    accepted, refused, kind = LIMIT_CASES[limit]
    batch, first = ingest(service, [accepted, refused])
    check_dead_letters(batch)
    assert [(d.message.offset, d.kind) for d in batch.dead_letters] == [(first + 1, kind)]
    assert batch.applied == 1
    paid = orjson.loads(accepted)["amount"]["value"]
    assert account(store, "L").balances["cash"] == paid


def test_balance_minor_max(store: EventStore) -> None:
    """The payment that would take cash beyond balance_minor_max is refused; the rest apply."""
    service = IngestService(store, policy=POLICY, clock=CLOCK)
    ingest(service, [opened("bal-open", "L")])
    fits = limits.balance_minor_max // limits.amount_minor_max
    lines = [
        fact(amount={"value": limits.amount_minor_max, "currency": "USD"}) for _ in range(fits + 1)
    ]
    batch, first = ingest(service, lines)
    check_dead_letters(batch)
    assert [(d.message.offset, d.kind) for d in batch.dead_letters] == [
        (first + fits, "domain_rule")
    ]
    assert "balance_minor_max" in batch.dead_letters[0].reason
    assert account(store, "L").balances["cash"] == fits * limits.amount_minor_max


TEXT_FIELDS = st.sampled_from(["event_id", "processor", "payment_id", "invoice_id", "method"])


@settings(
    max_examples=max_examples(default=40),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(field=TEXT_FIELDS, text=st.text(min_size=1, max_size=30), ascii_escapes=st.booleans())
def test_arbitrary_unicode_is_applied_or_dead_lettered_alike_on_both_backends(
    store: EventStore, field: str, text: str, ascii_escapes: bool
) -> None:
    """Any text in a payment's text fields: applied, or refused as a contract error.

    Both backends must agree: PostgreSQL cannot store NUL, so what it would fail on at commit
    must be refused by the contract before either backend sees it.
    """
    service = IngestService(store, policy=POLICY, clock=CLOCK)
    name = f"U{next(_names)}"
    ingest(service, [opened(f"{name}-open", name)])
    document = orjson.loads(payment(f"{name}-pay", name, 250))
    document[field] = text if field != "event_id" else f"{name}-{text}"
    raw = json.dumps(document, ensure_ascii=ascii_escapes).encode()
    batch, _ = ingest(service, [raw])
    check_dead_letters(batch)
    if batch.dead_letters:
        assert [letter.kind for letter in batch.dead_letters] == ["contract"]
        assert account(store, name).balances.get("cash", 0) == 0
        return
    assert batch.applied == 1
    reloaded = account(store, name)
    assert reloaded.balances["cash"] == 250
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in text)
