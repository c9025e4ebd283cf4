"""Structured logging, configured once: console on a terminal, JSON otherwise, always to stderr.

structlog's own lines and the standard library's (kafka-python, psycopg, eventsourcing) are
rendered by one renderer and written through one lock, so in JSON mode every line on stderr is
a JSON object and no two lines interleave. The standard library's records pass structlog's
`ProcessorFormatter`; the Kafka client's reconnect noise is cut to one line per outage first.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal, TextIO

import structlog

from ledger.kafka.outage_log import KAFKA_LOGGER, KafkaOutageFilter

_configured = False
_json = False
_process_context: dict[str, Any] = {}

_KAFKA_CONNECTION_LOGGERS = ("kafka.net.connection", "kafka.net.manager")
"""kafka-python's connection loggers, read at INFO by the outage filter for the sign that a
broker answers again (the filter writes none of their lines below ERROR)."""


class _HandlerLineWriter:
    """structlog's output: each rendered line written whole, under the stdlib handler's lock."""

    def __init__(self, handler: logging.StreamHandler[TextIO]) -> None:
        self._handler = handler

    def msg(self, message: str) -> None:
        """Write one line and flush it."""
        self._handler.acquire()
        try:
            self._handler.stream.write(message + "\n")
            self._handler.stream.flush()
        finally:
            self._handler.release()

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


def bind_process_context(**fields: Any) -> None:
    """Fields every line of this process carries, from any thread (a worker's name, say).

    structlog's context variables do not reach threads a library starts (kafka-python's I/O
    thread logs a broker outage); these do.
    """
    _process_context.update(fields)


def _add_process_context(
    _logger: Any, _method_name: str, event_dict: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    for name, value in _process_context.items():
        event_dict.setdefault(name, value)
    return event_dict


def ensure_configured() -> None:
    """Configure logging from the `LEDGER_*` environment unless this process already did."""
    if _configured:
        return
    from ledger.env_settings import read_query_settings

    settings = read_query_settings()
    configure_logging(settings.log_format, settings.log_level)


def configure_logging(
    log_format: Literal["json", "console"] | None = None, level: str = "info"
) -> None:
    """Configure structlog and the standard library's logging: stderr, one format for both."""
    global _configured, _json
    use_json = log_format == "json" or (log_format is None and not sys.stderr.isatty())
    level_number = logging.getLevelNamesMapping()[level.upper()]
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        _add_process_context,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    handler: logging.StreamHandler[TextIO] = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    handler.addFilter(KafkaOutageFilter())
    writer = _HandlerLineWriter(handler)
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level_number),
        logger_factory=lambda *_args: writer,
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    # Other libraries' lines: warnings and above; kafka-python's: errors (see outage_log).
    root.setLevel(logging.WARNING)
    logging.getLogger(KAFKA_LOGGER).setLevel(logging.ERROR)
    for name in _KAFKA_CONNECTION_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)
    _configured = True
    _json = use_json


def is_configured() -> bool:
    """Whether `configure_logging` has run in this process."""
    return _configured


def logs_as_json() -> bool:
    """Whether log lines are JSON (as configured; False before `configure_logging`)."""
    return _json
