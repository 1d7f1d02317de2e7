"""The send rate a credential should have next, learned from its answers: pure functions.

One window (about a second) of every worker's answers for one credential goes in
(:class:`~ingest.scripts.AnswerWindow`), the next rate and hold come out. The rules, in
the order :func:`decide` applies them:

1. ``RateLimit`` fields: when the API says what it allows, that is the rate (a little
   under it), and learning is over.
2. Two in three answers are 429 (``hold_share``), or ``ACQUIRE`` found the limit
   exhausted and held the credential already: the whole credential is held for the
   ``Retry-After`` (capped) and the rate cut toward what was accepted.
   One sporadic 429 never holds anything: its own event waits its ``Retry-After`` in the
   retry schedule, and that is all.
3. The window after a cut tells a limit from noise: a real limit answers fewer 429s at a
   lower rate. If the share of 429s did not fall (and is a plausible noise, at most
   ``max_noise``), the 429s are not about our rate: their share becomes the *noise*,
   tolerated from then on, and the cut is undone (slow start resumed if the cut ended it).
   In the replay of tests/test_ratelearner.py, 5% sporadic 429s cost one window at 90% of
   the rate.
4. The share of 429s is clearly (by ``confidence`` standard errors) above
   ``tolerated_share`` plus the noise, or at all above it at or over the rate a limit was
   last found at, or after a cut of such a rate that did not reduce it: cut to a little
   under the rate the API accepted in the window, judged on the answers since its first
   429 (the 200s before it spent what the API's bucket had left). By 30% at most once
   started, if the window did not use its rate; with no such floor for one that
   did, for the window that ends slow start, or for one whose 429s a cut did not reduce, so
   that start-up overshoots the limit for a window or two, not more. What a window that
   used its rate accepted, or the window that ended slow start, is where the limit lies;
   one that did not use its rate accepted less than the API allows and leaves that
   estimate as it was.
5. Otherwise, if the window used its rate: multiply it by ``slow_start_factor`` while
   starting (slow start, until the first cut); under the limit found last, halve the
   distance to it (at least ``increase`` of the rate); at or over it, add ``probe``,
   doubled for each window in a row that did so (up to ``max_probe_steps`` times), as
   BIC-TCP's max probing does: slow just past a limit, fast away from one found too low.
   A rate not used is not raised, so an idle credential does not wake up far above its
   limit.

Always within ``floor`` and ``ceiling``. Transport failures (no answer) are not a rate signal.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

from .scripts import MAX_HOLD, AnswerWindow


@dataclass(frozen=True, slots=True)
class LearnerConfig:
    floor: float = 1.0
    ceiling: float = 10_000.0
    tolerated_share: float = 0.02
    hold_share: float = 2 / 3
    """The share of 429s (of the window, or since its first 429) that holds: twice the
    200s, as ``ACQUIRE``'s own hold."""
    cut_margin: float = 0.05
    """A cut goes to this much under the accepted rate..."""
    deepest_cut: float = 0.7
    """... but, once started, no lower than this share of the rate when the window did not
    use its rate (workers starting, a short queue): it accepted less than the limit allows.
    A window that used its rate is cut to what the API accepted, however deep (a cut of
    30% from 79/s against a limit of 50 cost another window of 429s), and so is the first
    throttled window, which ends slow start however far above the limit it went."""
    deepest_hold_cut: float = 0.5
    """The same floor when most answers are 429."""
    slow_start_factor: float = 2.0
    """While starting, a window that used its rate and saw no clear 429s multiplies it by this."""
    increase: float = 0.02
    """Additive increase per window, as a share of the rate (at least 1 request/s): small,
    as the rate is already near the limit the first cut found."""
    probe: float = 0.01
    """The same, at or above the rate a limit was last found at (at least 0.5 request/s):
    slower there, as every step above a limit costs 429s..."""
    max_probe_steps: int = 8
    """... but doubled for every window in a row that probed without a cut, up to this
    many times ``probe`` (BIC-TCP's max probing): a limit found too low (a hold's short
    window guessed 575-1,290/s against 2,000) is left within seconds, where 1% a window
    kept four workers at 58-80% of the limit for the rest of a 30 s run."""
    utilized: float = 0.8
    """A window used its rate when it took at least this share of its permits."""
    answered: float = 0.5
    """A window whose answers reached this share of its permits is judged on its 429s
    since the first (see :func:`decide`)."""
    header_margin: float = 0.02
    confidence: float = 3.0
    """Standard errors by which a share of 429s must exceed the tolerated share to cut. At
    two, one window in 44 of sporadic 429s at the tolerated share cut by chance, and the
    window after could not tell that cut from one for a limit (regression to the mean), so
    2% sporadic 429s cost a third of the rate (issue 14); at three, one in 740."""
    min_answers: int = 20
    """Fewer answers than this in a window decide nothing (but a hold)."""
    noise_fade: float = 0.1
    """How fast the learned noise follows a lower share of 429s, per window."""
    max_noise: float = 0.1
    """The largest share of 429s ever taken for noise: more is a limit, whatever it does
    when the rate is cut."""
    max_hold: float = MAX_HOLD


