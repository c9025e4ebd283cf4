"""The query path's settings reader agrees with the full one (pydantic-settings) on every case."""

from __future__ import annotations

import itertools

import pytest

from ledger.env_settings import QuerySettings, SettingsError, read_query_settings
from ledger.settings import load_settings

DATABASE_URLS = [None, "", "sqlite:///x.db", "postgresql://u@h:5432/d"]
LOG_FORMATS = [None, "", "json", "console", "xml", "JSON"]
LOG_LEVELS = [None, "", "debug", "info", "warning", "error", "verbose", "INFO"]


def reading(read: object) -> object:
    try:
        settings = read()  # type: ignore[operator]
    except SettingsError as error:
        return ("refused", str(error))
    return ("read", settings.database_url, settings.log_format, settings.log_level)


@pytest.mark.parametrize(
    ("database_url", "log_format", "log_level"),
    list(itertools.product(DATABASE_URLS, LOG_FORMATS, LOG_LEVELS)),
)
def test_both_readings_agree(
    monkeypatch: pytest.MonkeyPatch,
    database_url: str | None,
    log_format: str | None,
    log_level: str | None,
) -> None:
    for name, value in (
        ("LEDGER_DATABASE_URL", database_url),
        ("LEDGER_LOG_FORMAT", log_format),
        ("LEDGER_LOG_LEVEL", log_level),
    ):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert reading(read_query_settings) == reading(load_settings)


def test_names_in_any_case_are_read_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LEDGER_DATABASE_URL", raising=False)
    monkeypatch.setenv("ledger_database_url", "sqlite:///lower.db")
    assert reading(read_query_settings) == reading(load_settings)
    assert read_query_settings().database_url == "sqlite:///lower.db"


def test_defaults() -> None:
    assert read_query_settings({}) == QuerySettings("sqlite:///ledger.db", None, "info")
