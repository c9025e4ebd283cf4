"""Helpers that build staff commands and the protocol's inbound facts, shared by the tests."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import orjson
from eventsourcing.persistence import Tracking

from ledger.commands import CommandService
from ledger.ingest import InboundMessage, IngestService, PreparedBatch
from ledger.schemas.commands import OUTCOME_HEADER
from tests.books import line


def command(
    command_type: str,
    account_id: str,
    actor: tuple[str, str],
    issued_at: datetime,
    **fields: Any,
) -> bytes:
    """One `ledger.commands` value (a fresh command id unless one is given)."""
    return orjson.dumps(
        {
            "command_id": fields.pop("command_id", str(uuid.uuid4())),
            "type": command_type,
            "account_id": account_id,
            "actor": {"id": actor[0], "role": actor[1]},
            "issued_at": issued_at.isoformat(),
            **fields,
        }
    )


def money(amount_minor: int, currency: str = "USD") -> dict[str, Any]:
    """An amount on the wire."""
    return {"value": amount_minor, "currency": currency}


def fact(event_id: str, event_type: str, account_id: str, **fields: Any) -> bytes:
    """An inbound fact of the protocol (refunds, returns, voids, redemptions)."""
    return line(event_id, event_type, account_id, **fields)


class Feeder:
    """Feeds one-message batches to the services and commits each, like the consumers do."""

    def __init__(self, ingest: IngestService, commands: CommandService) -> None:
        self.ingest = ingest
        self.commands = commands
        self.offsets = {"payments.inbound": 0, "ledger.commands": 0}

    def facts(self, *values: bytes) -> PreparedBatch:
        """Apply and commit inbound facts as one batch."""
        return self._feed(self.ingest.prepare, self.ingest.commit, "payments.inbound", values)

    def commands_(self, *values: bytes) -> PreparedBatch:
        """Apply and commit staff commands as one batch (their callers wait for outcomes)."""
        return self._feed(self.commands.prepare, self.commands.commit, "ledger.commands", values)

    def _feed(self, prepare: Any, commit: Any, topic: str, values: tuple[bytes, ...]) -> Any:
        start = self.offsets[topic]
        messages = [
            InboundMessage(topic, 0, start + n, None, value, ((OUTCOME_HEADER, b"outcome"),))
            for n, value in enumerate(values)
        ]
        batch = prepare(messages)
        commit(batch, Tracking(f"{topic}:test:0", start + len(values)))
        self.offsets[topic] = start + len(values)
        return batch
