"""The account worker's two co-partitioned topics, over a real broker (and both backends).

`payments.inbound` and `ledger.commands` share partition counts and keys, and a group's range
assignment gives each worker the same partition numbers of both: one writer per account.
Mismatched counts are refused at start. Until the command service exists, commands are
dead-lettered, not lost. A fact that lands on another worker's partition (a producer that does
not partition by murmur2) is still applied right: the version conflict it causes reloads the
account instead of overwriting it.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from kafka import TopicPartition

from consumers.ingest import IngestConsumer
from ledger.clock import FixedClock
from ledger.commands import CommandService
from ledger.domain.account import Account, account_uuid
from ledger.domain.policy import Policy
from ledger.ingest import BatchService, IngestService
from ledger.kafka.broker import EmbeddedBroker
from ledger.kafka.clients import ResilientProducer, make_producer
from ledger.kafka.partitioning import partition_for_key
from ledger.kafka.topics import (
    LEDGER_COMMANDS,
    PAYMENTS_INBOUND,
    PartitionCountsDiffer,
    describe_topic,
    ensure_topics,
    make_admin,
    read_topic,
)
from ledger.persistence.event_store import EventStore, open_event_store
from ledger.persistence.urls import parse_database_url
from tests.books import expected_balances, invoice, opened, payment
from tests.integration.test_cli_errors import assert_one_line, ledger
from tests.waiting import wait_for

POLICY = Policy(version="test-1")
CLOCK = FixedClock(datetime(2026, 11, 25, 12, 0, tzinfo=UTC))


@dataclass
class Workers:
    """Consumers running in threads until the test ends."""

    producer: ResilientProducer
    stop: threading.Event = field(default_factory=threading.Event)
    consumers: list[IngestConsumer] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)

    def start(self, consumer: IngestConsumer) -> IngestConsumer:
        def run() -> None:
            try:
                consumer.run()
            except BaseException as error:
                self.errors.append(error)

        self.consumers.append(consumer)
        self.threads.append(threading.Thread(target=run))
        self.threads[-1].start()
        return consumer

    def wait(self, condition: object, what: str, timeout_s: float = 60) -> None:
        assert callable(condition)
        wait_for(lambda: bool(self.errors) or condition(), what, timeout_s)
        assert self.errors == []


@pytest.fixture
def workers(broker: EmbeddedBroker) -> Iterator[Workers]:
    stop = threading.Event()
    producer = ResilientProducer(broker.bootstrap, stop=stop)
    running = Workers(producer, stop)
    try:
        yield running
    finally:
        running.stop.set()
        for thread in running.threads:
            thread.join(timeout=30)
        producer.close()
    assert not any(thread.is_alive() for thread in running.threads), "a consumer kept running"


@pytest.fixture
def store(database_url: str) -> Iterator[EventStore]:
    event_store = open_event_store(parse_database_url(database_url), create_table=True)
    yield event_store
    event_store.close()


def consumer(
    bootstrap: str,
    workers: Workers,
    services: Mapping[str, BatchService],
    *,
    group_id: str | None = None,
    partitions: list[int] | None = None,
) -> IngestConsumer:
    """An account worker's consumer over `services`, not yet started."""
    return IngestConsumer(
        bootstrap=bootstrap,
        services=services,
        dead_letters=workers.producer,
        group_id=group_id,
        stop=workers.stop,
        partitions=partitions,
    )


def pair(bootstrap: str, partitions: int) -> tuple[str, str]:
    """A facts topic and a commands topic of this test's own, with their dead-letter topics."""
    suffix = uuid.uuid4().hex[:8]
    facts, commands = f"acct.{suffix}.inbound", f"acct.{suffix}.commands"
    ensure_topics(bootstrap, partitions, [facts, commands, f"{facts}.dlq", f"{commands}.dlq"])
    return facts, commands


def balances(store: EventStore, account_id: str) -> dict[str, int]:
    account = store.repository.get(account_uuid(account_id))
    assert isinstance(account, Account)
    natural = {str(k): account.balance(k).amount_minor for k in account.balances}
    return {k: v for k, v in natural.items() if v}


