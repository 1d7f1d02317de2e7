"""A send rate shared by every request of one worker, which a 429 slows down.

Additive increase, multiplicative decrease (as TCP does): each 429 halves how many requests
may be in flight and, with ``Retry-After``, holds every new request until that time; each
success earns a little back. One event's 429 therefore slows the whole worker, not just that
event. The worker only claims as many events from Redis as there is room for here, so while
it is held back the events stay queued in Redis, where any worker (or a crash) can see them.

Single-threaded by design: it is used from the worker's event loop only.
"""

from __future__ import annotations

import time
from collections.abc import Callable

DECREASE_INTERVAL = 1.0
MAX_HOLD = 30.0


class AdaptiveLimiter:
    def __init__(
        self,
        maximum: int,
        *,
        minimum: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.maximum = maximum
        self.minimum = max(1, min(minimum, maximum))
        self.limit: float = float(maximum)
        self.in_flight = 0
        self.throttled_total = 0
        self._resume_at = 0.0
        self._last_decrease = float("-inf")
        self._clock = clock

    def held_for(self) -> float:
        """Seconds until a ``Retry-After`` hold ends (0 when not held)."""
        return max(0.0, self._resume_at - self._clock())

    def free_slots(self) -> int:
        if self.held_for() > 0:
            return 0
        return max(0, int(self.limit) - self.in_flight)

    def take(self, count: int) -> None:
        self.in_flight += count

    def release(self, *, throttled: bool = False, retry_after: float | None = None) -> None:
        self.in_flight -= 1
        if throttled:
            self.throttled_total += 1
            now = self._clock()
            # Many requests in flight answer 429 together: that is one signal, not many, so
            # halve at most once per second (else 128 requests would cut the limit to 1).
            if now - self._last_decrease >= DECREASE_INTERVAL:
                self.limit = max(float(self.minimum), self.limit / 2)
                self._last_decrease = now
            if retry_after is not None:
                # One answer may pause the whole worker, but not for longer than MAX_HOLD:
                # the event itself waits the full Retry-After in the retry schedule.
                self._resume_at = max(self._resume_at, now + min(retry_after, MAX_HOLD))
        elif self.limit < self.maximum:
            # About +1 per window of successes: one lucky streak does not undo a 429 at once.
            self.limit = min(float(self.maximum), self.limit + 1.0 / max(1.0, self.limit))
