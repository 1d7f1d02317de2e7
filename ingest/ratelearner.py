"""The send rate a credential should have next, learned from its answers: pure functions.

One window (about a second) of every worker's answers for one credential goes in
(:class:`~ingest.scripts.AnswerWindow`), the next rate and hold come out. The rules, in
the order :func:`decide` applies them:

1. ``RateLimit`` fields: when the API says what it allows, that is the rate (a little
   under it), and learning is over.
2. Most answers are 429 (``hold_share``): the limit is exhausted, so the whole credential
   is held for the ``Retry-After`` (capped) and the rate cut toward what was accepted.
   One sporadic 429 never holds anything: its own event waits its ``Retry-After`` in the
   retry schedule, and that is all.
3. The share of 429s is clearly (by two standard errors) above ``tolerated_share`` plus
   the learned *noise*: cut to a little under the rate the API accepted in the window (by
   30% at most per window). If two cuts in a row left the share where it was, the 429s are
   not about our rate (a real limit answers fewer 429s at a lower rate): their share
   becomes the noise, tolerated from then on, and the rate stays. So 2% sporadic 429s at
   1,000 answers/s (20 a second) cost only their own retries, where a cut per 429 would
   ratchet the rate to the floor.
4. Otherwise, if the window used its rate: double it while starting (slow start, until
   the first cut), else add ``increase`` of it (additive increase). A rate not used is not
   raised, so an idle credential does not wake up far above its limit.

Always within ``floor`` and ``ceiling``. Transport failures (no answer) are not a rate signal.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

from .scripts import AnswerWindow

MAX_HOLD = 30.0
"""Seconds: the longest a ``Retry-After`` may hold a whole credential (its own event waits
the full time in the retry schedule)."""


@dataclass(frozen=True, slots=True)
class LearnerConfig:
    floor: float = 1.0
    ceiling: float = 10_000.0
    tolerated_share: float = 0.02
    hold_share: float = 0.5
    cut_margin: float = 0.05
    """A cut goes to this much under the accepted rate..."""
    deepest_cut: float = 0.7
    """... but no lower than this share of the rate: a window that did not use its rate
    (workers starting, a short queue) accepted less than the limit allows."""
    deepest_hold_cut: float = 0.5
    """The same floor when most answers are 429."""
    increase: float = 0.05
    """Additive increase per window, as a share of the rate (at least 1 request/s)."""
    utilized: float = 0.8
    """A window used its rate when it took at least this share of its permits."""
    header_margin: float = 0.02
    min_answers: int = 20
    """Fewer answers than this in a window decide nothing (but a hold)."""
    noise_fade: float = 0.1
    """How fast the learned noise follows a lower share of 429s, per window."""
    max_hold: float = MAX_HOLD
    cuts_to_noise: int = 2
    """Cuts in a row that leave the share of 429s as it was before they are noise: one is
    not enough, as answers lag behind their requests and a cut may be floored."""


@dataclass(frozen=True, slots=True)
class LearnerState:
    """What the learner remembers between windows (stored beside the rate, in Redis)."""

    slow_start: bool = True
    noise: float = 0.0
    """The share of 429s that is not about our rate (sporadic), tolerated."""
    last_share: float = 0.0
    """The share of 429s that led to the previous window's cut (0: it did not cut)."""
    stuck: int = 0
    """Cuts in a row after which the share of 429s did not fall."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, data: str | None) -> LearnerState:
        """The stored state; a missing or unreadable one starts afresh."""
        if not data:
            return cls()
        try:
            fields = json.loads(data)
            return cls(
                slow_start=bool(fields["slow_start"]),
                noise=float(fields["noise"]),
                last_share=float(fields["last_share"]),
                stuck=int(fields["stuck"]),
            )
        except (ValueError, TypeError, KeyError):
            return cls()


@dataclass(frozen=True, slots=True)
class Decision:
    rate: float
    hold_until: float
    """Unix time until which the credential sends nothing (0 or past: not held)."""
    state: LearnerState
    reason: str
    """Why: header, hold, cut, noise, slow start, increase or keep (for logs)."""


def decide(
    rate: float,
    window: AnswerWindow,
    state: LearnerState,
    *,
    now: float,
    config: LearnerConfig,
) -> Decision:
    """The rate and hold after ``window`` (see the module's rules)."""

    def clamp(value: float) -> float:
        return min(config.ceiling, max(config.floor, value))

    answered = window.ok + window.throttled
    share = window.throttled / answered if answered else 0.0
    # What the API accepted: the permits taken less the share refused. Answers reach the
    # window a little after their permits were taken, so the share is the steadier figure
    # (both its parts lag alike) where a count of answers would swing with the lag.
    seconds = max(window.seconds, 1e-3)
    accepted = max(window.granted, answered) * (1 - share) / seconds

    def cut_rate(deepest: float) -> float:
        if accepted <= 0:
            return clamp(rate / 2)
        target = min(rate, accepted) * (1 - config.cut_margin)
        return clamp(max(target, rate * deepest))

    if window.header_rate is not None:
        running = LearnerState(slow_start=False, noise=state.noise)
        target = clamp(window.header_rate * (1 - config.header_margin))
        return Decision(target, _hold(window, share, now, config), running, "header")
    if answered and share >= config.hold_share:
        held = LearnerState(slow_start=False, noise=state.noise, last_share=share)
        # Exhausted: cut deeper than for a share of 429s, but never to nothing at once; a
        # window whose events mostly wait for their retries accepted little either way.
        return Decision(
            cut_rate(config.deepest_hold_cut), _hold(window, share, now, config), held, "hold"
        )
    if answered < config.min_answers:
        return Decision(rate, 0.0, state, "keep")
    if share > _threshold(config.tolerated_share + state.noise, answered):
        stuck = state.stuck + 1 if share >= 0.7 * state.last_share > 0 else 0
        if stuck >= config.cuts_to_noise:
            # Cut after cut, the share did not fall: these 429s are not about our rate.
            noisy = LearnerState(slow_start=False, noise=share)
            return Decision(rate, 0.0, noisy, "noise")
        cut = LearnerState(slow_start=False, noise=state.noise, last_share=share, stuck=stuck)
        return Decision(cut_rate(config.deepest_cut), 0.0, cut, "cut")
    noise = state.noise
    if share < noise:
        noise += config.noise_fade * (share - noise)
    calm = LearnerState(slow_start=state.slow_start, noise=noise)
    if window.granted < config.utilized * rate * window.seconds:
        return Decision(rate, 0.0, calm, "keep")
    if state.slow_start:
        return Decision(clamp(rate * 2), 0.0, calm, "slow start")
    return Decision(clamp(rate + max(1.0, config.increase * rate)), 0.0, calm, "increase")


def _threshold(tolerated: float, answered: int) -> float:
    """The share of 429s above which a window cuts: the tolerated share plus two standard
    errors of it over ``answered`` answers, so that 2% sporadic 429s seen as 3 in 100 do
    not cut, while 9 in 55 do."""
    q = min(tolerated, 1.0)
    return tolerated + 2 * math.sqrt(q * (1 - q) / answered)


def _hold(window: AnswerWindow, share: float, now: float, config: LearnerConfig) -> float:
    if not window.throttled or share < config.hold_share:
        return 0.0
    wait = 1.0 if window.retry_after is None else window.retry_after
    return now + min(wait, config.max_hold)


def allowed_rate(field: Callable[[str], str | None]) -> float | None:
    """Requests/s an answer's rate-limit fields allow, None when it has none (or none we
    can read). ``field`` looks a header up by its lower-case name.

    ``RateLimit-Policy`` (IETF draft: ``500;w=1`` or ``"name";q=500;w=1``; several
    policies, the strictest) gives quota per window. Without a policy, ``RateLimit-Limit``
    or ``X-RateLimit-Limit`` is read as requests per second, as the sandbox sends it.
    """
    policy = field("ratelimit-policy")
    if policy:
        rates = [r for r in (_policy_rate(item) for item in policy.split(",")) if r is not None]
        return min(rates) if rates else None
    for name in ("ratelimit-limit", "x-ratelimit-limit"):
        value = field(name)
        if value:
            return _positive(value.split(",")[0].split(";")[0])
    return None


def _policy_rate(item: str) -> float | None:
    quota: float | None = None
    window = 1.0
    for part in (p.strip() for p in item.split(";")):
        name, _, value = part.partition("=")
        if not value:
            quota = _positive(name) if quota is None else quota
        elif name == "q":
            quota = _positive(value)
        elif name == "w":
            window = _positive(value) or 1.0
    return None if quota is None else quota / window


def _positive(text: str) -> float | None:
    try:
        number = float(text.strip())
    except ValueError:
        return None
    return number if number > 0 else None
