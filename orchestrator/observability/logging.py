"""structlog, configured once at start-up: JSON lines, or a console renderer on a TTY. Context (saga_id,
tenant) is bound with contextvars by the code that knows it; ``trace_id`` and ``span_id`` come from the
current OpenTelemetry span, whenever there is one."""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog
from opentelemetry import trace
from structlog.types import EventDict, WrappedLogger


def add_trace_context(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """``trace_id`` and ``span_id`` (hex, as the W3C ``traceparent`` and trace backends show them) of the
    current span. Without a valid span (tracing off, or outside any span) the line is left as it is."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event_dict["trace_id"] = format(context.trace_id, "032x")
        event_dict["span_id"] = format(context.span_id, "016x")
    return event_dict


def processors() -> list[structlog.types.Processor]:
    """Everything before the renderer (tests that capture log lines end the same chain with a capture)."""
    return [
        structlog.contextvars.merge_contextvars,
        add_trace_context,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]


def configure_logging(fmt: Literal["auto", "json", "console"] = "auto", level: str = "INFO") -> None:
    renderer: structlog.types.Processor
    if fmt == "console" or (fmt == "auto" and sys.stderr.isatty()):
        renderer = structlog.dev.ConsoleRenderer()
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[*processors(), renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
