"""The payments ingest consumer: `payments.inbound` into the event store, exactly once.

Per partition and poll: drop records at or below the stored position, let the ingest service
apply the rest, send and flush the batch's dead letters, then commit the events, the idempotency
keys and the Kafka position (offset + 1) in one database transaction. The stored position is
kept under `payments.inbound:<topic id>:<partition>`, so a recreated topic (new id) starts from
its beginning under a new name; a stored position beyond a partition's high watermark means the
same, and is read from the start too. Both are logged as warnings, never skipped silently.

kafka-python 3 calls the rebalance listener on its own IO thread, while `run()` works on the
caller's: one lock keeps them apart, and is never held while kafka-python is asked to do
network work that would call the listener (poll, close). A watchdog (`ledger.kafka.recovery`)
rebuilds a group consumer that stops delivering while its partitions lag (docs/broker-restart.md).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import structlog
from eventsourcing.persistence import (
    IntegrityError,
    InterfaceError,
    OperationalError,
    Tracking,
)
from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition
from kafka.errors import IllegalStateError, KafkaError

from ledger import limits
from ledger.ingest import DeadLetter, InboundMessage, IngestService, PreparedBatch
from ledger.kafka.clients import ResilientProducer, close_consumer, make_consumer
from ledger.kafka.recovery import StallWatchdog, StartOver, Wedged, check_position, safe_highwaters
from ledger.kafka.topics import PAYMENTS_INBOUND, PAYMENTS_INBOUND_DLQ, TopicWatcher
from ledger.persistence.database import DatabaseUnavailable

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
    partition: int


def tracking_name(topic: str, topic_id: str, partition: int, generation: str = "") -> str:
    """The tracking name of one partition of one incarnation of a topic."""
    return f"{topic}:{topic_id}{generation}:{partition}"


def dead_letter_headers(dead_letter: DeadLetter) -> list[tuple[str, bytes]]:
    """The original headers plus why the message was refused and where it came from."""
    message = dead_letter.message
    reason = " ".join(dead_letter.reason.split())[:500]
    return [
        *message.headers,
        ("error_kind", dead_letter.kind.encode()),
        ("error_reason", reason.encode()),
        ("source_topic", message.topic.encode()),
        ("source_partition", str(message.partition).encode()),
        ("source_offset", str(message.offset).encode()),
    ]


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
    """Consumes payment facts and hands each partition batch to the ingest service.

    With a `group_id` it joins that consumer group and takes the partitions the group gives it;
    without one it assigns itself `partitions` (every partition of the topic when None).
    """

    def __init__(
        self,
        *,
        bootstrap: str,
        service: IngestService,
        dead_letters: ResilientProducer,
        group_id: str | None,
        stop: threading.Event,
        topic: str = PAYMENTS_INBOUND,
        dlq_topic: str = PAYMENTS_INBOUND_DLQ,
        partitions: Sequence[int] | None = None,
        pipelined: bool | None = None,
        consumer_factory: Callable[[], KafkaConsumer] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.service = service
        self.dead_letters = dead_letters
        self.group_id = group_id
        self.stop = stop
        self.topic = topic
        self.dlq_topic = dlq_topic
        self.static_partitions = None if partitions is None else sorted(partitions)
        self.watcher = TopicWatcher(bootstrap)
        self.topic_id = ""
        self.partitions: dict[int, PartitionState] = {}
        self.consumer: KafkaConsumer | None = None
        self.applied = 0
        self.dead_lettered = 0
        self.duplicates = 0
        # Commit in a writer thread while the next batch is prepared, where the database lets a
        # commit run without holding the GIL (see InboundKeyRecorder.commits_concurrently).
        self.pipelined = (
            service.store.key_recorder.commits_concurrently if pipelined is None else pipelined
        )
        self._writer: ThreadPoolExecutor | None = None
        self._in_flight: _InFlight | None = None
        self._conflicts = 0
        self._consumer_factory = consumer_factory or self._default_consumer
        self.lock = threading.RLock()
        """Held by `run()` between polls and by the rebalance listener (another thread)."""
        self.watchdog = StallWatchdog(limits.consumer_stall_timeout_s)
        self.rebuilds = 0

    def _default_consumer(self) -> KafkaConsumer:
        return make_consumer(self.bootstrap, group_id=self.group_id, client_id="ledger-ingest")

    def run(self) -> None:
        """Consume until stopped."""
        if self.pipelined:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-commit")
        with self.lock:
            self.topic_id = self._current_topic_id()
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
                    partitions = sorted(consumer.partitions_for_topic(self.topic) or ())
                assigned = [TopicPartition(self.topic, p) for p in partitions]
                consumer.assign(assigned)
                self.assign(assigned)
            else:
                consumer.subscribe([self.topic], listener=_Rebalance(self))

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
            log.warning("closing the consumer failed", topic=self.topic, error=repr(error))
        with self.lock:
            self.consumer = None

    def _rebuild_consumer(self, reason: str) -> None:
        """Replace a wedged consumer by a new one, which joins the group afresh."""
        self.rebuilds += 1
        log.warning(
            "consumer wedged: rebuilding it",
            topic=self.topic,
            reason=reason,
            rebuilds=self.rebuilds,
            partitions=sorted(self.partitions),
        )
        with self.lock:
            self.settle()
        self._close_consumer()
        with self.lock:
            self.partitions.clear()
            self.service.clear()
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
            log.warning("broker unavailable: polling again", topic=self.topic, error=repr(error))
            self.stop.wait(limits.backoff_initial_s)
            return {}
        return records

    def check_progress(self) -> Wedged | None:
        """The watchdog's verdict on the group consumer: Wedged, or None (fine, or cannot say)."""
        if self.group_id is None:
            return None  # an assigned consumer has no group machinery to wedge
        applied = {partition: state.position for partition, state in self.partitions.items()}
        try:
            log_ends = self.watcher.log_ends(self.topic, sorted(applied))
        except KafkaError as error:
            log.debug("cannot read the log ends", topic=self.topic, error=repr(error))
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
                    topic=self.topic,
                    partition=in_flight.partition,
                    position=in_flight.tracking.notification_id,
                    error=str(error),
                )
        if writer is not None:
            writer.shutdown(wait=True)

    def _current_topic_id(self) -> str:
        try:
            topic_id = self.watcher.topic_id(self.topic)
        except KafkaError as error:
            log.warning("cannot read the topic id", topic=self.topic, error=str(error))
            return self.topic_id or "unknown"
        return topic_id or "unknown"

    def assign(self, assigned: Sequence[TopicPartition]) -> None:
        """Resume each newly owned partition from its stored position."""
        consumer = self.consumer
        if consumer is None:
            return
        self.settle()
        current = self._current_topic_id()
        if current != self.topic_id:
            log.warning(
                "topic recreated: reading it from its start",
                topic=self.topic,
                old_topic_id=self.topic_id,
                new_topic_id=current,
            )
            self.topic_id = current
            self.service.clear()
        recorder = self.service.store.process_recorder
        for topic_partition in assigned:
            name = tracking_name(self.topic, self.topic_id, topic_partition.partition)
            position = recorder.max_tracking_id(name)
            if not self._seek(topic_partition, position):
                continue
            self.partitions[topic_partition.partition] = PartitionState(name, position)
            log.info(
                "partition assigned",
                topic=self.topic,
                partition=topic_partition.partition,
                tracking_name=name,
                position=position,
            )

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
                topic=self.topic,
                partition=topic_partition.partition,
            )
            return False
        return True

    def revoke(self, revoked: Sequence[TopicPartition]) -> None:
        """Forget partitions another consumer now owns (and their cached accounts)."""
        self.settle()  # finish our commit before another consumer reads the partition
        for topic_partition in revoked:
            self.partitions.pop(topic_partition.partition, None)
        self.service.clear()

    def check_incarnation(self) -> None:
        """Notice a recreated topic (new id, or positions beyond the end) and start it over."""
        consumer = self.consumer
        if consumer is None:
            return
        self.settle()
        current = self._current_topic_id()
        if current == "unknown":
            return
        assigned = sorted(consumer.assignment(), key=lambda tp: tp.partition)
        if current != self.topic_id:
            self.assign(assigned)
            return
        highwaters = safe_highwaters(consumer, [tp.partition for tp in assigned], self.topic)
        for topic_partition in assigned:
            state = self.partitions.get(topic_partition.partition)
            if state is None:
                continue
            highwater = highwaters.get(topic_partition.partition)
            decision = check_position(stored_position=state.position, highwater=highwater)
            if isinstance(decision, StartOver):
                generation = f"~{int(time.time() * 1000)}"
                name = tracking_name(
                    self.topic, self.topic_id, topic_partition.partition, generation
                )
                log.warning(
                    "stored position beyond the partition's end: topic recreated,"
                    " reading it from its start",
                    topic=self.topic,
                    partition=topic_partition.partition,
                    position=state.position,
                    highwater=highwater,
                    tracking_name=name,
                    reason=decision.reason,
                )
                if self._seek(topic_partition, None):
                    self.partitions[topic_partition.partition] = PartitionState(name, None)

    def _process(self, topic_partition: TopicPartition, records: Sequence[Any]) -> bool:
        """Prepare one partition batch and hand it to the commit; False after a rewind.

        The batch is prepared while the previous one is still being committed (pipelined), then
        that commit is settled before this one starts, so at most one batch is in flight. A
        rewind (a failed commit) makes the rest of the poll stale: the caller drops it.
        """
        state = self.partitions.get(topic_partition.partition)
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
        batch = self._prepare(topic_partition, messages)
        if batch is None:
            return False
        self._send_dead_letters(batch.dead_letters, state)
        if not self.settle():
            return False
        tracking = Tracking(state.tracking_name, messages[-1].offset + 1)
        self.service.hold(batch)
        state.position = tracking.notification_id
        if self._writer is not None:
            future = self._writer.submit(self.service.commit, batch, tracking)
        else:
            future = Future()
            try:
                self.service.commit(batch, tracking)
                future.set_result(None)
            except Exception as error:  # settled (and classified) just below
                future.set_exception(error)
        self._in_flight = _InFlight(future, batch, tracking, topic_partition.partition)
        return self._writer is not None or self.settle()

    def _prepare(
        self, topic_partition: TopicPartition, messages: list[InboundMessage]
    ) -> PreparedBatch | None:
        """The prepared batch, retrying database outages; None if a rewind made it stale."""
        backoff_s = limits.backoff_initial_s
        while True:
            try:
                return self.service.prepare(messages)
            except (OperationalError, InterfaceError, DatabaseUnavailable) as error:
                # A read failed part-way: cached accounts may hold part of the batch. Settle the
                # commit in flight first: if it failed, the partitions were read back from their
                # stored positions and these messages may no longer follow on from them.
                if not self.settle():
                    return None
                self.service.clear()
                backoff_s = self._wait_for_database(error, topic_partition.partition, backoff_s)

    def settle(self, *, wait: bool = True) -> bool:
        """Wait for the commit in flight (if any); False if it failed and everything rewound.

        With `wait=False` a commit still running is left alone (and True returned).
        """
        in_flight = self._in_flight
        if in_flight is None or (not wait and not in_flight.future.done()):
            return True
        self._in_flight = None
        try:
            in_flight.future.result()
        except IntegrityError as error:
            self._conflict(in_flight, error)
            self._rewind()
            return False
        except (OperationalError, InterfaceError, DatabaseUnavailable) as error:
            self._wait_for_database(error, in_flight.partition, limits.backoff_initial_s)
            self._rewind()
            return False
        self.service.release(in_flight.batch)
        self._conflicts = 0
        self.applied += in_flight.batch.applied
        self.duplicates += in_flight.batch.duplicates
        self.dead_lettered += len(in_flight.batch.dead_letters)
        log.debug(
            "batch committed",
            topic=self.topic,
            partition=in_flight.partition,
            position=in_flight.tracking.notification_id,
            messages=in_flight.batch.applied + in_flight.batch.duplicates,
        )
        return True

    def _conflict(self, in_flight: _InFlight, error: IntegrityError) -> None:
        """Log a refused commit; give up after too many version conflicts in a row."""
        tracking = in_flight.tracking
        recorder = self.service.store.process_recorder
        if recorder.has_tracking_id(tracking.application_name, tracking.notification_id):
            log.info(
                "batch already committed elsewhere",
                topic=self.topic,
                partition=in_flight.partition,
                position=tracking.notification_id,
            )
            return
        self._conflicts += 1
        if self._conflicts > limits.batch_retry_max:
            raise IngestFailed(
                f"{self.topic}[{in_flight.partition}] batch ending at offset"
                f" {tracking.notification_id - 1}: {self._conflicts} conflicts, last: {error}"
            ) from error
        log.warning(
            "version conflict: reloading accounts and re-applying the batch",
            topic=self.topic,
            partition=in_flight.partition,
            attempt=self._conflicts,
            error=str(error),
        )
        # Jittered back-off, so two writers of one account stop colliding in lock step.
        self.stop.wait(random.uniform(0, limits.conflict_backoff_s * 2**self._conflicts))

    def _rewind(self) -> None:
        """Forget what was prepared; read every owned partition again from its stored position."""
        self.service.clear()
        consumer = self.consumer
        recorder = self.service.store.process_recorder
        backoff_s = limits.backoff_initial_s
        while True:
            try:
                for partition, state in self.partitions.items():
                    state.position = recorder.max_tracking_id(state.tracking_name)
                    if consumer is None:
                        continue
                    self._seek(TopicPartition(self.topic, partition), state.position)
                return
            except (OperationalError, InterfaceError, DatabaseUnavailable) as error:
                backoff_s = self._wait_for_database(error, None, backoff_s)

    def _wait_for_database(
        self, error: Exception, partition: int | None, backoff_s: float
    ) -> float:
        """Log, back off (re-raising `error` if stopped meanwhile); the next back-off."""
        log.warning(
            "database unavailable: retrying the batch",
            topic=self.topic,
            partition=partition,
            retry_in_s=backoff_s,
            error=str(error),
        )
        if self.stop.wait(backoff_s):
            raise error
        self.watchdog.excused(time.monotonic())  # waiting for the database is no wedged consumer
        return min(backoff_s * 2, limits.backoff_max_s)

    def _send_dead_letters(self, dead_letters: Sequence[DeadLetter], state: PartitionState) -> None:
        """Send and flush the batch's dead letters, each offset once while the partition is ours.

        A batch re-done after a failed commit (or a rewind) finds its letters sent already.
        """
        fresh = [
            letter for letter in dead_letters if letter.message.offset > state.dead_lettered_through
        ]
        if not fresh:
            return
        for letter in fresh:
            message = letter.message
            self.dead_letters.send(
                self.dlq_topic,
                key=message.key,
                value=message.value,
                headers=dead_letter_headers(letter),
            )
            log.warning(
                "message dead-lettered",
                account_id=letter.account_id
                or (message.key.decode("utf-8", "replace") if message.key else None),
                event_id=letter.event_id,
                topic=message.topic,
                partition=message.partition,
                offset=message.offset,
                error_kind=letter.kind,
                error_reason=letter.reason,
            )
        self.dead_letters.flush()
        state.dead_lettered_through = fresh[-1].message.offset
