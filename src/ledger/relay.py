"""The relay worker: holds one share of `ledger.events` by lease and relays it, or stands by.

`LEDGER_RELAY_WORKERS=N` splits `ledger.events` into N shares (`ledger.kafka.partitioning`).
A relay process takes the first free share, trying its own (`LEDGER_RELAY_SHARE`) first, and
holds it by a lease (`ledger.persistence.relay_leases`) for as long as it relays; with every
share held it is a standby and tries again every `limits.relay_standby_retry_s`. Holding a
share, it computes the share from the partition count in its producer's metadata (refreshed
every `limits.topic_check_interval_s`), moves the recorded relay configuration to its own if it
differs (`ledger.persistence.relay_positions`), and tails the event store's log. A changed
partition count ends the tail after the batch in hand and starts it again under the new count.
"""

from __future__ import annotations

import threading
import time

import structlog
from kafka import KafkaProducer
from kafka.errors import KafkaError

from ledger import limits
from ledger.kafka.broker import resolve_bootstrap
from ledger.kafka.clients import PartitionsChanged, ResilientProducer, make_producer
from ledger.kafka.partitioning import Share
from ledger.kafka.topics import LEDGER_EVENTS
from ledger.outbox import OutboxRelay
from ledger.persistence.database import DatabaseUnavailable
from ledger.persistence.relay_leases import LeaseLost, RelayLeases, open_relay_leases
from ledger.persistence.relay_positions import (
    RelayConfiguration,
    enter_configuration,
    read_configuration,
)
from ledger.settings import Settings
from ledger.storage import Storage
from ledger.tailing import run_tail

log = structlog.get_logger(__name__)


def make_relay_producer(bootstrap: str) -> KafkaProducer:
    """The relay's producer: its metadata, whence the shares, is refreshed at every topic check."""
    return make_producer(
        bootstrap,
        client_id="ledger-relay",
        metadata_max_age_ms=int(limits.topic_check_interval_s * 1000),
    )


class _Backoff:
    """Waits that double from `backoff_initial_s` up to `backoff_max_s`, cut short by a stop."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self.delay_s = limits.backoff_initial_s

    def wait(self) -> None:
        self.stop.wait(self.delay_s)
        self.delay_s = min(self.delay_s * 2, limits.backoff_max_s)

    def reset(self) -> None:
        self.delay_s = limits.backoff_initial_s


class _ConfigurationWatch:
    """Asked between batches: has the partition count changed? Also warns of mixed settings."""

    def __init__(self, worker: RelayWorker, configuration: RelayConfiguration) -> None:
        self.worker = worker
        self.configuration = configuration
        self.next_check_at = time.monotonic() + limits.topic_check_interval_s
        self.partitions_now = configuration.partitions
        self.warned_about: RelayConfiguration | None = None

    def changed(self) -> bool:
        """True once the producer's metadata gives `ledger.events` another partition count."""
        now = time.monotonic()
        if now < self.next_check_at:
            return False
        self.next_check_at = now + limits.topic_check_interval_s
        try:
            self.partitions_now = self.worker.producer.partition_count(LEDGER_EVENTS)
        except KafkaError as error:
            log.debug("checking the partition count failed", topic=LEDGER_EVENTS, error=repr(error))
            return False
        if self.partitions_now != self.configuration.partitions:
            return True
        self._warn_about_other_settings()
        return False

    def _warn_about_other_settings(self) -> None:
        try:
            with self.worker.storage.database.read() as cursor:
                recorded = read_configuration(cursor)
        except DatabaseUnavailable:
            return
        if recorded is None or recorded.shares == self.configuration.shares:
            return
        if recorded != self.warned_about:
            log.warning(
                "relays with another LEDGER_RELAY_WORKERS use this database: events go out"
                " more than once until every relay has the same setting",
                shares=self.configuration.shares,
                recorded_shares=recorded.shares,
            )
            self.warned_about = recorded


