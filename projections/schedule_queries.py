"""The scheduler's query: the items due at a moment and not done, oldest first."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from ledger.clock import epoch_us
from ledger.generations import Live, read_live
from ledger.persistence.database import Cursor, Database
from projections.schedule_tables import DORMANCY, DORMANCY_ITEM, INSTALLMENT_DUE, ITEMS, NAME


@dataclass(frozen=True, slots=True)
class DueItem:
    """One item to fire: what, for which account, due when (as its event recorded it)."""

    kind: str
    item_id: str
    account_id: str
    due_at: str
    due_us: int
    attempt: int | None
    """The failed attempt of a refund retry; the escheatment's number for dormancy; else None."""


@dataclass(frozen=True, slots=True)
class DormancyPeriods:
    """How long an account's owed credit waits before it is escheated, by jurisdiction."""

    by_jurisdiction: Mapping[str, timedelta]
    default: timedelta

    def period(self, jurisdiction: str) -> timedelta:
        """The period of one jurisdiction."""
        return self.by_jurisdiction.get(jurisdiction, self.default)


def _us(period: timedelta) -> int:
    return period // timedelta(microseconds=1)


def due_items(
    database: Database,
    now: datetime,
    dormancy: DormancyPeriods,
    *,
    limit: int,
    installment_grace: timedelta = timedelta(0),
) -> list[DueItem]:
    """At most `limit` items due at `now` and not done, oldest due first; an installment is
    fired once `installment_grace` has passed after its due time (it is missed only then)."""
    now_us = epoch_us(now)

    def query(cursor: Cursor, live: Live) -> list[DueItem]:
        cursor.execute(
            "SELECT kind, item_id, account_id, due_at, due_us, attempt"
            f" FROM {live.generation.table(ITEMS)}"
            " WHERE done = 0 AND due_us <= %s AND (kind <> %s OR due_us <= %s)"
            " ORDER BY due_us, kind, subject_id LIMIT %s",
            (now_us, INSTALLMENT_DUE, now_us - _us(installment_grace), limit),
        )
        found = [
            DueItem(kind, item_id, account_id, due_at, int(due_us), int(attempt) or None)
            for kind, item_id, account_id, due_at, due_us, attempt in cursor.fetchall()
        ]
        conditions: list[str] = []
        params: list[object] = []
        for jurisdiction, period in dormancy.by_jurisdiction.items():
            conditions.append("(jurisdiction = %s AND last_activity_us <= %s)")
            params.extend((jurisdiction, now_us - _us(period)))
        listed = list(dormancy.by_jurisdiction)
        if listed:
            marks = ", ".join(["%s"] * len(listed))
            conditions.append(f"(jurisdiction NOT IN ({marks}) AND last_activity_us <= %s)")
            params.extend(listed)
        else:
            conditions.append("last_activity_us <= %s")
        params.append(now_us - _us(dormancy.default))
        cursor.execute(
            "SELECT account_id, jurisdiction, last_activity_at, escheatments"
            f" FROM {live.generation.table(DORMANCY)}"
            f" WHERE owed_minor > 0 AND last_activity_us >= 0 AND ({' OR '.join(conditions)})"
            " ORDER BY last_activity_us, account_id LIMIT %s",
            (*params, limit),
        )
        for account_id, jurisdiction, activity_at, escheatments in cursor.fetchall():
            due = datetime.fromisoformat(activity_at) + dormancy.period(jurisdiction)
            found.append(
                DueItem(
                    DORMANCY_ITEM,
                    account_id,
                    account_id,
                    due.isoformat(),
                    epoch_us(due),
                    int(escheatments) + 1,
                )
            )
        found.sort(key=lambda item: (item.due_us, item.kind, item.item_id))
        return found[:limit]

    return read_live(database, NAME, query)
