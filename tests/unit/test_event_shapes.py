"""Events built without their dataclass `__init__` are the events the `__init__` builds."""

from __future__ import annotations

import dataclasses
from dataclasses import field
from datetime import UTC, datetime
from typing import Any

import pytest
from eventsourcing.domain import Aggregate

from ledger.domain.account import Account, FactOrigin
from ledger.domain.event_shapes import build_event, event_shape
from ledger.domain.money import Money
from ledger.domain.postings import LedgerAccount
from ledger.policy_file import load_policy

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
PAID_AT = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
POLICY = load_policy()


def _paid_account() -> Account:
    account = Account.open(
        account_id="ACC-S",
        customer_id="C-S",
        kind="utility",
        jurisdiction="US-CA",
        currency="USD",
        origin=FactOrigin("acme", "e1", NOW),
        now=NOW,
    )
    account.receive_payment(
        payment_id="pay-1",
        amount=Money(5_000, "USD"),
        method="card",
        invoice_id=None,
        origin=FactOrigin("acme", "e2", NOW),
        now=PAID_AT,
        policy=POLICY,
    )
    return account


def test_triggered_events_equal_those_their_init_builds() -> None:
    account = _paid_account()
    events = account.collect_events()
    assert [type(event).__name__ for event in events] == [
        "Opened",
        "PaymentReceived",
        "OverpaymentDetected",
    ]
    for event in events[1:]:
        by_init = type(event)(**vars(event))
        assert event == by_init
        assert vars(event) == vars(by_init)
        with pytest.raises(dataclasses.FrozenInstanceError):
            event.account_id = "other"  # type: ignore[misc]
    assert account.version == 3
    assert account.balance(LedgerAccount.CUSTOMER_CREDIT).amount_minor == 5_000


def test_triggering_moves_the_account_as_the_librarys_mutate_does() -> None:
    """The account applies its own new events without `mutate`'s checks (they hold by
    construction): replaying the same events through `mutate`, as a load from the store does,
    gives the same account."""
    account = _paid_account()
    events = account.collect_events()
    replayed: Any = None
    for event in events:
        replayed = event.mutate(replayed)
    assert isinstance(replayed, Account)
    assert replayed.version == account.version == 3
    assert replayed.modified_on == account.modified_on == PAID_AT
    assert vars(replayed) == vars(account)


def test_fields_missing_or_unexpected_are_refused_by_name() -> None:
    account = _paid_account()
    account.collect_events()
    with pytest.raises(TypeError, match=r"missing \['payment_id'\], unexpected \['paymnt_id'\]"):
        account.trigger_event(
            Account.PaymentReceived,
            timestamp=NOW,
            account_id="ACC-S",
            source="acme",
            source_event_id="e3",
            reported_at=NOW.isoformat(),
            amount_minor=1,
            currency="USD",
            postings=(),
            paymnt_id="pay-2",
            method="card",
            invoice_id=None,
        )
    assert account.version == 3 and account.collect_events() == []


class _Shaped(Aggregate):
    TOPIC = "test_event_shapes_aggregate"

    class Created(Aggregate.Created):
        TOPIC = "test_event_shapes_created"

    class Noted(Aggregate.Event):
        TOPIC = "test_event_shapes_noted"
        note: str
        channel: str = "email"

    class Tagged(Aggregate.Event):
        TOPIC = "test_event_shapes_tagged"
        tags: list[str] = field(default_factory=list)

    class Counted(Aggregate.Event):
        TOPIC = "test_event_shapes_counted"

        def mutate(self, aggregate: Any) -> Any:
            aggregate.counted = getattr(aggregate, "counted", 0) + 1
            return super().mutate(aggregate)


def test_defaults_are_filled_and_default_factories_left_to_the_init() -> None:
    shape = event_shape(_Shaped.Noted)
    assert shape is not None and shape.defaults == {"channel": "email"}
    values: dict[str, Any] = {
        "originator_id": _Shaped().id,
        "originator_version": 2,
        "timestamp": NOW,
        "note": "hello",
    }
    built = build_event(_Shaped.Noted, shape, dict(values))
    assert built == _Shaped.Noted(**values)
    assert built.channel == "email"
    assert event_shape(_Shaped.Tagged) is None


def test_an_event_with_its_own_mutate_is_marked_to_go_through_it() -> None:
    plain = event_shape(_Shaped.Noted)
    own = event_shape(_Shaped.Counted)
    assert plain is not None and plain.plain_mutate
    assert own is not None and not own.plain_mutate