class RelayWorker:
    """One relay process: takes a free share and relays it, standing by while none is free."""

    def __init__(
        self,
        storage: Storage,
        producer: ResilientProducer,
        leases: RelayLeases,
        *,
        shares: int,
        first_share: int,
        stop: threading.Event,
    ) -> None:
        self.storage = storage
        self.producer = producer
        self.leases = leases
        self.shares = shares
        self.first_share = first_share % shares
        self.stop = stop
        self.share: int | None = None
        """The share held now; None while standing by."""
        self.configuration: RelayConfiguration | None = None
        """The configuration the share is relayed under now; None while standing by."""

    def run(self) -> None:
        """Hold a share and relay it until stopped; stand by whenever none is free."""
        backoff = _Backoff(self.stop)
        standing_by = False
        while not self.stop.is_set():
            try:
                index = self._acquire()
            except DatabaseUnavailable as error:
                log.warning("database unavailable, retrying", worker="relay", error=str(error))
                backoff.wait()
                continue
            backoff.reset()
            if index is None:
                if not standing_by:
                    log.info(
                        "relay standby: every share is held by another relay",
                        shares=self.shares,
                        retry_s=limits.relay_standby_retry_s,
                    )
                    standing_by = True
                self.stop.wait(limits.relay_standby_retry_s)
                continue
            standing_by = False
            self.share = index
            log.info("relay share acquired", share=index, shares=self.shares)
            try:
                self._relay_share(index)
            except LeaseLost as lost:
                log.warning("relay lease lost: standing by", share=index, reason=str(lost))
            finally:
                self.share = None
                self.configuration = None
                self.leases.release()

    def _acquire(self) -> int | None:
        """The share taken: this relay's own if free, else the next free one; None if none."""
        for step in range(self.shares):
            index = (self.first_share + step) % self.shares
            if self.leases.try_acquire(index, self.shares):
                return index
        return None

    def _relay_share(self, index: int) -> None:
        """Relay share `index` until stopped; recompute it whenever the partition count changes."""
        while not self.stop.is_set():
            partitions = self._partition_count()
            if partitions is None:
                return
            configuration = RelayConfiguration(self.shares, partitions)
            if not self._enter(configuration):
                return
            self.configuration = configuration
            share = Share(index, self.shares, partitions)
            relay = OutboxRelay(
                self.storage.database,
                self.producer,
                share=share,
                position_name=configuration.position_name(index),
                lease_held=self.leases.held,
            )
            log.info(
                "relaying share",
                share=index,
                shares=self.shares,
                partitions=partitions,
                owned_partitions=list(share.owned_partitions()),
                position_name=relay.name,
            )
            if not share.owned_partitions():
                log.warning(
                    "more relay shares than partitions: this share has none to publish",
                    share=index,
                    shares=self.shares,
                    partitions=partitions,
                )
            watch = _ConfigurationWatch(self, configuration)
            try:
                run_tail(self.storage.store, relay, self.stop, until=watch.changed)
            except PartitionsChanged as changed:
                log.warning("partitions changed under a batch: recomputing", error=str(changed))
                continue
            if watch.partitions_now != partitions:
                log.warning(
                    "partition count changed: recomputing the shares",
                    topic=LEDGER_EVENTS,
                    partitions=watch.partitions_now,
                    previous_partitions=partitions,
                )

    def _partition_count(self) -> int | None:
        """`ledger.events`'s partition count, retried through broker outages; None if stopped."""
        backoff = _Backoff(self.stop)
        while not self.stop.is_set():
            try:
                return self.producer.partition_count(LEDGER_EVENTS)
            except KafkaError as error:
                log.warning(
                    "partition count unknown, retrying", topic=LEDGER_EVENTS, error=repr(error)
                )
                backoff.wait()
        return None

    def _enter(self, configuration: RelayConfiguration) -> bool:
        """Record `configuration` (moving positions if it changed); False if stopped first."""
        backoff = _Backoff(self.stop)
        while not self.stop.is_set():
            try:
                transition = enter_configuration(self.storage.database, configuration)
            except DatabaseUnavailable as error:
                log.warning("database unavailable, retrying", worker="relay", error=str(error))
                backoff.wait()
                continue
            if transition is not None and transition.previous is not None:
                log.warning(
                    "relay configuration changed: every share starts from the lowest old"
                    " position (events after it may go out twice)",
                    shares=configuration.shares,
                    partitions=configuration.partitions,
                    previous_shares=transition.previous.shares,
                    previous_partitions=transition.previous.partitions,
                    start=transition.start,
                )
            elif transition is not None:
                log.info(
                    "relay configuration recorded",
                    shares=configuration.shares,
                    partitions=configuration.partitions,
                    start=transition.start,
                )
            return True
        return False


def run_relay(storage: Storage, settings: Settings, stop: threading.Event) -> None:
    """The `relay` worker: one relay process until `stop` is set."""
    bootstrap = resolve_bootstrap(settings.kafka_bootstrap, settings.broker_port)
    producer = ResilientProducer(bootstrap, stop=stop, factory=make_relay_producer)
    leases = open_relay_leases(storage.target)
    worker = RelayWorker(
        storage,
        producer,
        leases,
        shares=settings.relay_workers,
        first_share=settings.relay_share or 0,
        stop=stop,
    )
    log.info("relay started", bootstrap=bootstrap, shares=settings.relay_workers)
    try:
        worker.run()
    finally:
        leases.close()
        producer.close()
