"""The benchmark's inbound traffic: a realistic, reproducible mix of processor events.

Every account is opened first; then invoices, payments (some settling exactly, some short, about
a quarter paying too much, which the ledger records as an overpayment), a small share of
processor chargebacks (`dispute.opened` on a paid payment, later `dispute.closed` won or lost),
a small share of exact duplicates (the same event id again: nothing may change) and of bad lines
(not JSON, a broken contract, an account nobody opened: each becomes a dead letter).
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson
from kafka import KafkaProducer

from ledger.kafka.clients import make_producer

DUPLICATE_SHARE = 0.01
BAD_SHARE = 0.005
INVOICE_SHARE = 0.5
OVERPAYMENT_SHARE = 0.25
DISPUTE_SHARE = 0.01
"""Chargebacks opened (each stores its dispute and its first-response follow-up); about as many
are closed later (the dispute resolved and its follow-up closed)."""
PROCESSOR = "bench-pay"


@dataclass(frozen=True, slots=True)
class InboundLine:
    """One message to publish: its Kafka key (the account id) and its raw value."""

    key: bytes
    value: bytes


@dataclass
class Workload:
    """The lines of one run and what they contain."""

    lines: list[InboundLine]
    accounts: int
    counts: dict[str, int] = field(default_factory=dict)


def account_name(run_id: str, index: int) -> str:
    """The account id of the index-th benchmark account."""
    return f"bench-{run_id}-{index:06d}"


class LineWriter:
    """Builds inbound lines with unique, sequential event ids."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.sequence = 0
        self.occurred_at = datetime.now(UTC).replace(microsecond=0).isoformat()

    def line(self, account_id: str, event_type: str, **fields: object) -> InboundLine:
        """One line of `event_type` for the account."""
        self.sequence += 1
        body = {
            "event_id": f"{self.run_id}-{self.sequence:09d}",
            "processor": PROCESSOR,
            "account_id": account_id,
            "occurred_at": self.occurred_at,
            "type": event_type,
            **fields,
        }
        return InboundLine(account_id.encode(), orjson.dumps(body))

    def opening(self, account_id: str) -> InboundLine:
        """An account.opened line (a monthly USD account)."""
        return self.line(
            account_id,
            "account.opened",
            customer_id=f"cust-{account_id}",
            kind="monthly",
            jurisdiction="US-CA",
            currency="USD",
        )

    def invoice(self, account_id: str, invoice_id: str, amount_minor: int) -> InboundLine:
        """An invoice.issued line in USD."""
        return self.line(
            account_id,
            "invoice.issued",
            invoice_id=invoice_id,
            amount={"value": amount_minor, "currency": "USD"},
            due_date="2030-01-31",
        )

    def chargeback(
        self, account_id: str, dispute_id: str, payment_id: str, amount_minor: int
    ) -> InboundLine:
        """A processor's chargeback of (part of) a payment."""
        return self.line(
            account_id,
            "dispute.opened",
            dispute_id=dispute_id,
            amount={"value": amount_minor, "currency": "USD"},
            reason="fraudulent",
            payment_id=payment_id,
        )

    def chargeback_closed(self, account_id: str, dispute_id: str, outcome: str) -> InboundLine:
        """The processor decides a chargeback."""
        return self.line(account_id, "dispute.closed", dispute_id=dispute_id, outcome=outcome)

    def payment(
        self, account_id: str, payment_id: str, amount_minor: int, invoice_id: str | None = None
    ) -> InboundLine:
        """A payment.received line in USD by card, naming the invoice if one is given."""
        return self.line(
            account_id,
            "payment.received",
            payment_id=payment_id,
            amount={"value": amount_minor, "currency": "USD"},
            method="card",
            invoice_id=invoice_id,
        )


