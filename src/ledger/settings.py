"""Settings from the environment (prefix `LEDGER_`): none is required; empty means unset."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from ledger import limits
from ledger.env_settings import DEFAULT_DATABASE_URL, ENV_PREFIX, SettingsError

__all__ = ["ENV_PREFIX", "Settings", "SettingsError", "load_settings"]


class Settings(BaseSettings):
    """Every `LEDGER_*` variable the ledger reads."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_ignore_empty=True, extra="ignore")

    database_url: str = DEFAULT_DATABASE_URL
    """`sqlite:///relative`, `sqlite:////absolute` or `postgresql://...`."""
    kafka_bootstrap: str | None = None
    """An external broker; unset means the embedded broker on 127.0.0.1:broker_port."""
    broker_port: int = Field(default=19092, ge=1, le=65535)
    policy: Path | None = None
    """Path of the policy file; unset means the one shipped in the package."""
    log_format: Literal["json", "console"] | None = None
    """Unset: console on a terminal, JSON otherwise."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    partitions: int = Field(default=4, ge=1, le=1024)
    ingest_workers: int = Field(default=1, ge=1, le=64)
    """Ingest processes `ledger run` starts; they share the partitions of payments.inbound."""
    relay_workers: int = Field(default=1, ge=1, le=limits.relay_workers_max)
    """Shares of ledger.events, one relay each: `ledger run` starts this many relays. Every
    relay of one database must be given the same number."""
    relay_share: int | None = Field(default=None, ge=0, lt=limits.relay_workers_max)
    """The share a relay tries first (`ledger run` sets it: 0 for relay, 1 for relay-2, ...);
    unset: 0. A relay takes any free share when that one is held."""
    actor: str | None = None
    role: str | None = None
    consumer_group_prefix: str = "ledger"
    """Consumer groups are `<prefix>-ingest` and so on; scale out by starting more workers."""


def load_settings() -> Settings:
    """Read the settings from the environment; a bad value is a SettingsError naming it."""
    try:
        return Settings()
    except ValidationError as error:
        raise SettingsError(describe_settings_error(error)) from error


def describe_settings_error(error: ValidationError) -> str:
    """One line naming each bad variable, its value and what it should be."""
    problems = []
    for problem in error.errors():
        variable = ENV_PREFIX + "_".join(str(part) for part in problem["loc"]).upper()
        message = problem["msg"]
        if message.startswith("Input should be "):
            message = "should be " + message.removeprefix("Input should be ")
        problems.append(f"{variable}={problem.get('input')!r}: {message}")
    return "; ".join(problems)
