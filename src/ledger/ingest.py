"""The ingest application service: applies a batch of inbound payment facts to the accounts.

One batch is one Kafka partition's records from one poll. The service parses, de-duplicates by
(processor, event_id), applies each fact to its account aggregate (kept in memory, capped) and
returns the new events, dead letters and snapshots; `commit` writes the events, the idempotency
keys, the snapshots and the Kafka position in one transaction. Kafka itself stays in
`consumers.ingest`.

A caller may commit a batch in another thread while it prepares the next one (the consumer does
on PostgreSQL). It then `hold`s the batch it hands over: until `release`, the batch's idempotency
keys count as seen and its accounts stay loaded (never re-read from a store that does not have
them yet). `commit` touches no cached state, and a batch's snapshots are encoded while it is
prepared, because the accounts move on while the commit runs. If the commit fails, every batch
prepared on top of it is wrong: the caller `clear`s everything and reads again from the store.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple, Protocol

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import StoredEvent, Tracking

from ledger import limits
from ledger.clock import Clock
from ledger.domain.account import Account, FactOrigin, account_uuid
from ledger.domain.errors import DomainRuleError, UnknownAccountError
from ledger.domain.money import CurrencyError, Money, MoneyError
from ledger.domain.overpayments import PROCESSOR, Actor
from ledger.domain.policy import Policy
from ledger.persistence.event_store import EventStore
from ledger.persistence.outcomes import CommandOutcome, OutcomeKey
from ledger.schemas.errors import ErrorKind
from ledger.schemas.inbound import (
    AccountOpenedIn,
    CouponRedeemedIn,
    CreditRedeemedIn,
    DisputeClosedIn,
    DisputeOpenedIn,
    FeedbackReceivedIn,
    InboundEvent,
    InboundRejected,
    InvoiceIssuedIn,
    InvoiceVoidedIn,
    PaymentReceivedIn,
    PaymentReturnedIn,
    RefundFailedIn,
    RefundSettledIn,
    parse_inbound,
)


class InboundMessage(NamedTuple):
    """One Kafka record, as received (a named tuple: built for every record, so cheap to build)."""

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

    sequence: int = 0
    events: list[Any] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    accounts: dict[str, Account] = field(default_factory=dict)
    """The accounts the batch moved, by account id."""
    snapshots: list[StoredEvent] = field(default_factory=list)
    """Snapshots of accounts that passed a multiple of the interval, encoded when prepared."""
    outcomes: list[CommandOutcome] = field(default_factory=list)
    """Staff commands' outcomes, recorded with the events (they are the commands' keys)."""
    duplicates: int = 0
    applied: int = 0


class HasAccount(Protocol):
    """A parsed message naming its account (a fact or a staff command)."""

    @property
    def account_id(self) -> str:
        """The account it is for."""
        ...


_HANDLED = (
    InvoiceIssuedIn,
    PaymentReceivedIn,
    RefundSettledIn,
    RefundFailedIn,
    PaymentReturnedIn,
    InvoiceVoidedIn,
    CouponRedeemedIn,
    CreditRedeemedIn,
    DisputeOpenedIn,
    DisputeClosedIn,
    FeedbackReceivedIn,
)
"""The facts about an existing account that the ledger applies."""


class BatchService(Protocol):
    """What the account worker's consumer asks of the service behind one topic.

    One batch is one (topic, partition)'s records from one poll. The consumer owns Kafka, the
    positions and the retries; the service owns parsing and the accounts it keeps in memory.
    """

    @property
    def store(self) -> EventStore:
        """The event store whose process recorder keeps the topic's positions."""
        ...

    def prepare(self, messages: Sequence[InboundMessage]) -> PreparedBatch:
        """Apply a batch in memory; nothing is written yet."""
        ...

    def commit(self, batch: PreparedBatch, tracking: Tracking) -> None:
        """Write the batch and its Kafka position in one transaction (may run in a thread)."""
        ...

    def hold(self, batch: PreparedBatch) -> None:
        """The batch is handed to a commit: what it recorded counts until `release`."""
        ...

    def release(self, batch: PreparedBatch) -> None:
        """The batch's commit is settled (done, or failed and to be redone)."""
        ...

    def forget(self, account_ids: Iterable[str]) -> None:
        """Drop these accounts from memory (a version conflict: the store has moved on)."""
        ...

    def clear(self) -> None:
        """Drop everything kept in memory: the store is the truth again."""
        ...


