"""Errors a person can act on, at once: one line naming the setting or address, exit 2.

Each command runs as its own `ledger` process (its exit code and stderr are the contract).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from ledger.kafka.broker import EmbeddedBroker, free_port
from ledger.persistence.urls import parse_database_url
from tests.databases import PG_ADMIN_URL

ANSWER_WITHIN_S = 10.0
"""A misconfiguration is reported well within this (the connect timeout is a few seconds)."""
RUN_TIMEOUT_S = 60.0


def ledger(args: Sequence[str], **env: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run one `ledger` command with these settings; its result and how long it took."""
    environment = {
        name: value for name, value in os.environ.items() if not name.startswith("LEDGER_")
    }
    # No broker where the embedded one would be, unless a test says otherwise.
    environment.update({"LEDGER_BROKER_PORT": str(free_port()), "LEDGER_LOG_FORMAT": "json"})
    environment.update(env)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "ledger", *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    return result, time.monotonic() - started


def assert_one_line(result: subprocess.CompletedProcess[str], elapsed_s: float, *words: str) -> str:
    """Exit 2, within the bound, with one stderr line that names every word; that line."""
    assert result.returncode == 2, result.stderr
    assert elapsed_s < ANSWER_WITHIN_S, (elapsed_s, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ledger: "), lines
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert result.stdout == ""
    return lines[0]


def postgres_url(*, port: int | None = None, user: str | None = None, dbname: str = "x") -> str:
    """A PostgreSQL URL on the test server, with one thing wrong."""
    server = parse_database_url(PG_ADMIN_URL)
    return f"postgresql://{user or server.user}:s3cret@{server.host}:{port or server.port}/{dbname}"


QUERIES = (
    ["balance", "X", "--json"],
    ["history", "X", "--json"],
    ["trial-balance", "--json"],
    ["projections", "status", "--json"],
)
WRITERS = (["projections", "rebuild"],)


@pytest.mark.parametrize("args", [*QUERIES, *WRITERS], ids=" ".join)
def test_postgresql_that_nothing_listens_for(args: list[str]) -> None:
    url = postgres_url(port=free_port())
    result, elapsed_s = ledger(args, LEDGER_DATABASE_URL=url)
    line = assert_one_line(result, elapsed_s, parse_database_url(url).describe(), "refused")
    assert "LEDGER_DATABASE_URL" in line and "s3cret" not in line


@pytest.mark.parametrize(
    ("wrong", "reason"), [("user", 'role "nobody" does not exist'), ("dbname", "does not exist")]
)
@pytest.mark.parametrize("args", [QUERIES[0], *WRITERS], ids=lambda args: args[0])
def test_postgresql_that_refuses(args: list[str], wrong: str, reason: str) -> None:
    url = postgres_url(**{wrong: "nobody" if wrong == "user" else "ledger_no_such_database"})
    result, elapsed_s = ledger(args, LEDGER_DATABASE_URL=url)
    line = assert_one_line(result, elapsed_s, parse_database_url(url).describe(), reason)
    assert "s3cret" not in line


def test_republish_with_the_database_unreachable(broker: EmbeddedBroker) -> None:
    url = postgres_url(port=free_port())
    result, elapsed_s = ledger(
        ["republish", "--from", "1"],
        LEDGER_DATABASE_URL=url,
        LEDGER_KAFKA_BOOTSTRAP=broker.bootstrap,
    )
    assert_one_line(result, elapsed_s, parse_database_url(url).describe(), "LEDGER_DATABASE_URL")


def test_bench_with_the_database_unreachable() -> None:
    url = postgres_url(port=free_port())
    result, elapsed_s = ledger(["bench", "--only", "rebuild"], LEDGER_DATABASE_URL=url)
    assert_one_line(result, elapsed_s, parse_database_url(url).describe(), "LEDGER_DATABASE_URL")


@pytest.mark.parametrize("args", [QUERIES[0], QUERIES[3], *WRITERS], ids=" ".join)
def test_sqlite_file_under_a_file(args: list[str], tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("not a directory")
    url = f"sqlite:///{tmp_path / 'blocker' / 'sub' / 'ledger.db'}"
    result, elapsed_s = ledger(args, LEDGER_DATABASE_URL=url)
    assert_one_line(result, elapsed_s, str(tmp_path / "blocker"), "is not a directory")


@pytest.mark.parametrize("args", [QUERIES[0], *WRITERS], ids=lambda args: args[0])
def test_sqlite_path_that_is_a_directory(args: list[str], tmp_path: Path) -> None:
    (tmp_path / "ledger.db").mkdir()
    result, elapsed_s = ledger(args, LEDGER_DATABASE_URL=f"sqlite:///{tmp_path / 'ledger.db'}")
    assert_one_line(result, elapsed_s, str(tmp_path / "ledger.db"), "is not a file")


@pytest.mark.parametrize("args", [QUERIES[0], ["publish", "-"], ["run"]], ids=lambda a: a[0])
def test_a_setting_with_a_bad_value(args: list[str]) -> None:
    result, elapsed_s = ledger(args, LEDGER_LOG_FORMAT="xml")
    assert_one_line(result, elapsed_s, "LEDGER_LOG_FORMAT", "'xml'", "'json'", "'console'")


def test_several_bad_settings_still_make_one_line() -> None:
    # Not a query: a query reads only the settings it uses (database, logging).
    result, elapsed_s = ledger(
        ["projections", "status", "--json"], LEDGER_PARTITIONS="0", LEDGER_BROKER_PORT="port"
    )
    assert_one_line(result, elapsed_s, "LEDGER_PARTITIONS='0'", "LEDGER_BROKER_PORT='port'")


def test_publish_a_missing_file_says_so_before_looking_for_a_broker() -> None:
    result, elapsed_s = ledger(["publish", "/nonexistent.jsonl"])
    assert_one_line(result, elapsed_s, "no such file: /nonexistent.jsonl")


def test_publish_a_directory(tmp_path: Path) -> None:
    result, elapsed_s = ledger(["publish", str(tmp_path)])
    assert_one_line(result, elapsed_s, str(tmp_path), "is a directory")


@pytest.mark.parametrize(
    "args", [["publish", "-"], ["republish", "--from", "1"]], ids=lambda args: args[0]
)
def test_no_embedded_broker(args: list[str]) -> None:
    port = free_port()
    result, elapsed_s = ledger(args, LEDGER_BROKER_PORT=str(port))
    assert_one_line(result, elapsed_s, f"127.0.0.1:{port}", "`ledger run`", "`ledger broker`")


@pytest.mark.parametrize(
    "args", [["publish", "-"], ["republish", "--from", "1"], ["bench", "--only", "ingest"]], ids=str
)
def test_configured_broker_not_listening(args: list[str]) -> None:
    bootstrap = f"127.0.0.1:{free_port()}"
    result, elapsed_s = ledger(args, LEDGER_KAFKA_BOOTSTRAP=bootstrap)
    assert_one_line(result, elapsed_s, bootstrap, "LEDGER_KAFKA_BOOTSTRAP", "`ledger run`")
