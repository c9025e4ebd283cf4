"""The `ledger` command: the composition root for people.

Queries print one JSON document with `--json`; logs and progress always go to stderr. Exit codes:
0 success, 2 bad input, a refused command, a misconfiguration or an unreachable database or
broker (one line on stderr saying why), 1 internal failure.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer

# Only what every command needs is imported here: a query must answer at once, and importing
# the Kafka client, psycopg, pydantic-settings, structlog or the domain costs more than a
# query's whole budget. Everything else is imported by the command that uses it.
from ledger import limits
from ledger.env_settings import SettingsError, read_query_settings
from ledger.lazylog import get_logger
from ledger.persistence.database import Database, DatabaseUnavailable
from ledger.persistence.head import latest_position
from ledger.persistence.reachability import check_database
from ledger.persistence.urls import DatabaseUrlError, parse_database_url

if TYPE_CHECKING:
    from rich.console import Console

    from ledger.projection import Projection
    from ledger.rebuild import Rebuilt
    from ledger.settings import Settings
    from ledger.storage import Storage

app = typer.Typer(
    name="ledger",
    help="Event-sourced ledger for customer overpayments and payment disputes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help: rich-formatted help costs `ledger --help` another tenth of a second.
    rich_markup_mode=None,
)
projections_app = typer.Typer(
    help="Read models: their positions; rebuild them aside.", rich_markup_mode=None
)
app.add_typer(projections_app, name="projections")
policy_app = typer.Typer(
    help="The policy file: show the one in use, check one before using it.",
    rich_markup_mode=None,
)
app.add_typer(policy_app, name="policy")
overpayments_app = typer.Typer(
    help="Overpayments: list them (the default), show one; staff verbs act on them.",
    rich_markup_mode=None,
)
app.add_typer(overpayments_app, name="overpayments")
disputes_app = typer.Typer(
    help="Disputes: list them (the default), show one's story, the feedback report; staff verbs"
    " act on them.",
    rich_markup_mode=None,
)
app.add_typer(disputes_app, name="disputes")

log = get_logger(__name__)


@cache
def out() -> Console:
    """The terminal console on stdout (tables)."""
    from rich.console import Console

    return Console(soft_wrap=True)


@cache
def err() -> Console:
    """The terminal console on stderr (progress, status lines)."""
    from rich.console import Console

    return Console(stderr=True)


JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
WaitOption = Annotated[
    bool, typer.Option("--wait", help="Wait until the read models reach the latest event.")
]
TimeoutOption = Annotated[
    float, typer.Option("--timeout", help="Longest wait in seconds (with --wait).")
]


class Refused(Exception):
    """Bad input or a refused command: exit 2 with this one line."""


def say(line: str) -> None:
    """One unwrapped line on stderr."""
    sys.stderr.write(" ".join(line.split()) + "\n")
    sys.stderr.flush()


def announce(line: str, **fields: Any) -> None:
    """A status line on stderr: a structured log line when logs are JSON, else one plain line."""
    from ledger.logging import logs_as_json

    if logs_as_json():
        log.info(line, **fields)
    else:
        say(line)


def settings_and_logging() -> Settings:
    """Load settings and configure logging (stderr)."""
    from ledger.logging import configure_logging
    from ledger.settings import load_settings

    settings = load_settings()
    configure_logging(settings.log_format, settings.log_level)
    return settings


def print_json(document: Any) -> None:
    """One JSON document on stdout."""
    sys.stdout.write(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n")
    sys.stdout.flush()


def open_for_query(database_url: str) -> Database:
    """A read-only connection for a query: it creates nothing and writes nothing."""
    try:
        target = parse_database_url(database_url)
    except DatabaseUrlError as error:
        raise Refused(str(error)) from error
    if target.kind == "sqlite":
        # PostgreSQL: the query's own connection says as clearly what is wrong, one connect
        # sooner; SQLite: the file and its directory are checked before anything opens them.
        check_database(target, writing=False)
    return Database(target, read_only=True)


def open_for_writing(settings: Settings) -> Storage:
    """Storage for a command that writes (rebuild, republish), its schema prepared first."""
    from ledger.deploy_setup import prepare_database

    try:
        target = parse_database_url(settings.database_url)
    except DatabaseUrlError as error:
        raise Refused(str(error)) from error
    check_database(target, writing=True)
    prepare_database(target)
    from ledger.storage import open_storage

    return open_storage(settings)


def wait_for_read_models(database: Database, reads: tuple[str, ...], timeout_s: float) -> None:
    """Block until every read model a query reads reflects the event store's latest event."""
    from ledger.generations import live_positions

    latest = latest_position(database)
    deadline = time.monotonic() + timeout_s
    delay_s = limits.query_wait_poll_initial_s
    while behind := [name for name, at in live_positions(database, reads).items() if at < latest]:
        if time.monotonic() > deadline:
            raise Refused(
                f"read model {', '.join(behind)} did not reach position {latest} within"
                f" {timeout_s:g}s: is `ledger run` running?"
            )
        time.sleep(delay_s)
        delay_s = min(delay_s * 2, limits.query_wait_poll_max_s)


