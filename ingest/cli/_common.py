"""What every ``ingest`` command shares: exit codes, loading the settings, reaching Redis,
and the one place that turns a failure into one line on stderr and an exit code."""

from __future__ import annotations

import logging
import traceback
from typing import Any

import click
import redis
import redis.exceptions

from ingest.connection import connect, redacted_url
from ingest.errors import (
    AmbiguousIdError,
    ConfigurationError,
    ImportFileError,
    IngestError,
    QueueUnavailableError,
    SettingsError,
)
from ingest.logs import LOGGER_NAME, scrub
from ingest.settings import Settings

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def load_settings(**overrides: Any) -> Settings:
    """The settings from ``INGEST_*``; :class:`SettingsError` names every bad variable."""
    return Settings().with_overrides(**overrides)


def open_redis(settings: Settings, *, socket_timeout: float = 10) -> redis.Redis:
    """A client that has answered a PING, or :class:`QueueUnavailableError` naming the
    address (password masked) and why it could not be reached."""
    client = connect(settings.redis_url, socket_timeout=socket_timeout)
    try:
        client.ping()
    except redis.exceptions.AuthenticationError as exc:
        client.close()
        raise ConfigurationError(
            f"Redis at {redacted_url(settings.redis_url)} refused the credentials in "
            f"INGEST_REDIS_URL: {_reason(exc)}",
            setting="INGEST_REDIS_URL",
        ) from exc
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
        client.close()
        raise QueueUnavailableError(
            f"cannot reach Redis at {redacted_url(settings.redis_url)}: {_reason(exc)}"
        ) from exc
    return client


def _reason(exc: BaseException) -> str:
    """The operating system's words (``Connection refused``) when there are some."""
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror
    return scrub(str(exc)) or type(exc).__name__


def report(exc: Exception) -> int:
    """Print ``exc`` as one line on stderr (one per bad setting) and return its exit code:
    2 for usage and configuration errors, 1 for everything else. Never a traceback, except
    for an unexpected error with ``INGEST_LOG_LEVEL=DEBUG``."""
    code, lines = _describe(exc)
    for line in lines:
        click.echo(f"error: {line}", err=True)
    return code


def _describe(exc: Exception) -> tuple[int, list[str]]:
    if isinstance(exc, click.UsageError):
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        return EXIT_USAGE, [exc.format_message().rstrip(".") + hint]
    if isinstance(exc, click.ClickException):
        return exc.exit_code, [exc.format_message()]
    if isinstance(exc, SettingsError):
        return EXIT_USAGE, exc.lines
    if isinstance(exc, ConfigurationError | AmbiguousIdError | ImportFileError):
        return EXIT_USAGE, [str(exc)]
    if isinstance(exc, IngestError):
        return EXIT_FAILURE, [str(exc)]
    if isinstance(exc, redis.exceptions.AuthenticationError):
        return EXIT_USAGE, [f"Redis refused the credentials in INGEST_REDIS_URL: {_reason(exc)}"]
    if isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
        return EXIT_FAILURE, [f"lost the connection to Redis: {scrub(str(exc))}"]
    if isinstance(exc, redis.exceptions.RedisError):
        return EXIT_FAILURE, [f"Redis refused the request: {scrub(str(exc))}"]
    if isinstance(exc, OSError):
        return EXIT_FAILURE, [scrub(str(exc))]
    # A bug: still one line, with the traceback for whoever asks for it.
    if logging.getLogger(LOGGER_NAME).isEnabledFor(logging.DEBUG):
        traceback.print_exception(exc)
    return EXIT_FAILURE, [
        f"unexpected {type(exc).__name__}: {scrub(str(exc))} "
        "(INGEST_LOG_LEVEL=DEBUG shows the traceback)"
    ]
