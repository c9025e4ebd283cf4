"""Queries over the overpayments read model; each answer names the position it reflects."""

from __future__ import annotations

from typing import Any

import orjson

from ledger import limits
from ledger.generations import Live, ProjectionMissing, read_live
from ledger.persistence.database import Cursor, Database
from projections.overpayments_tables import (
    JSON_COLUMNS,
    NAME,
    OVERPAYMENT_COLUMNS,
    OVERPAYMENT_EVENTS,
    OVERPAYMENTS,
)
from projections.queries import NotFound

READS = (NAME,)
"""The read models the queries of this module read (what `--wait` waits for)."""

_SELECT = ", ".join(OVERPAYMENT_COLUMNS)


def _answer(row: Any) -> dict[str, Any]:
    """A stored row as public JSON (`open` for the stored `is_open`)."""
    answer: dict[str, Any] = {}
    for column, value in zip(OVERPAYMENT_COLUMNS, row, strict=True):
        if column in JSON_COLUMNS:
            answer[column] = orjson.loads(value)
        elif column == "is_open":
            answer["open"] = bool(value)
        elif column == "resolved_automatically":
            answer[column] = None if value is None else bool(value)
        else:
            answer[column] = value
    return answer


def overpayments(
    database: Database, *, open_only: bool = False, account_id: str | None = None
) -> dict[str, Any]:
    """Overpayments in the order they were detected, optionally only open ones or one account's."""
    conditions: list[str] = []
    params: list[Any] = []
    if open_only:
        conditions.append("is_open = %s")
        params.append(True)
    if account_id is not None:
        conditions.append("account_id = %s")
        params.append(account_id)
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""

    def query(cursor: Cursor, live: Live) -> tuple[int, list[Any]]:
        cursor.execute(
            f"SELECT {_SELECT} FROM {live.generation.table(OVERPAYMENTS)}{where}"
            " ORDER BY detected_at, overpayment_id LIMIT %s",
            (*params, limits.query_rows_max),
        )
        return live.position, cursor.fetchall()

    try:
        reflected, rows = read_live(database, NAME, query)
    except ProjectionMissing:  # nothing has prepared the schema yet: no overpayments at all
        reflected, rows = 0, []
    return {"position": reflected, "overpayments": [_answer(row) for row in rows]}


def overpayment(database: Database, overpayment_id: str) -> dict[str, Any]:
    """One overpayment with every event that names it or moves its money, in log order."""

    def query(cursor: Cursor, live: Live) -> tuple[int, Any, list[Any]]:
        cursor.execute(
            f"SELECT {_SELECT} FROM {live.generation.table(OVERPAYMENTS)}"
            " WHERE overpayment_id = %s",
            (overpayment_id,),
        )
        row = cursor.fetchone()
        if row is None:
            raise NotFound(f"unknown overpayment {overpayment_id!r} (not in the read model)")
        cursor.execute(
            "SELECT version, type, occurred_at, position, data, postings"
            f" FROM {live.generation.table(OVERPAYMENT_EVENTS)}"
            " WHERE overpayment_id = %s ORDER BY position LIMIT %s",
            (overpayment_id, limits.history_page_max),
        )
        return live.position, row, cursor.fetchall()

    try:
        reflected, row, events = read_live(database, NAME, query)
    except ProjectionMissing as error:
        raise NotFound(
            f"unknown overpayment {overpayment_id!r} (no read model yet: has `ledger run` started?)"
        ) from error
    return {
        **_answer(row),
        "events": [
            {
                "version": int(version),
                "type": str(type_name),
                "occurred_at": str(occurred_at),
                "position": int(position),
                "data": orjson.loads(data),
                "postings": orjson.loads(postings),
            }
            for version, type_name, occurred_at, position, data, postings in events
        ],
        "position": reflected,
    }
