"""Staff commands on `ledger.commands`, until the command service exists: every one is refused.

Nothing is lost meanwhile: each command goes to `ledger.commands.dlq` unchanged, as a `contract`
dead letter with the reason below, and its position is stored like any batch's, so the account
worker reads on. The command service replaces this (same `BatchService` shape).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from eventsourcing.persistence import Tracking

from ledger.ingest import DeadLetter, InboundMessage, PreparedBatch
from ledger.persistence.event_store import EventStore

NOT_HANDLED_REASON = "staff commands are not handled yet"


class UnhandledCommands:
    """A `BatchService` that dead-letters every command it is given."""

    def __init__(self, store: EventStore) -> None:
        self._store = store

    @property
    def store(self) -> EventStore:
        """The event store that keeps the topic's positions."""
        return self._store

    def prepare(self, messages: Sequence[InboundMessage]) -> PreparedBatch:
        """Refuse each command, naming its account by the message key where there is one."""
        batch = PreparedBatch()
        for message in messages:
            account_id = message.key.decode("utf-8", "replace") if message.key else None
            batch.dead_letters.append(
                DeadLetter(message, "contract", NOT_HANDLED_REASON, account_id)
            )
        return batch

    def commit(self, batch: PreparedBatch, tracking: Tracking) -> None:
        """Store the position past the batch (it moved no account)."""
        self._store.process_recorder.insert_events([], tracking=tracking)

    def hold(self, batch: PreparedBatch) -> None:
        """Nothing is kept in memory."""

    def release(self, batch: PreparedBatch) -> None:
        """Nothing is kept in memory."""

    def forget(self, account_ids: Iterable[str]) -> None:
        """Nothing is kept in memory."""

    def clear(self) -> None:
        """Nothing is kept in memory."""
