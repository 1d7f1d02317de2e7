"""What a worker may send now: its share of each credential's rate, within its concurrency.

Two limits, one question each:

* how fast: each credential's send rate, shared by every worker on every host through Redis
  (:mod:`ingest.ratelimit`) and learned from the answers (:mod:`ingest.ratelearner`);
* how many at once: this process's requests in flight, which follow the API's latency
  (:mod:`ingest.concurrency`).

The worker claims as many events as the concurrency limit leaves room for and hands them to
:meth:`Backpressure.admit`, which takes permits for them, one round trip per credential per
batch, and returns those that may go now. The others wait here, still leased to this worker
(its heartbeat renews their leases; a crash returns them to the queue), until their
credential has permits again. :meth:`Backpressure.report` counts each answer; the counts
ride along with the next permits taken, so every worker's answers feed one learner.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import redis.asyncio

from .concurrency import GradientLimit
from .delivery import Outcome
from .jobs import Claimed
from .keys import QueueKeys
from .logs import get_logger
from .ratelearner import LearnerConfig, LearnerState, decide
from .ratelimit import SendRate, credential_id
from .scripts import Answers, BucketShape
from .settings import Settings

_log = get_logger(__name__)

BUCKET_SECONDS = 0.05
"""A credential's bucket holds this many seconds of its rate: the largest burst."""
WINDOW_MIN, WINDOW_ANSWERS, WINDOW_MAX = 1.0, 50, 5.0
"""A window of answers closes after WINDOW_MIN s once it holds WINDOW_ANSWERS, answers to
half its permits among them, or at WINDOW_MAX s: long enough that the answers lagging
behind their permits (a request's latency, and the worker's next call) are a small part
of it. A window that exhausted the limit closes once 90% of its permits are answered, or
its hold ends (see ``ACQUIRE``)."""
STARTING_WINDOW_MIN = 0.25
"""The same minimum while the rate is still doubling (slow start) and for the window after
it, as TCP doubles per round trip: from 30/s to 2,000/s in about 4 s rather than 12, and a
window that overshoots a limit costs a quarter second of 429s, not a second."""
AFTER_HOLD = 2.0
"""Seconds after a hold ends during which windows keep that short minimum: the rate it
resumes at was judged on a burst, and the API's bucket, refilled during the hold, hides
an overshoot for a second or two; then a second-long window let 270 429s through where
a quarter second sees them (four workers against L=500)."""
STATE_TTL = 86_400


@dataclass(slots=True)
class _Counts:
    """Answers of one credential not yet reported to Redis."""

    ok: int = 0
    throttled: int = 0
    other: int = 0
    retry_after: float | None = None
    header_rate: float | None = None
    window: str = ""
    """The window whose permits these answer (see ``ACQUIRE``)."""

    @property
    def any(self) -> bool:
        return bool(self.ok or self.throttled or self.other)

    def add(self, outcome: Outcome) -> None:
        if outcome.status is None:
            self.other += 1
        elif outcome.status == 429:
            self.throttled += 1
            if outcome.retry_after is not None:
                self.retry_after = max(self.retry_after or 0.0, outcome.retry_after)
        else:
            self.ok += 1
        if outcome.allowed_rate is not None:
            self.header_rate = min(self.header_rate or outcome.allowed_rate, outcome.allowed_rate)

    def take(self) -> Answers:
        answers = Answers(
            self.ok, self.throttled, self.other, self.retry_after, self.header_rate, self.window
        )
        self.clear()
        return answers

    def clear(self) -> None:
        self.ok = self.throttled = self.other = 0
        self.retry_after = self.header_rate = None


@dataclass(slots=True)
class _Credential:
    limiter: SendRate
    waiting: deque[Claimed] = field(default_factory=deque)
    counts: _Counts = field(default_factory=_Counts)
    rate: float = 0.0
    hold_until: float = 0.0
    next_permit: float = 0.0  # unix time the next permit is due
    unused: int = 0
    """Permits taken and not used, to give back with the next call."""


