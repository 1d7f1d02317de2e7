"""ingest.ratelearner: the next send rate from one window of answers, as pure functions.

Each table row is one window; nothing here touches Redis, a clock or a sleep.
"""

from __future__ import annotations

import pytest

from ingest.ratelearner import LearnerConfig, LearnerState, allowed_rate, decide
from ingest.scripts import AnswerWindow

NOW = 1_800_000_000.0
CONFIG = LearnerConfig(floor=1.0, ceiling=5000.0)
RUNNING = LearnerState(slow_start=False)


def window(
    ok: int,
    throttled: int = 0,
    *,
    seconds: float = 1.0,
    granted: int | None = None,
    retry_after: float | None = None,
    header_rate: float | None = None,
    other: int = 0,
) -> AnswerWindow:
    return AnswerWindow(
        seconds=seconds,
        ok=ok,
        throttled=throttled,
        other=other,
        granted=ok + throttled + other if granted is None else granted,
        retry_after=retry_after,
        header_rate=header_rate,
    )


# rate before, the window, the learner's state -> rate after, hold (s from NOW)
RATE_TABLE = [
    pytest.param(100.0, window(100), LearnerState(), 200.0, 0.0, id="slow start doubles"),
    pytest.param(100.0, window(100), RUNNING, 105.0, 0.0, id="additive increase"),
    pytest.param(100.0, window(40), RUNNING, 100.0, 0.0, id="unused rate is not raised"),
    pytest.param(1000.0, window(980, 20), RUNNING, 1050.0, 0.0, id="2% of 429s: still raised"),
    pytest.param(100.0, window(97, 3), RUNNING, 105.0, 0.0, id="3 in 100: within chance"),
    pytest.param(55.0, window(46, 9), RUNNING, 43.7, 0.0, id="9 in 55: clearly above, cut"),
    pytest.param(1000.0, window(900, 100), RUNNING, 855.0, 0.0, id="10% cut to 95% of accepted"),
    pytest.param(
        3200.0, window(2000, 1200), LearnerState(), 2240.0, 0.0, id="overshoot: cut 30% at most"
    ),
    pytest.param(4900.0, window(4900), LearnerState(), 5000.0, 0.0, id="never above ceiling"),
    pytest.param(2.0, window(0, 30, retry_after=2), RUNNING, 1.0, 2.0, id="never below floor"),
    pytest.param(
        500.0,
        window(100, 400, retry_after=3),
        RUNNING,
        250.0,
        3.0,
        id="most 429: hold, cut by half at most",
    ),
    pytest.param(
        500.0, window(10, 50, retry_after=None), RUNNING, 250.0, 1.0, id="most 429, no header: 1s"
    ),
    pytest.param(
        500.0, window(10, 50, retry_after=600), RUNNING, 250.0, 30.0, id="hold capped at 30s"
    ),
    pytest.param(500.0, window(5, 1), RUNNING, 500.0, 0.0, id="too few answers: keep"),
    pytest.param(
        500.0, window(300, other=200), RUNNING, 525.0, 0.0, id="timeouts are no rate signal"
    ),
    pytest.param(
        100.0, window(50, header_rate=40.0), LearnerState(), 39.2, 0.0, id="header sets rate"
    ),
    pytest.param(
        100.0, window(50, header_rate=9000.0), RUNNING, 5000.0, 0.0, id="header within ceiling"
    ),
]


@pytest.mark.parametrize(("rate", "answers", "state", "expected", "hold"), RATE_TABLE)
def test_next_rate(
    rate: float, answers: AnswerWindow, state: LearnerState, expected: float, hold: float
) -> None:
    decision = decide(rate, answers, state, now=NOW, config=CONFIG)
    assert decision.rate == pytest.approx(expected)
    assert max(0.0, decision.hold_until - NOW) == pytest.approx(hold)


def test_sporadic_429s_that_two_cuts_do_not_reduce_are_learned_as_noise() -> None:
    # 5% of answers are 429 whatever the rate: two cuts in a row see the same share at
    # lower rates, so the 429s are not about our rate, and the third window keeps it.
    first = decide(1000.0, window(950, 50), RUNNING, now=NOW, config=CONFIG)
    assert first.rate == pytest.approx(902.5)
    second = decide(first.rate, window(857, 45), first.state, now=NOW, config=CONFIG)
    assert second.rate < first.rate
    third = decide(second.rate, window(815, 43), second.state, now=NOW, config=CONFIG)
    assert third.rate == second.rate
    assert third.state.noise == pytest.approx(43 / 858)
    fourth = decide(third.rate, window(815, 43), third.state, now=NOW, config=CONFIG)
    assert fourth.rate > third.rate


def test_429s_that_a_cut_reduces_are_a_real_limit_and_cut_again() -> None:
    first = decide(1000.0, window(800, 200), RUNNING, now=NOW, config=CONFIG)
    second = decide(first.rate, window(720, 40), first.state, now=NOW, config=CONFIG)
    assert second.rate < first.rate
    assert second.state.noise == 0.0


def test_noise_fades_when_429s_stop() -> None:
    state = LearnerState(slow_start=False, noise=0.05)
    for _ in range(30):
        state = decide(1000.0, window(1000), state, now=NOW, config=CONFIG).state
    assert state.noise < 0.01


def test_state_round_trips_through_json() -> None:
    state = LearnerState(slow_start=False, noise=0.03, last_share=0.1, stuck=1)
    assert LearnerState.from_json(state.to_json()) == state


def test_unreadable_state_starts_afresh() -> None:
    assert LearnerState.from_json("not json") == LearnerState()
    assert LearnerState.from_json(None) == LearnerState()


# the answer's fields -> the rate they allow (requests/s)
HEADER_TABLE = [
    pytest.param({"ratelimit-policy": "500;w=1;burst=50"}, 500.0, id="ietf policy"),
    pytest.param({"ratelimit-policy": "6000;w=60"}, 100.0, id="policy per minute"),
    pytest.param({"ratelimit-limit": "200"}, 200.0, id="ietf limit per second"),
    pytest.param({"x-ratelimit-limit": "50"}, 50.0, id="x limit per second"),
    pytest.param({"x-ratelimit-limit": "nonsense"}, None, id="unreadable"),
    pytest.param({"ratelimit-policy": "0;w=1"}, None, id="zero is no rate"),
    pytest.param({}, None, id="none"),
]


@pytest.mark.parametrize(("fields", "expected"), HEADER_TABLE)
def test_allowed_rate_from_ratelimit_fields(fields: dict[str, str], expected: float | None) -> None:
    assert allowed_rate(fields.get) == expected
