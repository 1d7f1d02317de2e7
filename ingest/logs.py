"""structlog configuration, done once by an entry point; library code only asks for a logger.

A redaction processor runs last before rendering, so no log line carries the API key, an
email or a name, whoever bound it and however it was spelled.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog

# Fields whose values are personal data or credentials: dropped to a placeholder.
_SENSITIVE_FIELDS = frozenset(
    {
        "api_key",
        "authorization",
        "headers",
        "email",
        "customer_email",
        "name",
        "customer_name",
        "password",
        "token",
        "body",
        "data",
    }
)
# Anything that looks like a DataFast key or bearer header, wherever it appears in a message.
_SECRET_PATTERN = re.compile(r"\b(dft?_[A-Za-z0-9_\-]{4,})|(Bearer\s+\S+)", re.IGNORECASE)
_EMAIL_PATTERN = re.compile(r"[\w.+\-]+@[\w\-]+\.[\w.\-]+")
REDACTED = "[redacted]"


def scrub(text: str) -> str:
    """Remove keys, bearer tokens and email addresses from free text."""
    return _EMAIL_PATTERN.sub(REDACTED, _SECRET_PATTERN.sub(REDACTED, text))


def _clean(value: Any) -> Any:
    """``value`` with keys, tokens and emails scrubbed, however deeply it nests them."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, BaseException):
        return scrub(f"{type(value).__name__}: {value}")
    if isinstance(value, Mapping):
        return {
            k: REDACTED if str(k).lower() in _SENSITIVE_FIELDS else _clean(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [_clean(v) for v in value]
    return value


def redact(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key in list(event_dict):
        if key.lower() in _SENSITIVE_FIELDS:
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _clean(event_dict[key])
    return event_dict


def configure_logging(level: str = "INFO", *, json: bool | None = None) -> None:
    """JSON lines when output is not a terminal, readable console output when it is."""
    if json is None:
        json = not sys.stderr.isatty()
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            # Exceptions are formatted as plain text (never with local variables, which could
            # hold a key or a payment) and then scrubbed by redact().
            structlog.processors.format_exc_info,
            redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # RQ logs through the standard library. Give its logger a handler that renders through
    # the same processors (JSON, redact): RQ then adds none of its plain-text handlers (it
    # only does where no handler is found up the hierarchy). Warnings and up only.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_logger_name,
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                redact,
                renderer,
            ],
        )
    )
    rq_logger = logging.getLogger("rq")
    rq_logger.handlers[:] = [handler]
    rq_logger.propagate = False
    rq_logger.setLevel(max(numeric, logging.WARNING))


def get_logger(**context: Any) -> Any:
    # Not .bind(): that would build the logger now, with structlog's defaults, before an
    # entry point had a chance to configure it (and its redaction).
    return structlog.get_logger("ingest", **context)
