"""Queries over the follow-up queue; each answer names the position it reflects."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from ledger import limits
from ledger.clock import epoch_us
from ledger.generations import Live, ProjectionMissing, read_live
from ledger.persistence.database import Cursor, Database
from projections.follow_ups_tables import FOLLOW_UP_COLUMNS, FOLLOW_UPS, NAME

READS = (NAME,)
"""The read models the queries of this module read (what `--wait` waits for)."""

SHOWN = tuple(column for column in FOLLOW_UP_COLUMNS if column != "due_us")
"""The columns a follow-up shows (`due_us` is `due_at` for ordering only)."""


def follow_ups(
    database: Database,
    *,
    due_by: datetime | None = None,
    owner: str | None = None,
    at: datetime | None = None,
) -> dict[str, Any]:
    """Open follow-ups, oldest due first (so overdue ones lead); only those due by `due_by`, or
    owned by `owner`. Each says, as of `at` (default now), whether it is overdue and its age
    since it was raised (`age_s`: an escalation's age, for one raised by an escalation)."""
    now = at if at is not None else datetime.now(UTC)
    conditions = ["status = %s"]
    params: list[Any] = ["open"]
    if due_by is not None:
        conditions.append("due_us <= %s")
        params.append(epoch_us(due_by))
    if owner is not None:
        conditions.append("owner = %s")
        params.append(owner)

    def query(cursor: Cursor, live: Live) -> tuple[int, list[Any]]:
        cursor.execute(
            f"SELECT {', '.join(SHOWN)} FROM {live.generation.table(FOLLOW_UPS)}"
            f" WHERE {' AND '.join(conditions)} ORDER BY due_us, follow_up_id LIMIT %s",
            (*params, limits.query_rows_max),
        )
        return live.position, cursor.fetchall()

    try:
        reflected, rows = read_live(database, NAME, query)
    except ProjectionMissing:  # nothing has prepared the schema yet: an empty queue
        reflected, rows = 0, []
    items = []
    for row in rows:
        item = dict(zip(SHOWN, row, strict=True))
        item["escalated"] = bool(item["escalated"])
        item["overdue"] = datetime.fromisoformat(item["due_at"]) <= now
        item["age_s"] = int((now - datetime.fromisoformat(item["raised_at"])).total_seconds())
        items.append(item)
    return {"position": reflected, "follow_ups": items}
