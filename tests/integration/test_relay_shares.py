"""Relays that scale out: shares of ledger.events, leases, standbys, configuration changes.

Real broker (a fresh embedded one per test: the topic names are the ledger's own) and both
databases. Relays run in threads of the test (`RelayThread`) or, where one must die by SIGKILL,
as worker processes. Every wait is bounded and polls a condition.
"""

from __future__ import annotations

import random
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from eventsourcing.persistence import Tracking
from kafka import KafkaProducer

from ledger import limits
from ledger.clock import FixedClock
from ledger.domain.policy import Policy
from ledger.ingest import InboundMessage, IngestService
from ledger.kafka.broker import EmbeddedBroker
from ledger.kafka.clients import PartitionsChanged, ProducerStopped, ResilientProducer
from ledger.kafka.partitioning import partition_for_key
from ledger.kafka.topics import describe_topic, ensure_topics, make_admin
from ledger.persistence.database import Database
from ledger.persistence.event_store import open_event_store
from ledger.persistence.positions import write_position
from ledger.persistence.relay_leases import open_relay_leases
from ledger.persistence.relay_positions import (
    LEGACY_POSITION_NAME,
    RelayConfiguration,
    read_configuration,
    relay_position,
)
from ledger.persistence.urls import parse_database_url
from ledger.relay import RelayWorker, make_relay_producer
from ledger.settings import Settings
from ledger.storage import open_storage
from tests.books import invoice, opened, payment
from tests.e2e.harness import read_topic
from tests.faults.harness import PARTITIONS, Workers, max_notification_id, prepare, store_events
from tests.waiting import wait_for

POLICY = Policy(version="test-1")
CLOCK = FixedClock(datetime(2026, 11, 25, 12, 0, tzinfo=UTC))
WAIT_S = 60.0
TAKEOVER_S = limits.relay_lease_ttl_s + 3 * limits.relay_standby_retry_s + 2.0
"""A standby must hold a dead relay's share within this long (SQLite: the lease's time to live,
then the next retry; PostgreSQL: the next retry)."""


class RelayThread:
    """One relay (`RelayWorker`) in a thread of the test, with its own storage and producer."""

    def __init__(self, database_url: str, bootstrap: str, *, shares: int, first: int = 0) -> None:
        self.settings = Settings(database_url=database_url, kafka_bootstrap=bootstrap)
        self.bootstrap = bootstrap
        self.shares = shares
        self.first = first
        self.stop = threading.Event()
        self.worker: RelayWorker | None = None
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        storage = open_storage(self.settings)
        producer = ResilientProducer(self.bootstrap, stop=self.stop, factory=make_relay_producer)
        leases = open_relay_leases(storage.target)
        try:
            self.worker = RelayWorker(
                storage,
                producer,
                leases,
                shares=self.shares,
                first_share=self.first,
                stop=self.stop,
            )
            self.worker.run()
        except ProducerStopped:
            pass
        except BaseException as error:
            self.errors.append(error)
        finally:
            leases.close()
            producer.close()
            storage.close()

    @property
    def share(self) -> int | None:
        """The share this relay holds now; None while it stands by (or has not started)."""
        return None if self.worker is None else self.worker.share

    def close(self) -> None:
        """Stop the relay (it finishes the batch in hand and releases its lease)."""
        self.stop.set()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "the relay did not stop"
        assert self.errors == []


@contextmanager
def relays(
    database_url: str, bootstrap: str, firsts: Sequence[int], *, shares: int
) -> Iterator[list[RelayThread]]:
    """Relay threads for the block, trying the given shares first; all stopped after it."""
    started = [RelayThread(database_url, bootstrap, shares=shares, first=first) for first in firsts]
    try:
        yield started
    finally:
        for relay in started:
            relay.close()


class Facts:
    """Inbound facts applied to the event store directly (no ingest worker, no broker)."""

    def __init__(self, database_url: str, seed: int = 3) -> None:
        self.store = open_event_store(parse_database_url(database_url))
        self.service = IngestService(self.store, policy=POLICY, clock=CLOCK)
        self.rng = random.Random(seed)
        self.offset = 0
        self.accounts: list[str] = []

    def add(self, accounts: int, events: int) -> int:
        """Open `accounts` new accounts, then invoice and pay (often too much) at random."""
        new = [f"ACC-{len(self.accounts) + n}" for n in range(accounts)]
        self.accounts.extend(new)
        lines = [opened(f"open-{account}", account) for account in new]
        for n in range(events):
            account = self.rng.choice(self.accounts)
            amount = self.rng.randrange(1, 30_000)
            event_id = f"f-{self.offset}-{n}"
            maker = invoice if self.rng.random() < 0.5 else payment
            lines.append(maker(event_id, account, amount))
        messages = [
            InboundMessage("payments.inbound", 0, self.offset + n, b"k", raw)
            for n, raw in enumerate(lines)
        ]
        batch = self.service.prepare(messages)
        self.offset += len(lines)
        self.service.commit(batch, Tracking("payments.inbound:test:0", self.offset))
        return self.store.process_recorder.max_notification_id() or 0

    def close(self) -> None:
        self.store.close()


