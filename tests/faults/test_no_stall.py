"""No message can stall a partition: hostile messages and injected faults, on both backends.

The real consumer and service run over the real broker and database, on a one-partition topic
(one stuck message would stop everything behind it). The two messages that once stalled a
partition (a 2 MB message, NUL in ids), then faults injected for one message in the middle of a
batch, at preparation and at commit: each bad message is dead-lettered once with the right kind,
every good one is applied exactly once, and the books equal an independent model.
"""

from __future__ import annotations

import hashlib
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from eventsourcing.persistence import DataError, Tracking
from kafka import KafkaProducer

from consumers.ingest import IngestConsumer, IngestFailed
from ledger import limits
from ledger.clock import FixedClock
from ledger.domain.account import Account, account_uuid
from ledger.domain.policy import Policy
from ledger.ingest import InboundMessage, IngestService, PreparedBatch
from ledger.kafka.broker import EmbeddedBroker
from ledger.kafka.topics import ensure_topics, read_topic
from ledger.persistence.event_store import EventStore, open_event_store
from ledger.persistence.mapper import decode_state
from ledger.persistence.urls import parse_database_url
from tests.books import OCCURRED_AT, expected_balances, invoice, opened, payment
from tests.faults import harness
from tests.faults.harness import only_partition

POLICY = Policy(version="test-1")
CLOCK = FixedClock(datetime(2026, 11, 25, 12, 0, tzinfo=UTC))
POISON_ID = "poison-1"


@dataclass
class Run:
    """What one consumer run left behind."""

    consumer: IngestConsumer
    store: EventStore
    errors: list[BaseException]
    logs: list[dict[str, Any]]
    dlq: str

    def letters(self, bootstrap: str) -> dict[int, dict[str, Any]]:
        """The dead letters by source offset (each offset at most once)."""
        records = read_topic(bootstrap, self.dlq)
        offsets = [int(dict(r.headers)["source_offset"]) for r in records]
        assert len(offsets) == len(set(offsets)), f"dead letters repeated: {offsets}"
        return {int(dict(r.headers)["source_offset"]): _record(r) for r in records}

    def sources(self) -> Counter[str]:
        """How often each processor event id is in the store."""
        stored = [
            decode_state(n.state)
            for n in self.store.process_recorder.select_notifications(start=0, limit=10_000)
        ]
        return Counter(s["source_event_id"] for s in stored if "source_event_id" in s)

    def balances(self, account_id: str) -> dict[str, int]:
        """The account's non-zero balances on their natural side."""
        account = self.store.repository.get(account_uuid(account_id))
        assert isinstance(account, Account)
        natural = {str(k): account.balance(k).amount_minor for k in account.balances}
        return {k: v for k, v in natural.items() if v}


def _record(record: Any) -> dict[str, Any]:
    return {"key": record.key, "value": record.value, **dict(record.headers)}


@pytest.fixture
def run_consumer(broker: EmbeddedBroker, database_url: str) -> Iterator[Callable[..., Run]]:
    stores: list[EventStore] = []

    def run(
        lines: Sequence[tuple[bytes | None, bytes]],
        service_class: type[IngestService] = IngestService,
        *,
        until: Callable[[IngestConsumer], bool],
        again: Run | None = None,
    ) -> Run:
        """Publish `lines` to a new topic and consume it; or, `again`, consume that run's topic."""
        if again is not None:
            return consume(again.consumer.topics[0], again.dlq, service_class, until)
        suffix = uuid.uuid4().hex[:8]
        topic, dlq = f"no-stall.{suffix}", f"no-stall.{suffix}.dlq"
        ensure_topics(broker.bootstrap, 1, names=[topic, dlq])
        # A processor's client and broker that take what the ledger's own producer refuses.
        producer = KafkaProducer(
            bootstrap_servers=broker.bootstrap, max_request_size=4 * limits.broker_message_bytes_max
        )
        for key, value in lines:
            producer.send(topic, key=key, value=value)
        producer.flush()
        producer.close()
        return consume(topic, dlq, service_class, until)

    def consume(
        topic: str,
        dlq: str,
        service_class: type[IngestService],
        until: Callable[[IngestConsumer], bool],
    ) -> Run:
        store = open_event_store(parse_database_url(database_url), create_table=True)
        stores.append(store)
        service = service_class(store, policy=POLICY, clock=CLOCK)
        done = harness.run_consumer(
            broker.bootstrap,
            service,
            topic=topic,
            dlq=dlq,
            until=until,
            what=f"the consumer of {topic}",
        )
        return Run(done.consumer, store, done.errors, done.logs, dlq)

    yield run
    for store in stores:
        store.close()


