"""Staff commands on accounts that are receiving payments at the same moment (both backends).

Two real account workers share one consumer group over a facts topic and a commands topic of
equal partition counts, so range assignment makes each the one writer of its accounts. First the
accounts are opened and overpaid (the overpayments the commands will name); then one producer
sends, interleaved, more facts (invoices, payments, new overpayments) and the commands: each
required department verifies with its own role, then a manager resolves (escrow, coupon, store
credit or credit). Some commands are refused on purpose (the same department verifying twice, an
agent verifying, a resolution before verification is complete) and some are sent twice under the
same `command_id`.

The proof: no version conflict and no rewind in either worker; every command has exactly one
outcome row, as expected; each accepted command produced its events once; and every account's
books equal a model computed here. Resolving as "credit" moves money only when a later invoice
absorbs it, which would make the books depend on how facts and commands interleave: accounts
resolved that way receive only payments afterwards.

`LEDGER_DEEP_TESTS=1` runs the issue's size (5,000 commands over 200 accounts while 20,000 facts
flow); the default is small enough to take well under a minute per backend.
"""

from __future__ import annotations

import itertools
import os
import random
import threading
import traceback
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from kafka import KafkaProducer, TopicPartition

from consumers.ingest import IngestConsumer
from ledger.clock import FixedClock
from ledger.commands import CommandService
from ledger.domain.account import Account, account_uuid
from ledger.domain.event_names import event_name
from ledger.domain.policy import Policy
from ledger.domain.postings import LedgerAccount
from ledger.ingest import IngestService
from ledger.kafka.broker import EmbeddedBroker
from ledger.kafka.clients import ResilientProducer
from ledger.kafka.topics import ensure_topics
from ledger.persistence.database import Database
from ledger.persistence.event_store import EventStore, open_event_store
from ledger.persistence.mapper import decode_state
from ledger.persistence.outcomes import COLUMNS, OUTCOMES_TABLE, CommandOutcome
from ledger.persistence.urls import parse_database_url
from tests.books import invoice, opened, payment
from tests.waiting import wait_for

DEEP = os.environ.get("LEDGER_DEEP_TESTS") == "1"
ACCOUNTS, COMMANDS, FACTS = (200, 5_000, 20_000) if DEEP else (60, 1_200, 4_800)
PARTITIONS = 4
WORKERS = 2
SEND_CHUNK = 50
"""Messages sent between flushes (facts and commands alternate chunk by chunk)."""
POLICY = Policy(version="test-1")
CLOCK = FixedClock(datetime(2026, 11, 25, 12, 0, tzinfo=UTC))
ISSUED_AT = "2026-11-25T12:00:00+00:00"
BANDS = ((1_000, 40_000), (60_000, 400_000), (600_000, 900_000))
"""Overpayment amounts: one, two and three departments must verify (the default policy)."""
RESOLUTIONS = ("escrow", "coupon", "store_credit")
"""Resolutions of accounts that keep receiving invoices ("credit" only on payment-only ones)."""


@dataclass
class Sent:
    """One command as sent, and the outcome it must get."""

    account_id: str
    command_id: str
    body: bytes
    status: str
    error_kind: str | None = None


@dataclass
class Plan:
    """The history: setup facts, then facts and commands that flow together, and the model."""

    setup: list[tuple[str, bytes]] = field(default_factory=list)
    facts: list[tuple[str, bytes]] = field(default_factory=list)
    commands: list[Sent] = field(default_factory=list)
    sends: list[Sent] = field(default_factory=list)
    """Every command send, duplicates included, in order."""
    verifications: set[tuple[str, str]] = field(default_factory=set)
    resolutions: dict[str, str] = field(default_factory=dict)
    books: dict[str, Counter[str]] = field(default_factory=dict)


def command(account_id: str, kind: str, actor_role: str, **fields: Any) -> Sent:
    """A staff command (accepted unless the caller says otherwise)."""
    command_id = str(uuid.uuid4())
    body = orjson.dumps(
        {
            "command_id": command_id,
            "type": kind,
            "account_id": account_id,
            "actor": {"id": f"{actor_role}-1", "role": actor_role},
            "issued_at": ISSUED_AT,
            **fields,
        }
    )
    return Sent(account_id, command_id, body, "accepted")


