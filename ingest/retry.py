"""Retry policy as pure functions of the attempt number, a random source and a clock.

Nothing here sleeps: the worker turns a delay into a due time in RQ's scheduled registry, so
a waiting retry never holds a slot that another event could use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime

RandomSource = Callable[[], float]
MAX_RETRY_AFTER = 3600.0


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date).

    Returns ``None`` for a missing or unreadable header; a date in the past gives 0.
    Delta-seconds are ASCII digits only (RFC 9110): ``str.isdigit`` would also accept ``²``
    or ``١٢``, which ``float`` then rejects or misreads.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.isascii() and text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter, capped, that defers to ``Retry-After``."""

    max_attempts: int
    base: float
    cap: float

    def should_retry(self, attempts_made: int) -> bool:
        """Whether an event that has now failed ``attempts_made`` times gets another try."""
        return attempts_made < self.max_attempts

    def delay(
        self, attempts_made: int, random: RandomSource, retry_after: float | None = None
    ) -> float:
        """Seconds before the next attempt after ``attempts_made`` failures (1-based).

        Full jitter (a uniform draw in ``[0, min(cap, base * 2**(n-1))]``) spreads a burst of
        failures over the whole window instead of retrying them together. A server's
        ``Retry-After`` is a floor: we never come back sooner than asked, and add up to 10%
        so that every event told "come back in 5 s" does not return in the same instant.
        """
        ceiling = min(self.cap, self.base * 2 ** max(0, attempts_made - 1))
        jittered = random() * ceiling
        if retry_after is None:
            return float(jittered)
        # Honour the server, within reason: a bogus "come back in a year" must not park a
        # payment that long.
        floor = min(retry_after, MAX_RETRY_AFTER)
        return float(floor * (1.0 + 0.1 * random()))
