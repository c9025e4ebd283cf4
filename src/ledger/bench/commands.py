"""The commands phase: staff commands and scheduler firings through the account worker.

The account worker (the real consumer over the ingest and command services, sharing one account
cache) runs in this process, in a thread, on a scratch database and a facts topic and a commands
topic of the run's own (co-partitioned). Its clock is a `FixedClock` the phase moves, so that
escrows come due without waiting 90 days. Three measures, in order:

- **round trip**: while facts arrive at 1,000/s (invoices and the payments that settle them, with
  some paid invoices voided and some payments returned: the new inbound types), verify commands
  are sent one at a time; each is timed from its publish to its outcome row being readable by
  another connection (p50/p99; no CLI process start is counted);
- **facts/s**: facts (invoices and payments), published in bursts, each timed to applied;
- **firings/s**: as many escrows as facts, verified and resolved beforehand, come due (the clock
  moves past their expiry); the scheduler's `schedule.fire` commands for them are published in
  bursts, each timed until applied. Bursts of facts and of firings take turns (ROUNDS of each, a
  quarter of the lines apiece), so a machine whose speed drifts during the phase slows both
  alike. `ratio` is firings/s over facts/s: the same worker, the same run.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import orjson
from kafka import KafkaProducer

from consumers.ingest import IngestConsumer
from ledger.bench.latency import summary
from ledger.bench.scratch import Scratch
from ledger.bench.workload import InboundLine, LineWriter, account_name
from ledger.clock import FixedClock
from ledger.commands import CommandService
from ledger.gc_tuning import tuned_gc
from ledger.ingest import IngestService
from ledger.kafka.clients import ResilientProducer, make_producer
from ledger.persistence.database import Database
from ledger.persistence.event_store import open_event_store
from ledger.persistence.outcomes import OUTCOMES_TABLE, CommandOutcome, read_outcome
from ledger.persistence.urls import parse_database_url
from ledger.policy_file import load_policy
from ledger.scheduler import firing
from ledger.workers import ingest_consumer
from projections.schedule_queries import DueItem

RATE_PER_S = 1_000
"""The facts' pace while round trips are measured."""
ROUND_TRIPS_MIN = 20
ROUND_TRIPS_MAX = 1_000
FIRINGS_MIN = 50
FIRINGS_MAX = 100_000
OVERPAYMENTS_PER_ACCOUNT_MAX = 50
"""Escrows (and verified overpayments) per account in the setup: more accounts beyond that."""
PACED_ACCOUNTS = 50
OVERPAID_MINOR = 1_000
"""Each setup overpayment: above the small-credit threshold, verified by accounting alone."""
PACED_MINOR = 10_000
VOID_EVERY = 10
"""Every tenth paced invoice is voided after it is paid (an overpayment, detected)."""
RETURN_EVERY = 7
"""Every seventh paced payment comes back (`payment.returned`)."""
OUTCOME_POLL_S = 0.002
"""How often the round trip looks for the outcome row (as the latency phase polls its reader)."""
SETTLE_TIMEOUT_S = 300.0
"""Longest wait for the worker to take its partitions, apply the setup, or a burst."""
STOP_TIMEOUT_S = 30.0
SEND_TIMEOUT_S = 30.0
"""Longest wait for the broker to acknowledge one of the phase's messages."""
ROUNDS = 4
"""Bursts of facts and of firings, taken in turn: each is a quarter of its kind's lines."""
EXPIRED_BY = timedelta(days=1)
"""How far past the escrow period the clock moves before the firings."""
ACTOR_ROLES = {"verify": "accounting", "resolve": "manager"}
"""Who gives the setup's commands (the default policy lets them)."""

Progress = Callable[[str, int, int], None]
T = TypeVar("T")


