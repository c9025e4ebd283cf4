"""Queries over the balances read model; each answer names the position it reflects.

Every query reads the live generation of the balances projection in one read transaction, so an
answer never mixes generations and never sees a rebuild half done.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import orjson

from ledger.clock import epoch_us
from ledger.domain.postings import LedgerAccount, add_movements, natural_balance
from ledger.generations import Live, ProjectionMissing, read_live
from ledger.persistence.database import Cursor, Database
from projections.balances_tables import ACCOUNTS, BALANCES, HISTORY, NAME

T = TypeVar("T")

READS = (NAME,)
"""The read models the queries of this module read (what `--wait` waits for)."""


class NotFound(LookupError):
    """The read model has no such account."""


def _no_read_model(account_id: str) -> NotFound:
    return NotFound(
        f"unknown account {account_id!r} (no read model yet: has `ledger run` started?)"
    )


def _account_currency(cursor: Cursor, live: Live, account_id: str) -> str:
    cursor.execute(
        f"SELECT currency FROM {live.generation.table(ACCOUNTS)} WHERE account_id = %s",
        (account_id,),
    )
    row = cursor.fetchone()
    if row is None:
        raise NotFound(f"unknown account {account_id!r} (not in the read model)")
    return str(row[0])


def balance(database: Database, account_id: str, *, at: datetime | None = None) -> dict[str, Any]:
    """Every ledger balance of one account on its natural side, now or as of `at`."""

    def query(cursor: Cursor, live: Live) -> tuple[str, dict[str, int]]:
        currency = _account_currency(cursor, live, account_id)
        raw: dict[str, int] = {}
        if at is None:
            cursor.execute(
                "SELECT ledger_account, debit_minus_credit"
                f" FROM {live.generation.table(BALANCES)} WHERE account_id = %s",
                (account_id,),
            )
            raw = {str(name): int(amount) for name, amount in cursor.fetchall()}
        else:
            cursor.execute(
                f"SELECT postings FROM {live.generation.table(HISTORY)}"
                " WHERE account_id = %s AND occurred_us <= %s ORDER BY position",
                (account_id, epoch_us(at)),
            )
            for (postings_json,) in cursor.fetchall():
                postings = orjson.loads(postings_json)
                add_movements(raw, ((p["debit"], p["credit"], p["amount"]) for p in postings))
        return currency, raw

    try:
        reflected, (currency, raw) = _with_position(database, query)
    except ProjectionMissing as error:
        raise _no_read_model(account_id) from error
    answer: dict[str, Any] = {"account_id": account_id, "currency": currency}
    for ledger_account in LedgerAccount:
        answer[ledger_account.value] = natural_balance(ledger_account, raw.get(ledger_account, 0))
    answer["position"] = reflected
    if at is not None:
        answer["as_of"] = at.isoformat()
    return answer


def trial_balance(database: Database) -> dict[str, Any]:
    """Sums per ledger account and currency (debits minus credits); each currency totals 0."""

    def query(cursor: Cursor, live: Live) -> list[Any]:
        cursor.execute(
            "SELECT currency, ledger_account, SUM(debit_minus_credit)"
            f" FROM {live.generation.table(BALANCES)}"
            " GROUP BY currency, ledger_account ORDER BY currency, ledger_account"
        )
        return cursor.fetchall()

    try:
        reflected, rows = _with_position(database, query)
    except ProjectionMissing:  # nothing has prepared the schema yet: no books at all
        reflected, rows = 0, []
    currencies: dict[str, dict[str, Any]] = {}
    for currency, ledger_account, amount in rows:
        entry = currencies.setdefault(str(currency), {"accounts": {}, "total": 0})
        entry["accounts"][str(ledger_account)] = int(amount)
        entry["total"] += int(amount)
    return {"position": reflected, "currencies": currencies}


def history(database: Database, account_id: str, *, limit: int) -> list[dict[str, Any]]:
    """The account's domain events in order, with their postings."""

    def query(cursor: Cursor, live: Live) -> list[Any]:
        _account_currency(cursor, live, account_id)
        cursor.execute(
            "SELECT version, type, occurred_at, position, data, postings"
            f" FROM {live.generation.table(HISTORY)}"
            " WHERE account_id = %s ORDER BY version LIMIT %s",
            (account_id, limit),
        )
        return cursor.fetchall()

    try:
        rows = read_live(database, NAME, query)
    except ProjectionMissing as error:
        raise _no_read_model(account_id) from error
    return [
        {
            "version": int(version),
            "type": str(type_name),
            "occurred_at": str(occurred_at),
            "position": int(row_position),
            "data": orjson.loads(data),
            "postings": orjson.loads(postings),
        }
        for version, type_name, occurred_at, row_position, data, postings in rows
    ]


def _with_position(database: Database, query: Callable[[Cursor, Live], T]) -> tuple[int, T]:
    return read_live(database, NAME, lambda cursor, live: (live.position, query(cursor, live)))
