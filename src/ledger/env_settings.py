"""The settings a query reads, taken from the environment without pydantic-settings.

Importing pydantic-settings costs a query more than its whole time budget. A query needs three
settings; this reads them exactly as `ledger.settings.Settings` does (prefix `LEDGER_`, names in
any case, an empty value means unset, the same defaults) and refuses a bad value with the same
one line. `tests/unit/test_env_settings.py` holds the two readings to agreement.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal, cast

ENV_PREFIX: Final = "LEDGER_"
DEFAULT_DATABASE_URL: Final = "sqlite:///ledger.db"
LOG_FORMATS: Final = ("json", "console")
LOG_LEVELS: Final = ("debug", "info", "warning", "error")

LogFormat = Literal["json", "console"]
LogLevel = Literal["debug", "info", "warning", "error"]


class SettingsError(ValueError):
    """A `LEDGER_*` variable with a value the ledger cannot use; the message is one line."""


@dataclass(frozen=True)
class QuerySettings:
    """What a query reads: where the database is, and how to log."""

    database_url: str = DEFAULT_DATABASE_URL
    log_format: LogFormat | None = None
    log_level: LogLevel = "info"


def _choices(values: tuple[str, ...]) -> str:
    quoted = [repr(value) for value in values]
    return ", ".join(quoted[:-1]) + " or " + quoted[-1]


def _lookup(environ: Mapping[str, str], field: str) -> str | None:
    """The value of `LEDGER_<FIELD>` in any case; None when unset or empty."""
    wanted = (ENV_PREFIX + field).lower()
    found = None
    for key, value in environ.items():
        if key.lower() == wanted and value != "":
            found = value
    return found


def read_query_settings(environ: Mapping[str, str] | None = None) -> QuerySettings:
    """The query's settings from the environment; a bad value is a SettingsError naming it."""
    env = os.environ if environ is None else environ
    problems = []
    log_format = _lookup(env, "log_format")
    if log_format is not None and log_format not in LOG_FORMATS:
        problems.append(f"LEDGER_LOG_FORMAT={log_format!r}: should be {_choices(LOG_FORMATS)}")
    log_level = _lookup(env, "log_level") or "info"
    if log_level not in LOG_LEVELS:
        problems.append(f"LEDGER_LOG_LEVEL={log_level!r}: should be {_choices(LOG_LEVELS)}")
    if problems:
        raise SettingsError("; ".join(problems))
    return QuerySettings(
        database_url=_lookup(env, "database_url") or DEFAULT_DATABASE_URL,
        log_format=cast("LogFormat | None", log_format),
        log_level=cast("LogLevel", log_level),
    )
