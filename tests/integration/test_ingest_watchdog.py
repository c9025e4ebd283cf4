"""The ingest consumer's watchdog over a real broker: a wedged Kafka consumer is rebuilt.

The wedge is injected: the first consumer joins its group and takes the partitions, then its
`poll()` never fetches again (what kafka-python 3.0.12 did after a broker restart, see
docs/broker-restart.md). The watchdog must see the partitions lag their log ends with nothing
delivered, close that consumer and build a new one, which applies every fact.
"""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer
from structlog.testing import capture_logs

from consumers.ingest import IngestConsumer
from ledger import limits
from ledger.clock import FixedClock
from ledger.domain.policy import Policy
from ledger.ingest import IngestService
from ledger.kafka.broker import EmbeddedBroker
from ledger.kafka.clients import ResilientProducer, make_consumer, make_producer
from ledger.kafka.topics import ensure_topics
from ledger.persistence.event_store import open_event_store
from ledger.persistence.urls import parse_database_url
from tests.books import opened, payment

POLICY = Policy(version="test-1")
CLOCK = FixedClock(datetime(2026, 11, 25, 12, 0, tzinfo=UTC))
ACCOUNTS = 6


class WedgedAfterAssignment:
    """A real KafkaConsumer whose polls stop fetching once it holds partitions."""

    def __init__(self, consumer: KafkaConsumer) -> None:
        self._consumer = consumer
        self.wedged = False

    def poll(self, **kwargs: Any) -> dict[Any, Any]:
        if self.wedged:
            time.sleep(kwargs.get("timeout_ms", 100) / 1000)
            return {}
        records: dict[Any, Any] = self._consumer.poll(**kwargs)
        self.wedged = bool(self._consumer.assignment())
        return records

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)


@pytest.fixture
def fast_watchdog(monkeypatch: pytest.MonkeyPatch) -> None:
    # Longer than a first group join can take on a busy machine (Tansu answers it after about
    # half the session timeout; one CI run saw it take over 8 s, and the join itself was then
    # judged a rebalance that never finished, rebuilt again and again).
    monkeypatch.setattr(limits, "consumer_stall_timeout_s", 15.0)
    monkeypatch.setattr(limits, "topic_check_interval_s", 0.5)


def test_a_wedged_group_consumer_is_rebuilt(
    broker: EmbeddedBroker, tmp_path: Path, fast_watchdog: None
) -> None:
    suffix = uuid.uuid4().hex[:8]
    topic, dlq = f"watchdog.{suffix}", f"watchdog.{suffix}.dlq"
    ensure_topics(broker.bootstrap, 2, names=[topic, dlq])
    target = parse_database_url(f"sqlite:///{tmp_path / 'ledger.db'}")
    store = open_event_store(target, create_table=True)
    stop = threading.Event()
    dead_letters = ResilientProducer(broker.bootstrap, stop=stop)
    built: list[Any] = []

    def factory() -> Any:
        consumer = make_consumer(broker.bootstrap, group_id=f"watchdog-{suffix}", client_id="t")
        built.append(consumer if built else WedgedAfterAssignment(consumer))
        return built[-1]

    consumer = IngestConsumer(
        bootstrap=broker.bootstrap,
        service=IngestService(store, policy=POLICY, clock=CLOCK),
        dead_letters=dead_letters,
        group_id=f"watchdog-{suffix}",
        stop=stop,
        topic=topic,
        dlq_topic=dlq,
        consumer_factory=factory,
    )
    errors: list[BaseException] = []

    def run() -> None:
        try:
            consumer.run()
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=run)
    with capture_logs() as logs:
        thread.start()
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not (built and built[0].wedged):
                time.sleep(0.05)
            assert built and built[0].wedged, "the first consumer never took its partitions"
            producer = make_producer(broker.bootstrap)
            for n in range(ACCOUNTS):
                account = f"W-{n}".encode()
                producer.send(topic, key=account, value=opened(f"o{n}", f"W-{n}"))
                producer.send(topic, key=account, value=payment(f"p{n}", f"W-{n}", 100))
            producer.flush()
            producer.close()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not errors and consumer.applied < 2 * ACCOUNTS:
                time.sleep(0.1)
        finally:
            stop.set()
            thread.join(timeout=30)
            dead_letters.close()
            store.close()
    assert errors == []
    assert consumer.applied == 2 * ACCOUNTS
    assert consumer.rebuilds == 1 and len(built) == 2
    wedged = [e for e in logs if e["event"] == "consumer wedged: rebuilding it"]
    assert len(wedged) == 1 and "lag" in wedged[0]["reason"]
