"""Shared by the fault tests: worker processes we kill at will, a known history, and its model."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from ledger.deploy_setup import prepare_deployment
from ledger.domain.event_names import event_name
from ledger.generations import live_state
from ledger.kafka.broker import set_parent_death_signal
from ledger.persistence.database import Database
from ledger.persistence.event_store import open_event_store
from ledger.persistence.mapper import decode_state
from ledger.persistence.relay_positions import relay_position
from ledger.persistence.urls import parse_database_url
from ledger.settings import Settings
from tests.books import invoice, line, opened, payment
from tests.waiting import wait_for

if TYPE_CHECKING:
    from consumers.ingest import IngestConsumer, PartitionState

WORKERS = ("ingest", "relay", "projections")
PARTITIONS = 4
CURRENCIES = ("USD", "EUR", "JPY")
STACK_DUMP_WAIT_S = 5.0
"""How long a stuck worker gets to write its stacks to its log before it is killed."""


def only_partition(consumer: IngestConsumer) -> PartitionState:
    """Where the one partition of a consumer of one single-partition topic stands."""
    (state,) = consumer.partitions.values()
    return state


def prepare(bootstrap: str, database_url: str) -> None:
    """Topics and schema, created once before any worker starts (as `Supervisor.start` does)."""
    prepare_deployment(bootstrap, Settings(database_url=database_url, partitions=PARTITIONS))


@dataclass
class _Worker:
    process: subprocess.Popen[bytes]
    killed: bool = False


@dataclass
class Workers:
    """The three worker processes, run directly (`python -m ledger.workers NAME`)."""

    bootstrap: str
    database_url: str
    log_dir: Path
    running: dict[str, _Worker] = field(default_factory=dict)
    unexpected_exits: list[str] = field(default_factory=list)
    kills: list[str] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.extra_env)
        env.update(
            LEDGER_KAFKA_BOOTSTRAP=self.bootstrap,
            LEDGER_DATABASE_URL=self.database_url,
            LEDGER_LOG_FORMAT="json",
            LEDGER_PARTITIONS=str(PARTITIONS),
        )
        return env

    def start(self, name: str) -> None:
        """Start one worker; call from the main thread (the parent-death signal is per thread).

        `relay-2`, `relay-3`, ... are more relays, trying shares 1, 2, ... first (as `ledger run`
        starts them).
        """
        worker, _, copy = name.partition("-")
        env = self.env()
        if worker == "relay":
            env["LEDGER_RELAY_SHARE"] = str(int(copy or 1) - 1)
        log_file = (self.log_dir / f"{name}.log").open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "ledger.workers", worker],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=set_parent_death_signal,
        )
        log_file.close()
        self.running[name] = _Worker(process)

    def start_all(self, names: Sequence[str] = WORKERS) -> None:
        """Start every worker."""
        for name in names:
            self.start(name)

    def kill(self, name: str) -> None:
        """SIGKILL one worker and reap it."""
        worker = self.running[name]
        worker.killed = True
        worker.process.send_signal(signal.SIGKILL)
        worker.process.wait(timeout=10)
        self.kills.append(name)

    def check(self) -> None:
        """Record and restart any worker that exited without being killed by us."""
        for name, worker in list(self.running.items()):
            code = worker.process.poll()
            if code is None or worker.killed:
                continue
            self.unexpected_exits.append(f"{name} exited {code}: {self.log_tail(name)}")
            self.start(name)

    def alive(self) -> list[str]:
        """Names of the workers still running."""
        return [name for name, w in self.running.items() if w.process.poll() is None]

    def log_tail(self, name: str, lines: int = 15) -> str:
        path = self.log_dir / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def dump_stacks(self, name: str) -> None:
        """Leave a stuck worker's stacks in its log (faulthandler, on SIGUSR1)."""
        log = self.log_dir / f"{name}.log"
        before = log.stat().st_size
        self.running[name].process.send_signal(signal.SIGUSR1)

        def dumped() -> bool:
            with log.open("rb") as text:
                text.seek(before)
                return b"most recent call first" in text.read()

        # Only a help in reading a failure already under way: never a failure of its own.
        with contextlib.suppress(AssertionError):
            wait_for(dumped, f"{name}'s stacks", timeout_s=STACK_DUMP_WAIT_S)

    def stop_all(self) -> dict[str, int | None]:
        """SIGTERM every worker, SIGKILL after a grace period; the exit codes."""
        codes: dict[str, int | None] = {}
        for worker in self.running.values():
            if worker.process.poll() is None:
                worker.process.terminate()
        for name, worker in self.running.items():
            try:
                codes[name] = worker.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.dump_stacks(name)
                worker.process.kill()
                worker.process.wait()
                codes[name] = None
        self.running.clear()
        return codes