@contextmanager
def query_database(*, reads: tuple[str, ...], wait: bool, timeout_s: float) -> Iterator[Database]:
    """The database for one query of the `reads` read models: optionally waits for them.

    Settings are read without pydantic-settings and logging is set up only if a line is written
    (`ledger.lazylog`): a query answers within a few tenths of a second.
    """
    from ledger.generations import ProjectionMissing
    from projections.queries import NotFound

    database = open_for_query(read_query_settings().database_url)
    try:
        if wait:
            wait_for_read_models(database, reads, timeout_s)
        yield database
    except (NotFound, ProjectionMissing) as error:
        raise Refused(str(error)) from error
    finally:
        database.close()


def _timestamp_option(at: str | None) -> datetime | None:
    """An `--at` value as a timezone-aware moment (typer's own datetime parsing takes no offset)."""
    if at is None:
        return None
    try:
        moment = datetime.fromisoformat(at)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise Refused(f"--at {at!r}: give a timestamp with an offset, e.g. 2026-11-25T10:00:00Z")
    return moment


def _money_table(title: str, rows: list[tuple[str, Any]]) -> Any:
    from rich.table import Table

    table = Table(title=title)
    table.add_column("field")
    table.add_column("value", justify="right")
    for name, value in rows:
        table.add_row(name, str(value))
    return table


@app.command()
def balance(
    account: str,
    at: Annotated[str | None, typer.Option("--at", help="As of this time (RFC 3339).")] = None,
    json_output: JsonOption = False,
    wait: WaitOption = False,
    timeout: TimeoutOption = limits.query_wait_timeout_s,
) -> None:
    """Balances of one account (optionally as of a past time)."""
    as_of = _timestamp_option(at)
    from projections import queries

    with query_database(reads=queries.READS, wait=wait, timeout_s=timeout) as database:
        answer = queries.balance(database, account, at=as_of)
    if json_output:
        print_json(answer)
    else:
        out().print(_money_table(f"balance of {account}", list(answer.items())))


@app.command()
def history(
    account: str,
    json_output: JsonOption = False,
    wait: WaitOption = False,
    timeout: TimeoutOption = limits.query_wait_timeout_s,
) -> None:
    """The account's domain events in order, with their postings."""
    from projections import queries

    with query_database(reads=queries.READS, wait=wait, timeout_s=timeout) as database:
        events = queries.history(database, account, limit=limits.history_page_max)
    if json_output:
        print_json(events)
        return
    from rich.table import Table

    table = Table(title=f"history of {account}")
    for column in ("version", "type", "occurred_at", "position", "postings"):
        table.add_column(column)
    for event in events:
        postings = "; ".join(
            f"{p['debit']} / {p['credit']} {p['amount']} {p['currency']}" for p in event["postings"]
        )
        table.add_row(
            str(event["version"]),
            event["type"],
            event["occurred_at"],
            str(event["position"]),
            postings,
        )
    out().print(table)


@app.command("trial-balance")
def trial_balance(
    json_output: JsonOption = False,
    wait: WaitOption = False,
    timeout: TimeoutOption = limits.query_wait_timeout_s,
) -> None:
    """Sums per ledger account and currency; each currency's total is 0."""
    from projections import queries

    with query_database(reads=queries.READS, wait=wait, timeout_s=timeout) as database:
        answer = queries.trial_balance(database)
    if json_output:
        print_json(answer)
        return
    from rich.table import Table

    table = Table(title=f"trial balance at position {answer['position']}")
    for column in ("currency", "ledger_account", "debits_minus_credits"):
        table.add_column(column)
    for currency, entry in answer["currencies"].items():
        for name, amount in entry["accounts"].items():
            table.add_row(currency, name, str(amount))
        table.add_row(currency, "total", str(entry["total"]), style="bold")
    out().print(table)


def _money(amount_minor: int | None, currency: str) -> str:
    """An amount for a terminal table: `USD 120.00`."""
    from ledger.domain.money import Money

    return "" if amount_minor is None else str(Money(amount_minor, currency))


def _places(places: dict[str, int], currency: str) -> str:
    return ", ".join(f"{place} {_money(amount, currency)}" for place, amount in places.items())


OVERPAYMENT_LIST_COLUMNS = (
    "overpayment_id",
    "account_id",
    "amount",
    "status",
    "resolution",
    "places",
    "open",
    "detected_at",
    "updated_at",
)


