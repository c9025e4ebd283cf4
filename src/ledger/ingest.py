"""The ingest application service: applies a batch of inbound payment facts to the accounts.

One batch is one Kafka partition's records from one poll. The service parses, de-duplicates by
(processor, event_id), applies each fact to its account aggregate (kept in memory, capped) and
returns the new events and dead letters; `commit` writes the events, the idempotency keys and the
Kafka position in one transaction. Kafka itself stays in `consumers.ingest`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from eventsourcing.application import AggregateNotFoundError
from eventsourcing.domain import Snapshot
from eventsourcing.persistence import PersistenceError, Tracking

from ledger import limits
from ledger.clock import Clock
from ledger.domain.account import Account, FactOrigin, account_uuid
from ledger.domain.errors import DomainRuleError, UnknownAccountError
from ledger.domain.money import CurrencyError, Money, MoneyError
from ledger.domain.policy import Policy
from ledger.persistence.event_store import EventStore
from ledger.schemas.errors import ErrorKind
from ledger.schemas.inbound import (
    AccountOpenedIn,
    InboundEvent,
    InboundRejected,
    InvoiceIssuedIn,
    PaymentReceivedIn,
    parse_inbound,
)

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """One Kafka record, as received."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] = ()


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message the ledger refused, with the reason."""

    message: InboundMessage
    kind: ErrorKind
    reason: str
    account_id: str | None = None
    event_id: str | None = None


@dataclass
class PreparedBatch:
    """What one batch produced, ready to be committed."""

    events: list[Any] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    touched: set[str] = field(default_factory=set)
    duplicates: int = 0
    applied: int = 0


def idempotency_key(processor: str, event_id: str) -> str:
    """The key that makes the same processor event count once."""
    return f"{processor}\x1f{event_id}"


class IngestService:
    """Applies inbound facts to account aggregates; the caller owns Kafka and retries."""

    def __init__(
        self,
        store: EventStore,
        *,
        policy: Policy,
        clock: Clock,
        cache_max: int = limits.aggregate_cache_max,
    ) -> None:
        self.store = store
        self.policy = policy
        self.clock = clock
        self.cache_max = cache_max
        self._cache: OrderedDict[str, Account] = OrderedDict()

    def prepare(self, messages: Sequence[InboundMessage]) -> PreparedBatch:
        """Parse, de-duplicate and apply a batch; nothing is written yet."""
        batch = PreparedBatch()
        parsed: list[tuple[InboundMessage, InboundEvent]] = []
        for message in messages:
            try:
                parsed.append((message, parse_inbound(message.value)))
            except InboundRejected as rejected:
                batch.dead_letters.append(DeadLetter(message, rejected.kind, rejected.reason))
        keys = [idempotency_key(fact.processor, fact.event_id) for _, fact in parsed]
        seen = self.store.key_recorder.select_inbound_keys(set(keys)) if keys else set()
        unopened = self._never_opened(fact for _, fact in parsed)
        for (message, fact), key in zip(parsed, keys, strict=True):
            if key in seen:
                batch.duplicates += 1
                continue
            try:
                account = self._apply(fact, unopened)
            except UnknownAccountError as error:
                batch.dead_letters.append(
                    DeadLetter(
                        message, "unknown_account", str(error), fact.account_id, fact.event_id
                    )
                )
                continue
            except (DomainRuleError, CurrencyError, MoneyError) as error:
                batch.dead_letters.append(
                    DeadLetter(message, "domain_rule", str(error), fact.account_id, fact.event_id)
                )
                continue
            seen.add(key)
            batch.keys.append(key)
            batch.touched.add(fact.account_id)
            batch.events.extend(account.collect_events())
            batch.applied += 1
        return batch

    def commit(self, batch: PreparedBatch, tracking: Tracking) -> None:
        """Write the batch's events, keys and Kafka position in one transaction."""
        mapper = self.store.mapper
        stored = [mapper.to_stored_event(event) for event in batch.events]
        self.store.process_recorder.insert_events(
            stored, tracking=tracking, inbound_keys=batch.keys
        )
        self._take_snapshots(batch)

    def _take_snapshots(self, batch: PreparedBatch) -> None:
        """Snapshot every cached account that passed a multiple of the snapshot interval.

        Best effort, after the commit: a snapshot only makes loading faster, and one that
        already exists (the batch was re-done) is simply there already.
        """
        snapshots = self.store.snapshots
        interval = limits.snapshot_interval_events
        if snapshots is None:
            return
        due = {
            event.account_id for event in batch.events if event.originator_version % interval == 0
        }
        taken = [
            Snapshot.take(account)
            for account in (self._cache.get(account_id) for account_id in due)
            if account is not None
        ]
        if not taken:
            return
        try:
            snapshots.put(taken)
        except PersistenceError as error:
            log.info("snapshots not written", accounts=len(taken), error=str(error))

    def evict(self, account_ids: Iterable[str]) -> None:
        """Forget cached accounts (after a failed commit their memory is ahead of the store)."""
        for account_id in account_ids:
            self._cache.pop(account_id, None)

    def clear(self) -> None:
        """Forget every cached account."""
        self._cache.clear()

    def _never_opened(self, facts: Iterable[InboundEvent]) -> set[str]:
        """Accounts the batch opens that neither the cache nor the store knows (one query).

        Loading an account that does not exist costs a snapshot and an event query each; most
        openings are of new accounts, so the batch asks once which of them exist.
        """
        candidates = {
            fact.account_id
            for fact in facts
            if isinstance(fact, AccountOpenedIn) and fact.account_id not in self._cache
        }
        if not candidates:
            return set()
        existing = self.store.key_recorder.select_existing_originators(
            [account_uuid(account_id) for account_id in candidates]
        )
        return {account_id for account_id in candidates if account_uuid(account_id) not in existing}

    def _apply(self, fact: InboundEvent, unopened: set[str]) -> Account:
        now = self.clock.now()
        origin = FactOrigin(fact.processor, fact.event_id, fact.occurred_at)
        if isinstance(fact, AccountOpenedIn):
            if fact.account_id in unopened:
                unopened.discard(fact.account_id)  # a second opening in the batch is refused
            elif self._load(fact.account_id) is not None:
                raise DomainRuleError(f"account {fact.account_id} is already open")
            account = Account.open(
                account_id=fact.account_id,
                customer_id=fact.customer_id,
                kind=fact.kind,
                jurisdiction=fact.jurisdiction,
                currency=fact.currency,
                origin=origin,
                now=now,
            )
            self._remember(account)
            return account
        if not isinstance(fact, InvoiceIssuedIn | PaymentReceivedIn):
            raise DomainRuleError(f"{fact.type} is not handled yet")
        account_or_none = self._load(fact.account_id)
        if account_or_none is None:
            raise UnknownAccountError(f"account {fact.account_id} was never opened")
        account = account_or_none
        if isinstance(fact, InvoiceIssuedIn):
            account.issue_invoice(
                invoice_id=fact.invoice_id,
                amount=Money(fact.amount.value, fact.amount.currency),
                due_date=fact.due_date,
                origin=origin,
                now=now,
            )
        else:
            account.receive_payment(
                payment_id=fact.payment_id,
                amount=Money(fact.amount.value, fact.amount.currency),
                method=fact.method,
                invoice_id=fact.invoice_id,
                origin=origin,
                now=now,
                policy=self.policy,
            )
        return account

    def _load(self, account_id: str) -> Account | None:
        account = self._cache.get(account_id)
        if account is not None:
            self._cache.move_to_end(account_id)
            return account
        try:
            loaded: object = self.store.repository.get(account_uuid(account_id))
        except AggregateNotFoundError:
            return None
        if not isinstance(loaded, Account):
            raise DomainRuleError(f"aggregate of {account_id} is not an account")
        self._remember(loaded)
        return loaded

    def _remember(self, account: Account) -> None:
        self._cache[account.account_id] = account
        self._cache.move_to_end(account.account_id)
        while len(self._cache) > self.cache_max:
            self._cache.popitem(last=False)
