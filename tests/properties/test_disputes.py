"""Property tests of payment disputes: random histories of processor facts, dispute commands and
clock moves through the ingest and command services, committed to a real store, checked after
every step.

Each step is one batch: a fact (invoice, payment, a chargeback opened or closed, the processor's
feedback, a dispute's refund settled), a dispute command (open, assign, log, plan with random
installments that may not sum, defer, escalate, adjust, resolve, feedback; by roles with and
without the authority) or a clock move followed by the scheduler firing what is due. After each:
the trial balance over every stored event is zero per currency and each account's stored
postings add up to its balances; no never-negative account is negative; per dispute, the
postings into `dispute_hold` minus those out of it equal what the dispute holds (0 once
resolved) and it is resolved at most once (a second resolution is refused); every accepted plan
summed to what its dispute held; replaying each account from its stored events gives the state
the services hold. Runs on SQLite and on PostgreSQL, each example on an emptied database.
"""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, date, datetime, time, timedelta
from itertools import pairwise
from typing import Any

import orjson
from eventsourcing.application import project_aggregate
from eventsourcing.persistence import Tracking
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.clock import FixedClock
from ledger.commands import CommandService
from ledger.domain import dispute_events as dv
from ledger.domain.account import Account, account_uuid
from ledger.domain.event_names import event_name
from ledger.domain.overpayments import SCHEDULER
from ledger.domain.postings import _NEVER_NEGATIVE, LedgerAccount, natural_balance
from ledger.ingest import InboundMessage, IngestService, PreparedBatch
from ledger.persistence.event_store import EventStore, open_event_store
from ledger.persistence.urls import parse_database_url
from ledger.policy_file import load_policy
from ledger.schemas.commands import OUTCOME_HEADER, firing_command_id
from tests.books import line, opened
from tests.databases import empty_database
from tests.hypothesis_settings import max_examples

POLICY = load_policy()
START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
ACCOUNTS = {"A": ("retail", "USD"), "B": ("monthly", "JPY")}
ROLES = ("agent", "supervisor", "manager", "manager", "manager", "accounting")
CHANNELS = ("phone", "email", "chat", "social")
HOLD = LedgerAccount.DISPUTE_HOLD
AMOUNTS = st.one_of(
    st.integers(min_value=100, max_value=20_000), st.integers(min_value=1, max_value=99)
)


def money(amount_minor: int, currency: str) -> dict[str, Any]:
    return {"value": amount_minor, "currency": currency}


def command(
    command_type: str, account_id: str, actor: tuple[str, str], now: datetime, **fields: Any
) -> bytes:
    """One `ledger.commands` value (a fresh command id unless one is given)."""
    return orjson.dumps(
        {
            "command_id": fields.pop("command_id", str(uuid.uuid4())),
            "type": command_type,
            "account_id": account_id,
            "actor": {"id": actor[0], "role": actor[1]},
            "issued_at": now.isoformat(),
            **fields,
        }
    )


def end_of(day: str) -> datetime:
    return datetime.combine(date.fromisoformat(day), time.max, tzinfo=UTC)