@pytest.fixture
def facts(database_url: str) -> Iterator[Facts]:
    applied = Facts(database_url)
    yield applied
    applied.close()


@pytest.fixture
def bootstrap(fresh_broker: EmbeddedBroker, database_url: str) -> str:
    """A broker of the test's own with the ledger's topics, and the database's schema."""
    prepare(fresh_broker.bootstrap, database_url)
    return fresh_broker.bootstrap


def position_of(database_url: str) -> int:
    """The relays' position: the share furthest behind under the recorded configuration."""
    database = Database(parse_database_url(database_url))
    try:
        return database.query(relay_position)
    finally:
        database.close()


def stored_positions(database_url: str) -> dict[str, int]:
    """Every relay position row."""
    database = Database(parse_database_url(database_url))
    try:

        def read(cursor: Any) -> dict[str, int]:
            cursor.execute("SELECT name, position FROM ledger_positions WHERE name LIKE 'outbox%'")
            return {name: int(position) for name, position in cursor.fetchall()}

        return database.query(read)
    finally:
        database.close()


def recorded_configuration(database_url: str) -> RelayConfiguration | None:
    database = Database(parse_database_url(database_url))
    try:
        return database.query(read_configuration)
    finally:
        database.close()


def wait_published(database_url: str, position: int, what: str) -> None:
    wait_for(lambda: position_of(database_url) >= position, what, timeout_s=WAIT_S)


def published(bootstrap: str) -> list[tuple[int, str, int]]:
    """(partition, account id, version) of every record on ledger.events, in each partition's
    order."""
    return [
        (
            record.partition,
            record.key.decode(),
            orjson.loads(record.value)["version"],
        )
        for record in read_topic(bootstrap, "ledger.events")
    ]


def check_delivery(
    records: Sequence[tuple[int, str, int]], database_url: str, *, after: int = 0
) -> dict[str, int]:
    """Every stored event after `after` published, each account in its key's partition, in
    version order (first sightings); the number of times each `ce_id` arrived."""
    expected = {
        f"{event.account_id}:{event.version}"
        for event in store_events(database_url)
        if event.notification_id > after
    }
    times: dict[str, int] = defaultdict(int)
    first_seen: defaultdict[str, list[int]] = defaultdict(list)
    for partition, account_id, version in records:
        assert partition == partition_for_key(account_id.encode(), PARTITIONS), account_id
        ce_id = f"{account_id}:{version}"
        if times[ce_id] == 0:
            first_seen[account_id].append(version)
        times[ce_id] += 1
    assert expected <= set(times), sorted(expected - set(times))[:10]
    for account_id, versions in first_seen.items():
        assert versions == sorted(versions), (account_id, versions)
    return dict(times)


def test_a_real_producer_puts_each_key_where_partition_for_key_says(
    broker: EmbeddedBroker,
) -> None:
    topic = f"relay-partitioner-{time.time_ns()}"
    ensure_topics(broker.bootstrap, 5, [topic])
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    try:
        keys = [f"ACC-{n}".encode() for n in range(200)]
        futures = [producer.send(topic, key=key, value=b"{}") for key in keys]
        producer.flush()
        chosen = [future.get(timeout=10).partition for future in futures]
    finally:
        producer.close()
    assert chosen == [partition_for_key(key, 5) for key in keys]


def test_a_partition_the_topic_lacks_is_reported_with_the_batch_dropped(
    broker: EmbeddedBroker,
) -> None:
    topic = f"relay-partitions-{time.time_ns()}"
    ensure_topics(broker.bootstrap, 2, [topic])
    producer = ResilientProducer(broker.bootstrap, factory=make_relay_producer)
    try:
        assert producer.partition_count(topic) == 2
        producer.send(topic, key=b"A", value=b"{}", headers=[], partition=1)
        with pytest.raises(PartitionsChanged):
            producer.send(topic, key=b"B", value=b"{}", headers=[], partition=2)
        assert producer.pending == 0
    finally:
        producer.close()


