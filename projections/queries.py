"""Queries over the balances read model; each answer names the position it reflects."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson

from ledger.domain.postings import LedgerAccount, natural_balance
from ledger.persistence.database import Cursor, Database
from ledger.persistence.positions import read_position
from projections.balances import POSITION_NAME


class NotFound(LookupError):
    """The read model has no such account."""


def _epoch_us(moment: datetime) -> int:
    return int(moment.timestamp()) * 1_000_000 + moment.microsecond


def position(database: Database) -> int:
    """The notification id the balances read model reflects."""
    with database.read() as cursor:
        return read_position(cursor, POSITION_NAME)


def _account_currency(cursor: Cursor, account_id: str) -> str:
    cursor.execute("SELECT currency FROM rm_accounts WHERE account_id = %s", (account_id,))
    row = cursor.fetchone()
    if row is None:
        raise NotFound(f"unknown account {account_id!r} (not in the read model)")
    return str(row[0])


def balance(database: Database, account_id: str, *, at: datetime | None = None) -> dict[str, Any]:
    """Every ledger balance of one account on its natural side, now or as of `at`."""
    with database.read() as cursor:
        currency = _account_currency(cursor, account_id)
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
        reflected = read_position(cursor, POSITION_NAME)
    answer: dict[str, Any] = {"account_id": account_id, "currency": currency}
    for ledger_account in LedgerAccount:
        answer[ledger_account.value] = natural_balance(ledger_account, raw.get(ledger_account, 0))
    answer["position"] = reflected
    if at is not None:
        answer["as_of"] = at.isoformat()
    return answer


def trial_balance(database: Database) -> dict[str, Any]:
    """Sums per ledger account and currency (debits minus credits); each currency totals 0."""
    with database.read() as cursor:
        cursor.execute(
            "SELECT currency, ledger_account, SUM(debit_minus_credit) FROM rm_balances"
            " GROUP BY currency, ledger_account ORDER BY currency, ledger_account"
        )
        rows = cursor.fetchall()
        reflected = read_position(cursor, POSITION_NAME)
    currencies: dict[str, dict[str, Any]] = {}
    for currency, ledger_account, amount in rows:
        entry = currencies.setdefault(str(currency), {"accounts": {}, "total": 0})
        entry["accounts"][str(ledger_account)] = int(amount)
        entry["total"] += int(amount)
    return {"position": reflected, "currencies": currencies}


def history(database: Database, account_id: str, *, limit: int) -> list[dict[str, Any]]:
    """The account's domain events in order, with their postings."""
    with database.read() as cursor:
        _account_currency(cursor, account_id)
        cursor.execute(
            "SELECT version, type, occurred_at, position, data, postings FROM rm_history"
            " WHERE account_id = %s ORDER BY version LIMIT %s",
            (account_id, limit),
        )
        rows = cursor.fetchall()
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