class History:
    """One example: the store, the services, the clock, and the accounts the services hold."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.clock = FixedClock(START)
        self.ingest = IngestService(store, policy=POLICY, clock=self.clock)
        self.command_service = CommandService(self.ingest)
        self.accounts: dict[str, Account] = {}
        self.offsets = {"payments.inbound": 0, "ledger.commands": 0}
        self.numbers = 0

    def event_id(self) -> str:
        self.numbers += 1
        return f"e{self.numbers}"

    def facts(self, *values: bytes) -> PreparedBatch:
        return self._feed("payments.inbound", values)

    def commands(self, *values: bytes) -> PreparedBatch:
        batch = self._feed("ledger.commands", values)
        for outcome in batch.outcomes:
            if outcome.status != "accepted":  # a refusal moves nothing
                assert outcome.versions == ()
        return batch

    def _feed(self, topic: str, values: tuple[bytes, ...]) -> PreparedBatch:
        service: Any = self.ingest if topic == "payments.inbound" else self.command_service
        start = self.offsets[topic]
        messages = [
            InboundMessage(topic, 0, start + n, None, value, ((OUTCOME_HEADER, b"outcome"),))
            for n, value in enumerate(values)
        ]
        batch: PreparedBatch = service.prepare(messages)
        service.commit(batch, Tracking(f"{topic}:prop:0", start + len(values)))
        self.offsets[topic] = start + len(values)
        self.accounts.update(batch.accounts)
        return batch


def likely(fitting: list[str], every: list[str]) -> st.SearchStrategy[str]:
    """Mostly one of the fitting choices (when there are any), sometimes any."""
    if not fitting:
        return st.sampled_from(every)
    return st.one_of(st.sampled_from(fitting), st.sampled_from(fitting), st.sampled_from(every))


def owed(account: Account) -> int:
    return natural_balance("receivable", account.balances.get("receivable", 0))


def draw_fact(data: st.DataObject, history: History, account_id: str) -> tuple[bytes, str | None]:
    """A processor's fact, and the dispute it closes (if it closes one)."""
    account = history.accounts[account_id]
    currency = account.currency
    event_id = history.event_id()
    at = {"occurred_at": history.clock.now().isoformat()}
    chargebacks = sorted(account.dispute_ids)
    open_chargebacks = [
        key for key in chargebacks if account.disputes[account.dispute_ids[key]]["outcome"] is None
    ]
    in_flight = sorted(
        key for key, item in account.refunds.items() if item["status"] == "requested"
    )
    kinds = ["invoice", "invoice", "payment", "payment", "chargeback"]
    kinds += ["closed"] * (1 + 2 * bool(open_chargebacks)) if account.disputes else []
    kinds += ["feedback"] * bool(account.disputes)
    kinds += ["refund"] * (3 * bool(in_flight))
    kind = data.draw(st.sampled_from(kinds), label="fact")
    if kind == "invoice":
        return line(
            event_id,
            "invoice.issued",
            account_id,
            invoice_id=f"inv-{event_id}",
            amount=money(data.draw(AMOUNTS, label="invoice"), currency),
            due_date="2027-01-31",
            **at,
        ), None
    if kind == "payment":
        installments = [
            i["amount"] - i["paid"]
            for dispute in account.disputes.values()
            if dispute["status"] == "plan"
            for i in dispute["plan"]
            if i["paid"] < i["amount"]
        ]
        exact = [st.sampled_from([owed(account), *installments])] if owed(account) else []
        amount = data.draw(st.one_of(AMOUNTS, *exact), label="payment")
        return line(
            event_id,
            "payment.received",
            account_id,
            payment_id=f"pay-{event_id}",
            amount=money(amount, currency),
            method="card",
            **at,
        ), None
    if kind == "chargeback":
        external_id = data.draw(likely([f"cb-{event_id}"], [f"cb-{event_id}", *chargebacks]))
        payment_id = data.draw(st.sampled_from([None, *sorted(account.payments)]), label="paid")
        return line(
            event_id,
            "dispute.opened",
            account_id,
            dispute_id=external_id,
            amount=money(data.draw(AMOUNTS, label="chargeback"), currency),
            reason="fraud",
            payment_id=payment_id,
            respond_by=(history.clock.now() + timedelta(days=7)).isoformat(),
            **at,
        ), None
    if kind == "closed":
        named = data.draw(likely(open_chargebacks, [*chargebacks, *sorted(account.disputes)]))
        outcome = data.draw(st.sampled_from(("won", "lost", "withdrawn")), label="outcome")
        closes = account.dispute_ids.get(named, named)
        return line(
            event_id, "dispute.closed", account_id, dispute_id=named, outcome=outcome, **at
        ), closes
    if kind == "refund":
        refund_id = data.draw(st.sampled_from(in_flight), label="refund")
        return line(
            event_id,
            "refund.settled",
            account_id,
            refund_id=refund_id,
            amount=money(account.refunds[refund_id]["amount"], currency),
            **at,
        ), None
    named = data.draw(st.sampled_from([*chargebacks, *sorted(account.disputes)]), label="dispute")
    return line(
        event_id,
        "feedback.received",
        account_id,
        dispute_id=named,
        score=data.draw(st.integers(min_value=1, max_value=5), label="score"),
        **at,
    ), None