@overpayments_app.callback(invoke_without_command=True)
def overpayments(
    context: typer.Context,
    open_only: Annotated[
        bool,
        typer.Option(
            "--open",
            help="Only those awaiting verification or resolution, or with money still held"
            " in escrow, a refund in flight or waiting, or credit waiting for the next bill.",
        ),
    ] = False,
    account: Annotated[str | None, typer.Option("--account", help="Only this account's.")] = None,
    json_output: JsonOption = False,
    wait: WaitOption = False,
    timeout: TimeoutOption = limits.query_wait_timeout_s,
) -> None:
    """Overpayments in the order they were detected (`show ID` for one and its events)."""
    if context.invoked_subcommand is not None:
        return
    from projections import overpayment_queries

    with query_database(reads=overpayment_queries.READS, wait=wait, timeout_s=timeout) as database:
        answer = overpayment_queries.overpayments(database, open_only=open_only, account_id=account)
    if json_output:
        print_json(answer)
        return
    from rich.table import Table

    table = Table(title=f"overpayments at position {answer['position']}")
    for column in OVERPAYMENT_LIST_COLUMNS:
        table.add_column(column, justify="right" if column == "amount" else "left")
    for row in answer["overpayments"]:
        cells = {
            **row,
            "amount": _money(row["amount"], row["currency"]),
            "places": _places(row["places"], row["currency"]),
            "open": "yes" if row["open"] else "no",
        }
        table.add_row(
            *("" if cells[c] is None else str(cells[c]) for c in OVERPAYMENT_LIST_COLUMNS)
        )
    out().print(table)


@overpayments_app.command("show")
def overpayments_show(
    overpayment_id: Annotated[str, typer.Argument(metavar="ID", help="The overpayment's id.")],
    json_output: JsonOption = False,
    wait: WaitOption = False,
    timeout: TimeoutOption = limits.query_wait_timeout_s,
) -> None:
    """One overpayment: where it stands, where its money is, and every event of it in order."""
    from projections import overpayment_queries

    with query_database(reads=overpayment_queries.READS, wait=wait, timeout_s=timeout) as database:
        answer = overpayment_queries.overpayment(database, overpayment_id)
    if json_output:
        print_json(answer)
        return
    from rich.table import Table

    currency = answer["currency"]
    fields = Table(title=f"overpayment {overpayment_id} at position {answer['position']}")
    fields.add_column("field")
    fields.add_column("value")
    for name, value in answer.items():
        if name == "events":
            continue
        if name == "amount":
            shown = _money(value, currency)
        elif name == "places":
            shown = _places(value, currency)
        elif name == "verifications":
            shown = "; ".join(
                f"{department}: {v['actor_id']} ({v['actor_role']}) at {v['verified_at']}"
                + (f", {v['note']}" if v.get("note") else "")
                for department, v in value.items()
            )
        elif name == "refunds":
            shown = "; ".join(
                f"{r['refund_id']} attempt {r['attempt']} {_money(r['amount'], currency)}"
                f" {r['status']}" + (f" ({r['reason']})" if r.get("reason") else "")
                for r in value
            )
        elif name == "rejection" and value is not None:
            shown = (
                f"{value['department']}: {value['reason']} ({value['actor_id']},"
                f" {value['rejected_at']})"
            )
        elif name == "departments":
            shown = ", ".join(value)
        elif isinstance(value, bool):
            shown = "yes" if value else "no"
        else:
            shown = "" if value is None else str(value)
        fields.add_row(name, shown)
    out().print(fields)
    events = Table(title="events")
    for column in ("version", "type", "occurred_at", "position", "postings"):
        events.add_column(column)
    for event in answer["events"]:
        postings = "; ".join(
            f"{p['debit']} / {p['credit']} {_money(p['amount'], p['currency'])}"
            for p in event["postings"]
        )
        events.add_row(
            str(event["version"]),
            event["type"],
            event["occurred_at"],
            str(event["position"]),
            postings,
        )
    out().print(events)


DISPUTE_LIST_COLUMNS = (
    "dispute_id",
    "account_id",
    "kind",
    "channel",
    "reason",
    "amount",
    "held",
    "status",
    "rep",
    "escalated_to",
    "opened_at",
    "respond_by",
    "first_response_due",
    "update_due",
    "resolution_due",
    "last_contact_at",
    "next_step",
)
DISPUTE_MONEY = frozenset({"amount", "held", "adjusted", "forgiven"})
DISPUTE_REPORT_COLUMNS = (
    "count",
    "scored",
    "mean_score",
    "median_first_response_s",
    "median_resolution_s",
    "within_sla",
)


def _load_line(load: list[dict[str, Any]]) -> str:
    """Each representative's open disputes on one line."""
    shown = ", ".join(f"{item['rep'] or 'unassigned'} {item['open']}" for item in load)
    return f"load (open per rep): {shown or 'none'}"


