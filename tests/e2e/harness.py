"""Driving the real `ledger` processes over a real broker, and reading back what they did."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaProducer

from ledger.kafka import topics
from ledger.persistence.database import Database
from ledger.persistence.urls import parse_database_url
from projections import queries

LEDGER = [sys.executable, "-m", "ledger"]


def ledger_env(bootstrap: str, database_url: str, **extra: str) -> dict[str, str]:
    """The environment of a ledger process under test."""
    env = dict(os.environ)
    env.update(
        LEDGER_KAFKA_BOOTSTRAP=bootstrap,
        LEDGER_DATABASE_URL=database_url,
        LEDGER_LOG_FORMAT="json",
        LEDGER_PARTITIONS="4",
        **extra,
    )
    return env


def start_ledger_run(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start `ledger run` in its own process group, logging to a file."""
    log_file = log_path.open("ab")
    return subprocess.Popen(
        [*LEDGER, "run"],
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


@contextmanager
def running_ledger(env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`ledger run` for the block: stopped cleanly after it, its log shown if an assert fails."""
    process = start_ledger_run(env, log_path)
    try:
        with explained_by(log_path):
            yield process
    finally:
        stop_ledger_run(process)


def stop_ledger_run(process: subprocess.Popen[bytes], *, kill: bool = False) -> None:
    """Stop `ledger run`: SIGTERM (clean) or SIGKILL of the supervisor alone (a crash)."""
    if process.poll() is not None:
        return
    if kill:
        process.send_signal(signal.SIGKILL)
    else:
        process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)


def run_cli(
    args: Sequence[str], env: dict[str, str], stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run one `ledger` command to completion."""
    return subprocess.run(
        [*LEDGER, *args], env=env, input=stdin, capture_output=True, timeout=120, check=False
    )


def key_of(raw: bytes) -> bytes | None:
    """The Kafka key a processor would use: the account id, when the line has one."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    account = value.get("account_id") if isinstance(value, dict) else None
    return account.encode() if isinstance(account, str) else None


def publish(
    bootstrap: str,
    lines: Sequence[bytes],
    key_of: Callable[[bytes], bytes | None],
    *,
    chunk: int = 0,
    pause_s: float = 0.0,
) -> None:
    """Send lines to payments.inbound directly; in chunks with pauses, to spread them in time."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    step = chunk or max(1, len(lines))
    try:
        for start in range(0, len(lines), step):
            for raw in lines[start : start + step]:
                producer.send("payments.inbound", key=key_of(raw), value=raw)
            producer.flush()
            if pause_s:
                time.sleep(pause_s)
    finally:
        producer.close()


@contextmanager
def explained_by(log_path: Path) -> Iterator[None]:
    """On a failed assertion, show the end of the processes' log beside it."""
    try:
        yield
    except AssertionError as error:
        tail = log_path.read_text(errors="replace")[-6000:] if log_path.exists() else ""
        raise AssertionError(f"{error}\n--- end of {log_path.name} ---\n{tail}") from error


def read_balances(database_url: str, account_ids: Sequence[str]) -> dict[str, dict[str, int]]:
    """Balances of the given accounts from the read model ({} while `ledger run` is starting)."""
    database = Database(parse_database_url(database_url))
    try:
        if not read_model_exists(database):
            return {}
        result: dict[str, dict[str, int]] = {}
        for account_id in account_ids:
            try:
                answer = queries.balance(database, account_id)
            except queries.NotFound:
                continue
            result[account_id] = {
                name: value
                for name, value in answer.items()
                if isinstance(value, int) and name != "position" and value != 0
            }
        return result
    finally:
        database.close()


def read_model_exists(database: Database) -> bool:
    """Whether `ledger run` has created the read models' tables yet."""
    if database.kind == "sqlite":
        sql = "SELECT count(*) FROM sqlite_master WHERE name = 'ledger_projections'"
    else:
        sql = "SELECT count(*) FROM pg_tables WHERE tablename = 'ledger_projections'"
    with database.read() as cursor:
        cursor.execute(sql)
        return bool(cursor.fetchone()[0])


def natural(expected: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """The test model's balances on their natural side, zeros dropped."""
    return {
        account: {name: value for name, value in books.items() if value != 0}
        for account, books in expected.items()
    }


def trial_balance(database_url: str) -> dict[str, Any]:
    """The trial balance from the read model."""
    database = Database(parse_database_url(database_url))
    try:
        return queries.trial_balance(database)
    finally:
        database.close()


def read_topic(bootstrap: str, topic: str) -> list[Any]:
    """Every record of a topic, from its start; none if it is absent."""
    return topics.read_topic(bootstrap, topic, idle_ms=2000)
