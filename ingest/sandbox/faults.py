"""What the sandbox does wrong on purpose, as one immutable value.

A :class:`Faults` is frozen and replaced whole on every change: the request handlers read
``state.faults`` once per request while a test thread may swap it, and swapping a reference
is atomic where mutating fields one by one would let a request see half an update.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from types import MappingProxyType
from typing import Any

RETRY_AFTER_HTTP_DATE = "http-date"
"""``retry_after`` value that sends ``Retry-After`` as an HTTP date instead of seconds."""

_RATE_FIELDS = ("rate_429", "rate_500", "rate_503", "rate_timeout", "rate_drop")
_MS_FIELDS = ("latency_ms", "latency_jitter_ms", "slow_ms")
_BOOL_FIELDS = ("record_before_slow", "record_before_drop")
RATE_LIMIT_HEADERS = ("none", "ietf", "x", "both")
"""``rate_limit_headers``: no fields, the IETF draft's ``RateLimit-*``, ``X-RateLimit-*``, or
both sets."""


@dataclass(frozen=True, slots=True)
class FailSpec:
    """The fixed answer for one transaction id listed in ``Faults.fail_ids``."""

    status: int
    message: str = "rejected by sandbox fault fail_ids"

    def __post_init__(self) -> None:
        _check_error_status("fail_ids status", self.status)
        if not isinstance(self.message, str):
            raise ValueError("fail_ids message must be a string")

    @classmethod
    def from_json(cls, data: object) -> FailSpec:
        if isinstance(data, FailSpec):
            return data
        if isinstance(data, int) and not isinstance(data, bool):
            return cls(status=data)
        if not isinstance(data, Mapping):
            raise ValueError('fail_ids values must be {"status": <int>, "message": <str>}')
        unknown = set(data) - {"status", "message"}
        if unknown:
            raise ValueError(f"fail_ids values take status and message, not {sorted(unknown)}")
        if "status" not in data:
            raise ValueError("fail_ids values need a status")
        if "message" in data:
            return cls(status=data["status"], message=data["message"])
        return cls(status=data["status"])

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "message": self.message}


@dataclass(frozen=True, slots=True)
class Faults:
    """Injected latency and failures; every rate is a probability per POST, 0 to 1.

    At most one random fault hits a POST: a single draw is compared with the rates in
    the order 429, 500, 503, timeout, drop, so their sum must stay at or below 1.
    """

    latency_ms: float = 0.0
    """Fixed delay before answering any API request."""
    latency_jitter_ms: float = 0.0
    """Uniform random extra delay, 0 to this, added to ``latency_ms``."""
    rate_429: float = 0.0
    retry_after: int | str | None = 1
    """Seconds (int), ``"http-date"`` / ``"http-date:N"`` (a date N s ahead, default 1),
    or None to send 429 without ``Retry-After``."""
    rate_500: float = 0.0
    rate_503: float = 0.0
    rate_timeout: float = 0.0
    """Answer only after ``slow_ms``: long enough to exceed a client's timeout."""
    slow_ms: float = 15_000.0
    record_before_slow: bool = True
    """True: record, then stall (the work was done, the answer came too late).
    False: stall, then process (a client that retried at once races the original)."""
    rate_drop: float = 0.0
    """Close the TCP connection without any response."""
    record_before_drop: bool = True
    fail_ids: Mapping[str, FailSpec] = field(default_factory=dict)
    """transaction_id -> the answer every POST of that id gets until it is removed."""
    fail_all_status: int | None = None
    """Force this status for every POST (before auth), e.g. 401; None to clear."""
    seed: int | None = None
    """Seeds the random draws (faults and jitter) so a run can be reproduced."""
    rate_limit: float | None = None
    """Requests per second each credential (a df_ key, or a dft_ token and its websiteId)
    may make: a token bucket that answers 429 at once, with ``Retry-After``, when empty.
    None: no limit."""
    rate_limit_burst: float | None = None
    """The bucket's size (requests at once from full); None for one second's worth."""
    rate_limit_headers: str = "none"
    """Which rate-limit fields every answer of a limited credential carries: "none",
    "ietf" (``RateLimit-Policy/-Limit/-Remaining/-Reset``), "x" (``X-RateLimit-*``) or
    "both". Reset is in seconds until the bucket is full again."""

    _random_total: float = field(init=False, repr=False, compare=False, default=0.0)

    def __post_init__(self) -> None:
        for name in _MS_FIELDS:
            _check_non_negative(name, getattr(self, name))
        for name in _RATE_FIELDS:
            value = getattr(self, name)
            _check_non_negative(name, value)
            if value > 1:
                raise ValueError(f"{name} must be between 0 and 1")
        for name in _BOOL_FIELDS:
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false")
        total = sum(getattr(self, name) for name in _RATE_FIELDS)
        if total > 1 + 1e-9:
            raise ValueError(f"the fault rates {', '.join(_RATE_FIELDS)} add up to more than 1")
        _check_retry_after(self.retry_after)
        if self.fail_all_status is not None:
            _check_error_status("fail_all_status", self.fail_all_status)
        _check_rate_limit(self.rate_limit, self.rate_limit_burst, self.rate_limit_headers)
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int)
        ):
            raise ValueError("seed must be an integer or null")
        if not isinstance(self.fail_ids, Mapping):
            raise ValueError("fail_ids must map transaction ids to answers")
        fail_ids: dict[str, FailSpec] = {}
        for transaction_id, spec in self.fail_ids.items():
            if not isinstance(transaction_id, str):
                raise ValueError("fail_ids keys must be transaction id strings")
            fail_ids[transaction_id] = FailSpec.from_json(spec)
        # Read-only so that the shared value cannot be changed behind the handlers' backs.
        object.__setattr__(self, "fail_ids", MappingProxyType(fail_ids))
        object.__setattr__(self, "_random_total", total)

    @property
    def has_random_faults(self) -> bool:
        return self._random_total > 0

    @property
    def bucket_size(self) -> float:
        """The rate limit's bucket size (only meaningful with a ``rate_limit``)."""
        if self.rate_limit_burst is not None:
            return self.rate_limit_burst
        return max(1.0, self.rate_limit or 1.0)

    @property
    def has_latency(self) -> bool:
        return self.latency_ms > 0 or self.latency_jitter_ms > 0

    def updated(self, changes: Mapping[str, Any]) -> Faults:
        """A copy with ``changes`` applied; unknown names or bad values raise ValueError."""
        unknown = set(changes) - set(FIELD_NAMES)
        if unknown:
            raise ValueError(f"unknown fault settings: {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {name: getattr(self, name) for name in FIELD_NAMES}
        data["fail_ids"] = {tid: spec.to_json() for tid, spec in self.fail_ids.items()}
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Faults:
        return cls().updated(data)


FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Faults) if f.init)


