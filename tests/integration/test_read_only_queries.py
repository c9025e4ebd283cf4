"""Queries never write: a read-only role, a read-only SQLite file, a schema not there yet.

The queries run as `ledger` processes (their exit codes and stderr are the contract).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import orjson
import psycopg
import pytest
from eventsourcing.persistence import Tracking

from ledger.clock import FixedClock
from ledger.deploy_setup import prepare_database
from ledger.domain.policy import Policy
from ledger.generations import LiveProjection, live_positions
from ledger.ingest import InboundMessage, IngestService
from ledger.persistence.database import Database, ReadOnlyDatabase
from ledger.persistence.event_store import events_table, latest_position, open_event_store
from ledger.persistence.positions import write_position
from ledger.persistence.urls import parse_database_url
from ledger.tailing import run_tail
from projections import balances, queries
from tests.books import invoice, opened, payment
from tests.databases import PG_ADMIN_URL

POLICY = Policy(version="test-1")
CLOCK = FixedClock(datetime(2026, 11, 25, 12, 0, tzinfo=UTC))
LINES = [opened("e1", "A"), invoice("e2", "A", 12_000), payment("e3", "A", 15_000)]
QUERY_TIMEOUT_S = 120.0


def write_books(database_url: str) -> int:
    """Prepare the schema, ingest LINES and project them, as `ledger run` would; the position."""
    target = parse_database_url(database_url)
    prepare_database(target)
    store = open_event_store(target)
    database = Database(target)
    try:
        service = IngestService(store, policy=POLICY, clock=CLOCK)
        messages = [
            InboundMessage("payments.inbound", 0, n, b"A", raw) for n, raw in enumerate(LINES)
        ]
        service.commit(service.prepare(messages), Tracking("payments.inbound:t:0", len(LINES)))
        projection = LiveProjection(database, balances.BalancesProjection())
        run_tail(store, projection, threading.Event(), until_caught_up=True)
        return projection.position()
    finally:
        database.close()
        store.close()


def ledger(args: Sequence[str], database_url: str) -> subprocess.CompletedProcess[bytes]:
    """Run one `ledger` query as its own process."""
    env = dict(os.environ, LEDGER_DATABASE_URL=database_url, LEDGER_LOG_FORMAT="json")
    return subprocess.run(
        [sys.executable, "-m", "ledger", *args],
        env=env,
        capture_output=True,
        timeout=QUERY_TIMEOUT_S,
        check=False,
    )


def assert_unknown_account(result: subprocess.CompletedProcess[bytes], account: str) -> None:
    """Exit 2 with the one line a query gives for an account the read model does not have."""
    assert result.returncode == 2, result.stderr.decode()
    assert result.stderr.decode().startswith(f"ledger: unknown account {account!r}"), result.stderr
    assert b"Traceback" not in result.stderr
    assert result.stdout == b""


def assert_queries_see_nothing(database_url: str) -> None:
    """Every query on a database nobody prepared: no such account, empty, position 0."""
    for args in (
        ["balance", "A", "--json"],
        ["balance", "A", "--json", "--wait"],
        ["history", "A"],
    ):
        assert_unknown_account(ledger(args, database_url), "A")
    trial = ledger(["trial-balance", "--json", "--wait"], database_url)
    assert trial.returncode == 0, trial.stderr.decode()
    assert orjson.loads(trial.stdout) == {"position": 0, "currencies": {}}


def assert_queries_see_the_books(database_url: str, position: int) -> None:
    """Every query on the books of LINES."""
    answer = ledger(["balance", "A", "--json", "--wait", "--timeout", "10"], database_url)
    assert answer.returncode == 0, answer.stderr.decode()
    balance = orjson.loads(answer.stdout)
    assert (balance["customer_credit"], balance["cash"], balance["revenue"]) == (
        3_000,
        15_000,
        12_000,
    )
    assert balance["position"] == position
    history = ledger(["history", "A", "--json"], database_url)
    assert history.returncode == 0, history.stderr.decode()
    assert [event["type"] for event in orjson.loads(history.stdout)] == [
        "account_opened",
        "invoice_issued",
        "payment_received",
        "overpayment_detected",
    ]
    trial = ledger(["trial-balance", "--json"], database_url)
    assert orjson.loads(trial.stdout)["currencies"]["USD"]["total"] == 0
    assert_unknown_account(ledger(["balance", "NOBODY", "--json"], database_url), "NOBODY")


# The same contract in process, on both backends.


def test_read_only_database_on_a_schema_not_there_yet_reads_as_empty(database_url: str) -> None:
    database = Database(parse_database_url(database_url), read_only=True)
    try:
        assert latest_position(database) == 0
        assert live_positions(database, queries.READS) == {balances.NAME: 0}
        assert queries.trial_balance(database) == {"position": 0, "currencies": {}}
        with pytest.raises(queries.NotFound, match="no read model yet"):
            queries.balance(database, "A")
        with pytest.raises(queries.NotFound, match="no read model yet"):
            queries.history(database, "A", limit=10)
        with pytest.raises(ReadOnlyDatabase), database.transaction():
            pass
    finally:
        database.close()


def test_latest_position_reads_the_event_store_table(database_url: str) -> None:
    position = write_books(database_url)
    target = parse_database_url(database_url)
    store = open_event_store(target)
    database = Database(target, read_only=True)
    try:
        recorder = store.process_recorder
        assert events_table(target).replace('"', "").endswith(recorder.events_table_name)
        assert latest_position(database) == recorder.max_notification_id() == position
        assert queries.balance(database, "A")["position"] == position
    finally:
        database.close()
        store.close()


# PostgreSQL.


@contextmanager
def read_only_role(database_url: str) -> Iterator[str]:
    """The database's URL for a new role that may connect and read, nothing more."""
    role = f"ledger_reader_{uuid.uuid4().hex[:8]}"
    admin = parse_database_url(PG_ADMIN_URL)
    with psycopg.connect(admin.conninfo, autocommit=True) as connection:
        connection.execute(f'CREATE ROLE "{role}" LOGIN')
        connection.execute(f'GRANT pg_read_all_data TO "{role}"')
    target = parse_database_url(database_url)
    try:
        yield f"postgresql://{role}@{target.host}:{target.port}/{target.dbname}"
    finally:
        with psycopg.connect(admin.conninfo, autocommit=True) as connection:
            connection.execute(f'DROP ROLE "{role}"')