def draw_command(
    data: st.DataObject, history: History, account_id: str
) -> tuple[bytes, str | None, str | None]:
    """A dispute command, the dispute it resolves (if it resolves one) and, for a plan, why it
    must be refused (its sum is not what the dispute holds) or None."""
    account = history.accounts[account_id]
    now = history.clock.now()
    role = data.draw(st.sampled_from(ROLES), label="role")
    actor = (f"staff-{role}", role)
    kinds = ["open", "open"]
    if account.disputes:
        kinds += ["assign", "log", "plan", "plan", "plan", "defer", "escalate", "adjust"]
        kinds += ["resolve", "resolve", "feedback"]
    kind = data.draw(st.sampled_from(kinds), label="command")
    if kind == "open":
        fits = [st.integers(min_value=1, max_value=owed(account))] * 3 if owed(account) else []
        amount = data.draw(st.one_of(AMOUNTS, *fits), label="disputed")
        invoice_id = data.draw(st.sampled_from([None, *sorted(account.invoices)]), label="bill")
        payment_id = data.draw(st.sampled_from([None, *sorted(account.payments)]), label="paid")
        return (
            command(
                "dispute.open",
                account_id,
                actor,
                now,
                channel=data.draw(st.sampled_from(CHANNELS), label="channel"),
                reason="charged twice",
                amount=money(amount, account.currency),
                invoice_id=invoice_id,
                payment_id=payment_id,
            ),
            None,
            None,
        )
    open_ones = sorted(key for key, item in account.disputes.items() if item["outcome"] is None)
    bills = [key for key in open_ones if account.disputes[key]["kind"] == "billing"]
    fitting = open_ones
    if kind == "feedback":
        fitting = sorted(k for k, item in account.disputes.items() if item["outcome"] is not None)
    elif kind in ("plan", "adjust"):
        fitting = [key for key in bills if account.disputes[key]["held"]]
    elif kind == "resolve":
        fitting = [key for key in bills if account.disputes[key]["status"] != "plan"]
    dispute_id = data.draw(likely(fitting, sorted(account.disputes)), label="dispute")
    dispute = account.disputes[dispute_id]
    fields: dict[str, Any] = {"dispute_id": dispute_id}
    if kind == "assign":
        fields["rep"] = data.draw(st.sampled_from(("ann", "bob", "cid")), label="rep")
    elif kind == "log":
        fields["channel"] = data.draw(st.sampled_from(CHANNELS), label="channel")
        fields["direction"] = data.draw(st.sampled_from(("in", "out")), label="direction")
        fields["summary"] = "talked"
        if data.draw(st.booleans(), label="promise"):
            fields["promise"] = "call back"
            fields["promise_by"] = (now.date() + timedelta(days=3)).isoformat()
    elif kind == "plan":
        return draw_plan(data, account_id, actor, now, dispute)
    elif kind == "defer":
        days = data.draw(st.integers(min_value=0, max_value=30), label="deferred days")
        fields["until"] = (now.date() + timedelta(days=days)).isoformat()
    elif kind == "escalate":
        fields["to_role"] = data.draw(st.sampled_from(("supervisor", "manager")), label="to")
    elif kind == "adjust":
        fields["amount_minor"] = data.draw(
            st.integers(min_value=1, max_value=dispute["held"] + 10), label="adjustment"
        )
        fields["reason"] = "goodwill"
    elif kind == "resolve":
        fields["outcome"] = data.draw(
            st.sampled_from(("customer_favour", "upheld", "withdrawn")), label="outcome"
        )
        settlement = data.draw(st.sampled_from((None, "refund", "credit")), label="settlement")
        if settlement is not None:
            fields["settlement"] = settlement
        value = command("dispute.resolve", account_id, actor, now, **fields)
        return value, dispute_id, None
    else:
        fields["score"] = data.draw(st.integers(min_value=1, max_value=5), label="score")
    return command(f"dispute.{kind}", account_id, actor, now, **fields), None, None


