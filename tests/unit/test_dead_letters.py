"""Dead letters: the reasons in headers, and a message too large to pass on unchanged."""

from __future__ import annotations

import hashlib

from consumers.dead_letters import excerpt, fits_unchanged, reason_headers
from ledger import limits
from ledger.ingest import DeadLetter, InboundMessage


def letter(value: bytes, *, key: bytes | None = b"acct-1", headers: tuple = ()) -> DeadLetter:
    message = InboundMessage("payments.inbound", 2, 41, key, value, headers)
    return DeadLetter(message, "contract", "contract: amount: Field required\nsecond line")


def test_reason_headers_are_one_line_and_name_the_source() -> None:
    headers = dict(reason_headers(letter(b"{}")))
    assert headers == {
        "error_kind": b"contract",
        "error_reason": b"contract: amount: Field required second line",
        "source_topic": b"payments.inbound",
        "source_partition": b"2",
        "source_offset": b"41",
    }


def test_long_reasons_are_cut_at_the_limit() -> None:
    long = DeadLetter(letter(b"{}").message, "contract", "x" * 1000)
    reason = dict(reason_headers(long))["error_reason"]
    assert len(reason) == limits.reason_chars_max and reason.endswith(b"...")


def test_a_message_that_fits_goes_unchanged() -> None:
    assert fits_unchanged(letter(b"x" * (limits.broker_message_bytes_max - 4096)))


def test_a_message_too_large_goes_as_its_start_with_size_and_hash() -> None:
    value = bytes(range(256)) * (limits.broker_message_bytes_max // 128)
    big = letter(value, headers=(("trace", b"t-1"),))
    assert not fits_unchanged(big)
    key, start, headers = excerpt(big)
    named = dict(headers)
    assert key == b"acct-1"
    assert start == value[: limits.dead_letter_excerpt_bytes_max]
    assert named["trace"] == b"t-1"
    assert named["error_kind"] == b"too_large"
    assert named["original_bytes"] == str(len(value)).encode()
    assert named["original_sha256"] == hashlib.sha256(value).hexdigest().encode()
    assert named["truncated"] == b"value"
    assert named["source_offset"] == b"41"
    assert named["error_reason"].startswith(f"{len(value)} bytes, too large".encode())


def test_huge_keys_and_headers_are_cut_too() -> None:
    huge_key = b"k" * (limits.dead_letter_excerpt_bytes_max + 1)
    headers = (("h", b"v" * (limits.dead_letter_headers_bytes_max + 1)),)
    big = letter(b"{}", key=huge_key, headers=headers)
    assert not fits_unchanged(big)
    key, value, out = excerpt(big)
    named = dict(out)
    assert key == huge_key[: limits.dead_letter_excerpt_bytes_max] and value == b"{}"
    assert "h" not in named
    assert named["truncated"] == b"key,headers"
    assert named["original_key_sha256"] == hashlib.sha256(huge_key).hexdigest().encode()
