"""The balances read model: accounts, per-ledger-account balances and each account's history.

A projection (`ledger.projection.Projection`): the projections worker feeds it batches from the
event store's log, and every batch updates one generation of its tables and the projection's
position in one transaction, so it survives crashes without counting anything twice. It knows
every event type of the account aggregate: every event goes into the history and its postings
into the balances, so a type it does not know is one this code has never seen (a newer writer's).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import orjson
from eventsourcing.persistence import Notification

from ledger.clock import stored_moment
from ledger.domain.event_names import ACCOUNT_OPENED, EVENT_CLASSES, event_name
from ledger.domain.postings import add_movements
from ledger.persistence.database import Cursor, Database
from ledger.projection import Generation, event_state
from ledger.public_events import public_data, public_postings
from projections.balances_tables import (
    ACCOUNTS,
    BALANCES,
    HISTORY,
    HISTORY_INDEX,
    NAME,
    TABLES,
)

__all__ = ["ACCOUNTS", "BALANCES", "HISTORY", "NAME", "TABLES", "BalancesProjection"]

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

EVENT_TYPES = frozenset(EVENT_CLASSES)
"""Every event of the registry: each goes into the history, its postings into the balances."""


class BalancesProjection:
    """Keeps rm_accounts, rm_balances and rm_history (of one generation) up to date."""

    name: str = NAME
    tables: tuple[str, ...] = TABLES
    accounts_table: str = ACCOUNTS
    history_table: str = HISTORY
    event_types: frozenset[str] = EVENT_TYPES

    def create_statements(self, generation: Generation) -> tuple[str, ...]:
        """The generation's tables."""
        return (
            f"CREATE TABLE IF NOT EXISTS {generation.table(ACCOUNTS)} ("
            "account_id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, kind TEXT NOT NULL,"
            " jurisdiction TEXT NOT NULL, currency TEXT NOT NULL,"
            " opened_position BIGINT NOT NULL)",
            f"CREATE TABLE IF NOT EXISTS {generation.table(BALANCES)} ("
            "account_id TEXT NOT NULL, ledger_account TEXT NOT NULL, currency TEXT NOT NULL,"
            " debit_minus_credit BIGINT NOT NULL,"
            " PRIMARY KEY (account_id, ledger_account, currency))",
            f"CREATE TABLE IF NOT EXISTS {generation.table(HISTORY)} ("
            "position BIGINT PRIMARY KEY, account_id TEXT NOT NULL, version INTEGER NOT NULL,"
            " type TEXT NOT NULL, occurred_at TEXT NOT NULL, occurred_us BIGINT NOT NULL,"
            " data TEXT NOT NULL, postings TEXT NOT NULL)",
        )

    def index_statements(self, generation: Generation) -> tuple[str, ...]:
        """The per-account history index, which a rebuild adds once its tables are loaded."""
        # A rebuild appends history in position order; one index build beats keeping it per row.
        return (
            f"CREATE INDEX IF NOT EXISTS {generation.table(HISTORY_INDEX)}"
            f" ON {generation.table(HISTORY)} (account_id, version)",
        )

    def apply(
        self,
        database: Database,
        cursor: Cursor,
        generation: Generation,
        notifications: Sequence[Notification],
    ) -> None:
        """Write a batch into the generation's tables in the open transaction."""
        accounts: list[tuple[Any, ...]] = []
        history: list[tuple[Any, ...]] = []
        deltas: defaultdict[tuple[str, str], dict[str, int]] = defaultdict(dict)
        for notification in notifications:
            state = event_state(notification)
            type_name = event_name(notification.topic)
            account_id: str = state["account_id"]
            if type_name == ACCOUNT_OPENED:
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
                add_movements(
                    deltas[(account_id, posting["currency"])],
                    ((posting["debit"], posting["credit"], posting["amount_minor"]),),
                )
            occurred_at, occurred_us = stored_moment(state["timestamp"])
            history.append(
                (
                    notification.id,
                    account_id,
                    notification.originator_version,
                    type_name,
                    occurred_at,
                    occurred_us,
                    orjson.dumps(public_data(state)).decode(),
                    orjson.dumps(public_postings(state)).decode(),
                )
            )
        accounts_table = generation.table(ACCOUNTS)
        balances_table = generation.table(BALANCES)
        database.insert_rows(
            cursor,
            accounts_table,
            ACCOUNT_COLUMNS,
            accounts,
            pg_types=("text", "text", "text", "text", "text", "bigint"),
            suffix="ON CONFLICT (account_id) DO NOTHING",
        )
        database.insert_rows(
            cursor,
            balances_table,
            ("account_id", "ledger_account", "currency", "debit_minus_credit"),
            [
                (account_id, ledger_account, currency, amount)
                for (account_id, currency), moved in deltas.items()
                for ledger_account, amount in moved.items()
            ],
            pg_types=("text", "text", "text", "bigint"),
            suffix="ON CONFLICT (account_id, ledger_account, currency) DO UPDATE SET"
            f" debit_minus_credit = {balances_table}.debit_minus_credit"
            " + excluded.debit_minus_credit",
        )
        database.insert_rows(
            cursor,
            generation.table(HISTORY),
            HISTORY_COLUMNS,
            history,
            pg_types=("bigint", "text", "integer", "text", "text", "bigint", "text", "text"),
        )