@dataclass(frozen=True, slots=True)
class LearnerState:
    """What the learner remembers between windows (stored beside the rate, in Redis)."""

    slow_start: bool = True
    noise: float = 0.0
    """The share of 429s that is not about our rate (sporadic), tolerated."""
    last_share: float = 0.0
    """The share of 429s that led to the previous window's cut (0: it did not cut)."""
    cut_from: float = 0.0
    """The rate before the previous window's cut (0: it did not cut): restored if the cut
    turns out to have been about noise."""
    slow_before: bool = False
    """Whether that cut ended slow start (resumed, too, if it was about noise)."""
    limit: float = 0.0
    """The rate the API accepted when a limit was last found (0: none found): at or above
    it, the rate rises by ``probe`` and any 429s beyond the tolerated share cut it."""
    probed: int = 0
    """Windows in a row that probed at or over ``limit`` (none cut or held since)."""
    cut_probing: bool = False
    """Whether the previous window's cut was of a rate at or over the limit found: 429s
    after it that did not fall are taken for that limit, not for noise, unless noise was
    found before (see :func:`decide`)."""

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
                cut_from=float(fields["cut_from"]),
                slow_before=bool(fields["slow_before"]),
                limit=float(fields["limit"]),
                # absent from states stored before them:
                probed=int(fields.get("probed", 0)),
                cut_probing=bool(fields.get("cut_probing", False)),
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
    # The share since the window's first 429: once a token bucket is empty it refuses
    # what is sent over its rate, while the window's earlier 200s spent the tokens it had
    # left (a window that overshot 50/s at 240/s answered 18 200s to 35 429s: 80/s accepted
    # by the whole window's share). Judged on at least ``min_answers``, in a window with
    # half its permits answered (as ACQUIRE closes them, but at their longest or at the end
    # of a hold); else the window's share. The first answers of several workers, each
    # reporting a batch at a time, are no order to count "since" in: 4 workers at 7,680/s
    # against 2,000 had answered 56 of 930 permits, and a limit of 350/s was taken from
    # their 25 200s before the first 429.
    since = answered - (window.ok_before_429 or 0)
    answered_enough = since >= config.min_answers and answered >= config.answered * window.granted
    recent = window.throttled / since if answered_enough else share
    # What the API accepted: the permits taken less the share refused. Answers reach the
    # window a little after their permits were taken, so the share is the steadier figure
    # (both its parts lag alike) where a count of answers would swing with the lag.
    seconds = max(window.seconds, 1e-3)
    accepted = max(window.granted, answered) * (1 - recent) / seconds
    used = window.granted >= config.utilized * rate * window.seconds
    # Where a limit lies: what a window that used its rate got accepted, or the window that
    # ended slow start (an overestimate: the doubling runs through a token bucket's burst
    # first, but the climb back toward it finds the limit within a few windows, where
    # without it the rate crawled up by 2% a window). A window that did not use its rate
    # (held, or its answers lagging a hold) accepted less than the API allows: taken as the
    # limit, it kept the rate crawling far under it.
    found = accepted if (used or state.slow_start) and accepted > 0 else state.limit

    # Straight to what was accepted, however deep, for the first throttled window (slow
    # start overshot) and for one whose 429s a cut did not reduce: the cut was too shallow,
    # as a window after a quiet spell accepts the API's burst on top of its rate.
    straight = state.slow_start or (state.cut_from > 0 and share >= state.last_share)

    def cut_rate(deepest: float) -> float:
        if straight:
            deepest = 0.0
        if accepted <= 0:
            return clamp(rate / 2)
        target = min(rate, accepted) * (1 - config.cut_margin)
        return clamp(max(target, rate * deepest))

    if window.header_rate is not None:
        running = LearnerState(slow_start=False, noise=state.noise)
        target = clamp(window.header_rate * (1 - config.header_margin))
        return Decision(target, _hold(window, share, now, config), running, "header")
    exhausted = max(share, recent)
    if window.held or (answered and exhausted >= config.hold_share):
        held = LearnerState(slow_start=False, noise=state.noise, limit=found)
        # Exhausted: cut deeper than for a share of 429s, but never to nothing at once; a
        # window whose events mostly wait for their retries accepted little either way.
        # Every hold cuts: a window after a hold spans the hold, so it never looks used, and
        # keeping the rate there resumed at it, held again and again (4% of L=500).
        return Decision(
            cut_rate(config.deepest_hold_cut), _hold(window, exhausted, now, config), held, "hold"
        )
    if answered < config.min_answers:
        return Decision(rate, 0.0, state, "keep")
    noise = state.noise
    still_over = False
    if state.cut_from:
        # The window after a cut: a real limit answers fewer 429s at a lower rate.
        not_lower = config.tolerated_share < share and _not_lower(share, state.last_share, answered)
        # After a cut of a rate at or over the limit found, 429s that did not fall are that
        # limit still: the cut left the rate over it (its window spent the tokens left in
        # the bucket first, which made the API look more generous), and the bucket is now
        # empty. Taken for noise, the cut was undone and 8% of 429s tolerated from then on.
        # Unless this credential's 429s were found to be noise before: cut after cut, its
        # sporadic 429s took a tenth of the rate.
        still_over = state.cut_probing and not_lower and not state.noise
        if not_lower and not still_over and share <= config.max_noise:
            # The share of 429s did not fall: they are not about our rate. Tolerate them
            # from now on, and undo the cut (resuming slow start if it ended it).
            noisy = LearnerState(slow_start=state.slow_before, noise=share)
            return Decision(max(rate, state.cut_from), 0.0, noisy, "noise")
        # A limit: what was learned as noise and is gone was about our rate after all.
        noise = min(noise, share)
        state = LearnerState(slow_start=state.slow_start, noise=noise, limit=state.limit)
    probing = 0 < state.limit <= rate
    strict = probing or still_over
    tolerated = config.tolerated_share + noise
    if share > (tolerated if strict else _threshold(tolerated, answered, config.confidence)):
        cut = LearnerState(
            slow_start=False,
            noise=noise,
            last_share=share,
            cut_from=rate,
            slow_before=state.slow_start,
            limit=found,
            cut_probing=strict,
        )
        return Decision(cut_rate(0.0 if used else config.deepest_cut), 0.0, cut, "cut")
    if share < noise:
        noise += config.noise_fade * (share - noise)
    calm = LearnerState(slow_start=state.slow_start, noise=noise, limit=state.limit)
    if not used:
        return Decision(rate, 0.0, calm, "keep")
    if state.slow_start:
        return Decision(clamp(rate * config.slow_start_factor), 0.0, calm, "slow start")
    if probing:
        # At or over the limit found: by 1%, then doubling each window in a row.
        growth = config.probe * min(2**state.probed, config.max_probe_steps) * rate
        probed = LearnerState(
            slow_start=False, noise=noise, limit=state.limit, probed=state.probed + 1
        )
        return Decision(clamp(rate + max(0.5, growth)), 0.0, probed, "increase")
    # Under a limit found before (a cut went below it), halve the distance back each
    # window, as BIC-TCP does: 2% a window took 20 s to climb back from a cut of 30%.
    step = max(1.0, config.increase * rate, (state.limit - rate) / 2)
    if state.limit > rate:  # up to the limit, then probe past it
        step = max(min(step, state.limit - rate), config.probe * rate, 0.5)
    return Decision(clamp(rate + step), 0.0, calm, "increase")


def _not_lower(share: float, before: float, answered: int) -> bool:
    """Whether ``share`` of ``answered`` answers is within two standard errors of (or
    above) the share ``before``, and at least half of it: not clearly lower."""
    error = 2 * math.sqrt(before * (1 - before) / answered)
    return share >= max(before / 2, before - error)


def _threshold(tolerated: float, answered: int, confidence: float) -> float:
    """The share of 429s above which a window cuts: the tolerated share plus ``confidence``
    standard errors of it over ``answered`` answers, so that 2% sporadic 429s seen as 4 in
    100 do not cut, while 9 in 55 do."""
    q = min(tolerated, 1.0)
    return tolerated + confidence * math.sqrt(q * (1 - q) / answered)


def _hold(window: AnswerWindow, share: float, now: float, config: LearnerConfig) -> float:
    if window.held or not window.throttled or share < config.hold_share:
        return 0.0  # ACQUIRE held it as the 429s came, or nothing to hold
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
