"""Kafka producers and consumers configured the ledger's way, and a producer that survives restarts.

Every client asks the broker not to create a topic it names (`allow_auto_create_topics=False`):
the ledger creates its topics itself, with explicit partition counts. Tansu 0.6.0 ignores the
flag (a producer's metadata request or a subscription still creates a 4-partition topic).

Tansu 0.6.0 forgets idempotent producer ids on restart: a producer that outlives the broker fails
for good (`UnknownProducerIdError`, then `InitProducerId` answers UnknownError), while a new
producer works at once. `ResilientProducer` therefore rebuilds its producer on any Kafka error
and re-sends the whole unacknowledged batch.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import kafka.errors as kafka_errors
import kafka.record.util as kafka_record_util
import structlog
from kafka import KafkaConsumer, KafkaProducer
from kafka.coordinator.assignors.range import RangePartitionAssignor

from ledger import limits

log = structlog.get_logger(__name__)

Headers = list[tuple[str, bytes]]

# Errors a rebuilt producer cannot cure: re-sending the same message would fail the same way.
_HOPELESS_ERRORS: tuple[type[kafka_errors.KafkaError], ...] = (
    kafka_errors.MessageSizeTooLargeError,
    kafka_errors.RecordListTooLargeError,
    kafka_errors.InvalidTopicError,
    kafka_errors.InvalidRecordError,
    kafka_errors.AuthorizationError,
    kafka_errors.KafkaConfigurationError,
    kafka_errors.IllegalArgumentError,
)


def check_crc32c() -> None:
    """Fail unless kafka-python uses the C crc32c (pure Python checks cut consumption by ~7x)."""
    if kafka_record_util.crc32c_c is None:
        raise RuntimeError(
            "kafka-python found no C crc32c implementation and would check every record batch "
            "in pure Python (about 7x slower consumption): install the `crc32c` package"
        )


def make_producer(
    bootstrap: str,
    *,
    client_id: str = "ledger-producer",
    metadata_max_age_ms: int = limits.producer_metadata_max_age_ms,
) -> KafkaProducer:
    """Build an idempotent producer (acks=all) that batches briefly and fails within bounds."""
    return KafkaProducer(
        bootstrap_servers=bootstrap,
        client_id=client_id,
        metadata_max_age_ms=metadata_max_age_ms,
        enable_idempotence=True,
        acks="all",
        linger_ms=limits.producer_linger_ms,
        batch_size=limits.producer_batch_bytes_max,
        max_request_size=limits.producer_request_bytes_max,
        max_block_ms=limits.producer_send_block_timeout_ms,
        request_timeout_ms=limits.client_request_timeout_ms,
        delivery_timeout_ms=limits.producer_delivery_timeout_ms,
        bootstrap_timeout_ms=limits.client_bootstrap_timeout_ms,
        allow_auto_create_topics=False,
    )


def make_consumer(bootstrap: str, *, group_id: str | None, client_id: str) -> KafkaConsumer:
    """Build a consumer of raw bytes: no auto-commit, earliest reset, short fetch waits.

    Group assignment is pinned to the range assignor: members subscribed to topics of equal
    partition counts get the same partition numbers of each, which keeps one writer per account
    across `payments.inbound` and `ledger.commands`.
    """
    return KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group_id,
        client_id=client_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=limits.fetch_max_wait_ms,
        max_poll_records=limits.poll_records_max,
        max_partition_fetch_bytes=limits.consumer_partition_fetch_bytes_max,
        fetch_max_bytes=limits.consumer_fetch_bytes_max,
        session_timeout_ms=limits.consumer_session_timeout_ms,
        heartbeat_interval_ms=limits.consumer_session_timeout_ms // 3,
        bootstrap_timeout_ms=limits.client_bootstrap_timeout_ms,
        allow_auto_create_topics=False,
        partition_assignment_strategy=(RangePartitionAssignor,),
    )


def close_consumer(consumer: KafkaConsumer, *, leave_group: bool, timeout_ms: int) -> None:
    """Close a consumer; with `leave_group` False its member is left to expire from the group
    (session timeout) instead of sending LeaveGroup.

    Tansu 0.6.0 keeps a member that leaves between its JoinGroup and its SyncGroup as the group's
    leader for good (a Forming group's LeaveGroup drops the member but not the leader, and only a
    member can expire): no later member ever gets a partition, until the broker restarts. So a
    consumer closed in the middle of a rebalance must not leave; one that merely goes silent
    expires after `consumer_session_timeout_ms`. kafka-python has no public switch for this:
    resetting the coordinator's generation marks the member unjoined, and `close()` then skips
    LeaveGroup.
    """
    if not leave_group:
        reset_generation = getattr(
            getattr(consumer, "_coordinator", None), "reset_generation", None
        )
        if reset_generation is None:
            log.warning("cannot skip LeaveGroup: kafka-python's coordinator API changed")
        else:
            reset_generation()
    consumer.close(autocommit=False, timeout_ms=timeout_ms)


class ProducerFailed(Exception):
    """A batch could not be delivered even through rebuilt producers; nothing of it is certain."""


class MessageRefused(ProducerFailed):
    """Kafka refused a message itself (too large, invalid): re-sending it cannot help.

    The unflushed batch is dropped from the producer: the caller knows what it sent and decides
    what to send instead (the dead-letter sender sends each letter alone to find the one).
    """


class PartitionsChanged(ProducerFailed):
    """A message named a partition that the producer's metadata no longer has.

    The topic changed under the sender (recreated with fewer partitions, say): the unflushed
    batch is dropped, as for MessageRefused, for the caller to recompute and send again.
    """


class ProducerStopped(Exception):
    """The stop event was set while a flush waited (to retry, or for acknowledgements).

    The batch is not known to be delivered; the caller commits nothing for it, so it is sent
    again after the restart.
    """


@dataclass
class _Outgoing:
    """One message of the unflushed batch and its future on the current producer."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers
    partition: int | None = None
    future: Any = None


