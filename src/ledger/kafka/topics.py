"""The ledger's topics: their names, creating them, and looking up topic ids and partitions.

Topic ids matter because a topic can be recreated under the same name (on Tansu after every
restart, since it keeps nothing on disk; on any Kafka by delete + create). A consumer stores its
position together with the topic id and treats a changed id as "this partition starts again".

What Tansu 0.6.0 does (checked with kafka-python 3.0.12):
- `create_topics` answers with the new topic's id, a time-ordered UUID (UUIDv7-like text such as
  `01a211cf-b09c-7993-81f3-7624e3b9a864`); `describe_topics` reports the same id afterwards.
- After a broker restart every topic is gone; recreating one gives it a new id.
- Describing a missing topic does not raise: the answer has error code 3
  (UNKNOWN_TOPIC_OR_PARTITION), `topic_id` None and no partitions. The admin client asks with
  `allow_auto_topic_creation=False`, so describing never creates a topic.
- The all-zero UUID is Kafka's "no id". kafka-python already decodes it to None; we also map its
  text form to None in case another path hands it through. We never saw it from Tansu.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import kafka.errors as kafka_errors
import structlog
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import OffsetSpec

from ledger import limits

log = structlog.get_logger(__name__)

PAYMENTS_INBOUND = "payments.inbound"
LEDGER_COMMANDS = "ledger.commands"
LEDGER_EVENTS = "ledger.events"
LEDGER_NOTIFICATIONS = "ledger.notifications"
PAYMENTS_OUTBOUND = "payments.outbound"
PAYMENTS_INBOUND_DLQ = "payments.inbound.dlq"
LEDGER_COMMANDS_DLQ = "ledger.commands.dlq"

ALL_TOPICS: tuple[str, ...] = (
    PAYMENTS_INBOUND,
    LEDGER_COMMANDS,
    LEDGER_EVENTS,
    LEDGER_NOTIFICATIONS,
    PAYMENTS_OUTBOUND,
    PAYMENTS_INBOUND_DLQ,
    LEDGER_COMMANDS_DLQ,
)

CO_PARTITIONED: tuple[str, ...] = (PAYMENTS_INBOUND, LEDGER_COMMANDS)
"""Topics keyed by account id whose partition p one account worker owns together: they must
have the same partition count (DESIGN.md, "One writer per account")."""

_ZERO_UUID = str(uuid.UUID(int=0))
_UNKNOWN_TOPIC = kafka_errors.UnknownTopicOrPartitionError.errno
_TOPIC_EXISTS = kafka_errors.TopicAlreadyExistsError.errno


class PartitionCountsDiffer(RuntimeError):
    """Co-partitioned topics have different partition counts: one writer per account fails."""

    def __init__(self, counts: Mapping[str, int]) -> None:
        self.counts = dict(counts)
        (reference, wanted), *others = counts.items()
        listed = ", ".join(f"{name} has {count}" for name, count in counts.items())
        fix = " and ".join(name for name, count in others if count != wanted)
        super().__init__(
            f"partition counts differ ({listed}): they must be equal so that one worker owns"
            f" each account's partition of both; recreate {fix} with {wanted} partitions, as"
            f" {reference} has"
        )


def check_co_partitioned(counts: Mapping[str, int]) -> None:
    """Raise PartitionCountsDiffer unless every topic counted has the same partition count."""
    if len(set(counts.values())) > 1:
        raise PartitionCountsDiffer(counts)


def dead_letter_topic(topic: str) -> str:
    """Where the ledger sends what it refuses from `topic` (`payments.inbound.dlq`, ...)."""
    return f"{topic}.dlq"


def tracking_name(topic: str, topic_id: str, partition: int, generation: str = "") -> str:
    """The tracking name of one partition of one incarnation of a topic (its stored position)."""
    return f"{topic}:{topic_id}{generation}:{partition}"


@dataclass(frozen=True)
class TopicInfo:
    """One topic as the cluster describes it now."""

    name: str
    topic_id: str | None
    """The topic id as UUID text; None if the broker gives none (Kafka before 2.8)."""
    partitions: tuple[int, ...]
    """Partition ids, ascending."""


def make_admin(bootstrap: str, *, client_id: str = "ledger-admin") -> KafkaAdminClient:
    """Build an admin client with short timeouts (fails within seconds when nothing answers)."""
    return KafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id=client_id,
        request_timeout_ms=limits.client_request_timeout_ms,
        bootstrap_timeout_ms=limits.client_bootstrap_timeout_ms,
    )


def _normalise_topic_id(raw: object) -> str | None:
    """Return the topic id as UUID text, or None for a missing or all-zero id."""
    if raw is None:
        return None
    text = str(raw)
    if text == _ZERO_UUID:
        return None
    return text


def describe_topic(admin: KafkaAdminClient, name: str) -> TopicInfo | None:
    """Describe one topic; None if it does not exist. Other broker errors raise."""
    answers: list[dict[str, Any]] = admin.describe_topics([name])
    for answer in answers:
        if answer.get("name") != name:
            continue
        error_code = int(answer.get("error_code", 0))
        if error_code == _UNKNOWN_TOPIC:
            return None
        if error_code != 0:
            raise kafka_errors.for_code(error_code)(f"describing topic {name}")
        partitions = tuple(sorted(int(p["partition_index"]) for p in answer["partitions"]))
        return TopicInfo(
            name=name,
            topic_id=_normalise_topic_id(answer.get("topic_id")),
            partitions=partitions,
        )
    return None


def topic_id(admin: KafkaAdminClient, name: str) -> str | None:
    """The topic's current id as UUID text; None if the topic does not exist or has no id."""
    info = describe_topic(admin, name)
    return None if info is None else info.topic_id


