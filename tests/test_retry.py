"""ingest.retry: backoff with full jitter, a cap, Retry-After as a floor; nothing sleeps.

Unit lane: the random source and the clock are injected, so every bound is exact.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.retry import RetryPolicy, parse_retry_after

NOW = 1_800_000_000.0
POLICY = RetryPolicy(max_attempts=5, base=1.0, cap=60.0)
_unit = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)


def http_date(seconds_from_now: float) -> str:
    return format_datetime(
        datetime.fromtimestamp(NOW, UTC) + timedelta(seconds=seconds_from_now), usegmt=True
    )


# -- full jitter ---------------------------------------------------------------------------------


@pytest.mark.parametrize("attempt", [1, 2, 3, 6, 50])
def test_delay_is_zero_at_the_bottom_of_the_jitter_window(attempt: int) -> None:
    assert POLICY.delay(attempt, lambda: 0.0) == 0.0


@pytest.mark.parametrize(("attempt", "ceiling"), [(1, 1.0), (2, 2.0), (3, 4.0), (6, 32.0)])
def test_delay_window_doubles_with_each_attempt(attempt: int, ceiling: float) -> None:
    assert POLICY.delay(attempt, lambda: 0.5) == ceiling / 2


@settings(max_examples=200, deadline=None)
@given(attempt=st.integers(min_value=1, max_value=100), draw=_unit)
def test_delay_stays_within_the_full_jitter_window(attempt: int, draw: float) -> None:
    ceiling = min(POLICY.cap, POLICY.base * 2 ** (attempt - 1))
    assert 0.0 <= POLICY.delay(attempt, lambda: draw) < ceiling


def test_delay_is_capped() -> None:
    assert POLICY.delay(7, lambda: 0.5) == 30.0  # 2**6 = 64 > cap 60
    assert POLICY.delay(100, lambda: 0.5) == 30.0


def test_delay_draws_from_the_injected_random_source() -> None:
    draws = iter([0.1, 0.9])
    assert POLICY.delay(4, lambda: next(draws)) == pytest.approx(0.8)
    assert POLICY.delay(4, lambda: next(draws)) == pytest.approx(7.2)


# -- Retry-After ---------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(
    attempt=st.integers(min_value=1, max_value=100),
    retry_after=st.floats(min_value=0, max_value=3600),
    draw=_unit,
)
def test_retry_after_is_a_floor_with_at_most_ten_percent_added(
    attempt: int, retry_after: float, draw: float
) -> None:
    delay = POLICY.delay(attempt, lambda: draw, retry_after)
    assert retry_after <= delay <= retry_after * 1.1


def test_retry_after_longer_than_the_cap_is_still_honoured() -> None:
    assert POLICY.delay(1, lambda: 0.0, 120.0) == 120.0


def test_retry_after_in_seconds_is_parsed() -> None:
    assert parse_retry_after("120", now=NOW) == 120.0


def test_retry_after_with_surrounding_spaces_is_parsed() -> None:
    assert parse_retry_after(" 5 ", now=NOW) == 5.0


def test_retry_after_as_http_date_is_the_seconds_until_then() -> None:
    assert parse_retry_after(http_date(45), now=NOW) == pytest.approx(45.0)


def test_retry_after_as_http_date_in_the_past_is_zero() -> None:
    assert parse_retry_after(http_date(-300), now=NOW) == 0.0


@pytest.mark.parametrize("header", [None, "", "   ", "soon", "-5", "1.5"])
def test_missing_or_unreadable_retry_after_is_none(header: str | None) -> None:
    assert parse_retry_after(header, now=NOW) is None


# str.isdigit() accepts these, and float() then raises or reads them as a number.
@pytest.mark.parametrize("header", ["\u00b2", "\u0661\u0662", "\uff15", "5\u00b2"])
def test_retry_after_of_non_ascii_digits_is_ignored(header: str) -> None:
    assert parse_retry_after(header, now=NOW) is None


def test_delay_after_an_http_date_retry_after_waits_at_least_until_then() -> None:
    retry_after = parse_retry_after(http_date(30), now=NOW)
    assert 30.0 <= POLICY.delay(2, lambda: 0.99, retry_after) <= 33.0


# -- attempts ------------------------------------------------------------------------------------


@pytest.mark.parametrize("failures", [1, 2, 3, 4])
def test_failed_event_below_max_attempts_is_retried(failures: int) -> None:
    assert POLICY.should_retry(failures)


@pytest.mark.parametrize("failures", [5, 6])
def test_event_that_failed_max_attempts_times_is_not_retried(failures: int) -> None:
    assert not POLICY.should_retry(failures)


def test_single_attempt_policy_never_retries() -> None:
    assert not RetryPolicy(max_attempts=1, base=1.0, cap=1.0).should_retry(1)