class ResilientProducer:
    """Sends batches through an idempotent producer, rebuilding it and re-sending on any failure.

    Pattern: `send()` many messages, then `flush()`; when `flush()` returns, every message sent
    since the previous flush is acknowledged (`acks=all`). On a Kafka error the producer is closed,
    rebuilt after a back-off and the whole unacknowledged batch is sent again in its original
    order (so some messages may arrive twice: consumers deduplicate). After
    `limits.producer_retry_max` rebuilds `flush()` raises ProducerFailed. Not thread-safe.
    """

    def __init__(
        self,
        bootstrap: str,
        *,
        stop: threading.Event | None = None,
        factory: Callable[[str], KafkaProducer] = make_producer,
    ) -> None:
        """Prepare to send to `bootstrap`; the producer itself is built on first use."""
        self._bootstrap = bootstrap
        self._stop = stop if stop is not None else threading.Event()
        self._factory = factory
        self._producer: KafkaProducer | None = None
        self._broken: kafka_errors.KafkaError | None = None
        self._pending: list[_Outgoing] = []
        self._closed = False

    @property
    def pending(self) -> int:
        """Messages sent since the last successful flush."""
        return len(self._pending)

    def send(
        self,
        topic: str,
        *,
        key: bytes | None,
        value: bytes | None,
        headers: Headers,
        partition: int | None = None,
    ) -> None:
        """Queue one message; `flush()` makes sure it is delivered.

        With `partition` the message goes there (the sender computed it; see
        `ledger.kafka.partitioning`), otherwise where the client's partitioner puts its key.
        """
        if self._closed:
            raise RuntimeError("send() on a closed ResilientProducer")
        if len(self._pending) >= limits.producer_pending_max:
            self.flush()
        message = _Outgoing(
            topic=topic, key=key, value=value, headers=list(headers), partition=partition
        )
        self._pending.append(message)
        if self._broken is None:
            self._send_now(message)

    def flush(self) -> None:
        """Deliver every queued message, rebuilding the producer as needed; raise if impossible."""
        if self._closed:
            raise RuntimeError("flush() on a closed ResilientProducer")
        rebuilds = 0
        while self._pending:
            error = self._flush_once()
            if error is None:
                self._pending.clear()
                return
            if isinstance(error, _HOPELESS_ERRORS):
                self._discard_producer()
                refused = len(self._pending)
                self._pending.clear()
                raise MessageRefused(
                    f"Kafka refused a message of a batch of {refused}, retrying cannot help:"
                    f" {error!r}"
                ) from error
            rebuilds += 1
            if rebuilds > limits.producer_retry_max:
                self._discard_producer()
                raise ProducerFailed(
                    f"could not deliver {len(self._pending)} messages to {self._bootstrap} after "
                    f"{limits.producer_retry_max} producer rebuilds: {error!r}"
                ) from error
            self._rebuild(error, rebuilds)

    def partition_count(self, topic: str) -> int:
        """How many partitions `topic` has in the producer's metadata (what its partitioner uses).

        Waits for the metadata if the producer has none for the topic yet (bounded by
        `limits.producer_send_block_timeout_ms`; a broker that auto-creates topics creates it).
        """
        if self._closed:
            raise RuntimeError("partition_count() on a closed ResilientProducer")
        if self._producer is None:
            self._producer = self._factory(self._bootstrap)
        return len(self._producer.partitions_for(topic))

    def close(self) -> None:
        """Close the producer; messages not yet flushed are dropped (and logged)."""
        if self._pending:
            log.warning("closing producer with unflushed messages", messages=len(self._pending))
        self._pending.clear()
        self._discard_producer(timeout_s=limits.producer_close_timeout_s)
        self._closed = True

    def _send_now(self, message: _Outgoing) -> None:
        """Hand one message to the current producer, building it if needed; note any failure."""
        try:
            if self._producer is None:
                self._producer = self._factory(self._bootstrap)
            message.future = self._producer.send(
                message.topic,
                value=message.value,
                key=message.key,
                headers=message.headers,
                partition=message.partition,
            )
        except ValueError as error:
            if message.partition is None:
                raise
            dropped = len(self._pending)
            self._pending.clear()
            raise PartitionsChanged(
                f"{message.topic} has no partition {message.partition} any more: dropped the"
                f" unflushed batch of {dropped}"
            ) from error
        except kafka_errors.KafkaError as error:
            if isinstance(error, _HOPELESS_ERRORS):
                self._pending.remove(message)
                raise MessageRefused(f"Kafka refused the message: {error!r}") from error
            self._broken = error

    def _flush_once(self) -> kafka_errors.KafkaError | None:
        """Send what is not yet on the producer, flush, and return the first error, if any."""
        for message in self._pending:
            if self._broken is not None:
                return self._broken
            if message.future is None:
                self._send_now(message)
        if self._broken is not None:
            return self._broken
        producer = self._producer
        assert producer is not None
        error = self._flush_in_slices(producer)
        if error is not None:
            return error
        for message in self._pending:
            try:
                message.future.get(timeout=0)  # done after flush: raises the record's error
            except kafka_errors.KafkaError as error:
                return error
        return None

    def _flush_in_slices(self, producer: KafkaProducer) -> kafka_errors.KafkaError | None:
        """Flush, waiting in short slices so that a stop request ends the wait (ProducerStopped)."""
        deadline = time.monotonic() + limits.producer_flush_timeout_s
        while True:
            remaining = deadline - time.monotonic()
            try:
                producer.flush(timeout=max(0.0, min(limits.producer_flush_slice_s, remaining)))
                return None
            except kafka_errors.KafkaTimeoutError as error:
                if self._stop.is_set():
                    raise ProducerStopped(
                        f"stopped while waiting for acknowledgements; {len(self._pending)}"
                        " messages are not known to be delivered"
                    ) from error
                if remaining <= 0:
                    return error
            except kafka_errors.KafkaError as error:
                return error

    def _rebuild(self, error: kafka_errors.KafkaError, attempt: int) -> None:
        """Close the failed producer, wait the back-off (interruptibly), mark all for re-send."""
        delay = min(limits.backoff_initial_s * 2 ** (attempt - 1), limits.backoff_max_s)
        log.warning(
            "producer failed: rebuilding it and re-sending the batch",
            error=repr(error),
            attempt=attempt,
            attempts_max=limits.producer_retry_max,
            backoff_s=delay,
            messages=len(self._pending),
            bootstrap=self._bootstrap,
        )
        self._discard_producer()
        for message in self._pending:
            message.future = None
        if self._stop.wait(delay):
            raise ProducerStopped(
                f"stopped while retrying; {len(self._pending)} messages were not delivered"
            ) from error

    def _discard_producer(self, timeout_s: float = limits.producer_close_timeout_s) -> None:
        """Close the current producer (briefly) and forget it."""
        producer, self._producer = self._producer, None
        self._broken = None
        if producer is not None:
            try:
                producer.close(timeout=timeout_s)
            except Exception as close_error:  # a broken producer may fail to close
                log.debug("closing producer failed", error=repr(close_error))
