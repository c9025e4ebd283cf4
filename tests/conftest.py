"""Fixtures for every test: databases, brokers, and logging as it was before each test."""

from __future__ import annotations

import logging
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