@disputes_app.callback(invoke_without_command=True)
def disputes(
    context: typer.Context,
    open_only: Annotated[bool, typer.Option("--open", help="Only those not resolved yet.")] = False,
    rep: Annotated[str | None, typer.Option("--rep", help="Only this representative's.")] = None,
    account: Annotated[str | None, typer.Option("--account", help="Only this account's.")] = None,
    json_output: JsonOption = False,
    wait: WaitOption = False,
    timeout: TimeoutOption = limits.query_wait_timeout_s,
) -> None:
    """Disputes in the order they were opened, with each representative's open load (`show ID`
    for one dispute's story)."""
    if context.invoked_subcommand is not None:
        return
    from projections import dispute_queries

    with query_database(reads=dispute_queries.READS, wait=wait, timeout_s=timeout) as database:
        answer = dispute_queries.disputes(
            database, open_only=open_only, rep=rep, account_id=account
        )
    if json_output:
        print_json(answer)
        return
    from rich.table import Table

    table = Table(title=f"disputes at position {answer['position']}")
    for column in DISPUTE_LIST_COLUMNS:
        table.add_column(column, justify="right" if column in DISPUTE_MONEY else "left")
    for row in answer["disputes"]:
        cells = {
            **row,
            **{column: _money(row[column], row["currency"]) for column in DISPUTE_MONEY},
        }
        table.add_row(*("" if cells[c] is None else str(cells[c]) for c in DISPUTE_LIST_COLUMNS))
    out().print(table)
    out().print(_load_line(answer["load"]))


def _dispute_field(name: str, value: Any, currency: str) -> str:
    """One field of a dispute for a terminal."""
    if name in DISPUTE_MONEY:
        return _money(value, currency)
    if name == "reps":
        return "; ".join(f"{r['rep']} from {r['from']} by {r['by']}" for r in value)
    if name == "plan":
        return "; ".join(
            f"{i['due']} {_money(i['amount'], currency)} paid {_money(i['paid'], currency)}"
            f" ({i['status']})"
            for i in value
        )
    if name == "follow_ups":
        return "; ".join(
            f"{f['follow_up_id']} {f['reason']} due {f['due_at']} {f['owner']} ({f['status']})"
            for f in value
        )
    if isinstance(value, bool):
        return "yes" if value else "no"
    return "" if value is None else str(value)


_STORY_HIDDEN = frozenset(
    {"account_id", "dispute_id", "moves", "currency", "policy_version", "actor_id", "actor_role"}
)
"""Fields a story line leaves out: the dispute's own, and who decided (said at the end)."""


def _story_line(type_name: str, data: dict[str, Any], currency: str) -> str:
    """What one event of a dispute says, the customer's words included (staff only)."""
    who = f"{data.get('actor_id')} ({data.get('actor_role')})" if "actor_id" in data else ""
    if type_name == "dispute_contact_logged":
        line = f"{data['direction']} by {data['channel']}, {who}: {data['summary']}"
        if data.get("promise"):
            line += f"; promised {data['promise']} by {data['promise_by']}"
        return line
    if type_name == "dispute_feedback_recorded":
        return f"score {data['score']}" + (f": {data['comment']}" if data.get("comment") else "")
    if type_name == "dispute_installments_paid":
        return f"{data['payment_id']} paid " + "; ".join(
            f"installment {index + 1} {_money(amount, currency)}" + (" late" if late else "")
            for index, amount, late in data["paid"]
        )
    if type_name == "dispute_installment_missed":
        return f"installment {data['index'] + 1} missed; by {who}"
    if type_name == "dispute_plan_agreed":
        installments = ", ".join(
            f"{due} {_money(amount, currency)}" for due, amount in data["installments"]
        )
        return (
            f"installments {installments}; forgiven {_money(data['forgiven_minor'], currency)};"
            f" by {who}"
        )
    parts = []
    for key, value in data.items():
        if key in _STORY_HIDDEN or value in (None, [], ""):
            continue
        if key.endswith("_minor") and isinstance(value, int):
            parts.append(f"{key.removesuffix('_minor')} {_money(value, currency)}")
        else:
            parts.append(f"{key} {value}")
    return ", ".join(parts) + (f"; by {who}" if who else "")


@disputes_app.command("show")
def disputes_show(
    dispute_id: Annotated[
        str, typer.Argument(metavar="ID", help="The dispute's id (ours or the processor's).")
    ],
    json_output: JsonOption = False,
    wait: WaitOption = False,
    timeout: TimeoutOption = limits.query_wait_timeout_s,
) -> None:
    """One dispute and its whole story in order: facts, contacts (with the customer's words),
    decisions, money with postings. Staff only: it shows personal data."""
    from projections import dispute_queries

    with query_database(reads=dispute_queries.READS, wait=wait, timeout_s=timeout) as database:
        answer = dispute_queries.dispute(database, dispute_id)
    if json_output:
        print_json(answer)
        return
    from rich.table import Table

    currency = answer["currency"]
    fields = Table(title=f"dispute {answer['dispute_id']} at position {answer['position']}")
    fields.add_column("field")
    fields.add_column("value")
    for name, value in answer.items():
        if name != "events":
            fields.add_row(name, _dispute_field(name, value, currency))
    out().print(fields)
    events = Table(title="events (the story, with the customer's words: staff only)")
    for column in ("version", "type", "occurred_at", "position", "data_with_personal", "postings"):
        events.add_column(column)
    for event in answer["events"]:
        postings = "; ".join(
            f"{p['debit']} / {p['credit']} {_money(p['amount'], p['currency'])}"
            for p in event["postings"]
        )
        events.add_row(
            str(event["version"]),
            event["type"],
            event["occurred_at"],
            str(event["position"]),
            _story_line(event["type"], event["data_with_personal"], currency),
            postings,
        )
    out().print(events)


def _since_option(since: str | None) -> datetime | None:
    """A `--since` value: a date (its start, UTC) or a timestamp with an offset."""
    if since is None:
        return None
    from datetime import date

    try:
        day = date.fromisoformat(since)
    except ValueError:
        return _timestamp_option(since)
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


@disputes_app.command("feedback-report")
def disputes_feedback_report(
    since: Annotated[
        str | None,
        typer.Option("--since", help="Only disputes resolved since (a date, or RFC 3339)."),
    ] = None,
    json_output: JsonOption = False,
    wait: WaitOption = False,
    timeout: TimeoutOption = limits.query_wait_timeout_s,
) -> None:
    """What customers said of resolved disputes, overall and by reason, channel, representative
    and outcome: count, scores, median seconds to first response and to resolution, the share
    resolved within the resolution target."""
    moment = _since_option(since)
    from projections import dispute_queries

    with query_database(reads=dispute_queries.READS, wait=wait, timeout_s=timeout) as database:
        answer = dispute_queries.feedback_report(database, since=moment)
    if json_output:
        print_json(answer)
        return
    from rich.table import Table

    out().print(
        f"feedback report at position {answer['position']}, since {answer['since'] or 'ever'}"
        + (" (truncated: oldest left out)" if answer["truncated"] else "")
    )
    groups: list[tuple[str, str, list[dict[str, Any]]]] = [
        ("total", "", [answer["total"]]),
        *((f"by_{group}", group, answer[f"by_{group}"]) for group in dispute_queries.REPORT_GROUPS),
    ]
    for title, group, rows in groups:
        table = Table(title=title)
        columns = ((group,) if group else ()) + DISPUTE_REPORT_COLUMNS
        for column in columns:
            table.add_column(column, justify="left" if column == group else "right")
        for row in rows:
            table.add_row(*("" if row[c] is None else str(row[c]) for c in columns))
        out().print(table)


FOLLOW_UP_COLUMNS = (
    "follow_up_id",
    "account_id",
    "reason",
    "subject_id",
    "due_at",
    "owner",
    "contacts",
    "escalated",
    "owed_account",
    "owed",
    "overdue",
    "raised_at",
    "age_s",
)


@app.command("follow-ups")
def follow_ups(
    due: Annotated[
        bool, typer.Option("--due", help="Only those due now (or at --at): due_at <= now.")
    ] = False,
    owner: Annotated[str | None, typer.Option("--owner", help="Only this owner's.")] = None,
    at: Annotated[
        str | None,
        typer.Option(
            "--at", help="The query's clock for --due, overdue and age (RFC 3339); default: now."
        ),
    ] = None,
    json_output: JsonOption = False,
    wait: WaitOption = False,
    timeout: TimeoutOption = limits.query_wait_timeout_s,
) -> None:
    """The follow-up queue: open items, oldest due first (overdue ones lead), with what is owed
    and each item's age since it was raised."""
    now = _timestamp_option(at) or datetime.now(UTC)
    from projections import follow_up_queries

    with query_database(reads=follow_up_queries.READS, wait=wait, timeout_s=timeout) as database:
        answer = follow_up_queries.follow_ups(
            database, due_by=now if due else None, owner=owner, at=now
        )
    if json_output:
        print_json(answer)
        return
    from rich.table import Table

    table = Table(title=f"follow-ups at position {answer['position']}")
    for column in FOLLOW_UP_COLUMNS:
        table.add_column(
            column, justify="right" if column in ("owed", "contacts", "age_s") else "left"
        )
    for item in answer["follow_ups"]:
        cells = {
            **item,
            "owed": _money(item["owed"], item["currency"]),
            "escalated": "yes" if item["escalated"] else "no",
            "overdue": "yes" if item["overdue"] else "no",
        }
        table.add_row(*("" if cells[c] is None else str(cells[c]) for c in FOLLOW_UP_COLUMNS))
    out().print(table)


