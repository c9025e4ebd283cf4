"""Queries over the balances read model; each answer names the position it reflects.

Queries only read, so they work through a read-only `Database`. A read model that has not been
created yet (nothing has prepared the schema) reads as empty: no account, position 0.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson

from ledger.domain.postings import LedgerAccount, natural_balance
from ledger.persistence.database import Cursor, Database
from ledger.persistence.positions import read_position
from projections.balances import POSITION_NAME, TABLES

READ_MODEL_TABLES = ("ledger_positions", *TABLES)


class NotFound(LookupError):
    """The read model has no such account."""


def _epoch_us(moment: datetime) -> int:
    return int(moment.timestamp()) * 1_000_000 + moment.microsecond


def position(database: Database) -> int:
    """The notification id the balances read model reflects (0 before it exists)."""

    def read(cursor: Cursor) -> int:
        if not database.has_tables(cursor, ("ledger_positions",)):
            return 0
        return read_position(cursor, POSITION_NAME)

    return database.query(read)


def _check_account(database: Database, cursor: Cursor, account_id: str) -> str:
    """The account's currency; NotFound if the read model has no such account (or no tables)."""
    if not database.has_tables(cursor, READ_MODEL_TABLES):
        raise NotFound(
            f"unknown account {account_id!r} (no read model yet: has `ledger run` started?)"
        )
    cursor.execute("SELECT currency FROM rm_accounts WHERE account_id = %s", (account_id,))
    row = cursor.fetchone()
    if row is None:
        raise NotFound(f"unknown account {account_id!r} (not in the read model)")
    return str(row[0])


def balance(database: Database, account_id: str, *, at: datetime | None = None) -> dict[str, Any]:
    """Every ledger balance of one account on its natural side, now or as of `at`."""

    def read(cursor: Cursor) -> tuple[str, dict[str, int], int]:
        currency = _check_account(database, cursor, account_id)
        raw: dict[str, int] = {}
        if at is None:
            cursor.execute(
                "SELECT ledger_account, debit_minus_credit FROM rm_balances WHERE account_id = %s",
                (account_id,),
            )
            raw = {str(name): int(amount) for name, amount in cursor.fetchall()}
        else:
            cursor.execute(
                "SELECT postings FROM rm_history WHERE account_id = %s AND occurred_us <= %s"
                " ORDER BY position",
                (account_id, _epoch_us(at)),
            )
            for (postings_json,) in cursor.fetchall():
                for posting in orjson.loads(postings_json):
                    raw[posting["debit"]] = raw.get(posting["debit"], 0) + posting["amount"]
                    raw[posting["credit"]] = raw.get(posting["credit"], 0) - posting["amount"]
        return currency, raw, read_position(cursor, POSITION_NAME)

    currency, raw, reflected = database.query(read)
    answer: dict[str, Any] = {"account_id": account_id, "currency": currency}
    for ledger_account in LedgerAccount:
        answer[ledger_account.value] = natural_balance(ledger_account, raw.get(ledger_account, 0))
    answer["position"] = reflected
    if at is not None:
        answer["as_of"] = at.isoformat()
    return answer


def trial_balance(database: Database) -> dict[str, Any]:
    """Sums per ledger account and currency (debits minus credits); each currency totals 0."""

    def read(cursor: Cursor) -> tuple[list[Any], int]:
        if not database.has_tables(cursor, READ_MODEL_TABLES):
            return [], 0
        cursor.execute(
            "SELECT currency, ledger_account, SUM(debit_minus_credit) FROM rm_balances"
            " GROUP BY currency, ledger_account ORDER BY currency, ledger_account"
        )
        return cursor.fetchall(), read_position(cursor, POSITION_NAME)

    rows, reflected = database.query(read)
    currencies: dict[str, dict[str, Any]] = {}
    for currency, ledger_account, amount in rows:
        entry = currencies.setdefault(str(currency), {"accounts": {}, "total": 0})
        entry["accounts"][str(ledger_account)] = int(amount)
        entry["total"] += int(amount)
    return {"position": reflected, "currencies": currencies}


def history(database: Database, account_id: str, *, limit: int) -> list[dict[str, Any]]:
    """The account's domain events in order, with their postings."""

    def read(cursor: Cursor) -> list[Any]:
        _check_account(database, cursor, account_id)
        cursor.execute(
            "SELECT version, type, occurred_at, position, data, postings FROM rm_history"
            " WHERE account_id = %s ORDER BY version LIMIT %s",
            (account_id, limit),
        )
        return cursor.fetchall()

    return [
        {
            "version": int(version),
            "type": str(type_name),
            "occurred_at": str(occurred_at),
            "position": int(row_position),
            "data": orjson.loads(data),
            "postings": orjson.loads(postings),
        }
        for version, type_name, occurred_at, row_position, data, postings in database.query(read)
    ]