class Backpressure:
    """One worker process's view of the send rates and its own concurrency limit."""

    def __init__(self, settings: Settings, keys: QueueKeys, *, clock: Callable[[], float]) -> None:
        assert settings.api_key is not None  # the worker checked the credentials
        self._key = settings.api_key.get_secret_value()
        self._account_token = settings.is_account_token
        self._default_website = settings.website_id
        self._keys = keys
        self._clock = clock
        self._shape = BucketShape(
            initial_rate=settings.send_rate_initial,
            bucket_seconds=BUCKET_SECONDS,
            window_min=STARTING_WINDOW_MIN,  # until the learner stores its own
            window_answers=WINDOW_ANSWERS,
            window_max=WINDOW_MAX,
            ttl=STATE_TTL,
        )
        self._learner = LearnerConfig(ceiling=settings.send_rate_max)
        self.concurrency = GradientLimit(
            maximum=settings.concurrency, minimum=max(1, settings.concurrency // 8)
        )
        self._credentials: dict[str | None, _Credential] = {}
        self._permit_window: dict[str, str] = {}
        """The window each event sent was granted its permit in, by job id."""

    @property
    def waiting(self) -> int:
        """Events claimed that wait for their credential's permits."""
        return sum(len(c.waiting) for c in self._credentials.values())

    def room(self, in_flight: int) -> int:
        """How many more events to claim: the concurrency limit less what is in hand."""
        return self.concurrency.free(in_flight + self.waiting)

    def wait(self, longest: float) -> float:
        """Seconds until an event waiting here may have a permit (at most ``longest``)."""
        now = self._clock()
        due = [c.next_permit for c in self._credentials.values() if c.waiting]
        return longest if not due else max(0.0, min(longest, min(due) - now))

    def _credential(self, website: str | None) -> _Credential:
        site = (website or self._default_website) if self._account_token else None
        credential = self._credentials.get(site)
        if credential is None:
            limiter = SendRate(self._keys, credential_id(self._key, site), self._shape)
            credential = self._credentials[site] = _Credential(limiter)
        return credential

    def report(self, claimed: Claimed, outcome: Outcome, seconds: float, in_flight: int) -> None:
        """One request's answer (or failure) and how long it took."""
        counts = self._credential(claimed.website_id).counts
        if self._permit_window.pop(claimed.job_id, None) == counts.window:
            counts.add(outcome)  # else late: its window closed without it (see ACQUIRE)
        self.concurrency.on_sample(seconds, in_flight=in_flight + 1)

    async def admit(self, conn: redis.asyncio.Redis, claimed: list[Claimed]) -> list[Claimed]:
        """The events that may be sent now, of those just ``claimed`` and those waiting
        here; one ``ACQUIRE`` round trip for each credential with events or answers."""
        for event in claimed:
            self._credential(event.website_id).waiting.append(event)
        ready: list[Claimed] = []
        for credential in self._credentials.values():
            if credential.waiting or credential.counts.any:
                ready.extend(await self._acquire(conn, credential))
        return ready

    async def _acquire(self, conn: redis.asyncio.Redis, credential: _Credential) -> list[Claimed]:
        now = self._clock()
        wanted = len(credential.waiting)
        if now < credential.next_permit:
            if not (credential.hold_until > now and credential.counts.any):
                return []  # no permit due yet: answers are reported with the next call
            # Held: report now, for the window that holds it waits for its answers to
            # decide the rate to resume at (see ACQUIRE).
            wanted = 0
        permits = await credential.limiter.acquire_async(
            conn,
            wanted,
            now=now,
            unused=credential.unused,
            answers=credential.counts.take(),
        )
        credential.unused = 0
        granted = permits.granted
        credential.rate, credential.hold_until = permits.rate, permits.hold_until
        credential.next_permit = now + permits.wait
        if permits.window_start != credential.counts.window:
            # The window closed: answers that came in during this call are late for it.
            credential.counts.clear()
            credential.counts.window = permits.window_start
        if permits.window is not None:
            state = LearnerState.from_json(permits.learner)
            decision = decide(permits.rate, permits.window, state, now=now, config=self._learner)
            hold_until = max(decision.hold_until, permits.hold_until)
            short = _starting(decision.state) or now < hold_until + AFTER_HOLD
            await credential.limiter.store_async(
                conn,
                rate=decision.rate,
                hold_until=hold_until,
                learner=decision.state.to_json(),
                window_min=STARTING_WINDOW_MIN if short else WINDOW_MIN,
            )
            if decision.rate != permits.rate or decision.hold_until > now:
                _log.info(
                    "send rate learned",
                    credential=credential.limiter.credential,
                    rate=round(decision.rate, 1),
                    previous=round(permits.rate, 1),
                    reason=decision.reason,
                    held_for=round(max(0.0, decision.hold_until - now), 1),
                    window_seconds=round(permits.window.seconds, 2),
                    window_accepted=permits.window.ok,
                    window_429=permits.window.throttled,
                    window_sent=permits.window.granted,
                )
            credential.rate = decision.rate
            if decision.hold_until > now:
                # The limit is exhausted: the permits this call took (at the rate before)
                # would go into an empty bucket, and their 429s, answered after the hold,
                # made the window after it hold again, at half the rate (L=500: 135 429s
                # and a second lost at the start). They go back with the next call.
                credential.unused, granted = granted, 0
                credential.hold_until = hold_until
                credential.next_permit = max(credential.next_permit, hold_until)
        ready = [credential.waiting.popleft() for _ in range(granted)]
        for event in ready:
            self._permit_window[event.job_id] = permits.window_start
        return ready


def _starting(state: LearnerState) -> bool:
    """Whether the rate is still doubling, or the cut that ended the doubling has yet to be
    checked: that window is short too, so a cut still far above a limit (slow start ran
    through a token bucket's burst) costs a quarter second of 429s, not a second."""
    return state.slow_start or state.slow_before
