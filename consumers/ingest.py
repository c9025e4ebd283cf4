"""The account worker's consumer: its topics into the event store, exactly once.

The account worker consumes `payments.inbound` (facts) and `ledger.commands` (staff commands),
co-partitioned: both keyed by account id with the same partition count, and assigned by range, so
the worker that owns partition p of one owns partition p of the other and is the one writer of
those accounts. Each topic has its own service (`ledger.ingest.BatchService`) and dead-letter
topic; everything below is kept per (topic, partition). Partition counts that come to differ
while running pause both topics until they match again. A consumer of one topic (the benchmark,
most tests) is the same thing with one service.

Per (topic, partition) and poll: drop records at or below the stored position, let the topic's
service apply the rest, send and flush the batch's dead letters, then commit the events, the
idempotency keys and the Kafka position (offset + 1) in one database transaction. The stored
position is kept under `<topic>:<topic id>:<partition>`, so a recreated topic (new id) starts
from its beginning under a new name; a stored position beyond a partition's high watermark means
the same, and is read from the start too. Both are logged as warnings, never skipped silently.

A commit refused as a version conflict means another writer moved one of the batch's accounts
(a fact keyed so that it landed on another worker's partition, say): only that batch's accounts
are reloaded and only its partition is read again. Any other failed commit (an outage, bad data)
makes everything prepared since stale: every owned partition is read again from its position.

No message can stall a partition. A batch that fails for a reason that is not an outage
(`ledger.outages.is_outage`) is narrowed down: its halves are prepared and committed on their
own, recursively, until the one message that fails alone (twice) is found; that message is
dead-lettered as `unprocessable` with the error as its reason, its offset is committed past, and
the partition goes on. An outage still retries the whole batch with back-off. If even a commit
of no events fails, the fault is not one message's: the worker stops (IngestFailed).

kafka-python 3 calls the rebalance listener on its own IO thread, while `run()` works on the
caller's: one lock keeps them apart, and is never held while kafka-python is asked to do
network work that would call the listener (poll, close). A watchdog (`ledger.kafka.recovery`)
rebuilds a group consumer that stops delivering while its partitions lag (docs/broker-restart.md).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import structlog
from eventsourcing.persistence import IntegrityError, ProcessRecorder, Tracking
from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition
from kafka.errors import IllegalStateError, KafkaError

from consumers.dead_letters import DeadLetterSender
from ledger import limits
from ledger.ingest import BatchService, DeadLetter, InboundMessage, PreparedBatch
from ledger.kafka.clients import (
    ProducerFailed,
    ProducerStopped,
    ResilientProducer,
    close_consumer,
    make_consumer,
)
from ledger.kafka.recovery import StallWatchdog, StartOver, Wedged, check_position, safe_highwaters
from ledger.kafka.topics import (
    PAYMENTS_INBOUND,
    PartitionCountsDiffer,
    TopicWatcher,
    check_co_partitioned,
    dead_letter_topic,
    tracking_name,
)
from ledger.outages import is_outage
from ledger.schemas.inbound import parse_inbound

log = structlog.get_logger(__name__)


class IngestFailed(RuntimeError):
    """A batch could not be committed after every retry."""


@dataclass
class PartitionState:
    """Where one owned partition stands."""

    tracking_name: str
    position: int | None
    dead_lettered_through: int = -1
    """The highest offset whose dead letter was sent (and flushed)."""


@dataclass
class _InFlight:
    """The batch handed to the commit and not yet settled."""

    future: Future[None]
    batch: PreparedBatch
    tracking: Tracking
    partition: TopicPartition
    messages: list[InboundMessage] = field(default_factory=list)
    """What the batch was prepared from: narrowed down if its commit fails on bad data."""


def _unprocessable(message: InboundMessage, error: BaseException) -> DeadLetter:
    """The dead letter of a message that failed alone, naming it where it parses."""
    account_id = event_id = None
    try:
        fact = parse_inbound(message.value)
        account_id, event_id = fact.account_id, fact.event_id
    except Exception:  # only a best effort at naming it (InboundRejected and any other)
        pass
    reason = f"unprocessable: {type(error).__name__}: {error}"
    return DeadLetter(message, "unprocessable", reason, account_id, event_id)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """Runs on kafka-python's IO thread: takes the owner's lock, as `run()` does."""

    def __init__(self, owner: IngestConsumer) -> None:
        self.owner = owner

    def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        with self.owner.lock:
            self.owner.watchdog.rebalance_started(time.monotonic())
            self.owner.revoke(revoked)

    def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        with self.owner.lock:
            self.owner.watchdog.rebalance_finished()
            self.owner.assign(assigned)


class IngestConsumer:
    """Consumes its topics and hands each (topic, partition) batch to that topic's service.

    With a `group_id` it joins that consumer group, subscribed to every topic, and takes the
    partitions the group gives it; without one it assigns itself `partitions` (every partition
    of the first topic when None) of each topic. `services` maps each topic to its service; the
    one-topic form passes `service`, `topic` and `dlq_topic` instead.
    """

    def __init__(
        self,
        *,
        bootstrap: str,
        dead_letters: ResilientProducer,
        group_id: str | None,
        stop: threading.Event,
        services: Mapping[str, BatchService] | None = None,
        service: BatchService | None = None,
        topic: str = PAYMENTS_INBOUND,
        dlq_topic: str | None = None,
        partitions: Sequence[int] | None = None,
        pipelined: bool | None = None,
        on_assigned: Callable[[], None] | None = None,
        consumer_factory: Callable[[], KafkaConsumer] | None = None,
    ) -> None:
        if (services is None) == (service is None):
            raise ValueError("give either `services` (topic -> service) or one `service`")
        if services is None:
            assert service is not None  # for mypy: checked just above
            services = {topic: service}
            dead_letter_topics = {topic: dlq_topic or dead_letter_topic(topic)}
        else:
            if not services or dlq_topic is not None:
                raise ValueError("`services` needs at least one topic, and no `dlq_topic`")
            dead_letter_topics = {name: dead_letter_topic(name) for name in services}
        self.bootstrap = bootstrap
        self.services: dict[str, BatchService] = dict(services)
        self.topics: tuple[str, ...] = tuple(self.services)
        self.dead_letters = dead_letters
        self.dead_letter_senders = {
            name: DeadLetterSender(dead_letters, dlq) for name, dlq in dead_letter_topics.items()
        }
        self.group_id = group_id
        self.stop = stop
        self.static_partitions = None if partitions is None else sorted(partitions)
        self.on_assigned = on_assigned
        """Called after every assignment, once the partitions are positioned."""
        self.watcher = TopicWatcher(bootstrap)
        self.topic_ids: dict[str, str] = {}
        self.partitions: dict[TopicPartition, PartitionState] = {}
        self.consumer: KafkaConsumer | None = None
        self.paused_counts: dict[str, int] | None = None
        """The differing partition counts that paused consumption; None while they match."""
        self.applied = 0
        self.dead_lettered = 0
        self.duplicates = 0
        self.set_aside = 0
        """Messages dead-lettered as `unprocessable` after their batch was narrowed down."""
        self.conflicts = 0
        """Commits refused as already done or as a version conflict (none on the hot path)."""
        self.strays = 0
        """Version conflicts: another writer moved an account (a stray fact, or a second writer)."""
        self.rewinds = 0
        """Times partitions were read again from their stored positions after a failed commit."""
        # Commit in a writer thread while the next batch is prepared, where the database lets a
        # commit run without holding the GIL (see InboundKeyRecorder.commits_concurrently).
        self.pipelined = (
            all(s.store.key_recorder.commits_concurrently for s in self.services.values())
            if pipelined is None
            else pipelined
        )
        self._writer: ThreadPoolExecutor | None = None
        self._in_flight: _InFlight | None = None
        self._conflicts_in_a_row = 0
        self._consumer_factory = consumer_factory or self._default_consumer
        self.lock = threading.RLock()
        """Held by `run()` between polls and by the rebalance listener (another thread)."""
        self.watchdog = StallWatchdog(limits.consumer_stall_timeout_s)
        self.rebuilds = 0

    def _default_consumer(self) -> KafkaConsumer:
        return make_consumer(self.bootstrap, group_id=self.group_id, client_id="ledger-ingest")

    def run(self) -> None:
        """Consume until stopped; PartitionCountsDiffer if the topics are not co-partitioned."""
        with self.lock:
            try:
                counts = self._partition_counts()
                if counts is not None:
                    check_co_partitioned(counts)
                self.topic_ids = {name: self._current_topic_id(name) for name in self.topics}
            except BaseException:
                self.watcher.close()  # its client's IO thread would outlive a refused start
                raise
        if self.pipelined:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-commit")
        self._start_consumer()
        next_check = time.monotonic() + limits.topic_check_interval_s
        try:
            while not self.stop.is_set():
                records = self._poll()
                with self.lock:
                    if records:
                        self.watchdog.delivered()
                    for topic_partition, batch in records.items():
                        if self.stop.is_set() or not self._process(topic_partition, batch):
                            break
                    self.settle(wait=False)  # notice a finished (or failed) commit
                    verdict = None
                    if time.monotonic() >= next_check:
                        self.check_incarnation()
                        verdict = self.check_progress()
                        next_check = time.monotonic() + limits.topic_check_interval_s
                if isinstance(verdict, Wedged):
                    self._rebuild_consumer(verdict.reason)
        finally:
            with self.lock:
                self._drain()
                self.watcher.close()
            self._close_consumer()

    def _start_consumer(self) -> None:
        """Build the Kafka consumer and take the partitions (assigned, or from the group)."""
        consumer = self._consumer_factory()
        with self.lock:
            self.consumer = consumer
            self.watchdog.reset()
            if self.group_id is None:
                partitions = self.static_partitions
                if partitions is None:
                    partitions = sorted(consumer.partitions_for_topic(self.topics[0]) or ())
                assigned = [TopicPartition(name, p) for name in self.topics for p in partitions]
                consumer.assign(assigned)
                self.assign(assigned)
            else:
                consumer.subscribe(list(self.topics), listener=_Rebalance(self))

    def _close_consumer(self) -> None:
        """Close the consumer; never under the lock: closing calls the rebalance listener, which
        takes it on kafka-python's IO thread.

        A member in the middle of a rebalance does not leave the group (it expires instead):
        on Tansu, a leader that leaves between its JoinGroup and SyncGroup blocks the group for
        good (see `close_consumer`).
        """
        consumer = self.consumer
        if consumer is None:
            return
        with self.lock:
            leave_group = not self.watchdog.rebalancing
        if not leave_group:
            log.info("closing the consumer mid-rebalance: its member expires instead of leaving")
        try:
            close_consumer(
                consumer, leave_group=leave_group, timeout_ms=limits.consumer_close_timeout_ms
            )
        except Exception as error:  # a wedged consumer may fail to leave its group
            log.warning("closing the consumer failed", topics=self.topics, error=repr(error))
        with self.lock:
            self.consumer = None

    def _rebuild_consumer(self, reason: str) -> None:
        """Replace a wedged consumer by a new one, which joins the group afresh."""
        self.rebuilds += 1
        log.warning(
            "consumer wedged: rebuilding it",
            topics=self.topics,
            reason=reason,
            rebuilds=self.rebuilds,
            partitions=sorted(self.partitions),
        )
        with self.lock:
            self.settle()
        self._close_consumer()
        with self.lock:
            self.partitions.clear()
            self.paused_counts = None
            self._clear_services()
        self._start_consumer()

    def _poll(self) -> dict[TopicPartition, list[Any]]:
        """One poll; a broker that cannot be reached is waited for, not fatal."""
        consumer = self.consumer
        assert consumer is not None
        try:
            records: dict[TopicPartition, list[Any]] = consumer.poll(
                timeout_ms=limits.poll_timeout_ms, max_records=limits.poll_records_max
            )
        except KafkaError as error:
            if not error.retriable:
                raise
            log.warning("broker unavailable: polling again", topics=self.topics, error=repr(error))
            self.stop.wait(limits.backoff_initial_s)
            return {}
        return records

    def check_progress(self) -> Wedged | None:
        """The watchdog's verdict on the group consumer: Wedged, or None (fine, or cannot say)."""
        if self.group_id is None:
            return None  # an assigned consumer has no group machinery to wedge
        if self.paused_counts is not None:
            self.watchdog.excused(time.monotonic())  # paused on purpose: lag is expected
            return None
        applied = {tp: state.position for tp, state in self.partitions.items()}
        log_ends: dict[TopicPartition, int] = {}
        try:
            for name in self.topics:
                owned = sorted(tp.partition for tp in applied if tp.topic == name)
                ends = self.watcher.log_ends(name, owned)
                log_ends.update({TopicPartition(name, p): end for p, end in ends.items()})
        except KafkaError as error:
            log.debug("cannot read the log ends", topics=self.topics, error=repr(error))
            return None
        verdict = self.watchdog.check(time.monotonic(), applied=applied, log_ends=log_ends)
        return verdict if isinstance(verdict, Wedged) else None

    def _drain(self) -> None:
        """On the way out: let the commit in flight finish; a failed one is redone next run."""
        in_flight, self._in_flight = self._in_flight, None
        writer, self._writer = self._writer, None
        if in_flight is not None:
            try:
                in_flight.future.result()
            except Exception as error:  # whatever it was, nothing of the batch was stored
                log.warning(
                    "last batch not committed: the next run redoes it",
                    topic=in_flight.partition.topic,
                    partition=in_flight.partition.partition,
                    position=in_flight.tracking.notification_id,
                    error=str(error),
                )
        if writer is not None:
            writer.shutdown(wait=True)

    def _current_topic_id(self, name: str) -> str:
        try:
            topic_id = self.watcher.topic_id(name)
        except KafkaError as error:
            log.warning("cannot read the topic id", topic=name, error=str(error))
            return self.topic_ids.get(name) or "unknown"
        return topic_id or "unknown"

    def _partition_counts(self) -> dict[str, int] | None:
        """Each topic's partition count now; None for one topic, or when some cannot be read."""
        if len(self.topics) < 2:
            return None
        counts: dict[str, int] = {}
        for name in self.topics:
            try:
                info = self.watcher.describe(name)
            except KafkaError as error:
                log.warning("cannot read the partition count", topic=name, error=str(error))
                return None
            if info is None:
                return None  # not there (yet): whoever creates it is checked at start
            counts[name] = len(info.partitions)
        return counts

    def _check_partition_counts(self) -> None:
        """Pause every owned partition while the topics' partition counts differ, resume after.

        Differing counts (a topic recreated with another count) break one writer per account:
        the same account's facts and commands would go to partitions other workers own.
        """
        consumer = self.consumer
        counts = self._partition_counts()
        if consumer is None or counts is None:
            return
        try:
            check_co_partitioned(counts)
        except PartitionCountsDiffer as differ:
            if self.paused_counts is None:
                log.error(f"consuming paused: {differ}", partition_counts=counts)
            self.paused_counts = counts
            self._pause(consumer.assignment())
            return
        if self.paused_counts is not None:
            log.warning("partition counts match again: consuming resumed", partition_counts=counts)
            self.paused_counts = None
            consumer.resume(*consumer.paused())

    def _pause(self, partitions: Collection[TopicPartition]) -> None:
        """Stop fetching these partitions (one revoked meanwhile is skipped: not ours to pause)."""
        consumer = self.consumer
        if consumer is None:
            return
        for topic_partition in partitions:
            try:
                consumer.pause(topic_partition)
            except (KeyError, IllegalStateError):
                continue

    def assign(self, assigned: Sequence[TopicPartition]) -> None:
        """Resume each newly owned partition from its stored position."""
        consumer = self.consumer
        if consumer is None:
            return
        self.settle()
        for name in sorted({tp.topic for tp in assigned}):
            current = self._current_topic_id(name)
            if current != self.topic_ids.get(name):
                log.warning(
                    "topic recreated: reading it from its start",
                    topic=name,
                    old_topic_id=self.topic_ids.get(name),
                    new_topic_id=current,
                )
                self.topic_ids[name] = current
                self._service(name).clear()
        for topic_partition in assigned:
            name, partition = topic_partition.topic, topic_partition.partition
            state_name = tracking_name(name, self.topic_ids[name], partition)
            position = self._recorder(name).max_tracking_id(state_name)
            if not self._seek(topic_partition, position):
                continue
            self.partitions[topic_partition] = PartitionState(state_name, position)
            log.info(
                "partition assigned",
                topic=name,
                partition=partition,
                tracking_name=state_name,
                position=position,
            )
        if self.paused_counts is not None:
            self._pause([tp for tp in assigned if tp in self.partitions])
        if self.on_assigned is not None:
            self.on_assigned()

    def _service(self, name: str) -> BatchService:
        return self.services[name]

    def _recorder(self, name: str) -> ProcessRecorder:
        """The process recorder that keeps the positions of topic `name`."""
        return self.services[name].store.process_recorder

    def _clear_services(self) -> None:
        """Forget everything every service keeps in memory (services may share one cache)."""
        for service in {id(service): service for service in self.services.values()}.values():
            service.clear()

    def _seek(self, topic_partition: TopicPartition, position: int | None) -> bool:
        """Position the consumer (None: the partition's start); False if it is no longer ours.

        kafka-python changes the assignment on its IO thread, so a partition listed a moment ago
        may be gone: its listener call follows, and tells us.
        """
        consumer = self.consumer
        if consumer is None:
            return False
        try:
            if position is None:
                consumer.seek_to_beginning(topic_partition)
            else:
                consumer.seek(topic_partition, position)
        except (ValueError, IllegalStateError):
            log.info(
                "partition no longer assigned",
                topic=topic_partition.topic,
                partition=topic_partition.partition,
            )
            return False
        return True

    def revoke(self, revoked: Sequence[TopicPartition]) -> None:
        """Forget partitions another consumer now owns (and their cached accounts)."""
        self.settle()  # finish our commit before another consumer reads the partition
        for topic_partition in revoked:
            self.partitions.pop(topic_partition, None)
        self._clear_services()

    def check_incarnation(self) -> None:
        """Notice recreated topics (new id, or positions beyond the end) and start them over;
        pause while the topics' partition counts differ."""
        consumer = self.consumer
        if consumer is None:
            return
        self.settle()
        self._check_partition_counts()
        for name in self.topics:
            current = self._current_topic_id(name)
            if current == "unknown":
                continue
            assigned = sorted(tp for tp in consumer.assignment() if tp.topic == name)
            if current != self.topic_ids.get(name):
                self.assign(assigned)
                continue
            highwaters = safe_highwaters(consumer, [tp.partition for tp in assigned], name)
            for topic_partition in assigned:
                self._check_position(topic_partition, highwaters.get(topic_partition.partition))

    def _check_position(self, topic_partition: TopicPartition, highwater: int | None) -> None:
        """Start a partition over if its stored position is beyond its high watermark."""
        state = self.partitions.get(topic_partition)
        if state is None:
            return
        decision = check_position(stored_position=state.position, highwater=highwater)
        if not isinstance(decision, StartOver):
            return
        name, partition = topic_partition.topic, topic_partition.partition
        generation = f"~{int(time.time() * 1000)}"
        state_name = tracking_name(name, self.topic_ids[name], partition, generation)
        log.warning(
            "stored position beyond the partition's end: topic recreated,"
            " reading it from its start",
            topic=name,
            partition=partition,
            position=state.position,
            highwater=highwater,
            tracking_name=state_name,
            reason=decision.reason,
        )
        if self._seek(topic_partition, None):
            self.partitions[topic_partition] = PartitionState(state_name, None)

    def _process(self, topic_partition: TopicPartition, records: Sequence[Any]) -> bool:
        """Prepare one partition batch and hand it to the commit; False after a rewind.

        The batch is prepared while the previous one is still being committed (pipelined), then
        that commit is settled before this one starts, so at most one batch is in flight. A
        rewind (a failed commit) makes the rest of the poll stale: the caller drops it (the
        rewind has put every owned partition back to its position, so nothing is skipped).
        """
        state = self.partitions.get(topic_partition)
        if state is None:
            # Never drop records of a partition we have not positioned: position it (which seeks
            # to the stored offset) and let the next poll fetch them again.
            self.assign([topic_partition])
            return True
        floor = state.position or 0
        messages = [
            InboundMessage(
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                key=record.key,
                value=record.value,
                headers=tuple(record.headers or ()),
            )
            for record in records
            if record.offset + 1 > floor
        ]
        if not messages:
            return True
        service = self._service(topic_partition.topic)
        batch = self._prepare(topic_partition, messages)
        if not isinstance(batch, PreparedBatch):
            return batch
        self._send_dead_letters(topic_partition.topic, batch.dead_letters, state)
        if not self.settle():
            # Prepared on top of the failed batch's accounts: those moved in memory only.
            service.forget(batch.accounts)
            return False
        tracking = Tracking(state.tracking_name, messages[-1].offset + 1)
        service.hold(batch)
        state.position = tracking.notification_id
        if self._writer is not None:
            future = self._writer.submit(service.commit, batch, tracking)
        else:
            future = Future()
            try:
                service.commit(batch, tracking)
                future.set_result(None)
            except Exception as error:  # settled (and classified) just below
                future.set_exception(error)
        self._in_flight = _InFlight(future, batch, tracking, topic_partition, messages)
        return self._writer is not None or self.settle()

    def _prepare(
        self, topic_partition: TopicPartition, messages: list[InboundMessage]
    ) -> PreparedBatch | bool:
        """The prepared batch, retrying outages; else whether the poll may go on.

        False: a failed commit rewound everything, the rest of the poll is stale. True: the
        batch failed on bad data and has been narrowed down and committed message by message.
        """
        service = self._service(topic_partition.topic)
        backoff_s = limits.backoff_initial_s
        while True:
            try:
                return service.prepare(messages)
            except Exception as error:
                # A read failed part-way: cached accounts may hold part of the batch. Settle the
                # commit in flight first: if it failed, the partitions were read back from their
                # stored positions and these messages may no longer follow on from them.
                if not self.settle():
                    return False
                service.clear()
                if not is_outage(error):
                    self._isolate(topic_partition, messages, error)
                    return True
                backoff_s = self._wait_out(error, topic_partition, backoff_s)

    def settle(self, *, wait: bool = True) -> bool:
        """Wait for the commit in flight (if any); False if it failed and partitions rewound.

        With `wait=False` a commit still running is left alone (and True returned).
        """
        in_flight = self._in_flight
        if in_flight is None or (not wait and not in_flight.future.done()):
            return True
        self._in_flight = None
        service = self._service(in_flight.partition.topic)
        try:
            in_flight.future.result()
        except IntegrityError as error:
            self._conflict(in_flight.tracking, in_flight.partition, in_flight.batch, error)
            self._reload(in_flight)
            return False
        except Exception as error:
            if is_outage(error):
                self._wait_out(error, in_flight.partition, limits.backoff_initial_s)
                self._rewind()
                return False
            # Bad data the database refused: everything prepared since is stale; find the one.
            self._rewind()
            self._isolate(in_flight.partition, in_flight.messages, error)
            return False
        service.release(in_flight.batch)
        self._conflicts_in_a_row = 0
        self._count(in_flight.batch)
        log.debug(
            "batch committed",
            topic=in_flight.partition.topic,
            partition=in_flight.partition.partition,
            position=in_flight.tracking.notification_id,
            messages=in_flight.batch.applied + in_flight.batch.duplicates,
        )
        return True

    def _count(self, batch: PreparedBatch) -> None:
        self.applied += batch.applied
        self.duplicates += batch.duplicates
        self.dead_lettered += len(batch.dead_letters)

    def _conflict(
        self,
        tracking: Tracking,
        topic_partition: TopicPartition,
        batch: PreparedBatch,
        error: IntegrityError,
    ) -> bool:
        """Count and log a refused commit; True if it was committed already (by another consumer).

        Otherwise a version conflict (a stray fact, or a second writer): waits a jittered
        back-off, and gives up (IngestFailed) after too many in a row.
        """
        self.conflicts += 1
        name, partition = topic_partition
        recorder = self._recorder(name)
        if recorder.has_tracking_id(tracking.application_name, tracking.notification_id):
            log.info(
                "batch already committed elsewhere",
                topic=name,
                partition=partition,
                position=tracking.notification_id,
            )
            return True
        self.strays += 1
        self._conflicts_in_a_row += 1
        if self._conflicts_in_a_row > limits.batch_retry_max:
            raise IngestFailed(
                f"{name}[{partition}] batch ending at offset"
                f" {tracking.notification_id - 1}: {self._conflicts_in_a_row} conflicts,"
                f" last: {error}"
            ) from error
        accounts = sorted(batch.accounts)
        log.warning(
            "version conflict: reloading accounts and re-applying the batch",
            topic=name,
            partition=partition,
            attempt=self._conflicts_in_a_row,
            # Another writer moved one of these: a fact keyed to another partition than its
            # account's (a producer not using murmur2), or a second writer by mistake.
            cause="a stray fact or a second writer",
            account_ids=accounts[: limits.logged_ids_max],
            accounts=len(accounts),
            error=str(error),
        )
        # Jittered back-off, so two writers of one account stop colliding in lock step.
        self.stop.wait(random.uniform(0, limits.conflict_backoff_s * 2**self._conflicts_in_a_row))
        return False

    def _reload(self, in_flight: _InFlight) -> None:
        """After a version conflict: forget the failed batch's accounts and read its partition
        again from its stored position; every other partition goes back to where it stands (the
        rest of the poll is dropped), without reading anything."""
        self.rewinds += 1
        service = self._service(in_flight.partition.topic)
        service.release(in_flight.batch)  # not stored: its keys no longer count as seen
        service.forget(in_flight.batch.accounts)
        state = self.partitions.get(in_flight.partition)
        if state is not None:
            self._read_positions([(in_flight.partition, state)])
        for topic_partition, owned in self.partitions.items():
            self._seek(topic_partition, owned.position)

    def _rewind(self) -> None:
        """Forget what was prepared; read every owned partition again from its stored position."""
        self.rewinds += 1
        self._clear_services()
        self._read_positions(list(self.partitions.items()))
        for topic_partition, state in self.partitions.items():
            self._seek(topic_partition, state.position)

    def _read_positions(self, owned: Collection[tuple[TopicPartition, PartitionState]]) -> None:
        """Set each partition's position to the stored one, riding out outages."""
        backoff_s = limits.backoff_initial_s
        while True:
            try:
                for topic_partition, state in owned:
                    recorder = self._recorder(topic_partition.topic)
                    state.position = recorder.max_tracking_id(state.tracking_name)
                return
            except Exception as error:
                if not is_outage(error):
                    raise
                backoff_s = self._wait_out(error, None, backoff_s)

    def _wait_out(
        self, error: Exception, topic_partition: TopicPartition | None, backoff_s: float
    ) -> float:
        """Log an outage, back off (re-raising `error` if stopped meanwhile); the next back-off."""
        database = not isinstance(error, KafkaError | ProducerFailed)
        log.warning(
            "database unavailable: retrying the batch"
            if database
            else "broker unavailable: retrying the batch",
            topic=None if topic_partition is None else topic_partition.topic,
            partition=None if topic_partition is None else topic_partition.partition,
            retry_in_s=backoff_s,
            error=str(error),
        )
        if self.stop.wait(backoff_s):
            raise error
        self.watchdog.excused(time.monotonic())  # waiting for the database is no wedged consumer
        return min(backoff_s * 2, limits.backoff_max_s)

    def _isolate(
        self, topic_partition: TopicPartition, messages: list[InboundMessage], error: Exception
    ) -> None:
        """Commit `messages` in ever smaller parts until the failing one is found and set aside.

        Runs in line (no commit in flight: the caller has settled); the partition is then read
        on from its new stored position.
        """
        state = self.partitions.get(topic_partition)
        if state is None:  # revoked meanwhile: its new owner does this
            return
        log.warning(
            "batch failed for a reason that is not an outage: narrowing it down",
            topic=topic_partition.topic,
            partition=topic_partition.partition,
            first_offset=messages[0].offset,
            last_offset=messages[-1].offset,
            error_type=type(error).__name__,
            error=str(error),
        )
        self._narrow(state, topic_partition, messages, error)
        if self.consumer is not None and state.position is not None:
            self._seek(topic_partition, state.position)

    def _narrow(
        self,
        state: PartitionState,
        topic_partition: TopicPartition,
        messages: list[InboundMessage],
        error: Exception | None,
    ) -> None:
        """Commit `messages` (known to fail when `error` is set), else each half on its own."""
        floor = state.position or 0
        messages = [message for message in messages if message.offset + 1 > floor]
        if not messages:
            return
        if error is None:
            error = self._commit_now(state, topic_partition, messages)
            if error is None:
                return
        if len(messages) > 1:
            middle = len(messages) // 2
            self._narrow(state, topic_partition, messages[:middle], None)
            self._narrow(state, topic_partition, messages[middle:], None)
            return
        for _ in range(limits.message_attempts_max - 1):
            error = self._commit_now(state, topic_partition, messages)
            if error is None:
                return
        self._set_aside(state, topic_partition, messages[0], error)

    def _commit_now(
        self,
        state: PartitionState,
        topic_partition: TopicPartition,
        messages: list[InboundMessage],
        letters: Sequence[DeadLetter] = (),
    ) -> Exception | None:
        """Prepare and commit `messages` in line, riding out outages; the error if it failed.

        With no messages, commits only the position past `letters` (sent first).
        """
        service = self._service(topic_partition.topic)
        last_offset = (messages or [letter.message for letter in letters])[-1].offset
        tracking = Tracking(state.tracking_name, last_offset + 1)
        backoff_s = limits.backoff_initial_s
        while True:
            batch = PreparedBatch()
            try:
                if messages:
                    batch = service.prepare(messages)
                self._send_dead_letters(
                    topic_partition.topic, [*batch.dead_letters, *letters], state
                )
                service.commit(batch, tracking)
            except (IngestFailed, ProducerStopped):
                raise
            except IntegrityError as error:
                service.forget(batch.accounts)
                if self._conflict(tracking, topic_partition, batch, error):
                    recorder = self._recorder(topic_partition.topic)
                    state.position = recorder.max_tracking_id(state.tracking_name)
                    return None
                continue
            except Exception as error:
                service.clear()
                if not is_outage(error):
                    return error
                backoff_s = self._wait_out(error, topic_partition, backoff_s)
                continue
            state.position = tracking.notification_id
            self._conflicts_in_a_row = 0
            self._count(batch)
            return None

    def _set_aside(
        self,
        state: PartitionState,
        topic_partition: TopicPartition,
        message: InboundMessage,
        error: Exception,
    ) -> None:
        """Dead-letter a message that failed alone and commit the position past it."""
        letter = _unprocessable(message, error)
        failure = self._commit_now(state, topic_partition, [], [letter])
        if failure is not None:
            raise IngestFailed(
                f"{topic_partition.topic}[{topic_partition.partition}] offset {message.offset}"
                f" failed alone ({type(error).__name__}: {error}), and so did a commit of its"
                f" position without it ({type(failure).__name__}: {failure}): not one message's"
                " fault"
            ) from failure
        self.set_aside += 1
        self.dead_lettered += 1

    def _send_dead_letters(
        self, topic: str, dead_letters: Sequence[DeadLetter], state: PartitionState
    ) -> None:
        """Send and flush the batch's dead letters to the topic's dead-letter topic, each offset
        once while the partition is ours.

        A batch re-done after a failed commit (or a rewind) finds its letters sent already.
        """
        fresh = [
            letter for letter in dead_letters if letter.message.offset > state.dead_lettered_through
        ]
        if not fresh:
            return
        self.dead_letter_senders[topic].send(fresh)
        state.dead_lettered_through = fresh[-1].message.offset
