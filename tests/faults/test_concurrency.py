"""Two ingest consumers writing the same accounts at once, each with its own event-store connection.

Each consumer (the real `IngestConsumer`, in a thread of its own) reads its own topic over the
real broker; both topics carry facts for the same two accounts, published in small bursts so that
the two commit to the same aggregate at the same moment. The loser of each race must get the
version conflict, reload and re-apply (logged "version conflict"), and the store must read as one
serial history: every fact exactly once, versions contiguous, and every event's postings exactly
what serial application in the store's order computes, balances and read model included.
"""

from __future__ import annotations

import random
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime

from eventsourcing.persistence import Tracking
from kafka import KafkaProducer
from structlog.testing import capture_logs

from consumers.ingest import IngestConsumer
from ledger.clock import FixedClock
from ledger.domain.account import Account, account_uuid
from ledger.domain.event_names import event_name
from ledger.domain.policy import Policy
from ledger.ingest import InboundMessage, IngestService
from ledger.kafka.broker import EmbeddedBroker
from ledger.kafka.clients import ResilientProducer
from ledger.kafka.topics import ensure_topics
from ledger.persistence.database import Database
from ledger.persistence.event_store import EventStore, open_event_store
from ledger.persistence.mapper import decode_state
from ledger.persistence.urls import parse_database_url
from ledger.read_models import live, prepare_tables
from ledger.tailing import run_tail
from projections import queries
from tests.books import invoice, opened, payment
from tests.waiting import wait_for

POLICY = Policy(version="test-1")
CLOCK = FixedClock(datetime(2026, 11, 25, 12, 0, tzinfo=UTC))
ACCOUNTS = {"A": "USD", "B": "EUR"}
FACTS_PER_TOPIC = 150
BURST = 5


def open_accounts(store: EventStore) -> None:
    service = IngestService(store, policy=POLICY, clock=CLOCK)
    lines = [opened(f"open-{a}", a, currency=c) for a, c in ACCOUNTS.items()]
    messages = [InboundMessage("setup", 0, n, None, raw) for n, raw in enumerate(lines)]
    service.commit(service.prepare(messages), Tracking("setup:0", len(lines)))


def facts(prefix: str, rng: random.Random) -> list[tuple[bytes, bytes]]:
    result = []
    for n in range(FACTS_PER_TOPIC):
        account = rng.choice(sorted(ACCOUNTS))
        make = invoice if rng.random() < 0.5 else payment
        raw = make(f"{prefix}-{n}", account, rng.randrange(1, 10_000), ACCOUNTS[account])
        result.append((account.encode(), raw))
    return result


def handled(consumer: IngestConsumer) -> int:
    """How many of its topic's messages a consumer has dealt with, one way or another."""
    return consumer.applied + consumer.duplicates + consumer.dead_lettered


def publish_in_bursts(
    bootstrap: str,
    streams: dict[str, list[tuple[bytes, bytes]]],
    caught_up: Callable[[int], bool],
) -> None:
    """Send a burst to every topic at once, then wait until `caught_up` with it, and so on."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    try:
        for start in range(0, FACTS_PER_TOPIC, BURST):
            for topic, lines in streams.items():
                for key, raw in lines[start : start + BURST]:
                    producer.send(topic, key=key, value=raw)
            producer.flush()
            end = min(start + BURST, FACTS_PER_TOPIC)
            wait_for(lambda end=end: caught_up(end), f"the consumers to handle {end} each", 30)
    finally:
        producer.close()


def serial_postings(events: list[dict[str, object]]) -> None:
    """Replay the stored events in order: each one's postings are what serial application gives."""
    receivable: Counter[str] = Counter()
    for event in events:
        account, kind, amount = event["account_id"], event["type"], event.get("amount_minor")
        postings = [
            (p["debit"], p["credit"], p["amount_minor"]) for p in event.get("postings") or ()
        ]
        if kind == "invoice_issued":
            expected = [("receivable", "revenue", amount)]
            receivable[account] += amount
        elif kind == "payment_received":
            settled = min(amount, receivable[account])
            receivable[account] -= settled
            expected = [("cash", "receivable", settled)] if settled else []
            if amount - settled:
                expected.append(("cash", "customer_credit", amount - settled))
        else:
            expected = []
        assert postings == expected, (event["account_id"], event["version"], event["type"])


