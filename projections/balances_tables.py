"""The balances read model's name and tables: what its queries need, without its writing code."""

from __future__ import annotations

NAME = "balances"

ACCOUNTS = "rm_accounts"
BALANCES = "rm_balances"
HISTORY = "rm_history"
TABLES = (ACCOUNTS, BALANCES, HISTORY)
HISTORY_INDEX = "rm_history_account"
