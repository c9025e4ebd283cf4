"""Waiting in tests: poll a condition until it holds, with a bound; never sleep and hope."""

from __future__ import annotations

import time
from collections.abc import Callable

WAIT_S = 90.0
"""How long a test waits for a condition unless it says otherwise."""

POLL_FIRST_S = 0.05
POLL_MAX_S = 1.0


def wait_for(
    condition: Callable[[], bool],
    what: str,
    timeout_s: float = WAIT_S,
    *,
    tick: Callable[[], None] | None = None,
    not_ready: tuple[type[Exception], ...] = (),
) -> None:
    """Poll a condition with back-off until it holds; fail naming `what` if it never does.

    `tick` runs before every poll (the fault tests restart workers that died). An exception of
    a type in `not_ready` means "not yet" (say, a table another process has yet to create) and
    the poll goes on; any other exception fails the test at once.
    """
    deadline = time.monotonic() + timeout_s
    delay = POLL_FIRST_S
    refused: Exception | None = None
    while True:
        if tick is not None:
            tick()
        try:
            if condition():
                return
            refused = None
        except not_ready as error:
            refused = error
        if time.monotonic() > deadline:
            last = f" (last poll raised {refused!r})" if refused is not None else ""
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}{last}")
        time.sleep(delay)
        delay = min(delay * 1.5, POLL_MAX_S)
