"""The aggregate's posting check: the touched ledger accounts only, the whole books' verdict."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger import limits
from ledger.domain.postings import (
    _NEVER_NEGATIVE,
    LedgerAccount,
    Posting,
    UnbalancedPostingError,
    add_movements,
    check_postings_on,
    movements,
    natural_balance,
)

NAMES = [account.value for account in LedgerAccount]


def whole_books_refuse(balances: dict[str, int], postings: list[Posting]) -> bool:
    """The reference: apply the postings to a copy and look at every balance."""
    after = dict(balances)
    add_movements(after, movements(postings))
    assert sum(after.values()) == 0  # postings keep balanced books balanced
    return any(
        (natural_balance(name, amount) < 0 and name in _NEVER_NEGATIVE)
        or abs(amount) > limits.balance_minor_max
        for name, amount in after.items()
    )


postings_strategy = st.lists(
    st.builds(
        Posting,
        debit=st.sampled_from(NAMES),
        credit=st.sampled_from(NAMES),
        amount_minor=st.integers(1, 10_000),
        currency=st.just("USD"),
    ).filter(lambda posting: posting.debit != posting.credit),
    max_size=4,
)


@st.composite
def valid_books(draw: st.DrawFn) -> dict[str, int]:
    """Balanced books that pass the check: built by postings the check accepted."""
    balances: dict[str, int] = {}
    for posting in draw(st.lists(postings_strategy.map(tuple), max_size=6)):
        try:
            check_postings_on(balances, posting)
        except UnbalancedPostingError:
            continue
        add_movements(balances, movements(posting))
    return balances


@given(balances=valid_books(), postings=postings_strategy)
def test_touched_accounts_give_the_whole_books_verdict(
    balances: dict[str, int], postings: list[Posting]
) -> None:
    refused = whole_books_refuse(balances, postings)
    if refused:
        with pytest.raises(UnbalancedPostingError):
            check_postings_on(balances, postings)
    else:
        check_postings_on(balances, postings)


def test_a_payment_beyond_the_receivable_is_refused_naming_it() -> None:
    balances = {"receivable": 500, "revenue": -500}
    with pytest.raises(UnbalancedPostingError, match="receivable would go negative: -100"):
        check_postings_on(balances, [Posting("cash", "receivable", 600, "USD")])
    check_postings_on(balances, [Posting("cash", "receivable", 500, "USD")])