def ensure_topics(
    bootstrap: str,
    partitions: int,
    names: Sequence[str] = ALL_TOPICS,
    *,
    replication_factor: int = 1,
) -> None:
    """Create each missing topic with `partitions` partitions; existing topics are left alone.

    The co-partitioned topics (`CO_PARTITIONED`, when `names` holds them all) get one count: an
    existing one's, else `partitions`; existing ones whose counts differ raise
    PartitionCountsDiffer. `replication_factor` 1 suits the embedded broker; pass -1 for the
    cluster's default.
    """
    if partitions < 1:
        raise ValueError(f"partitions must be at least 1, got {partitions}")
    admin = make_admin(bootstrap)
    try:
        existing = set(admin.list_topics())
        counts = {name: partitions for name in names}
        if all(name in counts for name in CO_PARTITIONED):
            shared = _co_partitioned_count(admin, existing)
            counts.update({name: shared or partitions for name in CO_PARTITIONED})
        missing = [name for name in names if name not in existing]
        for name in names:
            if name in existing:
                _warn_on_partition_count(admin, name, partitions)
        if not missing:
            log.debug("topics already exist", topics=list(names))
            return
        answer = admin.create_topics(
            {
                name: {"num_partitions": counts[name], "replication_factor": replication_factor}
                for name in missing
            },
            timeout_ms=limits.client_request_timeout_ms,
            raise_errors=False,
        )
        created: list[str] = []
        for result in answer["topics"]:
            error_code = int(result["error_code"])
            if error_code == 0:
                created.append(result["name"])
            elif error_code != _TOPIC_EXISTS:
                error = kafka_errors.for_code(error_code)
                raise error(f"creating topic {result['name']}: {result.get('error_message')}")
        if created:
            admin.wait_for_topics(created, timeout_ms=limits.client_request_timeout_ms)
            log.info(
                "created topics",
                topics=created,
                partitions={name: counts[name] for name in created},
                bootstrap=bootstrap,
            )
    finally:
        admin.close()


def _co_partitioned_count(admin: KafkaAdminClient, existing: set[str]) -> int | None:
    """The partition count the co-partitioned topics that exist share; None if none exists."""
    counts: dict[str, int] = {}
    for name in CO_PARTITIONED:
        info = describe_topic(admin, name) if name in existing else None
        if info is not None:
            counts[name] = len(info.partitions)
    check_co_partitioned(counts)
    return next(iter(counts.values()), None)


def _warn_on_partition_count(admin: KafkaAdminClient, name: str, wanted: int) -> None:
    """Log a warning when an existing topic has another partition count than configured."""
    info = describe_topic(admin, name)
    if info is not None and len(info.partitions) != wanted:
        log.warning(
            "topic exists with a different partition count",
            topic=name,
            partitions=len(info.partitions),
            configured=wanted,
        )


class TopicWatcher:
    """Looks up topic ids and partitions for a consumer, keeping one admin client between calls.

    Not thread-safe: give each consumer thread its own. After a broker error the admin client is
    dropped and rebuilt on the next call, so a watcher survives broker restarts.
    """

    def __init__(self, bootstrap: str) -> None:
        """Remember where the cluster is; the admin client is built on first use."""
        self._bootstrap = bootstrap
        self._admin: KafkaAdminClient | None = None

    def describe(self, name: str) -> TopicInfo | None:
        """The topic's current id and partitions; None if it does not exist."""
        if self._admin is None:
            self._admin = make_admin(self._bootstrap, client_id="ledger-topic-watcher")
        try:
            return describe_topic(self._admin, name)
        except kafka_errors.KafkaError:
            self.close()
            raise

    def topic_id(self, name: str) -> str | None:
        """The topic's current id as UUID text; None if it does not exist or has no id."""
        info = self.describe(name)
        return None if info is None else info.topic_id

    def log_ends(self, name: str, partitions: Sequence[int]) -> dict[int, int]:
        """Each partition's log end (the next offset), asked of the brokers, not of a consumer.

        On Tansu 0.6.0 this can be lower than the real end (see NOTES: ListOffsets); use it only
        where a low value is harmless.
        """
        if not partitions:
            return {}
        if self._admin is None:
            self._admin = make_admin(self._bootstrap, client_id="ledger-topic-watcher")
        try:
            answer = self._admin.list_partition_offsets(
                {TopicPartition(name, p): OffsetSpec.LATEST for p in partitions},
                timeout_ms=limits.client_request_timeout_ms,
            )
        except kafka_errors.KafkaError:
            self.close()
            raise
        return {tp.partition: int(found.offset) for tp, found in answer.items()}

    def close(self) -> None:
        """Close the admin client (a later call builds a new one)."""
        admin, self._admin = self._admin, None
        if admin is not None:
            try:
                admin.close()
            except Exception as error:  # closing must never mask the caller's error
                log.debug("closing admin client failed", error=repr(error))


def read_topic(
    bootstrap: str, topic: str, *, idle_ms: int = limits.read_topic_idle_ms
) -> list[Any]:
    """Every record of a topic from its start (assign + seek, no group), until `idle_ms` pass
    with nothing new; none if the topic does not exist (yet). For the demo and tests, not for
    the ledger's own consumers."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        consumer_timeout_ms=idle_ms,
        fetch_max_wait_ms=limits.fetch_max_wait_ms,
        allow_auto_create_topics=False,
    )
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        if not partitions:
            return []
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        return list(consumer)
    finally:
        consumer.close()