def test_two_shares_publish_each_event_once_in_its_keys_partition(
    bootstrap: str, database_url: str, facts: Facts
) -> None:
    facts.add(accounts=30, events=300)
    with relays(database_url, bootstrap, [0, 1], shares=2) as running:
        wait_for(
            lambda: sorted(r.share for r in running if r.share is not None) == [0, 1],
            "each relay holds its share",
        )
        last = facts.add(accounts=10, events=300)
        wait_published(database_url, last, "both shares caught up")
    times = check_delivery(published(bootstrap), database_url)
    assert set(times.values()) == {1}
    assert recorded_configuration(database_url) == RelayConfiguration(2, PARTITIONS)
    share_positions = stored_positions(database_url)
    assert share_positions == {
        "outbox:ledger.events:share-0-of-2:partitions-4": last,
        "outbox:ledger.events:share-1-of-2:partitions-4": last,
    }
    # Notification requests follow the same rule: each once, keyed by the account.
    overpayments = [e for e in store_events(database_url) if e.type == "overpayment_detected"]
    notified = [r.key.decode() for r in read_topic(bootstrap, "ledger.notifications")]
    assert overpayments and len(notified) == len(overpayments)


def test_two_relay_sets_on_one_database_publish_each_event_once(
    bootstrap: str, database_url: str, facts: Facts
) -> None:
    facts.add(accounts=20, events=200)
    # Two `ledger run`s' worth of relays: relay and relay-2 of each.
    with relays(database_url, bootstrap, [0, 1, 0, 1], shares=2) as running:
        last = facts.add(accounts=5, events=200)
        wait_published(database_url, last, "the relays caught up")
        holding = sorted(r.share for r in running if r.share is not None)
        assert holding == [0, 1]
    times = check_delivery(published(bootstrap), database_url)
    assert set(times.values()) == {1}


def test_changing_the_share_count_restarts_from_the_lowest_old_position(
    bootstrap: str, database_url: str, facts: Facts
) -> None:
    first = facts.add(accounts=20, events=200)
    with relays(database_url, bootstrap, [0, 1], shares=2):
        wait_published(database_url, first, "two shares caught up")
    second = facts.add(accounts=5, events=200)
    # Only share 1 relays the second part: share 0 stays behind at `first`.
    with relays(database_url, bootstrap, [1], shares=2):
        wait_for(
            lambda: (
                stored_positions(database_url).get("outbox:ledger.events:share-1-of-2:partitions-4")
                == second
            ),
            "share 1 alone caught up",
        )
    before = published(bootstrap)
    # 2 -> 1: the one share starts after the lowest old position, `first`.
    with relays(database_url, bootstrap, [0], shares=1):
        wait_published(database_url, second, "one share caught up")
    assert recorded_configuration(database_url) == RelayConfiguration(1, PARTITIONS)
    after_one = published(bootstrap)
    again = _new_records(before, after_one)
    expected_again = {
        (e.account_id, e.version) for e in store_events(database_url) if e.notification_id > first
    }
    assert {(account, version) for _, account, version in again} == expected_again
    check_delivery(after_one, database_url)
    # 1 -> 2: both shares start after the one share's position; nothing before it again.
    third = facts.add(accounts=5, events=200)
    with relays(database_url, bootstrap, [0, 1], shares=2):
        wait_published(database_url, third, "two shares caught up again")
    after_two = published(bootstrap)
    new = _new_records(after_one, after_two)
    expected_new = {
        (e.account_id, e.version) for e in store_events(database_url) if e.notification_id > second
    }
    assert sorted((account, version) for _, account, version in new) == sorted(expected_new)
    check_delivery(after_two, database_url)


def recreate_with_partitions(bootstrap: str, topic: str, partitions: int) -> None:
    """Delete `topic` and create it again with `partitions` partitions.

    A producer's metadata request in between would auto-create it with the broker's default
    count; then it is done again (bounded).
    """
    admin = make_admin(bootstrap)
    try:
        for _ in range(5):
            admin.delete_topics([topic])
            ensure_topics(bootstrap, partitions, [topic])
            info = describe_topic(admin, topic)
            if info is not None and len(info.partitions) == partitions:
                return
    finally:
        admin.close()
    raise AssertionError(f"could not recreate {topic} with {partitions} partitions")


