"""Staff authority under the shipped policy: for every command that needs it and every role, an
amount at the role's limit is accepted and one unit above it refused, naming a role that may."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from ledger.domain.account import Account
from ledger.domain.errors import UnauthorizedError
from ledger.domain.overpayments import Actor
from ledger.domain.policy import DEPARTMENTS, ROLES
from ledger.schemas.commands import AUTHORITY_ACTIONS
from tests.unit.test_overpayment_scenarios import (
    POLICY,
    SUPERVISOR,
    Clock,
    books,
    fail,
    open_account,
    pay,
    refund_of,
)

SETUP_POLICY = POLICY.model_copy(
    update={
        "authority": POLICY.authority.model_copy(
            update={"manager": POLICY.authority.manager.model_copy(update={"resolve": 10**12})}
        )
    }
)
"""Lets the setup resolve an overpayment above any role's resolve limit (to test release and
retry limits above it); the commands under test run under the shipped policy."""

Setup = Callable[[int], tuple[Account, Clock, Callable[[Actor], None]]]


def verify_fully(account: Account, clock: Clock, overpayment_id: str) -> None:
    for department in account.required_departments(overpayment_id, POLICY):
        account.verify_overpayment(
            overpayment_id=overpayment_id,
            department=department,
            note=None,
            actor=Actor(f"staff-{department}", department),
            policy=POLICY,
            now=clock.now,
        )


def detected(amount_minor: int) -> tuple[Account, Clock, str]:
    clock = Clock()
    account = open_account(clock)
    overpayment_id = pay(account, clock, "pay-1", amount_minor)
    assert overpayment_id is not None
    return account, clock, overpayment_id


def for_verify(amount_minor: int) -> tuple[Account, Clock, Callable[[Actor], None]]:
    account, clock, op = detected(amount_minor)

    def act(actor: Actor) -> None:
        # A department role acts for its own department; any other role for accounting.
        account.verify_overpayment(
            overpayment_id=op,
            department=actor.role if actor.role in DEPARTMENTS else "accounting",
            note=None,
            actor=actor,
            policy=POLICY,
            now=clock.now,
        )

    return account, clock, act


def for_reject(amount_minor: int) -> tuple[Account, Clock, Callable[[Actor], None]]:
    account, clock, op = detected(amount_minor)

    def act(actor: Actor) -> None:
        departments = account.required_departments(op, POLICY)
        account.reject_overpayment(
            overpayment_id=op,
            department=actor.role if actor.role in departments else "accounting",
            reason="duplicate payment",
            actor=actor,
            policy=POLICY,
            now=clock.now,
        )

    return account, clock, act


def for_resolve(amount_minor: int) -> tuple[Account, Clock, Callable[[Actor], None]]:
    account, clock, op = detected(amount_minor)
    verify_fully(account, clock, op)

    def act(actor: Actor) -> None:
        account.resolve_overpayment(
            overpayment_id=op, resolution="refund", actor=actor, policy=POLICY, now=clock.now
        )

    return account, clock, act


def for_retry(amount_minor: int) -> tuple[Account, Clock, Callable[[Actor], None]]:
    account, clock, op = detected(amount_minor)
    verify_fully(account, clock, op)
    account.resolve_overpayment(
        overpayment_id=op,
        resolution="refund",
        actor=Actor("boss", "manager"),
        policy=SETUP_POLICY,
        now=clock.now,
    )
    refund_id = refund_of(account, op)
    fail(account, clock, refund_id)

    def act(actor: Actor) -> None:
        account.retry_refund(
            refund_id=refund_id, actor=actor, policy=POLICY, now=clock.now, attempt=None
        )

    return account, clock, act


def for_release(amount_minor: int) -> tuple[Account, Clock, Callable[[Actor], None]]:
    account, clock, op = detected(amount_minor)
    verify_fully(account, clock, op)
    account.resolve_overpayment(
        overpayment_id=op,
        resolution="escrow",
        actor=Actor("boss", "manager"),
        policy=SETUP_POLICY,
        now=clock.now,
    )

    def act(actor: Actor) -> None:
        account.release_escrow(
            overpayment_id=op, to="credit", actor=actor, policy=POLICY, now=clock.now
        )

    return account, clock, act


SETUPS: dict[str, Setup] = {
    "overpayment.verify": for_verify,
    "overpayment.reject": for_reject,
    "overpayment.resolve": for_resolve,
    "refund.retry": for_retry,
    "escrow.release": for_release,
}


def assert_refusal_names_a_role_that_may(
    error: UnauthorizedError, action: str, amount: int
) -> None:
    match = re.search(r"needs (.+)$", str(error))
    assert match is not None, str(error)
    named = match.group(1).split(" or ")
    may = [role for role in ROLES if POLICY.may(role, action, amount)]
    assert named == (may or ["no role under this policy"]), (str(error), may)


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("command_type", sorted(SETUPS))
def test_at_the_limit_accepted_above_refused(command_type: str, role: str) -> None:
    action = AUTHORITY_ACTIONS[command_type]
    limit = POLICY.authority_limit(role, action)
    assert limit is not None
    actor = Actor(f"staff-{role}", role)
    above = (limit or 1_000) + 1
    account, _, act = SETUPS[command_type](above)
    account.collect_events()
    before = (books(account), account.version)
    with pytest.raises(UnauthorizedError) as refused:
        act(actor)
    assert_refusal_names_a_role_that_may(refused.value, action, above)
    assert (books(account), account.version) == before
    assert account.collect_events() == []
    if limit == 0:
        return  # the role may never take this action
    account, _, act = SETUPS[command_type](limit)
    account.collect_events()
    act(actor)
    assert account.collect_events()


def test_a_department_role_acts_only_for_its_department() -> None:
    account, clock, op = detected(60_000)  # accounting and risk management verify it
    with pytest.raises(UnauthorizedError, match="may not act for accounting"):
        account.verify_overpayment(
            overpayment_id=op,
            department="accounting",
            note=None,
            actor=Actor("rita", "risk_management"),
            policy=POLICY,
            now=clock.now,
        )


def test_staff_retry_above_authority_leaves_the_failed_refund() -> None:
    account, _, act = for_retry(150_000)
    with pytest.raises(UnauthorizedError, match="needs manager"):
        act(SUPERVISOR)
    ((_, refund),) = account.refunds.items()
    assert refund["status"] == "failed"
    act(Actor("boss", "manager"))
    assert [item["status"] for item in account.refunds.values()] == ["retried", "requested"]
