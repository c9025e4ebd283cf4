"""Queries over the disputes read model; each answer names the position it reflects."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from statistics import median
from typing import Any, Final

import orjson

from ledger import limits
from ledger.generations import Live, ProjectionMissing, read_live
from ledger.persistence.database import Cursor, Database
from projections.disputes_tables import (
    DISPUTE_COLUMNS,
    DISPUTE_EVENTS,
    DISPUTES,
    JSON_COLUMNS,
    NAME,
)
from projections.queries import NotFound

READS = (NAME,)
"""The read models the queries of this module read (what `--wait` waits for)."""

REPORT_GROUPS: Final[tuple[str, ...]] = ("reason", "channel", "rep", "outcome")
"""What the feedback report breaks resolved disputes down by."""

UNASSIGNED: Final = "unassigned"
"""The representative of a dispute nobody owns, in the load and the feedback report."""

_SELECT = ", ".join(DISPUTE_COLUMNS)


def _answer(row: Any) -> dict[str, Any]:
    """A stored row as public JSON (`open` for the stored `is_open`)."""
    answer: dict[str, Any] = {}
    for column, value in zip(DISPUTE_COLUMNS, row, strict=True):
        if column in JSON_COLUMNS:
            answer[column] = orjson.loads(value)
        elif column == "is_open":
            answer["open"] = bool(value)
        else:
            answer[column] = value
    return answer


def _load(cursor: Cursor, live: Live) -> list[dict[str, Any]]:
    cursor.execute(
        f"SELECT rep, COUNT(*) FROM {live.generation.table(DISPUTES)}"
        " WHERE is_open = %s GROUP BY rep",
        (True,),
    )
    load = [{"rep": rep, "open": int(count)} for rep, count in cursor.fetchall()]
    # Busiest first, then by name, nobody's last (the same on every backend).
    return sorted(load, key=lambda item: (-item["open"], item["rep"] is None, item["rep"] or ""))


def _read(database: Database, query: Callable[[Cursor, Live], Any], empty: Any) -> Any:
    try:
        return read_live(database, NAME, query)
    except ProjectionMissing:  # nothing has prepared the schema yet: no disputes at all
        return 0, empty


def disputes(
    database: Database,
    *,
    open_only: bool = False,
    rep: str | None = None,
    account_id: str | None = None,
) -> dict[str, Any]:
    """Disputes in the order they were opened (optionally only open ones, one representative's
    or one account's), with each representative's open load."""
    conditions: list[str] = []
    params: list[Any] = []
    if open_only:
        conditions.append("is_open = %s")
        params.append(True)
    if rep is not None:
        conditions.append("rep = %s")
        params.append(rep)
    if account_id is not None:
        conditions.append("account_id = %s")
        params.append(account_id)
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""

    def query(cursor: Cursor, live: Live) -> tuple[int, tuple[list[Any], list[dict[str, Any]]]]:
        cursor.execute(
            f"SELECT {_SELECT} FROM {live.generation.table(DISPUTES)}{where}"
            " ORDER BY opened_at, dispute_id LIMIT %s",
            (*params, limits.query_rows_max),
        )
        rows = cursor.fetchall()
        return live.position, (rows, _load(cursor, live))

    reflected, (rows, load) = _read(database, query, ([], []))
    return {"position": reflected, "disputes": [_answer(row) for row in rows], "load": load}


def representative_load(database: Database) -> dict[str, Any]:
    """Open disputes per representative, busiest first (`rep` null: nobody owns them yet)."""
    reflected, load = _read(database, lambda cursor, live: (live.position, _load(cursor, live)), [])
    return {"position": reflected, "load": load}


def dispute(database: Database, dispute_id: str) -> dict[str, Any]:
    """One dispute (by our id or the processor's) with its whole story in log order; the
    story's data keeps the customer's words (`data_with_personal`): staff only."""

    def query(cursor: Cursor, live: Live) -> tuple[int, Any, list[Any]]:
        cursor.execute(
            f"SELECT {_SELECT} FROM {live.generation.table(DISPUTES)}"
            " WHERE dispute_id = %s OR external_id = %s ORDER BY dispute_id LIMIT 1",
            (dispute_id, dispute_id),
        )
        row = cursor.fetchone()
        if row is None:
            raise NotFound(f"unknown dispute {dispute_id!r} (not in the read model)")
        cursor.execute(
            "SELECT version, type, occurred_at, position, data_with_personal, postings"
            f" FROM {live.generation.table(DISPUTE_EVENTS)}"
            " WHERE dispute_id = %s ORDER BY position LIMIT %s",
            (row[0], limits.history_page_max),
        )
        return live.position, row, cursor.fetchall()

    try:
        reflected, row, events = read_live(database, NAME, query)
    except ProjectionMissing as error:
        raise NotFound(
            f"unknown dispute {dispute_id!r} (no read model yet: has `ledger run` started?)"
        ) from error
    return {
        **_answer(row),
        "events": [
            {
                "version": int(version),
                "type": str(type_name),
                "occurred_at": str(occurred_at),
                "position": int(position),
                "data_with_personal": orjson.loads(data),
                "postings": orjson.loads(postings),
            }
            for version, type_name, occurred_at, position, data, postings in events
        ],
        "position": reflected,
    }


def _seconds(start: str, end: str | None) -> float | None:
    if end is None:
        return None
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def summary(rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Count, mean score, median seconds to first response and to resolution, and the share
    resolved within the resolution target, of resolved disputes."""
    rows = list(rows)
    scores = [row["feedback_score"] for row in rows if row["feedback_score"] is not None]
    to_response = [
        seconds
        for row in rows
        if (seconds := _seconds(row["opened_at"], row["first_response_at"])) is not None
    ]
    to_resolution = [_seconds(row["opened_at"], row["resolved_at"]) or 0.0 for row in rows]
    within = sum(
        1
        for row in rows
        if datetime.fromisoformat(row["resolved_at"])
        <= datetime.fromisoformat(row["resolution_due"])
    )
    return {
        "count": len(rows),
        "scored": len(scores),
        "mean_score": round(sum(scores) / len(scores), 2) if scores else None,
        "median_first_response_s": median(to_response) if to_response else None,
        "median_resolution_s": median(to_resolution) if to_resolution else None,
        "within_sla": round(within / len(rows), 4) if rows else None,
    }


def feedback_report(database: Database, since: datetime | None = None) -> dict[str, Any]:
    """Resolved disputes (since a moment, by resolution time) summarised overall and by reason,
    channel, representative and outcome."""
    columns = (
        "reason",
        "channel",
        "rep",
        "outcome",
        "opened_at",
        "first_response_at",
        "resolved_at",
        "resolution_due",
        "feedback_score",
    )

    # Stored times are UTC RFC 3339 text, so text order is time order.
    since_text = "" if since is None else since.astimezone(UTC).isoformat()

    def query(cursor: Cursor, live: Live) -> tuple[int, list[Any]]:
        cursor.execute(
            f"SELECT {', '.join(columns)} FROM {live.generation.table(DISPUTES)}"
            " WHERE status = %s AND resolved_at >= %s"
            " ORDER BY resolved_at DESC, dispute_id LIMIT %s",
            ("resolved", since_text, limits.feedback_report_rows_max),
        )
        return live.position, cursor.fetchall()

    reflected, fetched = _read(database, query, [])
    rows = [dict(zip(columns, row, strict=True)) for row in fetched]
    for row in rows:
        row["rep"] = row["rep"] or UNASSIGNED
    report: dict[str, Any] = {
        "position": reflected,
        "since": None if since is None else since_text,
        "truncated": len(rows) >= limits.feedback_report_rows_max,
        "total": summary(rows),
    }
    for group in REPORT_GROUPS:
        values = sorted({row[group] for row in rows})
        report[f"by_{group}"] = [
            {group: value, **summary(row for row in rows if row[group] == value)}
            for value in values
        ]
    return report