def round_trips(events: int) -> int:
    """How many commands a run of `events` times one by one."""
    return max(ROUND_TRIPS_MIN, min(ROUND_TRIPS_MAX, events // 100))


def firings(events: int) -> int:
    """How many due items a run of `events` fires (and facts it applies to compare)."""
    return max(FIRINGS_MIN, min(FIRINGS_MAX, events // 4))


class _Commands:
    """Builds staff commands: ids, actor, issue time."""

    def __init__(self, clock: FixedClock) -> None:
        self.clock = clock

    def command(self, account_id: str, kind: str, role: str, **fields: object) -> InboundLine:
        body = {
            "command_id": str(uuid.uuid4()),
            "type": kind,
            "account_id": account_id,
            "actor": {"id": f"bench-{role}", "role": role},
            "issued_at": self.clock.now().isoformat(),
            **fields,
        }
        return InboundLine(account_id.encode(), orjson.dumps(body))

    def verify(self, overpayment_id: str) -> InboundLine:
        account_id = overpayment_id.rsplit(":", 2)[0]
        return self.command(
            account_id,
            "overpayment.verify",
            ACTOR_ROLES["verify"],
            overpayment_id=overpayment_id,
            department="accounting",
        )

    def escrow(self, overpayment_id: str) -> InboundLine:
        account_id = overpayment_id.rsplit(":", 2)[0]
        return self.command(
            account_id,
            "overpayment.resolve",
            ACTOR_ROLES["resolve"],
            overpayment_id=overpayment_id,
            resolution="escrow",
        )


def _overpaid(writer: LineWriter, prefix: str, count: int) -> tuple[list[InboundLine], list[str]]:
    """Openings and payments that overpay: `count` overpayments and their ids.

    Each payment on an account that owes nothing is all excess: the payment is the account's
    next version and its detection the one after (`<account>:op:<version>`).
    """
    accounts = max(1, -(-count // OVERPAYMENTS_PER_ACCOUNT_MAX))
    names = [account_name(prefix, index) for index in range(accounts)]
    lines = [writer.opening(name) for name in names]
    version = dict.fromkeys(names, 1)
    ids: list[str] = []
    for index in range(count):
        name = names[index % accounts]
        lines.append(writer.payment(name, f"{prefix}-p{index}", OVERPAID_MINOR))
        version[name] += 2
        ids.append(f"{name}:op:{version[name]}")
    return lines, ids


def _paced_facts(writer: LineWriter, names: list[str]) -> Iterator[InboundLine]:
    """Endless facts over the paced accounts: invoice, its payment, now and then a void of the
    paid invoice or a returned payment."""
    for cycle in itertools.count():
        name = names[cycle % len(names)]
        invoice_id, payment_id = f"{name}-i{cycle}", f"{name}-p{cycle}"
        yield writer.invoice(name, invoice_id, PACED_MINOR)
        yield writer.payment(name, payment_id, PACED_MINOR, invoice_id)
        if cycle % VOID_EVERY == VOID_EVERY - 1:
            yield writer.line(name, "invoice.voided", invoice_id=invoice_id)
        elif cycle % RETURN_EVERY == RETURN_EVERY - 1:
            yield writer.line(
                name,
                "payment.returned",
                payment_id=payment_id,
                amount={"value": PACED_MINOR, "currency": "USD"},
                reason="ACH return R01",
            )


class _Pacer:
    """A thread sending facts at a steady rate until stopped."""

    def __init__(self, producer: KafkaProducer, topic: str, lines: Iterator[InboundLine]) -> None:
        self.producer = producer
        self.topic = topic
        self.lines = lines
        self.sent = 0
        self.kinds: dict[str, int] = {}
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.futures: list[Any] = []
        self.thread = threading.Thread(target=self._run, name="bench-commands-pacer", daemon=True)

    def _run(self) -> None:
        try:
            started = time.monotonic()
            for line in self.lines:
                if self.stop.is_set():
                    return
                delay = started + self.sent / RATE_PER_S - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                self.futures.append(self.producer.send(self.topic, key=line.key, value=line.value))
                kind = str(orjson.loads(line.value)["type"])
                self.kinds[kind] = self.kinds.get(kind, 0) + 1
                self.sent += 1
        except BaseException as error:  # reported by the main thread
            self.error = error

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(timeout=STOP_TIMEOUT_S)
        if self.error is not None:
            raise self.error
        self.producer.flush()
        for future in self.futures:  # a fact lost on the way would read as a stuck worker
            future.get(timeout=SEND_TIMEOUT_S)


def _send_all(producer: KafkaProducer, topic: str, lines: list[InboundLine]) -> None:
    """Send every line and wait for each acknowledgement (a failed send raises, named)."""
    futures = [producer.send(topic, key=line.key, value=line.value) for line in lines]
    producer.flush()
    for future in futures:
        future.get(timeout=SEND_TIMEOUT_S)


class _Worker:
    """The account worker, in a thread of this process: started, waited on, its errors raised."""

    def __init__(self, consumer: IngestConsumer) -> None:
        self.consumer = consumer
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, name="bench-account-worker", daemon=True)

    def _run(self) -> None:
        try:
            self.consumer.run()
        except BaseException as error:  # raised by the main thread
            self.errors.append(error)

    def handled(self) -> int:
        """Messages applied, found duplicate or dead-lettered so far."""
        consumer = self.consumer
        return int(consumer.applied + consumer.duplicates + consumer.dead_lettered)

    def check(self) -> None:
        """Raise the worker's error, if it stopped on one."""
        if self.errors:
            raise self.errors[0]

    def poll(self, probe: Callable[[], T | None], what: str) -> T:
        """What `probe` finds first (it is asked every OUTCOME_POLL_S); the worker's error if it
        stops, TimeoutError naming `what` and the worker's progress after SETTLE_TIMEOUT_S."""
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while True:
            found = probe()
            if found is not None:
                return found
            self.check()
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"commands: {what} not reached within {SETTLE_TIMEOUT_S:.0f} s; the worker"
                    f" had applied {self.consumer.applied},"
                    f" dead-lettered {self.consumer.dead_lettered}"
                )
            time.sleep(OUTCOME_POLL_S)

    def wait(self, condition: Callable[[], bool], what: str) -> None:
        """Until `condition` holds (see `poll`)."""
        self.poll(lambda: True if condition() else None, what)

    def outcome(self, reader: Database, account_id: str, command_id: str) -> CommandOutcome:
        """The command's outcome, as soon as another connection can read it."""

        def recorded() -> CommandOutcome | None:
            with reader.read() as cursor:
                return read_outcome(cursor, account_id, command_id)

        return self.poll(recorded, f"an outcome for {command_id} (account {account_id})")


def measure_commands(scratch: Scratch, events: int, progress: Progress) -> dict[str, Any]:
    """Round trips of staff commands under 1,000 facts/s, and firings/s against facts/s."""
    trips, items = round_trips(events), firings(events)
    facts_topic, commands_topic = scratch.co_partitioned_topics("commands")
    target = parse_database_url(scratch.database_url("commands"))
    open_event_store(target, create_table=True).close()
    clock = FixedClock(datetime.now(UTC).replace(microsecond=0))
    writer = LineWriter(f"{scratch.run_id}C")
    commands = _Commands(clock)
    verify_lines, verify_ids = _overpaid(writer, f"{scratch.run_id}V", trips)
    escrow_lines, escrow_ids = _overpaid(writer, f"{scratch.run_id}E", items)
    paced_names = [account_name(f"{scratch.run_id}F", n) for n in range(PACED_ACCOUNTS)]
    setup = [*verify_lines, *escrow_lines, *(writer.opening(name) for name in paced_names)]
    escrow_commands = [commands.verify(op) for op in escrow_ids]
    escrow_commands += [commands.escrow(op) for op in escrow_ids]

    store = open_event_store(target)
    reader = Database(target)
    stop = threading.Event()
    dead_letters = ResilientProducer(scratch.bootstrap, stop=stop)
    service = IngestService(store, policy=load_policy(scratch.settings.policy), clock=clock)
    worker = _Worker(
        ingest_consumer(
            bootstrap=scratch.bootstrap,
            services={facts_topic: service, commands_topic: CommandService(service)},
            dead_letters=dead_letters,
            group_id=None,
            stop=stop,
        )
    )
    producer = make_producer(scratch.bootstrap, client_id="ledger-bench-commands")
    # The worker process tunes its GC at start; here it shares the bench's heap (the whole
    # workload): without the same settings it pays full collections a worker never sees.
    with tuned_gc():
        try:
            worker.thread.start()
            _send_all(producer, facts_topic, setup)
            worker.wait(lambda: worker.handled() >= len(setup), "the setup facts applied")
            _send_all(producer, commands_topic, escrow_commands)
            done = len(setup) + len(escrow_commands)
            worker.wait(lambda: worker.handled() >= done, "the escrows resolved")

            # Round trips, one command at a time, while facts arrive at 1,000/s.
            pacer = _Pacer(producer, facts_topic, _paced_facts(writer, paced_names))
            pacer.thread.start()
            try:
                latencies_ms = _round_trips(
                    worker, producer, reader, commands_topic, commands, verify_ids, progress
                )
            finally:
                pacer.finish()
            done += trips + pacer.sent
            worker.wait(lambda: worker.handled() >= done, "the paced facts applied")

            # The same worker: facts, and as many firings of due escrows, in alternate bursts.
            clock.advance(load_policy(scratch.settings.policy).escrow.period + EXPIRED_BY)
            facts = list(itertools.islice(_plain_facts(writer, paced_names), items))
            facts_s, fire_s = _alternate_bursts(
                worker,
                producer,
                (facts_topic, facts, "a burst of facts"),
                (commands_topic, _firings(escrow_ids, clock), "a burst of firings"),
            )
            fired = _accepted_firings(reader)
            if fired != items:
                raise RuntimeError(f"commands: {fired} of {items} firings accepted")
        finally:
            stop.set()
            worker.thread.join(timeout=STOP_TIMEOUT_S)
            producer.close(timeout=1)
            dead_letters.close()
            reader.close()
            store.close()
    worker.check()
    facts_per_s = items / facts_s
    fire_per_s = items / fire_s
    round_trip = summary(latencies_ms)
    return {
        "round_trip_ms": {
            "p50": round_trip["p50_ms"],
            "p99": round_trip["p99_ms"],
            "max": round_trip["max_ms"],
        },
        "round_trips": len(latencies_ms),
        "rate_per_s": RATE_PER_S,
        "paced_mix": pacer.kinds,
        "firings": items,
        "rounds": ROUNDS,
        "fire_per_s": round(fire_per_s, 1),
        "facts_per_s": round(facts_per_s, 1),
        "ratio": round(fire_per_s / facts_per_s, 3),
        "conflicts": worker.consumer.conflicts,
        "rewinds": worker.consumer.rewinds,
    }


def _round_trips(
    worker: _Worker,
    producer: KafkaProducer,
    reader: Database,
    topic: str,
    commands: _Commands,
    overpayment_ids: list[str],
    progress: Progress,
) -> list[float]:
    """Verify each overpayment, one command at a time: ms from publish to outcome readable."""
    latencies_ms: list[float] = []
    progress("commands", 0, len(overpayment_ids))
    for index, overpayment_id in enumerate(overpayment_ids):
        line = commands.verify(overpayment_id)
        command_id = str(orjson.loads(line.value)["command_id"])
        sent = time.monotonic()
        # Acknowledged or raised: a lost command would read as a stuck worker.
        producer.send(topic, key=line.key, value=line.value).get(timeout=SEND_TIMEOUT_S)
        outcome = worker.outcome(reader, line.key.decode(), command_id)
        latencies_ms.append((time.monotonic() - sent) * 1000)
        if outcome.status != "accepted":
            raise RuntimeError(f"commands: a bench verify was {outcome.status}")
        progress("commands", index + 1, len(overpayment_ids))
    return latencies_ms


def _applied_in(
    worker: _Worker, producer: KafkaProducer, topic: str, lines: list[InboundLine], what: str
) -> float:
    """Seconds from sending `lines` at once to the worker having handled them all."""
    before = worker.handled()
    started = time.monotonic()
    _send_all(producer, topic, lines)
    worker.wait(lambda: worker.handled() >= before + len(lines), f"{what} applied")
    return time.monotonic() - started


def _alternate_bursts(
    worker: _Worker,
    producer: KafkaProducer,
    *kinds: tuple[str, list[InboundLine], str],
) -> list[float]:
    """Seconds each kind of lines took to apply in all, sent in ROUNDS bursts taken in turn
    (facts, firings, facts, ...), so that a change in the machine's speed during the phase falls
    on both alike."""
    seconds = [0.0] * len(kinds)
    for round_index in range(ROUNDS):
        for kind_index, (topic, lines, what) in enumerate(kinds):
            start = len(lines) * round_index // ROUNDS
            end = len(lines) * (round_index + 1) // ROUNDS
            if end > start:
                seconds[kind_index] += _applied_in(worker, producer, topic, lines[start:end], what)
    return seconds


def _plain_facts(writer: LineWriter, names: list[str]) -> Iterator[InboundLine]:
    """Invoices and the payments that settle them, over the paced accounts (the baseline)."""
    for cycle in itertools.count():
        name = names[cycle % len(names)]
        invoice_id = f"{name}-b{cycle}"
        yield writer.invoice(name, invoice_id, PACED_MINOR)
        yield writer.payment(name, f"{name}-q{cycle}", PACED_MINOR, invoice_id)


def _firings(escrow_ids: list[str], clock: FixedClock) -> list[InboundLine]:
    """The scheduler's `schedule.fire` commands for the escrows now past expiry."""
    now = clock.now()
    lines = []
    for overpayment_id in escrow_ids:
        account_id = overpayment_id.rsplit(":", 2)[0]
        item = DueItem("escrow_expiry", overpayment_id, account_id, now.isoformat(), 0, None)
        lines.append(InboundLine(account_id.encode(), orjson.dumps(firing(item, now))))
    return lines


def _accepted_firings(reader: Database) -> int:
    with reader.read() as cursor:
        cursor.execute(
            f"SELECT COUNT(*) FROM {OUTCOMES_TABLE}"
            " WHERE command_type = 'schedule.fire' AND status = 'accepted'"
        )
        return int(cursor.fetchone()[0])
