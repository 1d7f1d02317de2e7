"""The sandbox's rate limit: one token bucket per credential, as a payments API keeps.

A credential is what the API limits: a ``df_`` website key, or a ``dft_`` account token
together with the website it acts for. A request takes one token; an empty bucket answers
429 at once (nothing is queued), with ``Retry-After`` set to when the next token is due.
Used from the event loop thread only, so no lock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    remaining: int
    """Whole tokens left after this request."""
    retry_after: int
    """Seconds until the next token (whole, at least 1): the 429's ``Retry-After``."""
    reset: int
    """Seconds until the bucket is full again (whole, rounded up)."""


class TokenBuckets:
    """Buckets of ``size`` tokens refilled at ``rate`` per second, one per credential."""

    def __init__(self, rate: float, size: float) -> None:
        self.rate = rate
        self.size = size
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}  # tokens, updated at

    def take(self, credential: tuple[str, str], now: float) -> Decision:
        tokens, updated = self._buckets.get(credential, (self.size, now))
        tokens = min(self.size, tokens + max(0.0, now - updated) * self.rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[credential] = (tokens, now)
        next_token = 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate
        return Decision(
            allowed=allowed,
            remaining=int(tokens),
            retry_after=max(1, math.ceil(next_token)),
            reset=math.ceil((self.size - tokens) / self.rate),
        )


def headers(style: str, limit: float, size: float, decision: Decision) -> dict[str, str]:
    """The rate-limit fields of one answer, in ``style`` (see ``Faults.rate_limit_headers``)."""
    shown_limit = f"{limit:g}"
    fields: dict[str, str] = {}
    if style in ("ietf", "both"):
        fields["RateLimit-Policy"] = f"{shown_limit};w=1;burst={size:g}"
        fields["RateLimit-Limit"] = shown_limit
        fields["RateLimit-Remaining"] = str(decision.remaining)
        fields["RateLimit-Reset"] = str(decision.reset)
    if style in ("x", "both"):
        fields["X-RateLimit-Limit"] = shown_limit
        fields["X-RateLimit-Remaining"] = str(decision.remaining)
        fields["X-RateLimit-Reset"] = str(decision.reset)
    return fields