@projections_app.command("rebuild")
def projections_rebuild(
    name: Annotated[str | None, typer.Argument(help="Only this read model.")] = None,
    json_output: JsonOption = False,
) -> None:
    """Rebuild read models aside from the event store, then swap each in (queries keep working)."""
    from ledger import read_models
    from ledger.projection import UnknownEventType
    from ledger.rebuild import RebuildSuperseded

    try:
        chosen = read_models.PROJECTIONS if name is None else (read_models.projection_named(name),)
    except LookupError as error:
        raise Refused(str(error.args[0])) from error
    settings = settings_and_logging()
    storage = open_for_writing(settings)
    started = time.monotonic()
    done: list[Rebuilt] = []
    try:
        done.extend(_rebuild_showing_progress(storage, projection) for projection in chosen)
    except (UnknownEventType, RebuildSuperseded) as error:
        raise Refused(str(error)) from error
    finally:
        storage.close()
    answer = {
        "projections": [
            {
                "name": rebuilt.name,
                "generation": rebuilt.generation,
                "replaced": rebuilt.replaced,
                "events": rebuilt.events,
                "position": rebuilt.position,
            }
            for rebuilt in done
        ],
        "events": sum(rebuilt.events for rebuilt in done),
        "seconds": round(time.monotonic() - started, 3),
    }
    if json_output:
        print_json(answer)
        return
    for rebuilt in done:
        err().print(
            f"rebuilt {rebuilt.name}: {rebuilt.events} events, position {rebuilt.position},"
            f" generation {rebuilt.generation} replaced {rebuilt.replaced}"
        )


def _rebuild_showing_progress(storage: Storage, projection: Projection) -> Rebuilt:
    from rich.progress import Progress

    from ledger.rebuild import rebuild_aside

    latest = storage.store.process_recorder.max_notification_id() or 0
    with Progress(console=err(), transient=True) as progress:
        task = progress.add_task(f"rebuilding {projection.name}", total=latest)

        def report(position: int) -> None:
            progress.update(task, completed=position, total=max(latest, position))

        return rebuild_aside(storage.database, storage.store, projection, progress=report)


@projections_app.command("status")
def projections_status(json_output: JsonOption = False) -> None:
    """Each read model's position, the event store's head and the lag between them."""
    from ledger import read_models
    from ledger.generations import ProjectionMissing, status

    database = open_for_query(settings_and_logging().database_url)
    try:
        rows = status(database, read_models.names(), lambda: latest_position(database))
    except ProjectionMissing as error:
        raise Refused(str(error)) from error
    finally:
        database.close()
    if json_output:
        print_json(rows)
        return
    from rich.table import Table

    table = Table(title="read models")
    columns = ("name", "state", "generation", "position", "head", "lag")
    for column in columns:
        table.add_column(column, justify="left" if column in ("name", "state") else "right")
    for row in rows:
        table.add_row(*(str(row[column]) for column in columns))
    out().print(table)


@policy_app.command("show")
def policy_show(json_output: JsonOption = False) -> None:
    """The policy in use: LEDGER_POLICY, or the shipped one (durations in ISO 8601)."""
    from ledger.policy_file import DEFAULT_SOURCE, load_policy
    from ledger.settings import load_settings

    # The settings `ledger run` reads: this shows the policy a run would use.
    path = load_settings().policy
    document = {
        **load_policy(path).model_dump(mode="json"),
        "source": DEFAULT_SOURCE if path is None else str(path),
    }
    if json_output:
        print_json(document)
        return
    from ledger.policy_view import policy_tables

    for table in policy_tables(document):
        out().print(table)


@policy_app.command("check")
def policy_check(
    file: Annotated[Path, typer.Argument(help="The policy file to validate.")],
) -> None:
    """Validate a policy file without starting anything: exit 0 if valid, else 2 and why."""
    from ledger.policy_file import load_policy

    policy = load_policy(file)
    sys.stdout.write(f"policy {file}: valid (version {policy.version})\n")
    sys.stdout.flush()


@app.command()
def republish(
    from_position: Annotated[
        int, typer.Option("--from", help="First event-store position to send again.")
    ],
    json_output: JsonOption = False,
) -> None:
    """Send stored events to ledger.events again (same ce_id: downstream de-duplicates)."""
    from ledger.kafka.clients import ResilientProducer
    from ledger.kafka.partitioning import Share
    from ledger.kafka.topics import LEDGER_EVENTS
    from ledger.outbox import OutboxRelay
    from ledger.persistence.positions import reset_position
    from ledger.tailing import run_tail

    if from_position < 1:
        raise Refused("--from must be a position of 1 or more")
    settings = settings_and_logging()
    bootstrap = _bootstrap(settings)
    storage = open_for_writing(settings)
    producer = ResilientProducer(bootstrap)
    name = f"republish:{time.time_ns()}"
    try:
        with storage.database.transaction() as cursor:
            reset_position(cursor, name, from_position - 1)
        # Every share's events, each to the partition the relays use: one share of them all.
        everything = Share(0, 1, producer.partition_count(LEDGER_EVENTS))
        # Only ledger.events: customers are not notified a second time.
        relay = OutboxRelay(
            storage.database,
            producer,
            share=everything,
            position_name=name,
            notifications=False,
        )
        sent = run_tail(storage.store, relay, threading.Event(), until_caught_up=True)
        with storage.database.transaction() as cursor:
            reset_position(cursor, name)
    finally:
        producer.close()
        storage.close()
    if json_output:
        print_json({"from": from_position, "events": sent})
    else:
        err().print(f"republished {sent} events from position {from_position}")