def test_group_members_own_the_same_partitions_of_both_topics(
    broker: EmbeddedBroker, workers: Workers, tmp_path: Path
) -> None:
    facts, commands = pair(broker.bootstrap, 6)
    store = open_event_store(
        parse_database_url(f"sqlite:///{tmp_path / 'l.db'}"), create_table=True
    )
    service = IngestService(store, policy=POLICY, clock=CLOCK)
    group = f"account-workers-{uuid.uuid4().hex[:8]}"
    try:
        for _ in range(3):
            workers.start(
                consumer(
                    broker.bootstrap,
                    workers,
                    {facts: service, commands: CommandService(service)},
                    group_id=group,
                )
            )

        def owned() -> list[set[TopicPartition]]:
            found = []
            for worker in workers.consumers:
                with worker.lock:
                    kafka_consumer = worker.consumer
                    found.append(set() if kafka_consumer is None else kafka_consumer.assignment())
            return found

        def settled() -> bool:
            assignments = owned()
            every = [tp for assignment in assignments for tp in assignment]
            return len(every) == 12 and len(set(every)) == 12 and all(assignments)

        workers.wait(settled, "three members to share the 12 partitions", 90)
        for assignment in owned():
            numbers = {
                topic: sorted(tp.partition for tp in assignment if tp.topic == topic)
                for topic in (facts, commands)
            }
            assert numbers[facts] == numbers[commands] and len(numbers[facts]) == 2, numbers
    finally:
        workers.stop.set()
        for thread in workers.threads:
            thread.join(timeout=30)
        store.close()


def test_mismatched_partition_counts_are_refused_at_start(
    fresh_broker: EmbeddedBroker, workers: Workers, tmp_path: Path
) -> None:
    bootstrap = fresh_broker.bootstrap
    # Only payments.inbound exists: ledger.commands is created with its count, not the setting.
    ensure_topics(bootstrap, 3, [PAYMENTS_INBOUND])
    ensure_topics(bootstrap, 4)
    admin = make_admin(bootstrap)
    try:
        commands_info = describe_topic(admin, LEDGER_COMMANDS)
        assert commands_info is not None and len(commands_info.partitions) == 3
        admin.delete_topics([LEDGER_COMMANDS])
        wait_for(lambda: describe_topic(admin, LEDGER_COMMANDS) is None, "the topic deleted", 10)
    finally:
        admin.close()
    ensure_topics(bootstrap, 2, [LEDGER_COMMANDS])

    with pytest.raises(PartitionCountsDiffer) as refused:
        ensure_topics(bootstrap, 4)
    assert "payments.inbound has 3" in str(refused.value)
    assert "ledger.commands has 2" in str(refused.value)

    # The CLI refuses in one line (exit 2); `ledger run` before it starts any worker.
    database_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    lines = tmp_path / "lines.jsonl"
    lines.write_bytes(opened("m-open", "M-1") + b"\n")
    result, elapsed_s = ledger(["publish", str(lines)], LEDGER_KAFKA_BOOTSTRAP=bootstrap)
    refusal = assert_one_line(result, elapsed_s, "payments.inbound has 3", "ledger.commands has 2")
    assert "recreate ledger.commands with 3 partitions" in refusal
    result, _ = ledger(["run"], LEDGER_KAFKA_BOOTSTRAP=bootstrap, LEDGER_DATABASE_URL=database_url)
    assert result.returncode == 2 and result.stderr.splitlines()[-1] == refusal
    assert "ledger running" not in result.stderr

    # A worker refuses the same way.
    store = open_event_store(parse_database_url(database_url), create_table=True)
    try:
        service = IngestService(store, policy=POLICY, clock=CLOCK)
        worker = IngestConsumer(
            bootstrap=bootstrap,
            services={PAYMENTS_INBOUND: service, LEDGER_COMMANDS: CommandService(service)},
            dead_letters=workers.producer,
            group_id=None,
            stop=workers.stop,
        )
        with pytest.raises(PartitionCountsDiffer, match=r"payments\.inbound has 3"):
            worker.run()
        # Nothing of the refused worker keeps running (its topic watcher's client included).
        wait_for(
            lambda: not any("topic-watcher" in thread.name for thread in threading.enumerate()),
            "the refused worker's topic watcher closed",
            10,
        )
    finally:
        store.close()


def test_a_malformed_command_is_dead_lettered_while_a_payment_is_applied(
    broker: EmbeddedBroker, workers: Workers, store: EventStore
) -> None:
    facts, commands = pair(broker.bootstrap, 2)
    service = IngestService(store, policy=POLICY, clock=CLOCK)
    worker = workers.start(
        consumer(broker.bootstrap, workers, {facts: service, commands: CommandService(service)})
    )
    account = f"C-{uuid.uuid4().hex[:6]}"
    key = account.encode()
    command = orjson.dumps(
        {
            "command_id": str(uuid.uuid4()),
            "type": "overpayment.verify",
            "account_id": account,
            "actor": {"id": "ann", "role": "agent"},
            "issued_at": "2026-11-25T12:00:00Z",
        }
    )
    paid = [opened("c-open", account), payment("c-pay", account, 1200)]
    producer = make_producer(broker.bootstrap)
    for value in paid:
        producer.send(facts, key=key, value=value)
    producer.send(commands, key=key, value=command, headers=[("trace", b"t-1")])
    producer.flush()
    producer.close()

    workers.wait(lambda: worker.applied == 2 and worker.dead_lettered == 1, "payment and command")
    assert balances(store, account) == expected_balances(paid)[account]
    (letter,) = read_topic(broker.bootstrap, f"{commands}.dlq")
    headers = dict(letter.headers)
    partition = partition_for_key(key, 2)
    assert (letter.key, letter.value, headers["trace"]) == (key, command, b"t-1")
    assert headers["error_kind"] == b"contract"
    assert headers["error_reason"].startswith(b"contract: overpayment_id: Field required")
    assert headers["source_topic"] == commands.encode()
    assert (headers["source_partition"], headers["source_offset"]) == (
        str(partition).encode(),
        b"0",
    )
    assert read_topic(broker.bootstrap, f"{facts}.dlq") == []
    # The command's position is stored: a restart does not refuse it again.
    commands_position = worker.partitions[TopicPartition(commands, partition)]
    wait_for(
        lambda: store.process_recorder.max_tracking_id(commands_position.tracking_name) == 1,
        "the command's position stored",
    )


