"""The scheduler: publishes a `schedule.fire` command for every item that came due.

It reads the schedule read model (`projections.schedule`) for items due at the clock's now and
not done (a dispute's installment once the policy's grace has passed too), oldest first, and
publishes each on `ledger.commands`, keyed by its account id, with
the command id derived from the item (`firing_command_id`). It never writes an account: the
account worker applies the firing, and the event it causes marks the item done in the read
model. So an item still not done `limits.scheduler_refire_interval_s` after its firing went out
is published again (a firing lost with a broker, or a read model behind): the same firing has
the same command id, so the account applies it once. Publishing is bounded by
`limits.scheduler_fires_per_s_max`; all time comes from the injected clock.
"""

from __future__ import annotations

import sqlite3
import threading
from collections import OrderedDict
from datetime import datetime, timedelta

import orjson
import structlog

from ledger import limits
from ledger.clock import Clock
from ledger.domain.overpayments import SCHEDULER
from ledger.domain.policy import Policy
from ledger.generations import ProjectionMissing
from ledger.kafka.clients import ProducerFailed, ResilientProducer
from ledger.kafka.topics import LEDGER_COMMANDS
from ledger.persistence.database import Database, DatabaseUnavailable, is_psycopg_error
from ledger.schemas.commands import firing_command_id
from projections.schedule_queries import DormancyPeriods, DueItem, due_items

log = structlog.get_logger(__name__)

REFIRE_INTERVAL = timedelta(seconds=limits.scheduler_refire_interval_s)
FIRINGS_PER_PASS_MAX = max(1, int(limits.scheduler_fires_per_s_max * limits.scheduler_tick_s))
"""What one pass may publish, so that one pass per tick keeps to the rate limit."""


def firing(item: DueItem, now: datetime) -> dict[str, object]:
    """The `schedule.fire` command for a due item, as published on `ledger.commands`."""
    return {
        "command_id": firing_command_id(item.kind, item.item_id, item.due_at, item.attempt),
        "type": "schedule.fire",
        "account_id": item.account_id,
        "actor": {"id": SCHEDULER, "role": SCHEDULER},
        "issued_at": now.isoformat(),
        "item": item.kind,
        "item_id": item.item_id,
        "due_at": item.due_at,
        "attempt": item.attempt,
    }


def dormancy_periods(policy: Policy) -> DormancyPeriods:
    """The policy's dormancy period per jurisdiction (and for any other)."""
    rules = policy.escheatment
    return DormancyPeriods(dict(rules.dormancy), rules.default_dormancy)


def _outage(error: Exception) -> bool:
    """Whether a failed pass met an outage (retried after a back-off) rather than a bug."""
    if isinstance(error, DatabaseUnavailable | ProjectionMissing | ProducerFailed):
        return True
    if isinstance(error, sqlite3.OperationalError):
        return True
    return is_psycopg_error(error, "OperationalError")


class Scheduler:
    """Fires due items as commands; remembers what it published to re-fire only when late."""

    def __init__(
        self,
        database: Database,
        producer: ResilientProducer,
        *,
        policy: Policy,
        clock: Clock,
        topic: str = LEDGER_COMMANDS,
        firings_per_pass_max: int = FIRINGS_PER_PASS_MAX,
    ) -> None:
        self.database = database
        self.producer = producer
        self.clock = clock
        self.topic = topic
        self.firings_per_pass_max = firings_per_pass_max
        self.periods = dormancy_periods(policy)
        self.installment_grace = policy.disputes.installment_grace
        self.published: OrderedDict[str, datetime] = OrderedDict()
        """Command id -> when it was last published (oldest first)."""

    def run_pass(self) -> int:
        """Publish the due items not published within the re-fire interval; how many went out."""
        now = self.clock.now()
        while self.published:
            command_id, published_at = next(iter(self.published.items()))
            if now - published_at < REFIRE_INTERVAL:
                break
            del self.published[command_id]
        # Items published recently may head the list: ask for enough to fill a pass besides them.
        items = due_items(
            self.database,
            now,
            self.periods,
            limit=self.firings_per_pass_max + len(self.published),
            installment_grace=self.installment_grace,
        )
        outgoing: list[tuple[str, DueItem]] = []
        waiting = 0
        for item in items:
            command_id = firing_command_id(item.kind, item.item_id, item.due_at, item.attempt)
            if command_id in self.published:
                waiting += 1
                continue
            if len(outgoing) == self.firings_per_pass_max:
                break
            outgoing.append((command_id, item))
            self.producer.send(
                self.topic,
                key=item.account_id.encode(),
                value=orjson.dumps(firing(item, now)),
                headers=[],
            )
        if not outgoing:
            return 0
        self.producer.flush()
        for command_id, _item in outgoing:
            self.published[command_id] = now
            self.published.move_to_end(command_id)
        while len(self.published) > limits.scheduler_fired_remembered_max:
            self.published.popitem(last=False)
        kinds: dict[str, int] = {}
        for _command_id, item in outgoing:
            kinds[item.kind] = kinds.get(item.kind, 0) + 1
        log.info(
            "scheduler fired",
            topic=self.topic,
            firings=len(outgoing),
            kinds=kinds,
            oldest_due_at=outgoing[0][1].due_at,
            waiting_for_read_model=waiting,
            account_ids=sorted({item.account_id for _, item in outgoing})[:10],
        )
        return len(outgoing)

    def run(self, stop: threading.Event) -> None:
        """Run a pass every tick until `stop` is set; outages are retried with back-off."""
        backoff_s = limits.backoff_initial_s
        while not stop.is_set():
            try:
                self.run_pass()
            except Exception as error:
                if not _outage(error):
                    raise
                log.warning(
                    "scheduler pass failed, retrying", error=str(error), backoff_s=backoff_s
                )
                stop.wait(backoff_s)
                backoff_s = min(backoff_s * 2, limits.backoff_max_s)
                continue
            backoff_s = limits.backoff_initial_s
            # One pass per tick, even after a full one: that is what bounds the rate.
            stop.wait(limits.scheduler_tick_s)


def run_scheduler(
    database: Database, bootstrap: str, policy: Policy, clock: Clock, stop: threading.Event
) -> None:
    """The scheduler worker: fires due items until stopped."""
    producer = ResilientProducer(bootstrap, stop=stop)
    try:
        log.info("scheduler started", bootstrap=bootstrap, topic=LEDGER_COMMANDS)
        Scheduler(database, producer, policy=policy, clock=clock).run(stop)
    finally:
        producer.close()