def keyed(lines: Sequence[bytes], account_id: str) -> list[tuple[bytes | None, bytes]]:
    return [(account_id.encode(), raw) for raw in lines]


def test_a_huge_message_and_nul_in_ids_never_stall_the_partition(
    broker: EmbeddedBroker, run_consumer: Callable[..., Run]
) -> None:
    account = f"H-{uuid.uuid4().hex[:6]}"
    huge = orjson.dumps(
        {
            "event_id": "huge",
            "processor": "acme-pay",
            "account_id": account,
            "occurred_at": OCCURRED_AT,
            "type": "payment.received",
            "payment_id": "p-huge",
            "amount": {"value": 100, "currency": "USD"},
            "method": "card",
            "note": "x" * 2_000_000,
        }
    )
    nul_event = payment("b-ctl\u0000\u0007", account, 100)
    nul_payment = orjson.loads(payment("b-ok", account, 100))
    nul_payment["payment_id"] = "p\u0000"
    good = [opened("h-1", account), invoice("h-2", account, 500)]
    after = [payment("h-3", account, 800), payment("h-3", account, 800)]
    lines = [*good, huge, nul_event, orjson.dumps(nul_payment), *after]

    run = run_consumer(keyed(lines, account), until=lambda c: c.applied >= 3)

    assert run.errors == []
    assert (run.consumer.applied, run.consumer.duplicates, run.consumer.dead_lettered) == (3, 1, 3)
    assert only_partition(run.consumer).position == len(lines)
    assert set(run.sources().values()) == {1} and set(run.sources()) == {"h-1", "h-2", "h-3"}
    assert run.balances(account) == {"revenue": 500, "cash": 800, "customer_credit": 300}
    letters = run.letters(broker.bootstrap)
    assert sorted(letters) == [2, 3, 4]
    big = letters[2]
    assert big["error_kind"] == b"too_large"
    assert big["original_bytes"] == str(len(huge)).encode()
    assert big["original_sha256"] == hashlib.sha256(huge).hexdigest().encode()
    assert big["truncated"] == b"value"
    assert big["value"] == huge[: limits.dead_letter_excerpt_bytes_max]
    assert big["key"] == account.encode()
    for offset in (3, 4):
        assert letters[offset]["error_kind"] == b"contract"
        assert b"control character, found U+0000" in letters[offset]["error_reason"]
        assert letters[offset]["value"] == lines[offset]


