"""Fixtures for every test: databases, brokers, and logging as it was before each test."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest
import structlog

pytest_plugins = ["tests.databases", "tests.brokers"]


def _logger_levels() -> dict[str, int]:
    """The level of every standard library logger created so far, the root's included."""
    manager = logging.root.manager
    levels = {
        name: logger.level
        for name, logger in manager.loggerDict.items()
        if isinstance(logger, logging.Logger)
    }
    levels[""] = logging.root.level
    return levels


@pytest.fixture(autouse=True)
def _logging_as_before() -> Iterator[None]:
    """Undo whatever logging a test configured in-process (the CLI and the workers do).

    Otherwise the next test inherits its level filter (and drops the info events it waits for or
    asserts on) or its stderr (a CliRunner's, closed by then).
    """
    structlog_config = structlog.get_config()
    handlers = logging.root.handlers[:]
    levels = _logger_levels()
    yield
    structlog.configure(**structlog_config)
    logging.root.handlers[:] = handlers
    for name in _logger_levels():
        logging.getLogger(name or None).setLevel(levels.get(name, logging.NOTSET))


ALL_BACKENDS_VARIABLE = "LEDGER_ALL_BACKENDS"
"""Set to 1 (`make deep` does) to run every `ci_backend` test on both backends."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run a `ci_backend("sqlite"|"postgresql")` test on that backend only, unless asked for all.

    For the slowest end-to-end tests, whose backend-specific code the integration and fault
    tests already run on both backends: the suite stays fast, and the other backend's run is
    reported as deselected, never silently skipped.
    """
    if os.environ.get(ALL_BACKENDS_VARIABLE) == "1":
        return
    kept: list[pytest.Item] = []
    deselected: list[pytest.Item] = []
    for item in items:
        marker = item.get_closest_marker("ci_backend")
        callspec = getattr(item, "callspec", None)
        backend = callspec.params.get("database_url") if callspec is not None else None
        if marker is None or backend is None:
            kept.append(item)
            continue
        (wanted,) = marker.args
        if wanted not in ("sqlite", "postgresql"):
            raise pytest.UsageError(f"{item.nodeid}: ci_backend({wanted!r}) names no backend")
        (kept if backend == wanted else deselected).append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept
