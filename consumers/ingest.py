"""The payments ingest consumer: `payments.inbound` into the event store, exactly once.

Per partition and poll: drop records at or below the stored position, let the ingest service
apply the rest, send and flush the batch's dead letters, then commit the events, the idempotency
keys and the Kafka position (offset + 1) in one database transaction. The stored position is
kept under `payments.inbound:<topic id>:<partition>`, so a recreated topic (new id) starts from
its beginning under a new name; a stored position beyond a partition's high watermark means the
same, and is read from the start too. Both are logged as warnings, never skipped silently.

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
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import structlog
from eventsourcing.persistence import IntegrityError, Tracking
from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition
from kafka.errors import IllegalStateError, KafkaError

from consumers.dead_letters import DeadLetterSender
from ledger import limits
from ledger.ingest import DeadLetter, InboundMessage, IngestService, PreparedBatch
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
    PAYMENTS_INBOUND_DLQ,
    TopicWatcher,
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
    partition: int
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
        on_assigned: Callable[[], None] | None = None,
        consumer_factory: Callable[[], KafkaConsumer] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.service = service
        self.dead_letters = dead_letters
        self.dead_letter_sender = DeadLetterSender(dead_letters, dlq_topic)
        self.group_id = group_id
        self.stop = stop
        self.topic = topic
        self.dlq_topic = dlq_topic
        self.static_partitions = None if partitions is None else sorted(partitions)
        self.on_assigned = on_assigned
        """Called after every assignment, once the partitions are positioned."""
        self.watcher = TopicWatcher(bootstrap)
        self.topic_id = ""
        self.partitions: dict[int, PartitionState] = {}
        self.consumer: KafkaConsumer | None = None
        self.applied = 0
        self.dead_lettered = 0
        self.duplicates = 0
        self.set_aside = 0
        """Messages dead-lettered as `unprocessable` after their batch was narrowed down."""
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
        if self.on_assigned is not None:
            self.on_assigned()

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
        if not isinstance(batch, PreparedBatch):
            return batch
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
        self._in_flight = _InFlight(future, batch, tracking, topic_partition.partition, messages)
        return self._writer is not None or self.settle()

    def _prepare(
        self, topic_partition: TopicPartition, messages: list[InboundMessage]
    ) -> PreparedBatch | bool:
        """The prepared batch, retrying outages; else whether the poll may go on.

        False: a failed commit rewound everything, the rest of the poll is stale. True: the
        batch failed on bad data and has been narrowed down and committed message by message.
        """
        backoff_s = limits.backoff_initial_s
        while True:
            try:
                return self.service.prepare(messages)
            except Exception as error:
                # A read failed part-way: cached accounts may hold part of the batch. Settle the
                # commit in flight first: if it failed, the partitions were read back from their
                # stored positions and these messages may no longer follow on from them.
                if not self.settle():
                    return False
                self.service.clear()
                if not is_outage(error):
                    self._isolate(topic_partition.partition, messages, error)
                    return True
                backoff_s = self._wait_out(error, topic_partition.partition, backoff_s)

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
            self._conflict(in_flight.tracking, in_flight.partition, error)
            self._rewind()
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
        self.service.release(in_flight.batch)
        self._conflicts = 0
        self._count(in_flight.batch)
        log.debug(
            "batch committed",
            topic=self.topic,
            partition=in_flight.partition,
            position=in_flight.tracking.notification_id,
            messages=in_flight.batch.applied + in_flight.batch.duplicates,
        )
        return True

    def _count(self, batch: PreparedBatch) -> None:
        self.applied += batch.applied
        self.duplicates += batch.duplicates
        self.dead_lettered += len(batch.dead_letters)

    def _conflict(self, tracking: Tracking, partition: int, error: IntegrityError) -> bool:
        """Log a refused commit; True if it was committed already (by another consumer).

        Otherwise a version conflict: waits a jittered back-off, and gives up (IngestFailed)
        after too many in a row.
        """
        recorder = self.service.store.process_recorder
        if recorder.has_tracking_id(tracking.application_name, tracking.notification_id):
            log.info(
                "batch already committed elsewhere",
                topic=self.topic,
                partition=partition,
                position=tracking.notification_id,
            )
            return True
        self._conflicts += 1
        if self._conflicts > limits.batch_retry_max:
            raise IngestFailed(
                f"{self.topic}[{partition}] batch ending at offset"
                f" {tracking.notification_id - 1}: {self._conflicts} conflicts, last: {error}"
            ) from error
        log.warning(
            "version conflict: reloading accounts and re-applying the batch",
            topic=self.topic,
            partition=partition,
            attempt=self._conflicts,
            error=str(error),
        )
        # Jittered back-off, so two writers of one account stop colliding in lock step.
        self.stop.wait(random.uniform(0, limits.conflict_backoff_s * 2**self._conflicts))
        return False

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
            except Exception as error:
                if not is_outage(error):
                    raise
                backoff_s = self._wait_out(error, None, backoff_s)

    def _wait_out(self, error: Exception, partition: int | None, backoff_s: float) -> float:
        """Log an outage, back off (re-raising `error` if stopped meanwhile); the next back-off."""
        database = not isinstance(error, KafkaError | ProducerFailed)
        log.warning(
            "database unavailable: retrying the batch"
            if database
            else "broker unavailable: retrying the batch",
            topic=self.topic,
            partition=partition,
            retry_in_s=backoff_s,
            error=str(error),
        )
        if self.stop.wait(backoff_s):
            raise error
        self.watchdog.excused(time.monotonic())  # waiting for the database is no wedged consumer
        return min(backoff_s * 2, limits.backoff_max_s)

    def _isolate(self, partition: int, messages: list[InboundMessage], error: Exception) -> None:
        """Commit `messages` in ever smaller parts until the failing one is found and set aside.

        Runs in line (no commit in flight: the caller has settled); the partition is then read
        on from its new stored position.
        """
        state = self.partitions.get(partition)
        if state is None:  # revoked meanwhile: its new owner does this
            return
        log.warning(
            "batch failed for a reason that is not an outage: narrowing it down",
            topic=self.topic,
            partition=partition,
            first_offset=messages[0].offset,
            last_offset=messages[-1].offset,
            error_type=type(error).__name__,
            error=str(error),
        )
        self._narrow(state, partition, messages, error)
        if self.consumer is not None and state.position is not None:
            self._seek(TopicPartition(self.topic, partition), state.position)

    def _narrow(
        self,
        state: PartitionState,
        partition: int,
        messages: list[InboundMessage],
        error: Exception | None,
    ) -> None:
        """Commit `messages` (known to fail when `error` is set), else each half on its own."""
        floor = state.position or 0
        messages = [message for message in messages if message.offset + 1 > floor]
        if not messages:
            return
        if error is None:
            error = self._commit_now(state, partition, messages)
            if error is None:
                return
        if len(messages) > 1:
            middle = len(messages) // 2
            self._narrow(state, partition, messages[:middle], None)
            self._narrow(state, partition, messages[middle:], None)
            return
        for _ in range(limits.message_attempts_max - 1):
            error = self._commit_now(state, partition, messages)
            if error is None:
                return
        self._set_aside(state, partition, messages[0], error)

    def _commit_now(
        self,
        state: PartitionState,
        partition: int,
        messages: list[InboundMessage],
        letters: Sequence[DeadLetter] = (),
    ) -> Exception | None:
        """Prepare and commit `messages` in line, riding out outages; the error if it failed.

        With no messages, commits only the position past `letters` (sent first).
        """
        last_offset = (messages or [letter.message for letter in letters])[-1].offset
        tracking = Tracking(state.tracking_name, last_offset + 1)
        backoff_s = limits.backoff_initial_s
        while True:
            batch = PreparedBatch()
            try:
                if messages:
                    batch = self.service.prepare(messages)
                self._send_dead_letters([*batch.dead_letters, *letters], state)
                self.service.commit(batch, tracking)
            except (IngestFailed, ProducerStopped):
                raise
            except IntegrityError as error:
                self.service.clear()
                if self._conflict(tracking, partition, error):
                    state.position = self.service.store.process_recorder.max_tracking_id(
                        state.tracking_name
                    )
                    return None
                continue
            except Exception as error:
                self.service.clear()
                if not is_outage(error):
                    return error
                backoff_s = self._wait_out(error, partition, backoff_s)
                continue
            state.position = tracking.notification_id
            self._conflicts = 0
            self._count(batch)
            return None

    def _set_aside(
        self, state: PartitionState, partition: int, message: InboundMessage, error: Exception
    ) -> None:
        """Dead-letter a message that failed alone and commit the position past it."""
        letter = _unprocessable(message, error)
        failure = self._commit_now(state, partition, [], [letter])
        if failure is not None:
            raise IngestFailed(
                f"{self.topic}[{partition}] offset {message.offset} failed alone"
                f" ({type(error).__name__}: {error}), and so did a commit of its position"
                f" without it ({type(failure).__name__}: {failure}): not one message's fault"
            ) from failure
        self.set_aside += 1
        self.dead_lettered += 1

    def _send_dead_letters(self, dead_letters: Sequence[DeadLetter], state: PartitionState) -> None:
        """Send and flush the batch's dead letters, each offset once while the partition is ours.

        A batch re-done after a failed commit (or a rewind) finds its letters sent already.
        """
        fresh = [
            letter for letter in dead_letters if letter.message.offset > state.dead_lettered_through
        ]
        if not fresh:
            return
        self.dead_letter_sender.send(fresh)
        state.dead_lettered_through = fresh[-1].message.offset
