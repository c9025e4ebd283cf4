"""`ledger demo`: a scripted scenario through the real broker, workers and a temporary database.

Two overpayments go the whole way. The first (USD 600.00 on a monthly account) is notified at
once with the options the policy allows, verified by the two departments its size needs,
refunded by a manager; the demo's processor fails the refund once, staff retry it and it
settles. The second (USD 80.00 on a retail account) is put in escrow, and the scheduler releases
it at expiry (the demo's policy shortens the escrow period) to a refund, which settles. Then a
customer disputes a USD 120.00 bill by phone: a representative is assigned, two contacts are
logged, a plan of two installments is agreed and paid, and the feedback recorded. Staff
commands go the CLI's way (`ledger.staff`): checked, published with the outcome header, and the
recorded outcome awaited.
"""

from __future__ import annotations

import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import orjson
from kafka import KafkaConsumer, TopicPartition
from rich.console import Console

from ledger import limits
from ledger.demo_print import print_summary
from ledger.demo_script import (
    ACCOUNTING,
    AGENT,
    DEMO_ESCROW_PERIOD,
    MANAGER,
    REP,
    RISK,
    SUPERVISOR,
    DemoAccounts,
    StaffMember,
    dispute_facts,
    fact,
    installment_payment,
    opening_facts,
    write_demo_policy,
)
from ledger.domain.money import Money
from ledger.domain.policy import Policy
from ledger.generations import live_positions
from ledger.kafka.clients import ResilientProducer
from ledger.kafka.topics import (
    LEDGER_COMMANDS,
    LEDGER_NOTIFICATIONS,
    PAYMENTS_INBOUND,
    PAYMENTS_INBOUND_DLQ,
    PAYMENTS_OUTBOUND,
)
from ledger.persistence.head import latest_position
from ledger.policy_file import load_policy
from ledger.read_models import names as read_model_names
from ledger.runner import Supervisor
from ledger.settings import Settings
from ledger.staff import (
    StaffCommandRequest,
    StaffRefused,
    check_command,
    publish_command,
    wait_for_outcome,
)
from ledger.storage import open_storage
from projections import dispute_queries, follow_up_queries, overpayment_queries, queries

DEMO_TIMEOUT_S = 90.0
"""The whole scenario's bound (it takes about 30 s on two cores)."""

T = TypeVar("T")


class DemoFailed(RuntimeError):
    """The scenario did not go as scripted."""


def run_demo(settings: Settings, *, json_output: bool, out: Console, err: Console) -> None:
    """Run the scenario and print what happened."""
    accounts = DemoAccounts(uuid.uuid4().hex[:6])
    with tempfile.TemporaryDirectory(prefix="ledger-demo-") as directory:
        demo_settings = settings.model_copy(
            update={
                "database_url": f"sqlite:///{Path(directory) / 'demo.db'}",
                "policy": write_demo_policy(Path(directory)),
            }
        )
        supervisor = Supervisor(demo_settings)
        err.print("starting the broker (if none listens), the workers and a temporary database")
        supervisor.start()
        try:
            summary = _Demo(supervisor.bootstrap, demo_settings, accounts, out, json_output).run()
        finally:
            supervisor.stop()
    if json_output:
        sys.stdout.write(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print_summary(summary, out)


class _Tail:
    """Every record of some topics from their start, read as they arrive (no consumer group)."""

    def __init__(self, bootstrap: str, topics: tuple[str, ...]) -> None:
        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            fetch_max_wait_ms=limits.fetch_max_wait_ms,
            allow_auto_create_topics=False,
        )
        partitions = [
            TopicPartition(topic, p)
            for topic in topics
            for p in self.consumer.partitions_for_topic(topic) or ()
        ]
        self.consumer.assign(partitions)
        self.consumer.seek_to_beginning(*partitions)
        self.records: dict[str, list[Any]] = {topic: [] for topic in topics}

    def poll(self) -> None:
        """Take what has arrived."""
        for partition, records in self.consumer.poll(timeout_ms=100).items():
            self.records[partition.topic].extend(records)

    def close(self) -> None:
        """Stop reading."""
        self.consumer.close()


