"""A commit that fails while the next batch is already prepared on top of it, on both backends.

On PostgreSQL the ingest consumer commits each batch in a writer thread while it prepares the
next one (on SQLite it commits in line, through the same code). When a commit fails, the batch
prepared on top of it is wrong too: the consumer must drop both and read again from the stored
positions (every partition of both topics after a lost connection; the failed batch's partition
after a version conflict, with its accounts reloaded), and end with every fact applied exactly
once and every dead letter sent exactly once. The consumer serves two topics with one service,
as the account worker does; the real consumer and service run over the real broker and
database; only the commit is made to fail, before it writes anything.
"""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest
from eventsourcing.persistence import IntegrityError, OperationalError, Tracking
from kafka import TopicPartition

from ledger.clock import FixedClock
from ledger.domain.account import Account, account_uuid
from ledger.domain.policy import Policy
from ledger.ingest import IngestService, PreparedBatch
from ledger.kafka.broker import EmbeddedBroker
from ledger.kafka.clients import make_producer
from ledger.kafka.topics import ensure_topics, read_topic
from ledger.persistence.event_store import open_event_store
from ledger.persistence.mapper import decode_state
from ledger.persistence.urls import parse_database_url
from tests.books import expected_balances, invoice, opened, payment
from tests.faults.harness import run_consumer

POLICY = Policy(version="test-1")
CLOCK = FixedClock(datetime(2026, 11, 25, 12, 0, tzinfo=UTC))
BATCH = 25
FAILING_COMMITS = {3, 4, 9}
"""Which commits fail (counted from 1): two in a row, then one more later."""


class FailingCommits(IngestService):
    """The real service, whose chosen commits fail before writing anything."""

    def __init__(self, *args: Any, error: type[Exception], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.error = error
        self.commits = 0

    def commit(self, batch: PreparedBatch, tracking: Tracking) -> None:
        self.commits += 1
        if self.commits in FAILING_COMMITS:
            raise self.error(f"commit {self.commits} failed (injected)")
        super().commit(batch, tracking)


def history(prefix: str) -> list[bytes]:
    """Openings, then invoices and payments (some overpaying), one duplicate, two bad lines."""
    lines = [opened(f"{prefix}open-{n}", f"{prefix}acct-{n}") for n in range(10)]
    for n in range(240):
        account = f"{prefix}acct-{n % 10}"
        if n % 3 == 0:
            lines.append(payment(f"{prefix}pay-{n}", account, 700 + n))
        else:
            lines.append(invoice(f"{prefix}inv-{n}", account, 400 + n))
    lines.insert(60, b"{not json")  # inside the third batch
    lines.insert(80, b'{"event_id": "x", "type": "payment.received"}')  # the fourth
    lines.insert(130, lines[115])  # the same event again, in the next batch
    return lines


@pytest.mark.parametrize(
    ("error", "logged"),
    [
        (OperationalError, "database unavailable: retrying the batch"),
        (IntegrityError, "version conflict: reloading accounts and re-applying the batch"),
    ],
)
def test_failed_commits_rewind_to_the_stored_positions(
    broker: EmbeddedBroker,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    error: type[Exception],
    logged: str,
) -> None:
    monkeypatch.setattr("ledger.limits.poll_records_max", BATCH)
    suffix = uuid.uuid4().hex[:8]
    topics = {prefix: f"failed-commit.{suffix}.{prefix}" for prefix in ("a-", "b-")}
    ensure_topics(broker.bootstrap, 1, names=[n for t in topics.values() for n in (t, f"{t}.dlq")])
    histories = {topic: history(prefix) for prefix, topic in topics.items()}
    producer = make_producer(broker.bootstrap)
    for topic, lines in histories.items():
        for raw in lines:
            producer.send(topic, value=raw)
    producer.flush()
    producer.close()

    store = open_event_store(parse_database_url(database_url), create_table=True)
    service = FailingCommits(store, policy=POLICY, clock=CLOCK, error=error)
    first, second = topics.values()
    valid = sum(len(lines) - 3 for lines in histories.values())
    done = run_consumer(
        broker.bootstrap,
        service,
        topic=first,
        dlq=f"{first}.dlq",
        also=[second],
        until=lambda consumer: consumer.applied >= valid,
        what="every valid line of both topics",
    )
    consumer, errors, logs = done.consumer, done.errors, done.logs
    try:
        assert errors == []
        assert service.commits > max(FAILING_COMMITS)
        assert [e["event"] for e in logs].count(logged) == len(FAILING_COMMITS)
        assert consumer.rewinds == len(FAILING_COMMITS)
        conflicts = len(FAILING_COMMITS) if error is IntegrityError else 0
        assert (consumer.conflicts, consumer.strays) == (conflicts, conflicts)
        assert (consumer.applied, consumer.duplicates, consumer.dead_lettered) == (valid, 2, 4)
        # Every fact exactly once in the store, and each position at the end of its topic.
        stored = [
            decode_state(n.state)
            for n in store.process_recorder.select_notifications(start=0, limit=10_000)
        ]
        sources = Counter(s["source_event_id"] for s in stored if "source_event_id" in s)
        assert len(sources) == valid and set(sources.values()) == {1}
        for topic, lines in histories.items():
            state = consumer.partitions[TopicPartition(topic, 0)]
            assert state.position == len(lines)
            assert store.process_recorder.max_tracking_id(state.tracking_name) == len(lines)
        # The books equal an independent model of a clean run.
        for prefix, topic in topics.items():
            model = expected_balances(histories[topic])
            for n in range(10):
                account = store.repository.get(account_uuid(f"{prefix}acct-{n}"))
                assert isinstance(account, Account)
                natural = {str(k): account.balance(k).amount_minor for k in account.balances}
                assert {k: v for k, v in natural.items() if v} == model[f"{prefix}acct-{n}"]
            # Each bad line dead-lettered once, to its own topic's dead-letter topic, although
            # both were prepared again after a rewind.
            letters = read_topic(broker.bootstrap, f"{topic}.dlq")
            assert sorted(int(dict(r.headers)["source_offset"]) for r in letters) == [60, 80]
            assert {dict(r.headers)["source_topic"] for r in letters} == {topic.encode()}
    finally:
        store.close()