def refused(sent: Sent, error_kind: str) -> Sent:
    sent.status, sent.error_kind = "refused", error_kind
    return sent


def fact(books: Counter[str], raw: bytes) -> bytes:
    """Apply an invoice or payment to the model (natural sides), as serial application would."""
    body = orjson.loads(raw)
    amount = body["amount"]["value"]
    if body["type"] == "invoice.issued":
        books["receivable"] += amount
        books["revenue"] += amount
    else:
        settled = min(amount, books["receivable"])
        books["receivable"] -= settled
        books["customer_credit"] += amount - settled
        books["cash"] += amount
    return raw


def overpayment_commands(
    plan: Plan, rng: random.Random, account_id: str, op_id: str, amount: int, credit_only: bool
) -> list[Sent]:
    """Verify by every required department, a refusal now and then, then resolve."""
    books = plan.books[account_id]
    departments = ["accounting", "risk_management", "operations"][
        : 1 + sum(amount >= low for low, _ in BANDS[1:])
    ]
    out: list[Sent] = []
    verify = {"type": "overpayment.verify", "overpayment_id": op_id}
    early = len(departments) > 1 and rng.random() < 0.3
    for index, department in enumerate(departments):
        if rng.random() < 0.1:
            fields = {"overpayment_id": op_id, "department": department}
            out.append(
                refused(command(account_id, verify["type"], "agent", **fields), "unauthorized")
            )
        out.append(command(account_id, verify["type"], department, **verify, department=department))
        plan.verifications.add((op_id, department))
        if rng.random() < 0.2:
            again = command(account_id, verify["type"], department, **verify, department=department)
            out.append(refused(again, "domain_rule"))
        if early and index == 0:
            resolve = {"overpayment_id": op_id, "resolution": "escrow"}
            out.append(
                refused(
                    command(account_id, "overpayment.resolve", "manager", **resolve), "domain_rule"
                )
            )
    resolution = "credit" if credit_only else rng.choice(RESOLUTIONS)
    resolve = {"overpayment_id": op_id, "resolution": resolution}
    out.append(command(account_id, "overpayment.resolve", "manager", **resolve))
    plan.resolutions[op_id] = resolution
    if resolution in ("escrow", "coupon"):
        books["customer_credit"] -= amount
        books[resolution] += amount
    return out


def build_plan(seed: int) -> Plan:
    rng = random.Random(seed)
    plan = Plan()
    accounts = [f"CW-{n}" for n in range(ACCOUNTS)]
    credit_only = {account for n, account in enumerate(accounts) if n % 4 == 0}
    versions: dict[str, int] = {}
    per_account: dict[str, list[list[Sent]]] = {account: [] for account in accounts}
    for account in accounts:
        plan.books[account] = Counter()
        plan.setup.append((account, opened(f"open-{account}", account)))
        versions[account] = 1
    # Overpayments on accounts that owe nothing: each payment is all excess (payment, detection).
    for n in itertools.count():
        if sum(len(c) for lists in per_account.values() for c in lists) >= COMMANDS:
            break
        account = accounts[n % ACCOUNTS]
        low, high = rng.choice(BANDS)
        amount = rng.randrange(low, high)
        plan.setup.append((account, fact(plan.books[account], payment(f"op-{n}", account, amount))))
        op_id = f"{account}:op:{versions[account] + 2}"
        versions[account] += 2
        per_account[account].append(
            overpayment_commands(plan, rng, account, op_id, amount, account in credit_only)
        )
    # The commands of each account stay in order; accounts interleave.
    queues = {a: [s for cs in lists for s in cs] for a, lists in per_account.items() if lists}
    while queues:
        account = rng.choice(sorted(queues))
        sent = queues[account].pop(0)
        plan.commands.append(sent)
        plan.sends.append(sent)
        if rng.random() < 0.05:
            plan.sends.append(sent)  # the same command_id (and body) again
        if not queues[account]:
            del queues[account]
    for n in range(max(0, FACTS - len(plan.setup))):
        account = rng.choice(accounts)
        books = plan.books[account]
        if account not in credit_only and rng.random() < 0.5:
            raw = invoice(f"inv-{n}", account, rng.randrange(1_000, 50_000))
        else:
            raw = payment(f"pay-{n}", account, rng.randrange(1_000, 60_000))
        plan.facts.append((account, fact(books, raw)))
    return plan


