"""Crash anywhere: SIGKILL random workers at random moments while a known history is published.

The three workers run as processes of their own (`python -m ledger.workers NAME`) against a broker
of the test's own. A seeded RNG picks the victim and the moment; the victim is restarted at once
(as the Supervisor would). At the end the state must equal a clean run's: the same balances, trial
balance zero, read model and outbox complete, every bad line dead-lettered, nothing applied twice.

With two relays (LEDGER_RELAY_WORKERS=2, one share of ledger.events each) the outbox must still
deliver every event at least once, each account's events in its key's partition in version
order, and a killed relay re-sends only its own share's unacknowledged batch.

CHAOS_ITERATIONS (default 1) repeats it with new seeds (`make chaos` runs 100), CHAOS_KILLS
(default 3) sets the kills per iteration and CHAOS_SEED the first seed.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest

from ledger.kafka.broker import EmbeddedBroker
from ledger.kafka.partitioning import partition_for_key
from tests.books import model_of
from tests.e2e.harness import key_of, publish, read_balances, read_topic, trial_balance
from tests.faults.harness import (
    PARTITIONS,
    WORKERS,
    StoredEvent,
    Workers,
    known_history,
    max_notification_id,
    positions,
    prepare,
    sleep_checking,
    store_events,
)
from tests.waiting import wait_for

ITERATIONS = int(os.environ.get("CHAOS_ITERATIONS", "1"))
KILLS = int(os.environ.get("CHAOS_KILLS", "3"))
FIRST_SEED = int(os.environ.get("CHAOS_SEED", "1"))
ACCOUNTS = 150
EVENTS = 3_000
CHUNK = 50
"""Lines per send burst: publishing is spread over a few seconds so the kills land mid-stream."""
SETTLE_TIMEOUT_S = 120.0


def distinct_dead_letters(bootstrap: str) -> set[tuple[bytes, bytes]]:
    return {
        (dict(r.headers)["source_partition"], dict(r.headers)["source_offset"])
        for r in read_topic(bootstrap, "payments.inbound.dlq")
    }


TWO_RELAYS = ("ingest", "relay", "relay-2", "projections")


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(FIRST_SEED, FIRST_SEED + ITERATIONS))
def test_crash_anywhere(
    seed: int, fresh_broker: EmbeddedBroker, database_url: str, tmp_path: Path
) -> None:
    crash_anywhere(seed, fresh_broker.bootstrap, database_url, tmp_path, names=WORKERS)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(FIRST_SEED, FIRST_SEED + ITERATIONS))
def test_crash_anywhere_with_two_relays(
    seed: int, fresh_broker: EmbeddedBroker, database_url: str, tmp_path: Path
) -> None:
    crash_anywhere(seed, fresh_broker.bootstrap, database_url, tmp_path, names=TWO_RELAYS)


def acquired_shares(workers: Workers, name: str) -> set[int]:
    """Every share the relay process(es) named `name` took, from its log."""
    path = workers.log_dir / f"{name}.log"
    text = path.read_text(errors="replace") if path.exists() else ""
    entries = [orjson.loads(line) for line in text.splitlines() if line.startswith("{")]
    return {int(e["share"]) for e in entries if e.get("event") == "relay share acquired"}


def check_outbox_order(
    delivered: list[Any], events: list[StoredEvent], workers: Workers, relays: int, context: str
) -> None:
    """Each account's events in its key's partition, first sightings in version order; copies
    only in the partitions of shares whose relay was killed."""
    seen: set[str] = set()
    versions: defaultdict[str, list[int]] = defaultdict(list)
    copied_partitions: set[int] = set()
    for record in delivered:
        account_id = record.key.decode()
        assert record.partition == partition_for_key(record.key, PARTITIONS), context
        ce_id = dict(record.headers)["ce_id"].decode()
        if ce_id in seen:
            copied_partitions.add(record.partition)
            continue
        seen.add(ce_id)
        versions[account_id].append(int(ce_id.rsplit(":", 1)[1]))
    for account_id, seen_versions in versions.items():
        assert seen_versions == sorted(seen_versions), (account_id, context)
    assert seen == {f"{e.account_id}:{e.version}" for e in events}, context
    killed_shares = {
        share
        for name in set(workers.kills)
        if name.startswith("relay")
        for share in acquired_shares(workers, name)
    }
    owned = {p for p in range(PARTITIONS) if p % relays in killed_shares}
    assert copied_partitions <= owned, (copied_partitions, killed_shares, context)


def crash_anywhere(
    seed: int, bootstrap: str, database_url: str, tmp_path: Path, *, names: tuple[str, ...]
) -> None:
    """Kill random workers of `names` while the history goes in; then check it all."""
    rng = random.Random(seed)
    lines = known_history(rng, accounts=ACCOUNTS, events=EVENTS)
    model = model_of(lines)
    assert model.applied["payment.received"] > 500 and model.refused > 50
    prepare(bootstrap, database_url)
    relays = sum(1 for name in names if name.startswith("relay"))
    workers = Workers(
        bootstrap, database_url, tmp_path, extra_env={"LEDGER_RELAY_WORKERS": str(relays)}
    )
    workers.start_all(names)
    publisher = threading.Thread(
        target=publish,
        args=(bootstrap, lines, key_of),
        kwargs={"chunk": CHUNK, "pause_s": 0.08},
    )
    try:
        publisher.start()
        # Each worker dies at least once (in a random order) when there are kills enough.
        victims = rng.sample(names, k=len(names))
        for kill in range(KILLS):
            sleep_checking(workers, rng.uniform(0.3, 2.5))
            victim = victims[kill] if kill < len(victims) else rng.choice(names)
            workers.kill(victim)
            time.sleep(rng.uniform(0.0, 0.5))
            workers.start(victim)
        publisher.join()

        def settled() -> bool:
            last = max_notification_id(database_url)
            where = positions(database_url)
            return (
                where == {"relay": last, "projection": last}
                and read_balances(database_url, list(model.balances)) == model.balances
                and len(distinct_dead_letters(bootstrap)) >= model.refused
            )

        context = f"seed {seed}, kills {workers.kills}"
        wait_for(settled, f"the books to settle ({context})", SETTLE_TIMEOUT_S, tick=workers.check)
        # The books: every balance as in a clean run, each currency's trial balance zero.
        assert read_balances(database_url, list(model.balances)) == model.balances, context
        trial = trial_balance(database_url)
        assert {c: e["total"] for c, e in trial["currencies"].items()} == dict.fromkeys(
            trial["currencies"], 0
        )
        assert trial["currencies"], context
        # The read model and the relay reflect the whole store.
        events = store_events(database_url)
        last = events[-1].notification_id
        assert trial["position"] == last, context
        assert positions(database_url) == {"relay": last, "projection": last}, context
        # Nothing applied twice: versions contiguous, one payment_received per applied payment.
        versions: defaultdict[str, list[int]] = defaultdict(list)
        for event in events:
            versions[event.account_id].append(event.version)
        for account_id, seen in versions.items():
            assert seen == list(range(1, len(seen) + 1)), (account_id, context)
        assert set(versions) == set(model.balances), context
        types = [event.type for event in events]
        assert types.count("payment_received") == len(model.applied_payment_ids), context
        assert types.count("invoice_issued") == model.applied["invoice.issued"], context
        assert types.count("account_opened") == model.applied["account.opened"], context
        # The outbox delivered every stored event at least once, and nothing else.
        delivered = read_topic(bootstrap, "ledger.events")
        ce_ids = {dict(record.headers)["ce_id"].decode() for record in delivered}
        assert ce_ids == {f"{e.account_id}:{e.version}" for e in events}, context
        check_outbox_order(delivered, events, workers, relays, context)
        notified = {
            orjson.loads(r.value)["overpayment_id"]
            for r in read_topic(bootstrap, "ledger.notifications")
        }
        assert len(notified) == types.count("overpayment_detected"), context
        # Every bad line dead-lettered (at least once: a kill before a commit re-sends).
        assert len(distinct_dead_letters(bootstrap)) == model.refused, context
        workers.check()
        assert workers.unexpected_exits == [], context
    finally:
        publisher.join(timeout=30)
        codes = workers.stop_all()
    assert all(code == 0 for code in codes.values()), (codes, context)