def draw_plan(
    data: st.DataObject,
    account_id: str,
    actor: tuple[str, str],
    now: datetime,
    dispute: dict[str, Any],
) -> tuple[bytes, str | None, str | None]:
    """A plan: mostly installments that sum to what is held (with a part forgiven), sometimes
    any amounts."""
    held = dispute["held"]
    count = data.draw(st.integers(min_value=1, max_value=3), label="installments")
    forgiven = data.draw(st.sampled_from((0, 0, 0, 1, held // 10)), label="forgiven")
    if held - forgiven >= count and data.draw(st.sampled_from((True, True, False)), label="sums"):
        cuts = sorted(
            data.draw(
                st.lists(
                    st.integers(min_value=1, max_value=held - forgiven - 1),
                    min_size=count - 1,
                    max_size=count - 1,
                    unique=True,
                ),
                label="cuts",
            )
            if count > 1 and held - forgiven > count
            else []
        )
        bounds = [0, *cuts, held - forgiven]
        amounts = [b - a for a, b in pairwise(bounds)]
    else:
        amounts = data.draw(st.lists(AMOUNTS, min_size=1, max_size=3), label="any amounts")
    installments = [
        {"due_date": (now.date() + timedelta(days=10 * (n + 1))).isoformat(), "amount_minor": a}
        for n, a in enumerate(amounts)
    ]
    wrong = None
    if sum(amounts) + forgiven != held or dispute["outcome"] is not None:
        wrong = f"{sum(amounts)} + {forgiven} for {held} held"
    value = command(
        "dispute.plan",
        account_id,
        actor,
        now,
        dispute_id=dispute["id"],
        installments=installments,
        forgiven_minor=forgiven,
    )
    return value, None, wrong


def due_firings(history: History) -> list[bytes]:
    """What the scheduler would fire now for disputes and follow-ups, from the state held."""
    now = history.clock.now()
    firings: list[tuple[str, str, str, str, int | None]] = []
    for account_id, account in sorted(history.accounts.items()):
        for dispute_id, dispute in account.disputes.items():
            if dispute["outcome"] is not None:
                continue
            if datetime.fromisoformat(dispute["update_due"]) <= now:
                firings.append((account_id, "dispute_update", dispute_id, dispute["update_due"], 0))
            for index, installment in enumerate(dispute["plan"] or ()):
                grace_end = end_of(installment["due"]) + POLICY.disputes.installment_grace
                if installment["status"] == "due" and grace_end <= now:
                    firings.append(
                        (account_id, "installment_due", dispute_id, installment["due"], index + 1)
                    )
            until = dispute["deferred_until"]
            if dispute["status"] == "deferred" and until and end_of(until) < now:
                firings.append((account_id, "deferral_end", dispute_id, until, None))
        for follow_up_id, follow_up in account.follow_ups.items():
            due = follow_up["due_at"]
            if follow_up["status"] == "open" and datetime.fromisoformat(due) <= now:
                firings.append((account_id, "follow_up", follow_up_id, due, None))
    return [
        command(
            "schedule.fire",
            account_id,
            (SCHEDULER, SCHEDULER),
            now,
            command_id=firing_command_id(item, item_id, due_at, attempt or None),
            item=item,
            item_id=item_id,
            due_at=due_at,
            **({"attempt": attempt} if attempt else {}),
        )
        for account_id, item, item_id, due_at, attempt in firings
    ]


def check(history: History) -> None:
    """Every invariant, after one step."""
    currency = {account_id: currency for account_id, (_, currency) in ACCOUNTS.items()}
    stored: dict[str, Counter[str]] = {}
    held: Counter[str] = Counter()
    resolutions: Counter[str] = Counter()
    for notification in history.store.process_recorder.select_notifications(start=0, limit=100_000):
        state = orjson.loads(notification.state)
        name = event_name(notification.topic)
        dispute_id = state.get("dispute_id")
        if name == dv.PlanAgreed.TOPIC:
            # Accepted only if the installments and the part forgiven sum to what was held.
            total = sum(amount for _, amount in state["installments"])
            assert total + state["forgiven_minor"] == held[dispute_id], (state, held)
        if name == dv.DisputeResolved.TOPIC:
            resolutions[dispute_id] += 1
        for posting in state.get("postings", ()):
            assert posting["debit"] != posting["credit"] and posting["amount_minor"] > 0
            assert posting["currency"] == currency[state["account_id"]]
            books = stored.setdefault(state["account_id"], Counter())
            books[posting["debit"]] += posting["amount_minor"]
            books[posting["credit"]] -= posting["amount_minor"]
            into_hold = (posting["debit"] == HOLD) - (posting["credit"] == HOLD)
            if into_hold:
                assert dispute_id is not None, state  # only a dispute's events move holds
                held[dispute_id] += into_hold * posting["amount_minor"]
    trial: Counter[str] = Counter()
    for account_id, books in stored.items():
        trial[currency[account_id]] += sum(books.values())
    assert all(total == 0 for total in trial.values()), trial
    for account_id, account in history.accounts.items():
        balances = {name: raw for name, raw in account.balances.items() if raw}
        assert balances == {name: raw for name, raw in stored.get(account_id, {}).items() if raw}
        for name in _NEVER_NEGATIVE:
            assert natural_balance(name, account.balances.get(name, 0)) >= 0, name
        for dispute_id, dispute in account.disputes.items():
            # The hold is released exactly once: what moved in and out is what it holds.
            assert held[dispute_id] == dispute["held"] >= 0, (dispute_id, dispute)
            assert resolutions[dispute_id] == (dispute["status"] == "resolved"), dispute
            if dispute["status"] == "resolved":
                assert dispute["held"] == 0
        assert account.balances.get(HOLD, 0) == sum(d["held"] for d in account.disputes.values())
        # Replay from the stored events alone gives the state the services hold.
        replayed = project_aggregate(None, history.store.events.get(account_uuid(account_id)))
        assert isinstance(replayed, Account)
        loaded = history.store.repository.get(account_uuid(account_id))
        for copy in (replayed, loaded):
            assert state_of(copy) == state_of(account)


def state_of(account: Any) -> dict[str, Any]:
    return {
        name: value
        for name, value in vars(account).items()
        if name not in ("_pending_events", "_modified_on")
    }


@settings(
    max_examples=max_examples(default=15),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_dispute_invariants_hold_after_every_step(database_url: str, data: st.DataObject) -> None:
    empty_database(database_url)
    store = open_event_store(parse_database_url(database_url), create_table=True)
    try:
        history = History(store)
        history.facts(
            *(
                opened(f"open-{account_id}", account_id, currency=currency, kind=kind)
                for account_id, (kind, currency) in ACCOUNTS.items()
            )
        )
        check(history)
        steps = data.draw(st.integers(min_value=10, max_value=40), label="steps")
        for _ in range(steps):
            step = data.draw(st.sampled_from(("fact", "fact", "command", "command", "time")))
            account_id = data.draw(st.sampled_from(sorted(ACCOUNTS)), label="account")
            account = history.accounts[account_id]
            if step == "fact":
                value, closes = draw_fact(data, history, account_id)
                resolved_before = closes is not None and (
                    account.disputes.get(closes, {}).get("status") == "resolved"
                )
                batch = history.facts(value)
                if resolved_before:  # a second resolution is refused
                    assert len(batch.dead_letters) == 1
            elif step == "command":
                value, resolves, wrong_plan = draw_command(data, history, account_id)
                resolved_before = (
                    resolves is not None and account.disputes[resolves]["status"] == "resolved"
                )
                batch = history.commands(value)
                assert len(batch.outcomes) == 1, batch.dead_letters
                (outcome,) = batch.outcomes
                if resolved_before:
                    assert outcome.status == "refused", outcome
                if wrong_plan is not None:
                    assert outcome.status == "refused", (wrong_plan, outcome)
            else:
                unit = data.draw(st.sampled_from(("hours", "days", "days")), label="unit")
                amount = data.draw(st.integers(min_value=1, max_value=40), label="how long")
                delta = timedelta(hours=amount) if unit == "hours" else timedelta(days=amount)
                history.clock.advance(delta)
                firings = due_firings(history)
                if firings:
                    batch = history.commands(*firings)
                    assert all(o.status != "refused" for o in batch.outcomes), batch.outcomes
            check(history)
    finally:
        store.close()