def known_history(rng: random.Random, *, accounts: int, events: int) -> list[bytes]:
    """Openings, invoices, payments (often overpaying), duplicates and bad lines, in order."""
    currency = {f"ACC-{n}": rng.choice(CURRENCIES) for n in range(accounts)}
    late = set(rng.sample(sorted(currency), k=max(1, accounts // 10)))
    lines = [opened(f"open-{a}", a, currency=c) for a, c in currency.items() if a not in late]
    for n in range(events - len(lines)):
        account = f"ACC-{rng.randrange(accounts)}"
        money = currency[account]
        roll = rng.random()
        if account in late and rng.random() < 0.02:
            late.discard(account)
            lines.append(opened(f"open-{account}", account, currency=money))
        elif roll < 0.40:
            lines.append(invoice(f"inv-{n}", account, rng.randrange(1, 50_000), money))
        elif roll < 0.80:
            lines.append(payment(f"pay-{n}", account, rng.randrange(1, 80_000), money))
        elif roll < 0.90 and len(lines) > 1:
            lines.append(lines[rng.randrange(len(lines))])
        else:
            lines.append(bad_line(rng, n, account, money))
    lines.extend(opened(f"open-{account}", account, currency=currency[account]) for account in late)
    return lines


def bad_line(rng: random.Random, n: int, account: str, currency: str) -> bytes:
    """One line the ledger must dead-letter: each kind of refusal."""
    choice = rng.randrange(5)
    if choice == 0:
        return b"not json {" + str(n).encode()
    if choice == 1:
        return orjson.dumps({"type": "payment.received", "event_id": f"bad-{n}"})
    if choice == 2:
        return payment(f"ghost-{n}", f"GHOST-{n}", 100, currency)
    if choice == 3:
        other = next(c for c in CURRENCIES if c != currency)
        return payment(f"wrong-{n}", account, 100, other)
    return line(f"refund-{n}", "refund.failed", account, refund_id=f"r-{n}", reason="card closed")


@dataclass(frozen=True)
class StoredEvent:
    """One event of the store, as the checks need it."""

    notification_id: int
    account_id: str
    version: int
    type: str


def store_events(database_url: str) -> list[StoredEvent]:
    """Every event in the store, in log order."""
    store = open_event_store(parse_database_url(database_url))
    try:
        recorder = store.process_recorder
        events: list[StoredEvent] = []
        position = 0
        while True:
            page = recorder.select_notifications(
                start=position, limit=5000, inclusive_of_start=False
            )
            if not page:
                return events
            for notification in page:
                state = decode_state(notification.state)
                events.append(
                    StoredEvent(
                        notification.id,
                        state["account_id"],
                        notification.originator_version,
                        event_name(notification.topic),
                    )
                )
            position = page[-1].id
    finally:
        store.close()


def max_notification_id(database_url: str) -> int:
    """The event store's last notification id (0 when empty)."""
    store = open_event_store(parse_database_url(database_url))
    try:
        return store.process_recorder.max_notification_id() or 0
    finally:
        store.close()


def sleep_checking(workers: Workers, seconds: float) -> None:
    """Sleep, restarting (and recording) any worker that exits meanwhile."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        workers.check()
        time.sleep(min(left, 0.1))


def positions(database_url: str) -> dict[str, int]:
    """Where the relays (the share furthest behind) and the balances projection stand."""
    database = Database(parse_database_url(database_url))
    try:
        with database.read() as cursor:
            return {
                "relay": relay_position(cursor),
                "projection": live_state(cursor, "balances").position,
            }
    finally:
        database.close()


@dataclass
class ConsumerRun:
    """What one in-process ingest consumer run left: the consumer, its errors and its logs."""

    consumer: Any
    errors: list[BaseException]
    logs: list[dict[str, Any]]


def run_consumer(
    bootstrap: str,
    service: Any,
    *,
    topic: str,
    dlq: str,
    until: Any,
    what: str,
    timeout_s: float = 60.0,
    also: Sequence[str] = (),
) -> ConsumerRun:
    """Run the real ingest consumer over `service` in a thread until `until(consumer)` or an
    error, then stop it; fails if the consumer ignores the stop request.

    With `also`, the consumer serves those topics too, with the same service, as the account
    worker does (dead letters then go to `<topic>.dlq`, `dlq` included).
    """
    import threading

    from structlog.testing import capture_logs

    from consumers.ingest import IngestConsumer
    from ledger.kafka.clients import ResilientProducer

    stop = threading.Event()
    dead_letters = ResilientProducer(bootstrap, stop=stop)
    if also:
        assert dlq == f"{topic}.dlq", "a consumer of several topics sends to <topic>.dlq"
        consumer = IngestConsumer(
            bootstrap=bootstrap,
            services={name: service for name in (topic, *also)},
            dead_letters=dead_letters,
            group_id=None,
            stop=stop,
        )
    else:
        consumer = IngestConsumer(
            bootstrap=bootstrap,
            service=service,
            dead_letters=dead_letters,
            group_id=None,
            stop=stop,
            topic=topic,
            dlq_topic=dlq,
        )
    errors: list[BaseException] = []

    def target() -> None:
        try:
            consumer.run()
        except BaseException as failure:
            errors.append(failure)

    thread = threading.Thread(target=target)
    with capture_logs() as logs:
        thread.start()
        try:
            wait_for(lambda: bool(errors) or until(consumer), what, timeout_s)
        finally:
            stop.set()
            thread.join(timeout=30)
            dead_letters.close()
    assert not thread.is_alive(), "the consumer ignored the stop request"
    return ConsumerRun(consumer, errors, logs)