def test_a_changed_partition_count_recomputes_the_shares(
    bootstrap: str, database_url: str, facts: Facts
) -> None:
    first = facts.add(accounts=20, events=200)
    with relays(database_url, bootstrap, [0, 1], shares=2) as running:
        wait_published(database_url, first, "two shares caught up")
        recreate_with_partitions(bootstrap, "ledger.events", 6)
        # Until a relay notices (within a check interval), it still sends by four partitions.
        wait_for(
            lambda: all(
                r.worker is not None and r.worker.configuration == RelayConfiguration(2, 6)
                for r in running
            ),
            "both relays noticed six partitions",
            timeout_s=3 * limits.topic_check_interval_s + 10,
        )
        assert recorded_configuration(database_url) == RelayConfiguration(2, 6)
        last = facts.add(accounts=5, events=200)
        wait_published(database_url, last, "two shares of six partitions caught up")
    # The new topic has every event after the lowest old position, each in its key's partition.
    records = read_topic(bootstrap, "ledger.events")
    assert all(r.partition == partition_for_key(r.key, 6) for r in records)
    assert sorted((r.key.decode(), orjson.loads(r.value)["version"]) for r in records) == sorted(
        (e.account_id, e.version) for e in store_events(database_url) if e.notification_id > first
    )


def _new_records(
    before: Sequence[tuple[int, str, int]], after: Sequence[tuple[int, str, int]]
) -> list[tuple[int, str, int]]:
    """The records of `after` beyond those of `before`, partition by partition."""
    seen: dict[int, int] = defaultdict(int)
    for partition, _, _ in before:
        seen[partition] += 1
    by_partition: defaultdict[int, list[tuple[int, str, int]]] = defaultdict(list)
    for record in after:
        by_partition[record[0]].append(record)
    return [r for p, records in by_partition.items() for r in records[seen[p] :]]


def test_the_single_relay_of_earlier_versions_hands_over_its_position(
    bootstrap: str, database_url: str, facts: Facts
) -> None:
    legacy = facts.add(accounts=10, events=100)
    database = Database(parse_database_url(database_url))
    try:
        with database.transaction() as cursor:
            write_position(cursor, LEGACY_POSITION_NAME, legacy)
    finally:
        database.close()
    last = facts.add(accounts=5, events=100)
    with relays(database_url, bootstrap, [0, 1], shares=2):
        wait_published(database_url, last, "two shares caught up")
    records = published(bootstrap)
    assert sorted((account, version) for _, account, version in records) == sorted(
        (e.account_id, e.version) for e in store_events(database_url) if e.notification_id > legacy
    )


def _log_count(path: Path, event: str) -> int:
    """Log lines of a worker whose event starts with `event`."""
    if not path.exists():
        return 0
    return sum(
        1
        for line in path.read_text(errors="replace").splitlines()
        if line.startswith("{") and str(orjson.loads(line).get("event", "")).startswith(event)
    )


def _log_has(path: Path, event: str) -> bool:
    return _log_count(path, event) > 0


def test_a_standby_takes_over_when_the_holder_dies_or_stops(
    bootstrap: str, database_url: str, facts: Facts, tmp_path: Path
) -> None:
    workers = Workers(bootstrap, database_url, tmp_path, extra_env={"LEDGER_RELAY_WORKERS": "1"})
    first_log, second_log = tmp_path / "relay.log", tmp_path / "relay-2.log"
    try:
        workers.start("relay")
        wait_for(lambda: _log_has(first_log, "relay share acquired"), "the first relay holds")
        workers.start("relay-2")
        wait_for(lambda: _log_has(second_log, "relay standby"), "the second relay stands by")
        last = facts.add(accounts=20, events=200)
        wait_published(database_url, last, "the holder published")
        assert not _log_has(second_log, "relay share acquired")
        # kill -9 of the holder (idle: everything acknowledged and its position stored).
        workers.kill("relay")
        killed_at = time.monotonic()
        wait_for(
            lambda: _log_has(second_log, "relay share acquired"),
            "the standby took over",
            timeout_s=TAKEOVER_S,
        )
        assert time.monotonic() - killed_at < TAKEOVER_S
        last = facts.add(accounts=5, events=200)
        wait_published(database_url, last, "the new holder published")
        # A clean stop releases the lease: the standby takes over at its next try.
        workers.start("relay")
        wait_for(lambda: _log_has(first_log, "relay standby"), "the restarted relay stands by")
        workers.running["relay-2"].process.terminate()
        assert workers.running["relay-2"].process.wait(timeout=30) == 0
        stopped_at = time.monotonic()
        wait_for(
            lambda: _log_count(first_log, "relay share acquired") == 2,
            "the standby took over after a clean stop",
            timeout_s=TAKEOVER_S,
        )
        assert time.monotonic() - stopped_at < 3 * limits.relay_standby_retry_s + 2.0
        last = facts.add(accounts=5, events=200)
        wait_published(database_url, last, "the first relay published again")
    finally:
        codes = workers.stop_all()
    assert all(code == 0 for code in codes.values()), codes
    times = check_delivery(published(bootstrap), database_url)
    # Nothing was in flight at either handover: every event went out exactly once.
    assert set(times.values()) == {1}
    assert max_notification_id(database_url) == last
