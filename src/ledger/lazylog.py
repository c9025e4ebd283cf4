"""A logger that costs nothing until a line is written (for code on the query path).

Importing structlog costs about a tenth of a second, a query's whole budget twice over. Modules a
query imports take their logger from here: structlog is imported, and logging configured from
the environment if nothing configured it yet, only when the first line is written.
"""

from __future__ import annotations

from typing import Any


class LazyLogger:
    """Stands in for `structlog.get_logger(name)` until first used."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._logger: Any = None

    def __getattr__(self, method: str) -> Any:
        if self._logger is None:
            from ledger.logging import ensure_configured

            ensure_configured()
            import structlog

            self._logger = structlog.get_logger(self._name)
        return getattr(self._logger, method)


def get_logger(name: str) -> Any:
    """A structured logger for `name`, set up on its first line."""
    return LazyLogger(name)
