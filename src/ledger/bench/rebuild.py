"""Rebuild and replay: the balances projection from the event store against a raw log copy,
and loading one long-lived account (snapshots on).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from eventsourcing.persistence import Notification, Tracking

from ledger import limits, read_models
from ledger.bench.workload import LineWriter, Workload, account_name
from ledger.clock import SystemClock
from ledger.domain.account import Account, account_uuid
from ledger.ingest import InboundMessage, IngestService
from ledger.persistence.database import Database
from ledger.persistence.event_store import EventStore, event_store_env
from ledger.persistence.mapper import current_state
from ledger.persistence.positions import read_position, write_position
from ledger.persistence.urls import DatabaseTarget, parse_database_url
from ledger.policy_file import load_policy
from ledger.rebuild import rebuild_aside

RAW_TABLE = "bench_raw_log"
RAW_POSITION = "bench:raw-log"
LOAD_EVENTS_MAX = 10_000
SNAPSHOT_INTERVAL = 100
LOAD_REPEATS = 15

Progress = Callable[[str, int, int], None]


def populate(database_url: str, workload: Workload, progress: Progress) -> None:
    """Write a workload straight through the ingest service (no Kafka), in poll-sized batches."""
    target = parse_database_url(database_url)
    read_models.prepare(target)
    store = EventStore(env=event_store_env(target, create_table=False))
    service = IngestService(store, policy=load_policy(None), clock=SystemClock())
    try:
        _ingest_lines(service, [line.value for line in workload.lines], progress, "populating")
    finally:
        store.close()


def _ingest_lines(
    service: IngestService, values: list[bytes], progress: Progress, label: str
) -> None:
    batch_max = limits.poll_records_max
    for start in range(0, len(values), batch_max):
        chunk = values[start : start + batch_max]
        messages = [
            InboundMessage("bench", 0, start + index, None, value)
            for index, value in enumerate(chunk)
        ]
        batch = service.prepare(messages)
        service.commit(batch, Tracking(f"bench:{label}:0", start + len(chunk)))
        progress(label, start + len(chunk), len(values))


def measure_rebuild(database_url: str, progress: Progress) -> dict[str, Any]:
    """Rebuild each registered read model from the event store, against copying the raw log.

    The top-level figures are the balances read model's (the one every account needs);
    `models` has every registered read model rebuilt aside on its own, and `decode` reading and
    decoding the log with no read model: each against the same raw copy of the same run. The
    projections worker keeps all of them, so together they say what its CPU per event is made
    of, and what one row written per event (the system phase's no-domain projection) leaves
    out.
    """
    target = parse_database_url(database_url)
    store = EventStore(env=event_store_env(target, create_table=False))
    database = Database(target)
    try:
        latest = store.process_recorder.max_notification_id() or 0
        baseline_s, copied = _copy_raw_log(store, database, latest, progress)
        decode_s, decoded = _decode_log(store, latest, progress)
        models: dict[str, dict[str, Any]] = {}
        for projection in read_models.PROJECTIONS:
            started = time.monotonic()
            rebuilt = rebuild_aside(
                database,
                store,
                projection,
                progress=_reporting(progress, f"rebuild {projection.name}", latest),
            ).events
            seconds = time.monotonic() - started
            models[projection.name] = _against(rebuilt, seconds, baseline_s, copied)
    finally:
        database.close()
        store.close()
    balances = models[read_models.BALANCES.name]
    return {
        **balances,
        "baseline_seconds": round(baseline_s, 3),
        "models": models,
        "decode": _against(decoded, decode_s, baseline_s, copied),
    }


def _reporting(progress: Progress, label: str, total: int) -> Callable[[int], None]:
    def report(position: int) -> None:
        progress(label, position, total)

    return report


def _against(events: int, seconds: float, baseline_s: float, copied: int) -> dict[str, Any]:
    """A pass over the log beside the raw copy of it: rates and their ratio."""
    per_s = events / seconds if seconds else 0.0
    baseline_per_s = copied / baseline_s if baseline_s else 0.0
    return {
        "events_per_s": round(per_s),
        "baseline_per_s": round(baseline_per_s),
        "ratio": round(per_s / baseline_per_s, 3) if baseline_per_s else 0.0,
        "events": events,
        "seconds": round(seconds, 3),
    }


def _decode_log(store: EventStore, latest: int, progress: Progress) -> tuple[float, int]:
    """The least any read model of the event store does: read each notification and decode it
    (upcast to its class's current version), in the rebuild's batches, writing nothing."""
    decoded = 0
    started = time.monotonic()
    for notifications in _log_pages(store, 0):
        for notification in notifications:
            current_state(notification.topic, notification.state)
        decoded += len(notifications)
        progress("decode", notifications[-1].id, latest)
    return time.monotonic() - started, decoded


def _log_pages(store: EventStore, position: int) -> Iterator[Sequence[Notification]]:
    """The log after `position`, in the projections' batches."""
    recorder = store.process_recorder
    while True:
        notifications = recorder.select_notifications(
            start=position, limit=limits.notification_batch_max, inclusive_of_start=False
        )
        if not notifications:
            return
        yield notifications
        position = notifications[-1].id
        if len(notifications) < limits.notification_batch_max:
            return


def _copy_raw_log(
    store: EventStore, database: Database, latest: int, progress: Progress
) -> tuple[float, int]:
    """The baseline: read the notification log, write one row per notification, same batches."""
    blob = "BYTEA" if database.kind == "postgresql" else "BLOB"
    with database.transaction() as cursor:
        cursor.execute(
            f"CREATE TABLE IF NOT EXISTS {RAW_TABLE} (position BIGINT PRIMARY KEY,"
            f" originator_id TEXT NOT NULL, originator_version INTEGER NOT NULL,"
            f" topic TEXT NOT NULL, state {blob} NOT NULL)"
        )
        cursor.execute(f"DELETE FROM {RAW_TABLE}")
        cursor.execute("DELETE FROM ledger_positions WHERE name = %s", (RAW_POSITION,))
    insert = (
        f"INSERT INTO {RAW_TABLE} (position, originator_id, originator_version, topic, state)"
        " VALUES (%s, %s, %s, %s, %s)"
    )
    copied = 0
    started = time.monotonic()
    with database.read() as cursor:
        position = read_position(cursor, RAW_POSITION)
    for notifications in _log_pages(store, position):
        rows = [
            (n.id, str(n.originator_id), n.originator_version, n.topic, n.state)
            for n in notifications
        ]
        with database.transaction() as cursor:
            cursor.executemany(insert, rows)
            write_position(cursor, RAW_POSITION, notifications[-1].id)
        copied += len(notifications)
        progress("rebuild baseline", notifications[-1].id, latest)
    return time.monotonic() - started, copied


def measure_load(database_url: str, events: int, progress: Progress) -> dict[str, Any]:
    """Milliseconds to load one account of up to 10,000 events, with and without a snapshot."""
    target = parse_database_url(database_url)
    read_models.prepare(target)
    count = max(2, min(LOAD_EVENTS_MAX, events))
    writer = LineWriter("load")
    name = account_name("load", 0)
    values = [writer.opening(name).value]
    while len(values) < count:
        index = len(values)
        fields: dict[str, object] = {"amount": {"value": 5_000, "currency": "USD"}}
        if index % 2:
            values.append(
                writer.line(
                    name, "invoice.issued", invoice_id=f"i{index}", due_date="2030-01-31", **fields
                ).value
            )
        else:
            values.append(
                writer.line(
                    name, "payment.received", payment_id=f"p{index}", method="card", **fields
                ).value
            )
    plain = EventStore(env=event_store_env(target, create_table=False))
    service = IngestService(plain, policy=load_policy(None), clock=SystemClock())
    try:
        _ingest_lines(service, values, progress, "load")
        written: Account = plain.repository.get(account_uuid(name))
        without_ms = _time_loads(plain, name)
    finally:
        plain.close()
    snapshotting = EventStore(env=_snapshot_env(target))
    try:
        version = written.version
        snapshot_version = max(1, version - version % SNAPSHOT_INTERVAL - SNAPSHOT_INTERVAL // 2)
        snapshotting.take_snapshot(account_uuid(name), version=snapshot_version)
        loaded: Account = snapshotting.repository.get(account_uuid(name))
        if _state(loaded) != _state(written):
            raise RuntimeError("an account loaded from its snapshot differs from the stored one")
        with_ms = _time_loads(snapshotting, name)
    finally:
        snapshotting.close()
    return {
        "load_ms": round(with_ms, 2),
        "load_without_snapshot_ms": round(without_ms, 2),
        "events": version,
        "replayed_after_snapshot": version - snapshot_version,
    }


def _snapshot_env(target: DatabaseTarget) -> dict[str, str]:
    return {**event_store_env(target, create_table=True), "IS_SNAPSHOTTING_ENABLED": "y"}


def _state(account: Account) -> dict[str, Any]:
    state = {key: value for key, value in vars(account).items() if key != "_pending_events"}
    state["balances"] = {str(key): value for key, value in account.balances.items()}
    return state


def _time_loads(store: EventStore, name: str) -> float:
    aggregate_id = account_uuid(name)
    store.repository.get(aggregate_id)
    timings: list[float] = []
    for _ in range(LOAD_REPEATS):
        started = time.perf_counter()
        store.repository.get(aggregate_id)
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)