def test_a_stray_fact_on_another_workers_partition_is_applied_right(
    broker: EmbeddedBroker, workers: Workers, database_url: str, store: EventStore
) -> None:
    suffix = uuid.uuid4().hex[:8]
    facts = f"stray.{suffix}.inbound"
    ensure_topics(broker.bootstrap, 2, [facts, f"{facts}.dlq"])
    account = f"S-{suffix}"
    key = account.encode()
    home = partition_for_key(key, 2)
    stray = 1 - home
    target = parse_database_url(database_url)
    stores = [open_event_store(target) for _ in range(2)]
    try:
        owner, other = (
            workers.start(
                consumer(
                    broker.bootstrap,
                    workers,
                    {facts: IngestService(worker_store, policy=POLICY, clock=CLOCK)},
                    partitions=[partition],
                )
            )
            for worker_store, partition in zip(stores, (home, stray), strict=True)
        )
        producer = make_producer(broker.bootstrap)
        lines: list[bytes] = []

        def send(partition: int, *values: bytes) -> None:
            for value in values:
                producer.send(facts, key=key, value=value, partition=partition)
                lines.append(value)
            producer.flush()

        # The owner holds the account in memory when the stray fact moves it in the store.
        send(home, opened("s-open", account), invoice("s-inv-1", account, 1000))
        workers.wait(lambda: owner.applied == 2, "the owner to apply the first facts")
        send(stray, payment("s-pay-1", account, 400))
        workers.wait(lambda: other.applied == 1, "the other worker to apply the stray fact")
        send(home, invoice("s-inv-2", account, 300), payment("s-pay-2", account, 1500))
        workers.wait(lambda: owner.applied == 4, "the owner to apply the later facts")
        producer.close()

        assert balances(store, account) == expected_balances(lines)[account]
        assert (owner.conflicts, owner.strays, owner.rewinds) == (1, 1, 1)
        assert (other.conflicts, other.rewinds) == (0, 0)
    finally:
        workers.stop.set()
        for thread in workers.threads:
            thread.join(timeout=30)
        for worker_store in stores:
            worker_store.close()


def test_a_partition_count_changed_while_running_pauses_both_topics(
    broker: EmbeddedBroker, workers: Workers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("ledger.limits.topic_check_interval_s", 0.3)
    facts, commands = pair(broker.bootstrap, 2)
    store = open_event_store(
        parse_database_url(f"sqlite:///{tmp_path / 'l.db'}"), create_table=True
    )
    service = IngestService(store, policy=POLICY, clock=CLOCK)
    admin = make_admin(broker.bootstrap)
    try:
        worker = workers.start(
            consumer(broker.bootstrap, workers, {facts: service, commands: CommandService(service)})
        )
        workers.wait(lambda: len(worker.partitions) == 4, "the worker to own both topics")

        def recreate(partitions: int) -> None:
            admin.delete_topics([commands])
            wait_for(lambda: describe_topic(admin, commands) is None, "the topic deleted", 10)
            ensure_topics(broker.bootstrap, partitions, [commands])

        recreate(3)
        workers.wait(lambda: worker.paused_counts == {facts: 2, commands: 3}, "a pause")
        producer = make_producer(broker.bootstrap)
        producer.send(facts, key=b"P-1", value=opened("p-open", "P-1"))
        producer.flush()
        workers.stop.wait(2)
        assert worker.applied == 0
        recreate(2)
        workers.wait(lambda: worker.paused_counts is None, "the worker to resume")
        workers.wait(lambda: worker.applied == 1, "the fact applied after the resume")
        producer.close()
    finally:
        workers.stop.set()
        for thread in workers.threads:
            thread.join(timeout=30)
        admin.close()
        store.close()
