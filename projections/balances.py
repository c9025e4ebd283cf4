"""The balances read model: accounts, per-ledger-account balances and each account's history.

It tails the event store's notification log; every batch updates the tables and the projection's
position in one transaction, so it survives crashes without counting anything twice.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson
from eventsourcing.persistence import Notification

from ledger.persistence.database import Cursor, Database
from ledger.persistence.mapper import decode_state
from ledger.persistence.positions import (
    POSITIONS_DDL,
    read_position,
    reset_position,
    write_position,
)
from ledger.persistence.schema_lock import schema_lock
from ledger.public_events import event_type_name, public_data, public_postings

NAME = "balances"
POSITION_NAME = "projection:balances"

TABLES = ("rm_accounts", "rm_balances", "rm_history")
HISTORY_INDEX = "rm_history_account"
ACCOUNT_COLUMNS = (
    "account_id",
    "customer_id",
    "kind",
    "jurisdiction",
    "currency",
    "opened_position",
)
HISTORY_COLUMNS = (
    "position",
    "account_id",
    "version",
    "type",
    "occurred_at",
    "occurred_us",
    "data",
    "postings",
)

DDL = (
    POSITIONS_DDL,
    "CREATE TABLE IF NOT EXISTS rm_accounts ("
    "account_id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, kind TEXT NOT NULL,"
    " jurisdiction TEXT NOT NULL, currency TEXT NOT NULL, opened_position BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS rm_balances ("
    "account_id TEXT NOT NULL, ledger_account TEXT NOT NULL, currency TEXT NOT NULL,"
    " debit_minus_credit BIGINT NOT NULL, PRIMARY KEY (account_id, ledger_account, currency))",
    "CREATE TABLE IF NOT EXISTS rm_history ("
    "position BIGINT PRIMARY KEY, account_id TEXT NOT NULL, version INTEGER NOT NULL,"
    " type TEXT NOT NULL, occurred_at TEXT NOT NULL, occurred_us BIGINT NOT NULL,"
    " data TEXT NOT NULL, postings TEXT NOT NULL)",
    f"CREATE INDEX IF NOT EXISTS {HISTORY_INDEX} ON rm_history (account_id, version)",
)
SCHEMA = (
    *DDL,
    f"INSERT INTO ledger_positions (name, position) VALUES ('{POSITION_NAME}', 0)"
    " ON CONFLICT (name) DO NOTHING",
)
"""The tables, the index and the projection's position row: what a schema preparation runs."""


def _epoch_us(moment: datetime) -> int:
    return int(moment.timestamp()) * 1_000_000 + moment.microsecond


def create_tables(database: Database) -> None:
    """Create the read-model tables and the projection's position row if missing."""
    with database.transaction() as cursor:
        for statement in SCHEMA:
            cursor.execute(statement)


def finish_rebuild(database: Database) -> None:
    """Build what `clear` dropped for the rebuild (the history index), once it has caught up."""
    # Under the schema lock: a `ledger run` starting meanwhile creates the same index.
    with schema_lock(database.target):
        create_tables(database)


def clear(database: Database) -> None:
    """Empty the read model and reset its position, ready for a rebuild.

    The per-account history index is dropped too: a rebuild appends history in position order,
    and building the index once when it is done (`finish_rebuild`) is cheaper than maintaining
    it row by row. Should the rebuild stop first, the next schema preparation (`ledger run`,
    `python -m ledger.deploy_setup`) or rebuild creates it again; queries are correct without
    it, only slower.
    """
    with database.transaction() as cursor:
        cursor.execute(f"DROP INDEX IF EXISTS {HISTORY_INDEX}")
        for table in TABLES:
            cursor.execute(f"DELETE FROM {table}")
        reset_position(cursor, POSITION_NAME)
        cursor.execute(
            "INSERT INTO ledger_positions (name, position) VALUES (%s, 0) "
            "ON CONFLICT (name) DO NOTHING",
            (POSITION_NAME,),
        )


class BalancesProjection:
    """Keeps rm_accounts, rm_balances and rm_history up to date."""

    name = NAME

    def __init__(self, database: Database) -> None:
        self.database = database

    def position(self) -> int:
        """The last notification id reflected in the read model."""
        with self.database.read() as cursor:
            return read_position(cursor, POSITION_NAME)

    def handle(self, notifications: Sequence[Notification]) -> None:
        """Apply a batch of notifications and record the new position, in one transaction."""
        with self.database.transaction() as cursor:
            current = self._lock_position(cursor)
            fresh = [n for n in notifications if n.id > current]
            if not fresh:
                return
            accounts: list[tuple[Any, ...]] = []
            history: list[tuple[Any, ...]] = []
            deltas: defaultdict[tuple[str, str, str], int] = defaultdict(int)
            for notification in fresh:
                state = decode_state(notification.state)
                type_name = event_type_name(notification.topic)
                account_id: str = state["account_id"]
                if type_name == "account_opened":
                    accounts.append(
                        (
                            account_id,
                            state["customer_id"],
                            state["kind"],
                            state["jurisdiction"],
                            state["currency"],
                            notification.id,
                        )
                    )
                for posting in state.get("postings") or ():
                    amount = posting["amount_minor"]
                    currency = posting["currency"]
                    deltas[(account_id, posting["debit"], currency)] += amount
                    deltas[(account_id, posting["credit"], currency)] -= amount
                moment = datetime.fromisoformat(state["timestamp"])
                history.append(
                    (
                        notification.id,
                        account_id,
                        notification.originator_version,
                        type_name,
                        moment.isoformat(),
                        _epoch_us(moment),
                        orjson.dumps(public_data(state)).decode(),
                        orjson.dumps(public_postings(state)).decode(),
                    )
                )
            insert = self.database.insert_rows
            insert(
                cursor,
                "rm_accounts",
                ACCOUNT_COLUMNS,
                accounts,
                pg_types=("text", "text", "text", "text", "text", "bigint"),
                suffix="ON CONFLICT (account_id) DO NOTHING",
            )
            insert(
                cursor,
                "rm_balances",
                ("account_id", "ledger_account", "currency", "debit_minus_credit"),
                [(*key, amount) for key, amount in deltas.items()],
                pg_types=("text", "text", "text", "bigint"),
                suffix="ON CONFLICT (account_id, ledger_account, currency) DO UPDATE SET"
                " debit_minus_credit = rm_balances.debit_minus_credit"
                " + excluded.debit_minus_credit",
            )
            insert(
                cursor,
                "rm_history",
                HISTORY_COLUMNS,
                history,
                pg_types=("bigint", "text", "integer", "text", "text", "bigint", "text", "text"),
            )
            # An upsert: a schema prepared from `DDL` alone (the bench) has no row for it, and
            # a plain UPDATE of a missing row would silently record nothing.
            write_position(cursor, POSITION_NAME, fresh[-1].id)

    def _lock_position(self, cursor: Cursor) -> int:
        suffix = " FOR UPDATE" if self.database.kind == "postgresql" else ""
        cursor.execute(
            f"SELECT position FROM ledger_positions WHERE name = %s{suffix}", (POSITION_NAME,)
        )
        row = cursor.fetchone()
        return int(row[0]) if row else 0