_ORIGIN_INSIDE = (PaymentReceivedIn, InvoiceIssuedIn, InvoiceVoidedIn)
"""Facts whose aggregate method takes the `FactOrigin` itself (the hot path: no fields built)."""


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
        self._sequence = 0
        # What held batches (handed to a commit not yet confirmed) recorded, outside the cache's
        # cap: their keys, and their accounts with the sequence of the last batch that moved each.
        self._held_keys: set[str] = set()
        self._held_outcomes: dict[OutcomeKey, str] = {}
        self._held_accounts: dict[str, tuple[int, Account]] = {}

    def new_batch(self) -> PreparedBatch:
        """An empty batch with the next sequence number (for every service sharing this one)."""
        self._sequence += 1
        return PreparedBatch(sequence=self._sequence)

    def held_outcomes(self, keys: Iterable[OutcomeKey]) -> dict[OutcomeKey, str]:
        """Of `keys`, the commands whose outcome a held batch records, with their body digests."""
        return {key: self._held_outcomes[key] for key in keys if key in self._held_outcomes}

    def prepare(self, messages: Sequence[InboundMessage]) -> PreparedBatch:
        """Parse, de-duplicate and apply a batch; nothing is written yet."""
        batch = self.new_batch()
        parsed: list[tuple[InboundMessage, InboundEvent]] = []
        for message in messages:
            try:
                parsed.append((message, parse_inbound(message.value)))
            except InboundRejected as rejected:
                batch.dead_letters.append(DeadLetter(message, rejected.kind, rejected.reason))
        keys = [idempotency_key(fact.processor, fact.event_id) for _, fact in parsed]
        seen = self.store.key_recorder.select_inbound_keys(set(keys)) if keys else set()
        seen.update(self._held_keys.intersection(keys))
        absent = self.absent_accounts(fact for _, fact in parsed)
        now = self.clock.now()  # one recording time for the batch: it is one transaction
        for (message, fact), key in zip(parsed, keys, strict=True):
            if key in seen:
                batch.duplicates += 1
                continue
            try:
                self._record(batch, message, fact, absent, now)
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
            batch.applied += 1
        batch.snapshots = self.encode_snapshots(batch)
        return batch

    def _record(
        self,
        batch: PreparedBatch,
        message: InboundMessage,
        fact: InboundEvent,
        absent: set[str],
        now: datetime,
    ) -> None:
        """Apply one new fact (parsed from `message`) to its account; add the account's new
        events to the batch."""
        account = self._apply(fact, absent, now, batch.accounts)
        batch.accounts[fact.account_id] = account
        batch.events.extend(account.collect_events())

    def commit(self, batch: PreparedBatch, tracking: Tracking) -> None:
        """Write the batch's events, keys, snapshots and Kafka position in one transaction.

        Reads nothing the preparing thread changes, so it may run in another thread.
        """
        mapper = self.store.mapper
        stored = [mapper.to_stored_event(event) for event in batch.events]
        self.store.process_recorder.insert_events(
            stored,
            tracking=tracking,
            inbound_keys=batch.keys,
            outcomes=batch.outcomes,
            snapshots=batch.snapshots,
        )

    def hold(self, batch: PreparedBatch) -> None:
        """The batch is being committed: its keys count as seen, its accounts stay loaded."""
        self._held_keys.update(batch.keys)
        for outcome in batch.outcomes:
            self._held_outcomes[outcome.key] = outcome.body_sha256
        for account_id, account in batch.accounts.items():
            self._held_accounts[account_id] = (batch.sequence, account)

    def release(self, batch: PreparedBatch) -> None:
        """The batch's commit is confirmed, the store now answers for its keys and accounts; or
        it failed, and its keys must count as unseen when it is redone."""
        self._held_keys.difference_update(batch.keys)
        for outcome in batch.outcomes:
            self._held_outcomes.pop(outcome.key, None)
        for account_id in batch.accounts:
            held = self._held_accounts.get(account_id)
            if held is not None and held[0] == batch.sequence:
                del self._held_accounts[account_id]

    def encode_snapshots(self, batch: PreparedBatch) -> list[StoredEvent]:
        """Snapshots of the batch's accounts that passed a multiple of the snapshot interval.

        Taken and encoded now: a snapshot shares the account's dicts, which the next batch
        moves on while this one is being committed.
        """
        if self.store.snapshots is None:
            return []
        interval = limits.snapshot_interval_events
        due = {
            event.account_id for event in batch.events if event.originator_version % interval == 0
        }
        mapper = self.store.mapper
        return [
            mapper.to_stored_event(Account.Snapshot.take(batch.accounts[account_id]))
            for account_id in due
        ]

    def clear(self) -> None:
        """Forget every cached account and every held batch (the store is the truth again)."""
        self._cache.clear()
        self._held_keys.clear()
        self._held_outcomes.clear()
        self._held_accounts.clear()

    def forget(self, account_ids: Iterable[str]) -> None:
        """Forget these accounts, cached or held: the next batch naming one loads it afresh.

        After a version conflict (another writer moved an account, say for a fact keyed to the
        wrong partition) only the accounts of the failed batch are stale; the rest stay.
        """
        for account_id in account_ids:
            self._cache.pop(account_id, None)
            self._held_accounts.pop(account_id, None)

    def absent_accounts(self, facts: Iterable[HasAccount]) -> set[str]:
        """Accounts the batch names that neither memory nor the store knows (one query).

        Most openings are of new accounts, and a fact for an account nobody opened is a dead
        letter: loading each of them to find it missing would cost a snapshot and an event
        query apiece, so the batch asks once which of them exist.
        """
        candidates = {
            fact.account_id
            for fact in facts
            if fact.account_id not in self._cache and fact.account_id not in self._held_accounts
        }
        if not candidates:
            return set()
        existing = self.store.key_recorder.select_existing_originators(
            [account_uuid(account_id) for account_id in candidates]
        )
        return {account_id for account_id in candidates if account_uuid(account_id) not in existing}

    def _apply(
        self, fact: InboundEvent, absent: set[str], now: datetime, moved: dict[str, Account]
    ) -> Account:
        """Apply one fact; `absent` holds the batch's accounts that did not exist before it,
        `moved` the accounts the batch has moved so far."""
        origin = FactOrigin(fact.processor, fact.event_id, fact.occurred_at)
        if isinstance(fact, AccountOpenedIn):
            if fact.account_id in absent:
                absent.discard(fact.account_id)  # a second opening in the batch is refused
            elif self.load(fact.account_id, moved) is not None:
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
        if not isinstance(fact, _HANDLED):
            raise DomainRuleError(f"{fact.type} is not handled yet")
        account_or_none = None if fact.account_id in absent else self.load(fact.account_id, moved)
        if account_or_none is None:
            raise UnknownAccountError(f"account {fact.account_id} was never opened")
        self._apply_to(account_or_none, fact, origin, now)
        return account_or_none

    def _apply_to(
        self, account: Account, fact: InboundEvent, origin: FactOrigin, now: datetime
    ) -> None:
        """Apply one processor fact to its (existing) account."""
        policy = self.policy
        fields = {} if isinstance(fact, _ORIGIN_INSIDE) else origin.event_fields()
        if isinstance(fact, PaymentReceivedIn):
            account.receive_payment(
                payment_id=fact.payment_id,
                amount=Money(fact.amount.value, fact.amount.currency),
                method=fact.method,
                invoice_id=fact.invoice_id,
                origin=origin,
                now=now,
                policy=policy,
            )
        elif isinstance(fact, InvoiceIssuedIn):
            account.issue_invoice(
                invoice_id=fact.invoice_id,
                amount=Money(fact.amount.value, fact.amount.currency),
                due_date=fact.due_date,
                origin=origin,
                now=now,
                policy=policy,
            )
        elif isinstance(fact, RefundSettledIn):
            account.check_currency(fact.amount.currency)
            account.settle_refund(
                refund_id=fact.refund_id,
                amount_minor=fact.amount.value,
                origin=fields,
                policy=policy,
                now=now,
            )
        elif isinstance(fact, RefundFailedIn):
            account.fail_refund(
                refund_id=fact.refund_id, reason=fact.reason, origin=fields, policy=policy, now=now
            )
        elif isinstance(fact, PaymentReturnedIn):
            account.check_currency(fact.amount.currency)
            account.return_payment(
                payment_id=fact.payment_id,
                amount_minor=fact.amount.value,
                reason=fact.reason,
                origin=fields,
                now=now,
            )
        elif isinstance(fact, InvoiceVoidedIn):
            account.void_invoice_and_detect(
                invoice_id=fact.invoice_id, origin=origin, policy=policy, now=now
            )
        elif isinstance(fact, CouponRedeemedIn):
            account.check_currency(fact.amount.currency)
            account.redeem_coupon(
                code=fact.coupon_code,
                amount_minor=fact.amount.value,
                invoice_id=fact.invoice_id,
                origin=fields,
                now=now,
            )
        elif isinstance(fact, DisputeOpenedIn):
            account.check_currency(fact.amount.currency)
            account.open_dispute(
                channel="chargeback",
                reason=fact.reason,
                amount_minor=fact.amount.value,
                actor=Actor(fact.processor, PROCESSOR),
                policy=policy,
                now=now,
                payment_id=fact.payment_id,
                external_id=fact.dispute_id,
                respond_by=fact.respond_by,
                source_event_id=fact.event_id,
            )
        elif isinstance(fact, DisputeClosedIn):
            account.resolve_dispute(
                dispute_id=account.dispute_id_of(fact.dispute_id),
                outcome=fact.outcome,
                settlement=None,
                actor=Actor(fact.processor, PROCESSOR),
                policy=policy,
                now=now,
                source_event_id=fact.event_id,
            )
        elif isinstance(fact, FeedbackReceivedIn):
            account.record_feedback(
                dispute_id=account.dispute_id_of(fact.dispute_id),
                score=fact.score,
                comment=fact.comment,
                actor=Actor(fact.processor, PROCESSOR),
                policy=policy,
                now=now,
                source_event_id=fact.event_id,
            )
        elif isinstance(fact, CreditRedeemedIn):
            account.check_currency(fact.amount.currency)
            account.redeem_store_credit(
                redemption_id=fact.redemption_id,
                amount_minor=fact.amount.value,
                invoice_id=fact.invoice_id,
                origin=fields,
                now=now,
            )

    def load(self, account_id: str, moved: dict[str, Account]) -> Account | None:
        """The account from memory (this batch, the cache, a held batch) or else the store."""
        account = moved.get(account_id)
        if account is not None:  # even if the cache's bound dropped it during this batch
            return account
        account = self._cache.get(account_id)
        if account is not None:
            self._cache.move_to_end(account_id)
            return account
        held = self._held_accounts.get(account_id)
        if held is not None:  # dropped from the cache while its commit is not yet confirmed
            self._remember(held[1])
            return held[1]
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
