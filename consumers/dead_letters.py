"""Sending dead letters: the refused message unchanged, with headers saying why and from where.

A message too large to pass on unchanged (the broker takes records up to
`limits.broker_message_bytes_max`; a processor's broker may have taken more) is sent as its
first `limits.dead_letter_excerpt_bytes_max` bytes, kind `too_large`, with headers giving its
full size and SHA-256 (`original_bytes`, `original_sha256`) and what was cut (`truncated`).
Should the broker still refuse a letter, each letter of the batch is sent alone to find it, and
that one is sent as an excerpt: a refused dead letter never stops the partition.

Delivery is at least once: a worker that dies after sending a batch's letters and before
committing the batch sends them again when it redoes the batch. A reader of the dead-letter
topic de-duplicates by (`source_topic`, `source_partition`, `source_offset`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import structlog

from ledger import limits
from ledger.ingest import DeadLetter, InboundMessage
from ledger.kafka.clients import Headers, MessageRefused, ResilientProducer
from ledger.schemas.errors import one_line_reason

log = structlog.get_logger(__name__)

_RECORD_OVERHEAD_BYTES = 512
"""Generous room for a record's own framing (lengths, varints, batch header) in a request."""


def reason_headers(letter: DeadLetter) -> Headers:
    """Why the message was refused and where it came from (DESIGN.md's dead-letter headers)."""
    message = letter.message
    return [
        ("error_kind", letter.kind.encode()),
        ("error_reason", one_line_reason(letter.reason).encode()),
        ("source_topic", message.topic.encode()),
        ("source_partition", str(message.partition).encode()),
        ("source_offset", str(message.offset).encode()),
    ]


def _headers_bytes(headers: Sequence[tuple[str, bytes]]) -> int:
    return sum(len(name.encode()) + len(value) for name, value in headers)


def record_bytes(key: bytes | None, value: bytes | None, headers: Headers) -> int:
    """An upper bound of what one record takes in a produce request."""
    return len(key or b"") + len(value or b"") + _headers_bytes(headers) + _RECORD_OVERHEAD_BYTES


def fits_unchanged(letter: DeadLetter) -> bool:
    """Whether the refused message, its key and its headers go out as they came."""
    message = letter.message
    headers = [*message.headers, *reason_headers(letter)]
    return (
        _headers_bytes(message.headers) <= limits.dead_letter_headers_bytes_max
        and record_bytes(message.key, message.value, headers) <= limits.producer_request_bytes_max
    )


def excerpt(letter: DeadLetter) -> tuple[bytes | None, bytes | None, Headers]:
    """Key, value and headers of a letter too large to send unchanged: the starts, and the facts.

    The kind becomes `too_large` (the reason keeps why the message was refused in the first
    place); the original headers stay if they fit in their room, and `truncated` names what was
    cut (`value`, `key`, `headers`).
    """
    message = letter.message
    value = message.value or b""
    key = message.key
    cut: list[str] = []
    if len(value) > limits.dead_letter_excerpt_bytes_max:
        cut.append("value")
        value = value[: limits.dead_letter_excerpt_bytes_max]
    if key is not None and len(key) > limits.dead_letter_excerpt_bytes_max:
        cut.append("key")
        key = key[: limits.dead_letter_excerpt_bytes_max]
    original_headers: Headers = list(message.headers)
    if _headers_bytes(original_headers) > limits.dead_letter_headers_bytes_max:
        cut.append("headers")
        original_headers = []
    full = message.value or b""
    reason = letter.reason
    if letter.kind != "too_large":
        reason = f"{len(full)} bytes, too large to pass on unchanged; refused as: {reason}"
    too_large = DeadLetter(message, "too_large", reason, letter.account_id, letter.event_id)
    headers: Headers = [
        *original_headers,
        *reason_headers(too_large),
        ("original_bytes", str(len(full)).encode()),
        ("original_sha256", hashlib.sha256(full).hexdigest().encode()),
        ("original_key_sha256", hashlib.sha256(message.key or b"").hexdigest().encode()),
        ("truncated", ",".join(cut or ["none"]).encode()),
    ]
    return key, value, headers


class DeadLetterSender:
    """Sends a batch's dead letters to one topic and flushes them before the batch commits."""

    def __init__(self, producer: ResilientProducer, topic: str) -> None:
        self.producer = producer
        self.topic = topic
        self.sent = 0
        self.excerpts = 0

    def send(self, letters: Sequence[DeadLetter]) -> None:
        """Send and flush `letters` in order; a letter the broker refuses goes as an excerpt."""
        if not letters:
            return
        for letter in letters:
            self._queue(letter, whole=fits_unchanged(letter))
        try:
            self.producer.flush()
        except MessageRefused as error:
            log.warning(
                "the broker refused a dead letter: sending each letter alone",
                topic=self.topic,
                letters=len(letters),
                error=str(error),
            )
            for letter in letters:
                self._send_alone(letter)
        self.sent += len(letters)
        for letter in letters:
            _log_dead_letter(letter)

    def _queue(self, letter: DeadLetter, *, whole: bool) -> None:
        message = letter.message
        if whole:
            key, value = message.key, message.value
            headers: Headers = [*message.headers, *reason_headers(letter)]
        else:
            key, value, headers = excerpt(letter)
            self.excerpts += 1
        try:
            self.producer.send(self.topic, key=key, value=value, headers=headers)
        except MessageRefused:
            if not whole:
                raise
            self._queue(letter, whole=False)

    def _send_alone(self, letter: DeadLetter) -> None:
        """Send one letter and flush; if refused whole, send its excerpt (refused too: raise)."""
        try:
            self._queue(letter, whole=fits_unchanged(letter))
            self.producer.flush()
        except MessageRefused:
            self._queue(letter, whole=False)
            self.producer.flush()


def _log_dead_letter(letter: DeadLetter) -> None:
    message: InboundMessage = letter.message
    log.warning(
        "message dead-lettered",
        account_id=letter.account_id
        or (message.key.decode("utf-8", "replace")[:200] if message.key else None),
        event_id=letter.event_id,
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        error_kind=letter.kind,
        error_reason=one_line_reason(letter.reason),
    )
