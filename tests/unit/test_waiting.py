"""The tests' one wait helper: it waits for a condition, and hides no unexpected error."""

from __future__ import annotations

import itertools

import pytest

from tests.waiting import wait_for


def test_returns_once_the_condition_holds() -> None:
    polls = itertools.count(1)
    ticks: list[int] = []
    wait_for(lambda: next(polls) == 3, "the third poll", timeout_s=5, tick=lambda: ticks.append(1))
    assert len(ticks) == 3


def test_fails_naming_what_never_happened() -> None:
    with pytest.raises(AssertionError, match=r"timed out after 0\.2s waiting for the moon"):
        wait_for(lambda: False, "the moon", timeout_s=0.2)


def test_an_unexpected_error_goes_through_at_once() -> None:
    def broken() -> bool:
        raise KeyError("rm_accounts")

    with pytest.raises(KeyError):
        wait_for(broken, "a read", timeout_s=5)


def test_a_not_ready_error_means_not_yet() -> None:
    polls = itertools.count(1)

    def table_appears_on_the_third_poll() -> bool:
        if next(polls) < 3:
            raise LookupError("no such table")
        return True

    wait_for(table_appears_on_the_third_poll, "the table", timeout_s=5, not_ready=(LookupError,))


def test_a_timeout_tells_what_the_last_poll_raised() -> None:
    def never_there() -> bool:
        raise LookupError("no such table")

    with pytest.raises(AssertionError, match=r"last poll raised LookupError\('no such table'\)"):
        wait_for(never_there, "the table", timeout_s=0.2, not_ready=(LookupError,))