@dataclass
class Group:
    """Account workers in one consumer group, each in a thread with its own store and cache."""

    stop: threading.Event = field(default_factory=threading.Event)
    consumers: list[IngestConsumer] = field(default_factory=list)
    stores: list[EventStore] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    tracebacks: list[str] = field(default_factory=list)
    producers: list[ResilientProducer] = field(default_factory=list)

    def handled(self) -> int:
        return sum(c.applied + c.duplicates for c in self.consumers)

    def owned(self) -> list[set[TopicPartition]]:
        found = []
        for worker in self.consumers:
            with worker.lock:
                consumer = worker.consumer
                found.append(set() if consumer is None else set(consumer.assignment()))
        return found


@pytest.fixture
def group() -> Iterator[Group]:
    running = Group()
    yield running
    running.stop.set()
    for thread in running.threads:
        thread.join(timeout=30)
    for producer in running.producers:
        producer.close()
    for store in running.stores:
        store.close()
    assert not any(thread.is_alive() for thread in running.threads), "a worker kept running"


def send(producer: KafkaProducer, topic: str, key: str, value: bytes) -> None:
    producer.send(topic, key=key.encode(), value=value)


def test_commands_while_facts_flow(broker: EmbeddedBroker, database_url: str, group: Group) -> None:
    plan = build_plan(seed=17)
    suffix = uuid.uuid4().hex[:8]
    facts_topic, commands_topic = f"cwf.{suffix}.inbound", f"cwf.{suffix}.commands"
    names = [facts_topic, commands_topic, f"{facts_topic}.dlq", f"{commands_topic}.dlq"]
    ensure_topics(broker.bootstrap, PARTITIONS, names)
    target = parse_database_url(database_url)
    open_event_store(target, create_table=True).close()
    consumer_group = f"cwf-{suffix}"

    def run(consumer: IngestConsumer) -> None:
        try:
            consumer.run()
        except BaseException as error:
            group.errors.append(error)
            group.tracebacks.append(traceback.format_exc())

    for _ in range(WORKERS):
        store = open_event_store(target)
        group.stores.append(store)
        service = IngestService(store, policy=POLICY, clock=CLOCK)
        # One producer per worker, as one per worker process: a ResilientProducer is not
        # thread-safe.
        dead_letters = ResilientProducer(broker.bootstrap, stop=group.stop)
        group.producers.append(dead_letters)
        consumer = IngestConsumer(
            bootstrap=broker.bootstrap,
            services={facts_topic: service, commands_topic: CommandService(service)},
            dead_letters=dead_letters,
            group_id=consumer_group,
            stop=group.stop,
        )
        group.consumers.append(consumer)
        group.threads.append(threading.Thread(target=run, args=(consumer,)))
        group.threads[-1].start()

    def settled() -> bool:
        owned = group.owned()
        every = [tp for assignment in owned for tp in assignment]
        return bool(group.errors) or (
            all(owned) and len(every) == 2 * PARTITIONS and len(set(every)) == len(every)
        )

    wait_for(settled, "both workers to share the partitions of both topics", 90)
    assert group.errors == [], "\n".join(group.tracebacks)
    for assignment in group.owned():
        numbers = {t: sorted(tp.partition for tp in assignment if tp.topic == t) for t in names[:2]}
        assert numbers[facts_topic] == numbers[commands_topic], numbers

    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=5)
    try:
        for account, raw in plan.setup:
            send(producer, facts_topic, account, raw)
        producer.flush()
        wait_for(
            lambda: bool(group.errors) or group.handled() >= len(plan.setup),
            "the accounts opened and overpaid",
            120,
        )
        # Facts and commands flow together, chunk by chunk.
        facts = iter(plan.facts)
        sends = iter(plan.sends)
        share = max(1, round(len(plan.facts) / max(1, len(plan.sends))))
        while True:
            batch_facts = list(itertools.islice(facts, SEND_CHUNK * share))
            batch_sends = list(itertools.islice(sends, SEND_CHUNK))
            if not batch_facts and not batch_sends:
                break
            for account, raw in batch_facts:
                send(producer, facts_topic, account, raw)
            for sent in batch_sends:
                send(producer, commands_topic, sent.account_id, sent.body)
            producer.flush()
    finally:
        producer.close()
    total = len(plan.setup) + len(plan.facts) + len(plan.sends)
    wait_for(
        lambda: bool(group.errors) or group.handled() >= total,
        f"the workers to handle {total} messages",
        600 if DEEP else 120,
    )
    group.stop.set()
    for thread in group.threads:
        thread.join(timeout=30)
    assert group.errors == [], "\n".join(group.tracebacks)

    # No conflict, no rewind: every change went through the account's one writer.
    assert sum(c.conflicts for c in group.consumers) == 0
    assert sum(c.strays for c in group.consumers) == 0
    assert sum(c.rewinds for c in group.consumers) == 0
    assert all(c.applied for c in group.consumers), "one worker did all the work"

    # Exactly one outcome per command, as expected.
    database = Database(target)
    try:
        with database.read() as cursor:
            cursor.execute(f"SELECT {', '.join(COLUMNS)} FROM {OUTCOMES_TABLE}")
            outcomes = [CommandOutcome.from_row(row) for row in cursor.fetchall()]
    finally:
        database.close()
    by_key = {o.key: o for o in outcomes}
    assert len(by_key) == len(outcomes) == len(plan.commands)
    for sent in plan.commands:
        outcome = by_key[(sent.account_id, sent.command_id)]
        assert (outcome.status, outcome.error_kind) == (sent.status, sent.error_kind), (
            sent.body,
            outcome.reason,
        )
        assert bool(outcome.versions) == (sent.status == "accepted")
    accepted_versions = [
        (o.account_id, v) for o in outcomes if o.status == "accepted" for v in o.versions
    ]
    assert len(accepted_versions) == len(set(accepted_versions))

    # Each accepted command's events exactly once.
    store = group.stores[0]
    events: list[dict[str, Any]] = []
    position = 0
    while page := store.process_recorder.select_notifications(
        start=position, limit=5_000, inclusive_of_start=False
    ):
        for notification in page:
            state = decode_state(notification.state)
            state["type"] = event_name(notification.topic)
            events.append(state)
        position = page[-1].id
    verified = Counter(
        (e["overpayment_id"], e["department"])
        for e in events
        if e["type"] == "overpayment_verified"
    )
    assert set(verified) == plan.verifications and set(verified.values()) == {1}
    resolved = {
        e["overpayment_id"]: e["resolution"] for e in events if e["type"] == "overpayment_resolved"
    }
    resolved_count = sum(1 for e in events if e["type"] == "overpayment_resolved")
    assert resolved == plan.resolutions and resolved_count == len(plan.resolutions)
    refusals = sum(1 for sent in plan.commands if sent.status == "refused")
    assert refusals, "no refusal was planned: the test proved less than it says"
    assert sum(1 for e in events if e["type"] == "command_refused") == refusals
    assert Counter(e["type"] for e in events)["credit_applied"] == 0

    # The books: every account replayed from the store equals the model.
    for account_id, books in plan.books.items():
        account = store.repository.get(account_uuid(account_id))
        assert isinstance(account, Account)
        stored = {
            str(name): account.balance(LedgerAccount(name)).amount_minor
            for name in account.balances
        }
        assert {k: v for k, v in stored.items() if v} == {k: v for k, v in books.items() if v}, (
            account_id
        )
