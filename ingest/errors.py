"""One exception tree for the package, rooted in :class:`IngestError`.

The class says what the caller should do; the attributes say what caused it::

    IngestError
     +-- ValidationError           (also a ValueError) a payment refused before the queue
     +-- ConfigurationError        the settings cannot work
     |    +-- SettingsError        INGEST_* variables with values that cannot be used
     +-- QueueUnavailableError     Redis unreachable and the event kept nowhere else
     |    +-- SpoolFullError       ... and the local spool is full: the event was NOT kept
     +-- DeliveryError             the Payments API refused or failed a request
     |    +-- AuthenticationError  401/403: sending is paused, nothing dropped
     +-- UnsafeDeleteError         a delete across all time without saying so
     +-- NotFoundError             no such dead letter or job
     +-- AmbiguousIdError          the start of an id that several ids share
     +-- ImportFileError           a file to import that cannot be read as payments at all
     +-- MalformedRequestError     (also a ValueError) a console request whose header
     |                             cannot be read: answered 400
     +-- RedisStartError           the embedded redis-server did not come up
          +-- _PortInUseError      (private, ingest.embedded) retried on another port
"""

from __future__ import annotations

from collections.abc import Mapping


class IngestError(Exception):
    """Base class of every error this package raises on purpose."""


class ValidationError(IngestError, ValueError):
    """A payment event was rejected before it reached the queue.

    ``errors`` maps each bad field to the reason it was refused, so a caller can show all
    of them at once instead of fixing one field per attempt.
    """

    def __init__(self, errors: Mapping[str, str]) -> None:
        self.errors: dict[str, str] = dict(errors)
        detail = "; ".join(f"{field}: {reason}" for field, reason in self.errors.items())
        super().__init__(f"invalid payment: {detail}")

    @property
    def fields(self) -> list[str]:
        return list(self.errors)


class ConfigurationError(IngestError):
    """The settings cannot work (for example a ``dft_`` token without a website id)."""

    def __init__(self, message: str, *, setting: str | None = None) -> None:
        self.setting = setting
        super().__init__(message)


class SettingsError(ConfigurationError):
    """``INGEST_*`` settings whose values cannot be used: a word where a number belongs, a
    value out of range, a URL Redis cannot take.

    ``problems`` maps each variable's name to what is wrong with it, every bad variable at
    once; a secret's value is never quoted.
    """

    def __init__(self, problems: Mapping[str, str]) -> None:
        self.problems: dict[str, str] = dict(problems)
        super().__init__("; ".join(self.lines), setting=next(iter(self.problems), None))

    @property
    def lines(self) -> list[str]:
        """``INGEST_CONCURRENCY: must be an integer, got 'abc'``, one per bad variable."""
        return [f"{name}: {reason}" for name, reason in self.problems.items()]


class QueueUnavailableError(IngestError):
    """Redis could not be reached and the event could not be kept anywhere else."""


class SpoolFullError(QueueUnavailableError):
    """Redis is down and the local spool reached its size cap: the event was NOT kept."""


class DeliveryError(IngestError):
    """The Payments API refused or failed a request.

    ``status`` is the HTTP status (``None`` for a transport failure) and ``api_message``
    the API's own error message, never the request's credentials.
    """

    def __init__(
        self, message: str, *, status: int | None = None, api_message: str | None = None
    ) -> None:
        self.status = status
        self.api_message = api_message
        super().__init__(message)


class AuthenticationError(DeliveryError):
    """401/403: the API key is wrong or lacks the scope; sending is paused, nothing dropped."""


class UnsafeDeleteError(IngestError):
    """A delete without a date range (all time) was asked for without saying so explicitly."""


class NotFoundError(IngestError):
    """An id (dead letter, job) that does not exist."""

    def __init__(self, message: str, *, id: str) -> None:
        self.id = id
        super().__init__(message)


class AmbiguousIdError(IngestError):
    """The start of an id that ``candidates`` ids share: give more of it."""

    def __init__(self, message: str, *, id: str, candidates: int) -> None:
        self.id = id
        self.candidates = candidates
        super().__init__(message)


class ImportFileError(IngestError):
    """A file to import that cannot be read as payments at all (not UTF-8, a CSV header
    without a required column, a JSON array that does not parse): nothing was enqueued."""

    def __init__(self, message: str, *, path: str) -> None:
        self.path = path
        super().__init__(message)


class RedisStartError(IngestError):
    """redis-server did not come up; the message carries the tail of its log."""


class MalformedRequestError(IngestError, ValueError):
    """A request to the console carries a header that cannot be read as what it claims to
    be (``Host: [evil``, ``Referer: http://[x``); the console answers 400. ``header``
    names it; its value is never quoted back."""

    def __init__(self, header: str) -> None:
        self.header = header
        super().__init__(f"malformed {header} header")
