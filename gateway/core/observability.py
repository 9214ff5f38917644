"""Logging set-up: structlog, JSON lines in production, readable console in --dev.

Every process of the gateway (launcher, web workers, actors) calls ``setup_logging``
so that all of them log in one format, with the session id and request id bound
where they are known. Message text is never logged unless the operator turns on
``logging.log_message_text``.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

from gateway.core.config import LoggingConfig


def setup_logging(config: LoggingConfig, stream: TextIO | None = None,
                  console: bool = False) -> None:
    """Route structlog through the standard library so that our events and those of
    libraries (gunicorn, werkzeug, Thespian) share one stream and one format."""
    level = getattr(logging, config.level)
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer = (structlog.dev.ConsoleRenderer(colors=False)
                if console or config.format == "console" else structlog.processors.JSONRenderer())
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, renderer],
        foreign_pre_chain=shared))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Ariadne's per-error log (tracebacks of expected errors); see gateway/web/graphql.py.
    logging.getLogger("wagate.graphql.errors").setLevel(logging.CRITICAL)