def history(account_count: int = 5, facts: int = 120) -> list[bytes]:
    """Openings, then invoices and payments; the poisoned payment sits mid-batch."""
    lines = [opened(f"open-{n}", f"acct-{n}") for n in range(account_count)]
    for n in range(facts):
        account = f"acct-{n % account_count}"
        if n % 3 == 0:
            lines.append(payment(f"pay-{n}", account, 700 + n))
        else:
            lines.append(invoice(f"inv-{n}", account, 400 + n))
    lines.insert(len(lines) // 2, payment(POISON_ID, "acct-1", 999))
    return lines


class FailsPreparing(IngestService):
    """Any batch holding the poisoned payment fails while it is prepared (a bug's stand-in)."""

    def prepare(self, messages: Sequence[InboundMessage]) -> PreparedBatch:
        for message in messages:
            if message.value and POISON_ID.encode() in message.value:
                raise ValueError("injected: this message breaks the domain")
        return super().prepare(messages)


class FailsCommitting(IngestService):
    """Any commit holding the poisoned payment's events is refused by the database."""

    def commit(self, batch: PreparedBatch, tracking: Tracking) -> None:
        if any(getattr(e, "source_event_id", None) == POISON_ID for e in batch.events):
            raise DataError("injected: invalid byte sequence for encoding UTF8")
        super().commit(batch, tracking)


@pytest.mark.parametrize("service_class", [FailsPreparing, FailsCommitting])
def test_one_failing_message_mid_batch_is_set_aside(
    broker: EmbeddedBroker,
    run_consumer: Callable[..., Run],
    service_class: type[IngestService],
) -> None:
    lines = history()
    valid = len(lines) - 1
    poison_offset = next(n for n, raw in enumerate(lines) if POISON_ID.encode() in raw)

    run = run_consumer(
        [(None, raw) for raw in lines],
        service_class,
        until=lambda c: c.partitions and only_partition(c).position == len(lines),
    )

    assert run.errors == []
    assert (run.consumer.applied, run.consumer.dead_lettered, run.consumer.set_aside) == (
        valid,
        1,
        1,
    )
    sources = run.sources()
    assert POISON_ID not in sources and len(sources) == valid and set(sources.values()) == {1}
    model = expected_balances([raw for raw in lines if POISON_ID.encode() not in raw])
    for n in range(5):
        assert run.balances(f"acct-{n}") == model[f"acct-{n}"]
    letter = run.letters(broker.bootstrap)
    assert list(letter) == [poison_offset]
    assert letter[poison_offset]["error_kind"] == b"unprocessable"
    assert b"injected" in letter[poison_offset]["error_reason"]
    assert letter[poison_offset]["value"] == lines[poison_offset]
    events = [entry["event"] for entry in run.logs]
    assert "batch failed for a reason that is not an outage: narrowing it down" in events


class NeverCommits(IngestService):
    """The database refuses every commit, even one of no events: not one message's fault."""

    def commit(self, batch: PreparedBatch, tracking: Tracking) -> None:
        raise DataError("injected: every write fails")


def test_a_fault_that_is_not_one_messages_stops_the_worker(
    run_consumer: Callable[..., Run],
) -> None:
    lines = [opened(f"nc-{n}", f"nc-{n}") for n in range(8)]

    run = run_consumer([(None, raw) for raw in lines], NeverCommits, until=lambda c: False)

    assert len(run.errors) == 1 and isinstance(run.errors[0], IngestFailed)
    assert "not one message's fault" in str(run.errors[0])
    assert run.consumer.applied == 0 and run.consumer.set_aside == 0
    assert run.sources() == Counter()


class CrashesOnce(IngestService):
    """The worker dies (as under kill -9) after the first batch's dead letters went out."""

    def commit(self, batch: PreparedBatch, tracking: Tracking) -> None:
        raise KeyboardInterrupt("injected: the process dies before the commit")


def test_dead_letters_are_complete_after_a_crash_between_sending_and_committing(
    broker: EmbeddedBroker, run_consumer: Callable[..., Run]
) -> None:
    lines = [opened("cr-1", "CR"), b"{not json", invoice("cr-2", "CR", 300), b"[]"]
    first = run_consumer(keyed(lines, "CR"), CrashesOnce, until=lambda c: False)
    assert [type(e) for e in first.errors] == [KeyboardInterrupt]
    assert first.sources() == Counter()

    second = run_consumer([], until=lambda c: c.applied >= 2, again=first)

    assert second.errors == [] and second.sources() == Counter({"cr-1": 1, "cr-2": 1})
    records = read_topic(broker.bootstrap, first.dlq)
    by_source = Counter(
        (h["source_topic"], h["source_partition"], h["source_offset"])
        for h in (dict(r.headers) for r in records)
    )
    # Sent once by the run that died and once by the run that redid the batch: a reader that
    # de-duplicates by source topic, partition and offset sees each refused message once.
    topic = first.consumer.topics[0].encode()
    assert set(by_source) == {(topic, b"0", b"1"), (topic, b"0", b"3")}
    assert set(by_source.values()) == {2}