def _bootstrap(settings: Settings) -> str:
    """The broker to use, refused at once (one line) if nothing listens there."""
    from ledger.kafka.broker import BrokerUnavailable, check_listening, resolve_bootstrap

    try:
        bootstrap = resolve_bootstrap(settings.kafka_bootstrap, settings.broker_port)
        if settings.kafka_bootstrap:
            check_listening(bootstrap)
    except BrokerUnavailable as error:
        raise Refused(str(error)) from error
    return bootstrap


def _check_readable_file(path: Path) -> None:
    """Refuse (one line) a path that is not a file this process can read."""
    if path.is_dir():
        raise Refused(f"{path} is a directory: give a file of JSON lines, or - for stdin")
    if not path.is_file():
        raise Refused(f"no such file: {path}")
    if not os.access(path, os.R_OK):
        raise Refused(f"cannot read {path}: permission denied")


@app.command()
def publish(
    source: Annotated[str, typer.Argument(help="A file of JSON lines, or - for stdin.")],
    json_output: JsonOption = False,
) -> None:
    """Send each line as it is to payments.inbound (key: its account_id where it has one)."""
    from rich.progress import Progress

    from ledger.kafka.clients import MessageRefused, ResilientProducer
    from ledger.kafka.topics import PAYMENTS_INBOUND, ensure_topics
    from ledger.schemas.inbound import inbound_account_id

    settings = settings_and_logging()
    path = None if source == "-" else Path(source)
    if path is not None:
        # The file first: a missing file is the mistake to report, whatever else is wrong.
        _check_readable_file(path)
    bootstrap = _bootstrap(settings)
    stream = sys.stdin.buffer if path is None else path.open("rb")
    ensure_topics(bootstrap, settings.partitions)
    producer = ResilientProducer(bootstrap)
    sent = 0
    refused: list[int] = []
    try:
        with Progress(console=err(), transient=True) as progress:
            task = progress.add_task("publishing", total=None)
            for number, raw_line in enumerate(stream, start=1):
                line = raw_line.rstrip(b"\r\n")
                if not line:
                    continue
                account_id = inbound_account_id(line)
                try:
                    producer.send(
                        PAYMENTS_INBOUND,
                        key=account_id.encode() if account_id else None,
                        value=line,
                        headers=[],
                    )
                except MessageRefused:
                    say(
                        f"line {number} not sent: {len(line)} bytes, above the"
                        f" {limits.producer_request_bytes_max} bytes a message may hold"
                    )
                    refused.append(number)
                    continue
                sent += 1
                if sent % limits.poll_records_max == 0:
                    producer.flush()
                    progress.update(task, completed=sent)
            producer.flush()
    finally:
        producer.close()
        if stream is not sys.stdin.buffer:
            stream.close()
    if json_output:
        print_json({"published": sent, "topic": PAYMENTS_INBOUND, "refused_lines": refused})
    else:
        err().print(f"published {sent} messages to {PAYMENTS_INBOUND} at {bootstrap}")
    if refused:
        raise Refused(f"{len(refused)} line(s) too large to publish: {refused[:10]}")


@app.command()
def broker(
    port: Annotated[int | None, typer.Option(help="Port (default LEDGER_BROKER_PORT).")] = None,
) -> None:
    """Run the embedded broker alone, in the foreground (messages in memory only)."""
    from ledger.kafka.broker import EmbeddedBroker, is_listening

    settings = settings_and_logging()
    chosen = port or settings.broker_port
    if is_listening("127.0.0.1", chosen):
        raise Refused(f"something already listens on 127.0.0.1:{chosen}")
    embedded = EmbeddedBroker(chosen)
    stop = threading.Event()
    _stop_on_signals(stop)
    embedded.start()
    from ledger.kafka.topics import ensure_topics

    ensure_topics(embedded.bootstrap, settings.partitions)
    announce(
        f"broker listening on {embedded.bootstrap} (messages are kept in memory only)",
        bootstrap=embedded.bootstrap,
    )
    try:
        while not stop.wait(limits.supervisor_check_interval_s):
            if not embedded.is_running():
                raise Refused("the broker exited unexpectedly")
    finally:
        embedded.stop()


def _stop_on_signals(stop: threading.Event) -> None:
    def request_stop(_signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)


@app.command()
def run() -> None:
    """Start every process; Ctrl-C stops them cleanly."""
    from ledger.policy_file import load_policy
    from ledger.runner import Supervisor

    settings = settings_and_logging()
    # A bad policy file is refused before anything starts (and before anything has to stop).
    load_policy(settings.policy)
    stop = threading.Event()
    _stop_on_signals(stop)
    supervisor = Supervisor(settings)
    try:
        supervisor.start(stop)
        if stop.is_set():
            return
        database = parse_database_url(settings.database_url).describe()
        announce(
            f"ledger running: broker {supervisor.bootstrap}, database {database}; Ctrl-C stops",
            broker=supervisor.bootstrap,
            database=database,
        )
        supervisor.run_until(stop)
    finally:
        supervisor.stop()


