"""Logs stay one format: under LEDGER_LOG_FORMAT=json every stderr line is JSON, outage or not."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from ledger.kafka.broker import EmbeddedBroker
from tests.brokers import STOP_GRACE_S
from tests.e2e.harness import ledger_env, running_ledger
from tests.waiting import wait_for

OUTAGE_S = 8.0
"""How long the broker stays down: long enough for dozens of Kafka client errors per worker."""
KAFKA_LINES_PER_WORKER_MAX = 3
"""Kafka client lines one worker may write for one outage: its first connection error, plus the
odd error that is not about the connection (such as its consumer failing to leave a group the
restarted broker no longer knows, at the stop). Without the filter it is dozens."""


def log_lines(path: Path) -> list[bytes]:
    """The non-empty lines `ledger run` wrote so far."""
    return [line for line in path.read_bytes().splitlines() if line.strip()]


def parsed(path: Path) -> list[dict[str, Any]]:
    """Every line as a JSON object; fails naming the first line that is not one."""
    documents = []
    for line in log_lines(path):
        try:
            document = orjson.loads(line)
        except orjson.JSONDecodeError as error:
            raise AssertionError(f"not a JSON line: {line!r}") from error
        assert isinstance(document, dict), line
        documents.append(document)
    return documents


def has_event(path: Path, words: str) -> bool:
    """Whether some line so far is a log line whose event contains `words`."""
    return any(words in str(document.get("event", "")) for document in parsed(path))


def test_json_logs_through_a_broker_outage(fresh_broker: EmbeddedBroker, tmp_path: Path) -> None:
    database_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    log_path = tmp_path / "run.log"
    env = ledger_env(fresh_broker.bootstrap, database_url)
    with running_ledger(env, log_path):
        wait_for(lambda: has_event(log_path, "partition assigned"), "the ingest to join its group")
        fresh_broker.stop(timeout_s=STOP_GRACE_S)
        wait_for(
            lambda: any(d.get("logger", "").startswith("kafka") for d in parsed(log_path)),
            "the first Kafka client error",
        )
        time.sleep(OUTAGE_S)  # the outage itself, not a wait for something to happen
        fresh_broker.start()
        wait_for(lambda: has_event(log_path, "broker reachable again"), "the outage's summary")

    documents = parsed(log_path)
    banner = [d for d in documents if str(d.get("event", "")).startswith("ledger running: broker")]
    assert len(banner) == 1 and banner[0]["broker"] == fresh_broker.bootstrap, banner
    kafka_lines = [d for d in documents if str(d.get("logger", "")).startswith("kafka")]
    assert kafka_lines
    workers = Counter(d.get("worker") for d in kafka_lines)
    assert None not in workers and max(workers.values()) <= KAFKA_LINES_PER_WORKER_MAX, kafka_lines
    summaries = [d for d in documents if "broker reachable again" in str(d.get("event", ""))]
    assert summaries and all(d["level"] == "warning" for d in summaries), summaries
    assert max(Counter(d.get("worker") for d in summaries).values()) == 1, summaries
    assert sum(d["suppressed_errors"] for d in summaries) > 0, summaries