def build_workload(events: int, accounts: int, run_id: str, *, seed: int = 7) -> Workload:
    """`events` lines over at most `accounts` accounts (openings take at most half the lines)."""
    rng = random.Random(seed)
    writer = LineWriter(run_id)
    account_count = max(1, min(accounts, events // 2))
    names = [account_name(run_id, index) for index in range(account_count)]
    owed = dict.fromkeys(names, 0)
    last_invoice: dict[str, str] = {}
    counts = {
        "opened": 0,
        "invoice": 0,
        "payment": 0,
        "overpayment": 0,
        "dispute_opened": 0,
        "dispute_closed": 0,
        "duplicate": 0,
        "bad": 0,
    }
    last_payment: dict[str, tuple[str, int]] = {}
    open_chargebacks: list[tuple[str, str]] = []
    lines = [writer.opening(name) for name in names]
    counts["opened"] = len(lines)
    bad_makers: Sequence[Callable[[], InboundLine]] = (
        lambda: InboundLine(b"broken", b'{"event_id": "broken'),
        lambda: writer.line(names[0], "payment.received", payment_id="p"),
        lambda: writer.payment(f"nobody-{run_id}", "p", 100),
    )
    while len(lines) < events:
        draw = rng.random()
        if draw < DUPLICATE_SHARE and len(lines) > account_count:
            lines.append(lines[rng.randrange(account_count, len(lines))])
            counts["duplicate"] += 1
            continue
        if draw < DUPLICATE_SHARE + BAD_SHARE:
            lines.append(bad_makers[counts["bad"] % len(bad_makers)]())
            counts["bad"] += 1
            continue
        name = names[rng.randrange(account_count)]
        if draw < DUPLICATE_SHARE + BAD_SHARE + DISPUTE_SHARE:
            if open_chargebacks and (rng.random() < 0.5 or name not in last_payment):
                account, dispute_id = open_chargebacks.pop(rng.randrange(len(open_chargebacks)))
                outcome = "won" if rng.random() < 0.5 else "lost"
                lines.append(writer.chargeback_closed(account, dispute_id, outcome))
                counts["dispute_closed"] += 1
                continue
            if name in last_payment:
                payment_id, paid = last_payment.pop(name)
                dispute_id = f"cb-{writer.sequence + 1}"
                lines.append(writer.chargeback(name, dispute_id, payment_id, paid))
                open_chargebacks.append((name, dispute_id))
                counts["dispute_opened"] += 1
                continue
        if draw < DUPLICATE_SHARE + BAD_SHARE + DISPUTE_SHARE + INVOICE_SHARE or owed[name] == 0:
            amount = rng.randrange(1_000, 50_000)
            invoice_id = f"inv-{writer.sequence + 1}"
            lines.append(writer.invoice(name, invoice_id, amount))
            owed[name] += amount
            last_invoice[name] = invoice_id
            counts["invoice"] += 1
            continue
        if rng.random() < OVERPAYMENT_SHARE:
            amount = owed[name] + rng.randrange(100, 5_000)
            counts["overpayment"] += 1
        else:
            amount = rng.randrange(1, owed[name] + 1)
        payment_id = f"pay-{writer.sequence + 1}"
        lines.append(writer.payment(name, payment_id, amount, last_invoice.get(name)))
        last_payment[name] = (payment_id, amount)
        owed[name] = max(0, owed[name] - amount)
        counts["payment"] += 1
    return Workload(lines=lines, accounts=account_count, counts=counts)


def publish(
    bootstrap: str,
    topic: str,
    lines: Sequence[InboundLine],
    *,
    progress: Callable[[int], None] | None = None,
    producer: KafkaProducer | None = None,
) -> dict[int, int]:
    """Send every line (acks=all) and return each partition's end offset (last offset + 1)."""
    own = producer is None
    sender: KafkaProducer = (
        make_producer(bootstrap, client_id="ledger-bench-publisher")
        if producer is None
        else producer
    )
    ends: dict[int, int] = {}
    failures: list[BaseException] = []

    def delivered(metadata: object) -> None:
        partition = int(getattr(metadata, "partition"))  # noqa: B009
        offset = int(getattr(metadata, "offset"))  # noqa: B009
        if offset + 1 > ends.get(partition, 0):
            ends[partition] = offset + 1

    try:
        for index, line in enumerate(lines, start=1):
            future = sender.send(topic, key=line.key, value=line.value)
            future.add_callback(delivered)
            future.add_errback(failures.append)
            if progress is not None and index % 5_000 == 0:
                progress(index)
        sender.flush()
    finally:
        if own:
            sender.close()
    if failures:
        raise RuntimeError(
            f"{len(failures)} benchmark messages were not delivered: {failures[0]!r}"
        )
    if progress is not None:
        progress(len(lines))
    return ends


_LENGTHS = struct.Struct(">II")
"""A line on disk: the key's and the value's byte lengths, then the key and the value."""


def write_lines(path: Path, lines: Sequence[InboundLine]) -> None:
    """Save lines for another process (the publisher) byte for byte."""
    with path.open("wb") as file:
        for line in lines:
            file.write(_LENGTHS.pack(len(line.key), len(line.value)))
            file.write(line.key)
            file.write(line.value)


def read_lines(path: Path) -> list[InboundLine]:
    """The lines `write_lines` saved."""
    data = path.read_bytes()
    lines: list[InboundLine] = []
    offset = 0
    while offset < len(data):
        key_bytes, value_bytes = _LENGTHS.unpack_from(data, offset)
        offset += _LENGTHS.size
        key = data[offset : offset + key_bytes]
        offset += key_bytes
        lines.append(InboundLine(key, data[offset : offset + value_bytes]))
        offset += value_bytes
    return lines
