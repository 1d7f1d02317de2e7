"""Logging: library code speaks through the standard library; entry points render JSON.

Code that runs inside a host app (the producer, the spool) logs to ``logging.getLogger(
"ingest")``, which carries a ``NullHandler``: the host's handlers and levels decide what is
shown, and the library never prints by itself. Entry points (the worker, the CLI, the
console) call :func:`configure_logging`, which renders the same records, and RQ's, as JSON
lines on stderr through structlog. Either way every line is redacted before it leaves
:class:`Logger`: no API key, email or name, whoever bound it and however it was spelled.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

from .personal import EMAIL_PATTERN

LOGGER_NAME = "ingest"
# Without a handler of its own, a record the host does not handle reaches logging's "last
# resort" handler and is printed to stderr: a library must not speak unless asked.
logging.getLogger(LOGGER_NAME).addHandler(logging.NullHandler())

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
REDACTED = "[redacted]"


def scrub(text: str) -> str:
    """Remove keys, bearer tokens and email addresses (any local part, any host: see
    :data:`ingest.personal.EMAIL_PATTERN`) from free text. A name cannot be told from other
    words without knowing it: :class:`ingest.personal.LetterMask` removes an event's own."""
    return EMAIL_PATTERN.sub(REDACTED, _SECRET_PATTERN.sub(REDACTED, text))


def fingerprint(text: str) -> str:
    """A short hash of a message, for a log line: it tells equal messages apart from
    different ones (and matches the stored one) without saying what the message is."""
    return hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()[:12]


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


class _Message:
    """``event key=value ...``, built only if a handler formats the record."""

    __slots__ = ("event", "fields")

    def __init__(self, event: str, fields: Mapping[str, Any]) -> None:
        self.event = event
        self.fields = fields

    def __str__(self) -> str:
        pairs = " ".join(f"{key}={value!r}" for key, value in self.fields.items())
        return f"{self.event} {pairs}" if pairs else self.event


class Logger:
    """Structured calls, ``log.warning("spool flushed", events=3)``, on a stdlib logger.

    A host's formatter sees the message ``spool flushed events=3``; a structured renderer
    (:func:`configure_logging`) finds the event and its fields on the record as
    ``ingest_event`` and ``ingest_fields``. Both are redacted.
    """

    __slots__ = ("_context", "_logger")

    def __init__(self, logger: logging.Logger, context: Mapping[str, Any]) -> None:
        self._logger = logger
        self._context = dict(context)

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, event, fields)

    def _log(self, level: int, event: str, fields: Mapping[str, Any]) -> None:
        if not self._logger.isEnabledFor(level):
            return
        clean = dict(redact(None, "", {**self._context, **fields}))
        event = scrub(event)
        self._logger.log(
            level,
            "%s",
            _Message(event, clean),
            extra={"ingest_event": event, "ingest_fields": clean},
            stacklevel=3,  # the caller's line, not this method's
        )


def get_logger(name: str = LOGGER_NAME, **context: Any) -> Logger:
    """A logger under ``ingest`` carrying ``context`` on every line."""
    return Logger(logging.getLogger(name), context)


def _ingest_fields(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    # A record from Logger carries its event and fields apart: render them as JSON keys.
    record = event_dict.get("_record")
    fields = getattr(record, "ingest_fields", None)
    if fields is not None:
        event_dict["event"] = record.ingest_event  # type: ignore[union-attr]
        event_dict.update(fields)
    return event_dict


def configure_logging(level: str = "INFO", *, json: bool | None = None) -> None:
    """For entry points: JSON lines on stderr when it is not a terminal, readable lines when
    it is; the ``ingest`` and ``rq`` loggers render through the same redaction."""
    import structlog  # only entry points pay for it: importing ingest stays light

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
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                _ingest_fields,
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                # Exceptions as plain text (never with local variables, which could hold a
                # key or a payment), then scrubbed by redact().
                structlog.processors.format_exc_info,
                redact,
                renderer,
            ],
        )
    )
    # RQ adds plain-text handlers of its own only where it finds none up the hierarchy;
    # ours renders its lines as JSON too. Warnings and up only from RQ.
    for name, threshold in ((LOGGER_NAME, numeric), ("rq", max(numeric, logging.WARNING))):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.propagate = False
        logger.setLevel(threshold)