class _Demo:
    """One run of the scenario: drives it step by step and collects the summary."""

    def __init__(
        self,
        bootstrap: str,
        settings: Settings,
        accounts: DemoAccounts,
        out: Console,
        json_output: bool,
    ) -> None:
        self.bootstrap = bootstrap
        self.settings = settings
        self.accounts = accounts
        self.out = out
        self.json_output = json_output
        self.policy: Policy = load_policy(settings.policy)
        self.deadline = time.monotonic() + DEMO_TIMEOUT_S
        self.steps = 0
        self.outcomes: list[dict[str, Any]] = []
        self.answers: list[dict[str, Any]] = []

    # ----------------------------------------------------------------- the scenario

    def run(self) -> dict[str, Any]:
        """Drive the scenario; the summary document."""
        storage = open_storage(self.settings)
        producer = ResilientProducer(self.bootstrap)
        tail = _Tail(
            self.bootstrap, (LEDGER_NOTIFICATIONS, PAYMENTS_OUTBOUND, PAYMENTS_INBOUND_DLQ)
        )
        self.storage, self.producer, self.tail = storage, producer, tail
        try:
            self._detect()
            self._refund_fails_then_settles()
            self._escrow_released_at_expiry()
            self._dispute_from_a_phone_call()
            return self._summary()
        finally:
            tail.close()
            producer.close()
            storage.close()

    def _detect(self) -> None:
        a, b = self.accounts.refund, self.accounts.escrow
        self.step("the processor publishes facts to payments.inbound")
        for what, key, line in opening_facts(self.accounts):
            self.producer.send(PAYMENTS_INBOUND, key=key.encode(), value=line, headers=[])
            self.say(f"  published: {what}")
        self.producer.flush()
        first = self.overpayment_of(a)
        self.step(
            f"the ledger detects {first['overpayment_id']}: {self.money(first['amount'])}"
            " held as customer credit"
        )
        note = self.message(
            LEDGER_NOTIFICATIONS,
            lambda m: m.get("overpayment_id") == first["overpayment_id"],
            "the overpayment's notification request",
        )
        self.say(
            f"  notification request on ledger.notifications: {note['template']},"
            f" {self.money(note['amount']['value'])}, options {', '.join(note['options'])}"
        )
        self.say(
            f"  sent before any verification: status {first['status']}, must be verified by"
            f" {' and '.join(first['departments'])} (>= USD 500.00 under the policy)"
        )
        self.message(PAYMENTS_INBOUND_DLQ, lambda _: True, "the dead letters", count=2, raw=True)
        self.say(
            "  the duplicate payment changed nothing; the broken line and the unknown account"
            " went to payments.inbound.dlq"
        )
        self.overpayment_of(b)

    def _refund_fails_then_settles(self) -> None:
        overpayment_id = self.overpayment_of(self.accounts.refund)["overpayment_id"]
        amount = self.overpayment_of(self.accounts.refund)["amount"]
        for staff in (ACCOUNTING, RISK):
            self.step(f"{staff.role} verifies {overpayment_id}")
            self.command(
                staff,
                "overpayment.verify",
                overpayment_id,
                {"overpayment_id": overpayment_id, "department": staff.role},
                amount,
            )
            row = self.verified(overpayment_id, staff.role)
            self.say(
                f"  status {row['status']}, verified by {', '.join(row['verifications'])};"
                f" no money moved: {self.places(row)}"
            )
        self.step(f"a manager resolves {overpayment_id} as a refund to the original card")
        self.command(
            MANAGER,
            "overpayment.resolve",
            overpayment_id,
            {"overpayment_id": overpayment_id, "resolution": "refund"},
            amount,
        )
        first = self.refund_request(overpayment_id, attempt=1)
        self.step(f"the processor fails refund {first['refund_id']}")
        self.answer(first, "refund.failed", reason="card expired")
        row = self.wait(
            "the failed refund in the read model",
            lambda: self.row_if(
                overpayment_id,
                lambda r: any(f["status"] == "failed" for f in r["refunds"]),
            ),
        )
        self.say(f"  the money is owed as credit again: {self.places(row)}")
        self.step(f"a manager retries refund {first['refund_id']}")
        self.command(
            MANAGER,
            "refund.retry",
            first["refund_id"],
            {"refund_id": first["refund_id"]},
            first["amount"]["value"],
        )
        second = self.refund_request(overpayment_id, attempt=2)
        self.step(f"the processor settles refund {second['refund_id']}")
        self.answer(second, "refund.settled", amount=second["amount"])
        row = self.wait(
            "the settled refund in the read model",
            lambda: self.row_if(overpayment_id, lambda r: not r["open"]),
        )
        self.say(f"  done: {self.places(row)}")

    def _escrow_released_at_expiry(self) -> None:
        row = self.overpayment_of(self.accounts.escrow)
        overpayment_id, amount = row["overpayment_id"], row["amount"]
        self.step(
            f"the ledger detected {overpayment_id} on {self.accounts.escrow}:"
            f" {self.money(amount)}, verified by {' and '.join(row['departments'])}"
        )
        self.command(
            ACCOUNTING,
            "overpayment.verify",
            overpayment_id,
            {"overpayment_id": overpayment_id, "department": "accounting"},
            amount,
        )
        self.step(f"a supervisor resolves {overpayment_id} into escrow")
        self.command(
            SUPERVISOR,
            "overpayment.resolve",
            overpayment_id,
            {"overpayment_id": overpayment_id, "resolution": "escrow"},
            amount,
        )
        row = self.wait(
            "the escrow hold in the read model",
            lambda: self.row_if(overpayment_id, lambda r: r["escrow_expires_at"] is not None),
        )
        self.say(
            f"  held in escrow until {row['escrow_expires_at']} (the demo policy's period is"
            f" {DEMO_ESCROW_PERIOD}; at expiry it goes to {self.policy.escrow.expiry_release_to})"
        )
        self.step("the scheduler releases the escrow at expiry")
        request = self.refund_request(overpayment_id, attempt=1)
        row = self.wait(
            "the release in the read model",
            lambda: self.row_if(overpayment_id, lambda r: r["escrow_released_to"] is not None),
        )
        release = next(e for e in row["events"] if e["type"] == "escrow_released")
        self.say(
            f"  escrow_released by {release['data']['actor_id']} at {release['occurred_at']}"
            f" (at expiry: {str(release['data']['at_expiry']).lower()}), to"
            f" {row['escrow_released_to']}: {self.places(row)}"
        )
        self.step(f"the processor settles refund {request['refund_id']}")
        self.answer(request, "refund.settled", amount=request["amount"])
        row = self.wait(
            "the settled refund in the read model",
            lambda: self.row_if(overpayment_id, lambda r: not r["open"]),
        )
        self.say(f"  done: {self.places(row)}")

    def _dispute_from_a_phone_call(self) -> None:
        account = self.accounts.dispute
        self.step(f"the processor opens {account} and bills it USD 120.00")
        for what, key, line in dispute_facts(self.accounts):
            self.producer.send(PAYMENTS_INBOUND, key=key.encode(), value=line, headers=[])
            self.say(f"  published: {what}")
        self.producer.flush()
        self.wait(f"{account} in the read model", lambda: self.balance_if(account, 12000))
        self.step("the customer calls: the bill is disputed by phone")
        opening = {
            "channel": "phone",
            "reason": "billed for a week without service",
            "amount": {"value": 12000, "currency": "USD"},
            "invoice_id": "inv-9",
        }
        self.command(AGENT, "dispute.open", account, opening, None)
        row = self.wait(f"the dispute on {account}", lambda: self.dispute_of(account))
        dispute_id = row["dispute_id"]
        self.say(
            f"  {dispute_id}: {self.money(row['held'])} moved from receivable to dispute_hold"
            f" (not asked for while disputed); first response due {row['first_response_due']}"
        )
        self.step(f"a supervisor gives {dispute_id} a dedicated representative")
        self.command(
            SUPERVISOR,
            "dispute.assign",
            dispute_id,
            {"dispute_id": dispute_id, "rep": REP.actor_id},
            None,
        )
        self.step("two contacts are logged (the customer's words stay out of ledger.events)")
        promise_by = (datetime.now(UTC) + timedelta(days=2)).date().isoformat()
        for direction, summary, promise in (
            ("in", "The customer explains the outage week.", None),
            ("out", "Offered a plan in two installments.", "send the plan in writing"),
        ):
            fields: dict[str, Any] = {
                "dispute_id": dispute_id,
                "channel": "phone",
                "direction": direction,
                "summary": summary,
            }
            if promise is not None:
                fields.update(promise=promise, promise_by=promise_by)
            self.command(REP, "dispute.log", dispute_id, fields, None)
        self.step("a plan is agreed: USD 40.00 and USD 80.00")
        today = datetime.now(UTC).date()
        plan = {
            "dispute_id": dispute_id,
            "installments": [
                {"due_date": (today + timedelta(days=30)).isoformat(), "amount_minor": 4000},
                {"due_date": (today + timedelta(days=60)).isoformat(), "amount_minor": 8000},
            ],
        }
        self.command(REP, "dispute.plan", dispute_id, plan, 12000)
        self.say("  USD 120.00 back from dispute_hold to receivable, owed on the plan's schedule")
        self.step("the customer pays both installments; the plan is complete")
        for number, amount in ((1, 4000), (2, 8000)):
            line = installment_payment(self.accounts, number, amount)
            self.producer.send(PAYMENTS_INBOUND, key=account.encode(), value=line, headers=[])
        self.producer.flush()
        row = self.wait(
            "the completed plan",
            lambda: self.dispute_if(dispute_id, lambda r: r["status"] == "resolved"),
        )
        self.say(f"  {dispute_id}: {row['status']} ({row['outcome']})")
        self.step("the customer's feedback is recorded")
        feedback = {"dispute_id": dispute_id, "score": 5, "comment": "Sorted out on one call."}
        self.command(REP, "dispute.feedback", dispute_id, feedback, None)
        row = self.wait(
            "the feedback",
            lambda: self.dispute_if(dispute_id, lambda r: r["feedback_score"] is not None),
        )
        self.say(f"  score {row['feedback_score']} of 5")

    def balance_if(self, account_id: str, receivable: int) -> dict[str, Any] | None:
        """The account's balance once its receivable is as given."""
        try:
            answer = queries.balance(self.storage.database, account_id)
        except queries.NotFound:
            return None
        return answer if answer["receivable"] == receivable else None

    def dispute_of(self, account_id: str) -> dict[str, Any] | None:
        """The account's first dispute in the read model."""
        rows = dispute_queries.disputes(self.storage.database, account_id=account_id)
        found: list[dict[str, Any]] = rows["disputes"]
        return found[0] if found else None

    def dispute_if(
        self, dispute_id: str, condition: Callable[[dict[str, Any]], bool]
    ) -> dict[str, Any] | None:
        """The dispute's read-model row if it meets the condition."""
        try:
            row = dispute_queries.dispute(self.storage.database, dispute_id)
        except queries.NotFound:
            return None
        return row if condition(row) else None

    # ----------------------------------------------------------------- the parts

    def command(
        self,
        staff: StaffMember,
        command_type: str,
        item_id: str,
        fields: dict[str, Any],
        amount_minor: int | None,
    ) -> None:
        """One staff command as the CLI gives it: checked, published, its outcome awaited."""
        account_id = item_id.rsplit(":", 2)[0]
        request = StaffCommandRequest(command_type, account_id, fields, staff.actor_id, staff.role)
        try:
            checked = check_command(request, self.policy, amount_minor)
        except StaffRefused as refused:
            raise DemoFailed(f"{command_type} {item_id} refused at once: {refused}") from refused
        publish_command(self.producer, LEDGER_COMMANDS, checked)
        outcome = wait_for_outcome(
            self.storage.database, account_id, checked.command_id, self.remaining_s()
        )
        self.outcomes.append(
            {"actor": {"id": staff.actor_id, "role": staff.role}, **outcome.public()}
        )
        if outcome.status != "accepted":
            raise DemoFailed(f"{command_type} {item_id}: {outcome.status}: {outcome.reason}")
        versions = ", ".join(str(v) for v in outcome.versions)
        self.say(f"  {staff.actor_id} ({staff.role}): {command_type} accepted (events {versions})")

    def answer(self, request: dict[str, Any], event_type: str, **fields: Any) -> None:
        """The demo's processor answers a refund request on payments.inbound."""
        account_id = request["account_id"]
        event_id = f"{event_type}-{request['refund_id']}"
        line = fact(
            self.accounts.suffix,
            account_id,
            event_id,
            event_type,
            refund_id=request["refund_id"],
            **fields,
        )
        self.producer.send(PAYMENTS_INBOUND, key=account_id.encode(), value=line, headers=[])
        self.producer.flush()
        self.answers.append(orjson.loads(line))
        self.say(f"  published {event_type} to payments.inbound")

    def refund_request(self, overpayment_id: str, *, attempt: int) -> dict[str, Any]:
        """Wait for the refund request of this attempt on payments.outbound."""
        account_id = overpayment_id.rsplit(":", 2)[0]
        request = self.message(
            PAYMENTS_OUTBOUND,
            lambda m: m["account_id"] == account_id and m["attempt"] == attempt,
            f"refund request attempt {attempt} for {account_id}",
        )
        self.say(
            f"  refund request on payments.outbound: {request['refund_id']}, attempt"
            f" {request['attempt']}, {self.money(request['amount']['value'])} to"
            f" {request['method']} (payment {request['payment_id']})"
        )
        return request

    def message(
        self,
        topic: str,
        match: Callable[[dict[str, Any]], bool],
        what: str,
        *,
        count: int = 1,
        raw: bool = False,
    ) -> dict[str, Any]:
        """Wait for `count` messages of this run on a topic that match; the last."""

        def found() -> list[dict[str, Any]] | None:
            self.tail.poll()
            ours = [
                r
                for r in self.tail.records[topic]
                if self.accounts.suffix.encode() in (r.key or b"")
            ]
            bodies = [{} if raw else orjson.loads(r.value) for r in ours]
            hits = [body for body in bodies if match(body)]
            return hits if len(hits) >= count else None

        return self.wait(what, found)[-1]

    def overpayment_of(self, account_id: str) -> dict[str, Any]:
        """Wait for the account's (first) overpayment in the read model."""

        def first() -> dict[str, Any] | None:
            rows = overpayment_queries.overpayments(self.storage.database, account_id=account_id)
            found: list[dict[str, Any]] = rows["overpayments"]
            return found[0] if found else None

        return self.wait(f"an overpayment on {account_id}", first)

    def row_if(
        self, overpayment_id: str, condition: Callable[[dict[str, Any]], bool]
    ) -> dict[str, Any] | None:
        """The overpayment's read-model row if it meets the condition."""
        try:
            row = overpayment_queries.overpayment(self.storage.database, overpayment_id)
        except queries.NotFound:
            return None
        return row if condition(row) else None

    def verified(self, overpayment_id: str, department: str) -> dict[str, Any]:
        """Wait for the department's verification in the read model; the row."""
        return self.wait(
            f"{department}'s verification of {overpayment_id} in the read model",
            lambda: self.row_if(overpayment_id, lambda r: department in r["verifications"]),
        )

    def wait(self, what: str, probe: Callable[[], T | None]) -> T:
        """Poll until the probe answers, bounded by the demo's deadline."""
        while True:
            answer = probe()
            if answer is not None:
                return answer
            if time.monotonic() > self.deadline:
                raise DemoFailed(f"the demo did not see {what} within {DEMO_TIMEOUT_S:g}s")
            time.sleep(limits.demo_poll_s)

    def caught_up(self) -> bool | None:
        """Whether every read model reflects the event store's latest event."""
        database = self.storage.database
        latest = latest_position(database)
        positions = live_positions(database, read_model_names())
        return True if all(at >= latest for at in positions.values()) else None

    # ----------------------------------------------------------------- the summary

    def _summary(self) -> dict[str, Any]:
        self.wait("every read model caught up", self.caught_up)
        self.message(PAYMENTS_INBOUND_DLQ, lambda _: True, "the dead letters", count=2, raw=True)
        database = self.storage.database
        ours = {
            topic: [r for r in records if self.accounts.suffix.encode() in (r.key or b"")]
            for topic, records in self.tail.records.items()
        }
        account_ids = (self.accounts.refund, self.accounts.escrow, self.accounts.dispute)
        return {
            "account_id": self.accounts.refund,
            "escrow_account_id": self.accounts.escrow,
            "dispute_account_id": self.accounts.dispute,
            "policy": {
                "source": str(self.settings.policy),
                "version": self.policy.version,
                "escrow_period": DEMO_ESCROW_PERIOD,
            },
            "history": {a: queries.history(database, a, limit=100) for a in account_ids},
            "notifications": [orjson.loads(r.value) for r in ours[LEDGER_NOTIFICATIONS]],
            "refund_requests": [orjson.loads(r.value) for r in ours[PAYMENTS_OUTBOUND]],
            "processor_answers": self.answers,
            "outcomes": self.outcomes,
            "overpayments": [
                row for a in account_ids for row in self.overpayments_of(a)["overpayments"]
            ],
            "dead_letters": [
                {k: v.decode() for k, v in (r.headers or []) if k.startswith(("error_", "source_"))}
                for r in ours[PAYMENTS_INBOUND_DLQ]
            ],
            "balances": {a: queries.balance(database, a) for a in account_ids},
            "trial_balance": queries.trial_balance(database),
            "follow_ups": follow_up_queries.follow_ups(database),
            "disputes": dispute_queries.disputes(database, account_id=self.accounts.dispute)[
                "disputes"
            ],
        }

    def overpayments_of(self, account_id: str) -> dict[str, Any]:
        """The account's overpayments as `ledger overpayments --account` shows them."""
        return overpayment_queries.overpayments(self.storage.database, account_id=account_id)

    # ----------------------------------------------------------------- printing

    def step(self, text: str) -> None:
        """Announce the next step."""
        self.steps += 1
        self.say(f"[bold cyan]{self.steps}.[/bold cyan] [bold]{text}[/bold]")

    def say(self, text: str) -> None:
        """One line for the terminal (nothing with --json)."""
        if not self.json_output:
            self.out.print(text, highlight=False)

    def remaining_s(self) -> float:
        """What is left of the demo's time."""
        return max(0.1, self.deadline - time.monotonic())

    @staticmethod
    def money(amount_minor: int) -> str:
        """`USD 120.00`."""
        return str(Money(amount_minor, "USD"))

    def places(self, row: dict[str, Any]) -> str:
        """Where an overpayment's money is, as `place USD n.nn`."""
        places: dict[str, int] = row["places"]
        return ", ".join(f"{place} {self.money(n)}" for place, n in places.items())
