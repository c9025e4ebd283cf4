"""Structured logging, configured once: console on a terminal, JSON otherwise, always to stderr."""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

_configured = False


def configure_logging(
    log_format: Literal["json", "console"] | None = None, level: str = "info"
) -> None:
    """Configure structlog (and the standard library logging it sits on) to write to stderr."""
    global _configured
    use_json = log_format == "json" or (log_format is None and not sys.stderr.isatty())
    level_number = logging.getLevelNamesMapping()[level.upper()]
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level_number),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # kafka-python logs through the standard library: keep it to warnings, on stderr.
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, force=True)
    logging.getLogger("kafka").setLevel(logging.ERROR)
    _configured = True


def is_configured() -> bool:
    """Whether `configure_logging` has run in this process."""
    return _configured