def retry_after_header(value: int | str | None, now: float) -> str | None:
    """The ``Retry-After`` header for a 429, or None for no header."""
    if value is None:
        return None
    if isinstance(value, int):
        return str(value)
    seconds = _http_date_seconds(value)
    # Rounded up: an HTTP date has whole seconds, and a date rounded down could already
    # be in the past by the time the client reads it.
    return formatdate(math.ceil(now + seconds), usegmt=True)


def _http_date_seconds(value: str) -> int:
    if value == RETRY_AFTER_HTTP_DATE:
        return 1
    prefix = RETRY_AFTER_HTTP_DATE + ":"
    if value.startswith(prefix) and value[len(prefix) :].isdigit():
        return int(value[len(prefix) :])
    raise ValueError('retry_after must be seconds, "http-date", "http-date:N" or null')


def _check_retry_after(value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool):
        raise ValueError("retry_after must be seconds, not a boolean")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("retry_after must be >= 0")
        return
    if isinstance(value, str):
        _http_date_seconds(value)
        return
    raise ValueError('retry_after must be seconds, "http-date", "http-date:N" or null')


def _check_rate_limit(rate: object, burst: object, headers: object) -> None:
    for name, value in (("rate_limit", rate), ("rate_limit_burst", burst)):
        if value is None:
            continue
        _check_non_negative(name, value)
        if value == 0:
            raise ValueError(f"{name} must be > 0 (null for no limit)")
    if burst is not None and isinstance(burst, int | float) and burst < 1:
        raise ValueError("rate_limit_burst must be >= 1")
    if headers not in RATE_LIMIT_HEADERS:
        raise ValueError(f"rate_limit_headers must be one of {', '.join(RATE_LIMIT_HEADERS)}")


def _check_non_negative(name: str, value: object) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"{name} must be a number >= 0")


def _check_error_status(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 400 <= value <= 599:
        raise ValueError(f"{name} must be an HTTP error status, 400 to 599")