def test_queries_as_a_read_only_role_before_and_after_the_schema(postgres_url: str) -> None:
    with read_only_role(postgres_url) as reader_url:
        reader = parse_database_url(reader_url)
        with (
            psycopg.connect(reader.conninfo) as connection,
            pytest.raises(psycopg.errors.InsufficientPrivilege),
        ):
            connection.execute("CREATE TABLE may_not (n int)")
        assert_queries_see_nothing(reader_url)
        position = write_books(postgres_url)
        assert_queries_see_the_books(reader_url, position)


RELEASED_TOGETHER = """
import os, sys
{imports}
sys.stdout.write("ready\\n")
sys.stdout.flush()
sys.stdin.readline()
{call}
"""
QUERY = RELEASED_TOGETHER.format(
    imports="from ledger.cli import main",
    call='sys.argv = ["ledger", "balance", "ACC-H1", "--json"]\nmain()',
)
PREPARATION = RELEASED_TOGETHER.format(
    imports="from ledger.deploy_setup import prepare_database\n"
    "from ledger.persistence.urls import parse_database_url",
    call='prepare_database(parse_database_url(os.environ["LEDGER_DATABASE_URL"]))',
)


def released_together(
    programs: Sequence[str], database_url: str
) -> list[subprocess.CompletedProcess[bytes]]:
    """Run Python programs as processes, each started (imports done) before any goes on."""
    env = dict(os.environ, LEDGER_DATABASE_URL=database_url, LEDGER_LOG_FORMAT="json")
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", program],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for program in programs
    ]
    for process in processes:
        assert process.stdout is not None
        assert process.stdout.readline() == b"ready\n"
    for process in processes:
        assert process.stdin is not None
        process.stdin.write(b"go\n")
        process.stdin.close()
    results = []
    for process in processes:
        assert process.stdout is not None and process.stderr is not None
        # Small outputs (a line, a traceback at worst): no pipe fills up while it runs.
        code = process.wait(timeout=QUERY_TIMEOUT_S)
        stdout, stderr = process.stdout.read(), process.stderr.read()
        results.append(subprocess.CompletedProcess(process.args, code, stdout, stderr))
    return results


def test_queries_racing_schema_preparation_never_fail(postgres_url: str) -> None:
    results = released_together([*[PREPARATION] * 3, *[QUERY] * 6], postgres_url)
    for preparation in results[:3]:
        assert preparation.returncode == 0, preparation.stderr.decode()
    for query in results[3:]:
        assert_unknown_account(query, "ACC-H1")
    # And once the schema is there: the account is unknown to a read model that exists.
    after = ledger(["balance", "ACC-H1", "--json"], postgres_url)
    assert_unknown_account(after, "ACC-H1")
    assert b"not in the read model" in after.stderr


# SQLite.


def file_states(path: Path) -> dict[str, str]:
    """The database file and its -wal, -shm and -journal files that exist: name to SHA-256."""
    return {
        candidate.name: hashlib.sha256(candidate.read_bytes()).hexdigest()
        for candidate in (Path(f"{path}{suffix}") for suffix in ("", "-wal", "-shm", "-journal"))
        if candidate.exists()
    }


def test_sqlite_queries_leave_the_file_byte_for_byte_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    url = f"sqlite:///{path}"
    position = write_books(url)
    before = file_states(path)
    assert list(before) == ["ledger.db"]  # every connection closed: WAL checkpointed and gone
    assert_queries_see_the_books(url, position)
    assert file_states(path) == before


def test_sqlite_queries_beside_a_live_writer_change_neither_the_file_nor_its_log(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ledger.db"
    url = f"sqlite:///{path}"
    position = write_books(url)
    writer = Database(parse_database_url(url))
    try:
        with writer.transaction() as cursor:  # a committed write still in the WAL
            write_position(cursor, "another-reader", 7)
        before = file_states(path)
        assert {"ledger.db", "ledger.db-wal"} <= set(before)
        assert_queries_see_the_books(url, position)
        after = file_states(path)
        # The -shm is SQLite's shared-memory index, not data: readers may update it.
        assert {name: after.get(name) for name in ("ledger.db", "ledger.db-wal")} == {
            name: before[name] for name in ("ledger.db", "ledger.db-wal")
        }
    finally:
        writer.close()


def test_sqlite_queries_on_a_file_not_there_create_nothing(tmp_path: Path) -> None:
    path = tmp_path / "not-yet" / "ledger.db"
    assert_queries_see_nothing(f"sqlite:///{path}")
    assert not path.parent.exists()