def test_two_writers_of_one_account(broker: EmbeddedBroker, database_url: str) -> None:
    target = parse_database_url(database_url)
    suffix = uuid.uuid4().hex[:8]
    topics = {name: f"concurrency.{suffix}.{name}" for name in ("x", "y")}
    dlq = f"concurrency.{suffix}.dlq"
    ensure_topics(broker.bootstrap, 1, names=[*topics.values(), dlq])
    setup = open_event_store(target, create_table=True)
    open_accounts(setup)
    rng = random.Random(5)
    streams = {topic: facts(prefix, rng) for prefix, topic in topics.items()}
    stop = threading.Event()
    consumers: list[IngestConsumer] = []
    stores: list[EventStore] = []
    threads: list[threading.Thread] = []
    errors: list[BaseException] = []
    producer = ResilientProducer(broker.bootstrap, stop=stop)

    def run(consumer: IngestConsumer) -> None:
        try:
            consumer.run()
        except BaseException as error:
            errors.append(error)

    with capture_logs() as logs:
        for topic in topics.values():
            store = open_event_store(target)
            stores.append(store)
            service = IngestService(store, policy=POLICY, clock=CLOCK)
            consumer = IngestConsumer(
                bootstrap=broker.bootstrap,
                service=service,
                dead_letters=producer,
                group_id=None,
                stop=stop,
                topic=topic,
                dlq_topic=dlq,
            )
            consumers.append(consumer)
            threads.append(threading.Thread(target=run, args=(consumer,)))
        try:
            for thread in threads:
                thread.start()

            def assigned() -> bool:
                done = {e["topic"] for e in logs if e["event"] == "partition assigned"}
                return bool(errors) or done == set(topics.values())

            wait_for(assigned, "both consumers to own their partition", 30)

            def caught_up(count: int) -> bool:
                return bool(errors) or all(handled(c) >= count for c in consumers)

            publish_in_bursts(broker.bootstrap, streams, caught_up)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=30)
            producer.close()
            for store in stores:
                store.close()
    assert not any(thread.is_alive() for thread in threads), "a consumer ignored the stop request"
    assert errors == []
    assert [c.applied for c in consumers] == [FACTS_PER_TOPIC, FACTS_PER_TOPIC]
    conflicts = [e for e in logs if e["event"].startswith("version conflict")]
    assert conflicts, "the two writers never raced: the test proved nothing"

    recorder = setup.process_recorder
    stored = []
    for notification in recorder.select_notifications(start=0, limit=10_000):
        state = decode_state(notification.state)
        state["type"] = event_name(notification.topic)
        state["version"] = notification.originator_version
        stored.append(state)
    # Every fact exactly once, versions contiguous, postings as serial application computes them.
    sources = Counter(s["source_event_id"] for s in stored if s["type"] != "overpayment_detected")
    expected_ids = {f"open-{a}" for a in ACCOUNTS} | {
        f"{prefix}-{n}" for prefix in topics for n in range(FACTS_PER_TOPIC)
    }
    assert set(sources) == expected_ids and set(sources.values()) == {1}
    for account in ACCOUNTS:
        versions = [s["version"] for s in stored if s["account_id"] == account]
        assert versions == list(range(1, len(versions) + 1)), account
    serial_postings(stored)
    # The aggregates replayed from the store and the read model agree with that history.
    database = Database(target)
    prepare_tables(database)
    run_tail(setup, live(database, "balances"), threading.Event(), until_caught_up=True)
    for account in ACCOUNTS:
        replayed = setup.repository.get(account_uuid(account))
        assert isinstance(replayed, Account)
        raw: Counter[str] = Counter()
        for state in stored:
            if state["account_id"] == account:
                for p in state.get("postings") or ():
                    raw[p["debit"]] += p["amount_minor"]
                    raw[p["credit"]] -= p["amount_minor"]
        assert {k: v for k, v in replayed.balances.items() if v} == {
            k: v for k, v in raw.items() if v
        }
        answer = queries.balance(database, account)
        assert answer["cash"] == raw["cash"] and answer["receivable"] == raw["receivable"]
        assert answer["customer_credit"] == -raw["customer_credit"]
    trial = queries.trial_balance(database)
    assert {c: e["total"] for c, e in trial["currencies"].items()} == {"EUR": 0, "USD": 0}
    database.close()
    setup.close()
