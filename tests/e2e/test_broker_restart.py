"""Recovery after a broker restart, the way it was reported (issue 16, item 6).

`ledger run` against a broker of its own; `ledger run` stopped (SIGTERM) and started again, so a
fresh ingest joins the group; then the broker restarts empty on the same port, `payments.inbound`
is created again with its partition count, and an account opening and a payment are published.
The account must reach the read model. Each iteration does all of it again, on the same database.

RESTART_ITERATIONS (default 5) sets the iterations; `make chaos` runs 50.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from ledger.kafka.broker import EmbeddedBroker
from ledger.kafka.topics import PAYMENTS_INBOUND, ensure_topics
from tests.books import opened, payment
from tests.brokers import STOP_GRACE_S
from tests.e2e.harness import (
    explained_by,
    key_of,
    ledger_env,
    publish,
    read_balances,
    start_ledger_run,
    stop_ledger_run,
)
from tests.waiting import wait_for

ITERATIONS = int(os.environ.get("RESTART_ITERATIONS", "5"))
PARTITIONS = 4
"""As `ledger_env` configures (LEDGER_PARTITIONS)."""
JOIN_TIMEOUT_S = 30.0
RESUME_TIMEOUT_S = 60.0
"""Bound on one account reaching the read model after a restart: the watchdog's stall timeout
(`limits.consumer_stall_timeout_s`) plus a rebuilt consumer's join fit in it twice over."""


def account_lines(n: int) -> list[bytes]:
    return [opened(f"open-{n}", f"ACC-{n}"), payment(f"pay-{n}", f"ACC-{n}", 100 + n)]


def has_account(database_url: str, account_id: str) -> bool:
    return account_id in read_balances(database_url, [account_id])


def assigned_lines(log_path: Path) -> int:
    return log_path.read_text(errors="replace").count('"partition assigned"')


@pytest.mark.slow
def test_ingest_resumes_after_ledger_and_broker_restarts(
    fresh_broker: EmbeddedBroker, database_url: str, tmp_path: Path
) -> None:
    env = ledger_env(fresh_broker.bootstrap, database_url)
    log_path = tmp_path / "run.log"
    ledger = start_ledger_run(env, log_path)
    try:
        with explained_by(log_path):
            publish(fresh_broker.bootstrap, account_lines(0), key_of)
            wait_for(lambda: has_account(database_url, "ACC-0"), "the first account")
            for n in range(1, ITERATIONS + 1):
                started = time.monotonic()
                # `ledger run` stopped and started again: a fresh ingest joins the group.
                stop_ledger_run(ledger)
                joined_before = assigned_lines(log_path)
                ledger = start_ledger_run(env, log_path)
                wait_for(
                    lambda before=joined_before: assigned_lines(log_path) > before,
                    f"iteration {n}: the new ingest joined its group",
                    timeout_s=JOIN_TIMEOUT_S,
                )
                # The broker restarts empty on the same port; the topic comes back as it was.
                fresh_broker.stop(timeout_s=STOP_GRACE_S)
                fresh_broker.start()
                ensure_topics(fresh_broker.bootstrap, PARTITIONS, [PAYMENTS_INBOUND])
                publish(fresh_broker.bootstrap, account_lines(n), key_of)
                wait_for(
                    lambda account=f"ACC-{n}": has_account(database_url, account),
                    f"iteration {n}: ACC-{n} in the read model after the broker restart",
                    timeout_s=RESUME_TIMEOUT_S,
                )
                print(f"iteration {n}: {time.monotonic() - started:.1f} s")
    finally:
        stop_ledger_run(ledger)
    assert ledger.returncode == 0
