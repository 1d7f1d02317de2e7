"""How many requests a worker keeps in flight, following the API's latency.

A gradient limit, as Netflix's concurrency-limits ``Gradient2Limit``: a long-run average of
the answer time (``long_rtt``) against the latest one. When answers slow down (the API is
queueing our requests), the gradient ``tolerance * long_rtt / rtt`` falls below 1 and the
limit shrinks toward ``minimum``, so requests do not pile up until they time out; when
answers speed up again, the gradient is 1 and the limit grows by ``sqrt(limit)`` per
answer (smoothed), back to ``maximum`` within a few hundred answers. A slow latency that
lasts becomes the new normal as ``long_rtt`` catches up, and the limit grows back.

Pure and single-threaded: fed one answer time at a time from the worker's event loop.
"""

from __future__ import annotations

import math


class GradientLimit:
    def __init__(
        self,
        *,
        maximum: int,
        minimum: int = 1,
        tolerance: float = 1.5,
        smoothing: float = 0.2,
        long_window: int = 600,
    ) -> None:
        self.maximum = maximum
        self.minimum = max(1, min(minimum, maximum))
        self.limit: float = float(maximum)
        self.long_rtt = 0.0
        self._tolerance = tolerance
        self._smoothing = smoothing
        self._alpha = 2.0 / (long_window + 1)
        self._samples = 0
        self._warmup = 10

    def free(self, in_flight: int) -> int:
        """Requests that may start now."""
        return max(0, int(self.limit) - in_flight)

    def on_sample(self, rtt: float, *, in_flight: int) -> None:
        """One answer took ``rtt`` seconds (a timeout: the time waited), while
        ``in_flight`` requests were out."""
        rtt = max(rtt, 1e-6)
        self._samples += 1
        if self._samples <= self._warmup:
            # A plain average until there are enough samples for the moving one.
            self.long_rtt += (rtt - self.long_rtt) / self._samples
        else:
            self.long_rtt += self._alpha * (rtt - self.long_rtt)
        if self.long_rtt / rtt > 2:
            # Answers are much faster than the long average: let it come down quickly,
            # or the limit would keep growing against a stale, slow baseline.
            self.long_rtt *= 0.95
        if in_flight < self.limit / 2:
            return  # not using the limit: the sample says nothing about it
        gradient = max(0.5, min(1.0, self._tolerance * self.long_rtt / rtt))
        target = self.limit * gradient + math.sqrt(self.limit)
        limit = self.limit * (1 - self._smoothing) + target * self._smoothing
        self.limit = max(float(self.minimum), min(float(self.maximum), limit))
