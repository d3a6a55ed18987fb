"""structlog set-up: readable lines in development, JSON in production."""

from __future__ import annotations

import logging
import sys

import structlog

from broker.config import LogFormat


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is at the time of writing.

    A logger bound to the stream object of the moment breaks when that stream is replaced and
    closed (a test runner capturing output, a CLI invoked in-process): log lines would hit a
    closed file.
    """

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(level: str = "INFO", fmt: LogFormat = LogFormat.console) -> None:
    """Configure structlog and the standard library logging to write to stderr."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    logging.basicConfig(level=numeric, stream=_CurrentStderr(), format="%(message)s")
    renderer: structlog.typing.Processor
    if fmt is LogFormat.json:
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=_CurrentStderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