@app.command()
def demo(json_output: JsonOption = False) -> None:
    """A scripted scenario end to end: starts what it needs itself, prints, stops."""
    from ledger.demo import run_demo

    # The demo prints its own account of what happens; keep the logs to warnings unless asked.
    os.environ.setdefault("LEDGER_LOG_LEVEL", "warning")
    settings = settings_and_logging()
    run_demo(settings, json_output=json_output, out=out(), err=err())


@app.command()
def bench(
    events: Annotated[int, typer.Option("--events", help="Inbound events to ingest.")] = 100_000,
    accounts: Annotated[int, typer.Option("--accounts", help="Accounts they spread over.")] = 1_000,
    only: Annotated[
        str | None,
        typer.Option(
            "--only", help="Comma-separated: ingest,system,latency,commands,rebuild,load."
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            help="Ingest (and baseline) processes, each reading its share of the partitions;"
            " default LEDGER_INGEST_WORKERS.",
        ),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Measure this deployment (temporary databases and topics) against same-run baselines."""
    from ledger.bench import BenchRefused, parse_phases, print_report, run_bench

    settings = settings_and_logging()
    try:
        phases = parse_phases(only)
        _check_bench_dependencies(settings, phases)
        document = run_bench(
            settings,
            events=events,
            accounts=accounts,
            phases=phases,
            workers=settings.ingest_workers if workers is None else workers,
            err=err(),
        )
    except BenchRefused as error:
        raise Refused(str(error)) from error
    print_report(document, json_output=json_output, out=out())


def _check_bench_dependencies(settings: Settings, phases: tuple[str, ...]) -> None:
    """The configured PostgreSQL server and broker, checked at once (SQLite runs in a temp dir)."""
    try:
        target = parse_database_url(settings.database_url)
    except DatabaseUrlError as error:
        raise Refused(str(error)) from error
    if target.kind == "postgresql":
        check_database(target, writing=False)
    if settings.kafka_bootstrap and ("ingest" in phases or "latency" in phases):
        from ledger.kafka.broker import check_listening

        check_listening(settings.kafka_bootstrap)


DATABASE_HINT = "check LEDGER_DATABASE_URL and that the database can be reached"
BROKER_HINT = "start `ledger run` or `ledger broker`, or check LEDGER_KAFKA_BOOTSTRAP"


def _refuse(line: str) -> None:
    """One line on stderr, exit 2: the person running the command can act on it."""
    say(line)
    sys.exit(2)


def _outage_line(error: Exception) -> str | None:
    """The one line for a database or broker that failed mid-command; None if not an outage."""
    import psycopg
    from eventsourcing.persistence import InterfaceError, OperationalError

    from ledger.outages import is_outage
    from ledger.settings import load_settings

    reason = " ".join(str(error).split()) or type(error).__name__
    try:
        settings = load_settings()
        database = parse_database_url(settings.database_url).describe()
        broker = settings.kafka_bootstrap or f"127.0.0.1:{settings.broker_port}"
    except (SettingsError, DatabaseUrlError):
        database, broker = "LEDGER_DATABASE_URL", "LEDGER_KAFKA_BOOTSTRAP"
    if isinstance(error, OperationalError | InterfaceError | psycopg.OperationalError):
        return f"ledger: database unavailable: {database}: {reason}; {DATABASE_HINT}"
    if is_outage(error):
        return f"ledger: Kafka broker unavailable at {broker}: {reason}; {BROKER_HINT}"
    return None


def _loaded(module: str, name: str) -> type[Exception] | None:
    """An exception class of a module the command imported; None if it never did (so none of
    its errors can be in hand, and a query never pays for importing it here)."""
    loaded = sys.modules.get(module)
    found: type[Exception] | None = getattr(loaded, name, None) if loaded else None
    return found


def _refusal(error: Exception) -> str | None:
    """The one line for an error the person running the command can act on; None otherwise."""
    refusals = tuple(
        cls
        for cls in (
            Refused,
            DatabaseUrlError,
            SettingsError,
            _loaded("ledger.kafka.broker", "BrokerUnavailable"),
            _loaded("ledger.domain.policy", "PolicyError"),
            _loaded("ledger.kafka.topics", "PartitionCountsDiffer"),
        )
        if cls is not None
    )
    if isinstance(error, refusals):
        return f"ledger: {error}"
    if isinstance(error, DatabaseUnavailable):
        return f"ledger: database unavailable: {error}; {DATABASE_HINT}"
    return _outage_line(error)


def main() -> None:
    """Run the CLI with the design's exit codes: 2 and one line for what a person can fix."""
    try:
        app()
    except Exception as error:
        line = _refusal(error)
        if line is None:
            raise
        _refuse(line)


# The staff verbs register themselves on the apps above (a module of their own: this one is long).
import ledger.cli_staff  # noqa: E402, F401
