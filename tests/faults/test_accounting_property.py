"""For random fault schedules, every event is delivered, dead-lettered or still queued."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from .conftest import MakeStack
from .harness import assert_accounted, payment_ids

pytestmark = pytest.mark.integration

EVENTS = 150
SOAK_EVENTS = 1000


def shares(top: int) -> st.SearchStrategy[float]:
    """A share of POSTs, in whole percent."""
    return st.integers(0, top).map(lambda percent: percent / 100)


fault_schedules = st.fixed_dictionaries(
    {
        "rate_429": shares(5),
        "retry_after": st.sampled_from([None, 0, 1]),
        "rate_500": shares(20),
        "rate_503": shares(15),
        "rate_drop": shares(10),
        "rate_timeout": shares(8),
        "seed": st.integers(0, 2**16),
    }
)
_examples = itertools.count()
# One Redis and one sandbox for all examples; each example has its own queue and resets the
# sandbox, so nothing carries over from one example to the next.
_shared_fixtures = [HealthCheck.function_scoped_fixture]
# No shrinking: each example is a drain of several seconds, and a failing one is printed
# (schedule, then its count) before it fails, which is what reproducing it needs.
_bounded = [Phase.explicit, Phase.generate]


def drain_under_schedule(
    make_stack: MakeStack,
    redis_url: str,
    *,
    events: int,
    faults: dict[str, Any],
    refused: set[int],
    refunds: set[int],
    max_attempts: int,
) -> None:
    example = next(_examples)
    stack = make_stack(redis_url, queue=f"prop{example}")
    stack.sandbox.reset()
    tids = stack.enqueue(payment_ids(f"prop{example}", events))
    # Refunds of queued payments wait (deferred) until their payment leaves the queue.
    stack.enqueue([tids[i % events] for i in sorted(refunds)], refunded=True)
    refused_tids = {tids[i % events] for i in refused}
    stack.sandbox.set_faults(
        **faults,
        slow_ms=1200,
        fail_ids={tid: {"status": 400, "message": "refused by schedule"} for tid in refused_tids},
    )
    print(
        f"example {example}: max_attempts={max_attempts} refused={len(refused_tids)} "
        f"refunds={len(refunds)} {faults}"
    )
    worker = stack.start_worker(burst=True, max_attempts=str(max_attempts), request_timeout="0.5")
    assert worker.wait(60 + events / 10, explain=stack.explain) == 0

    count = stack.count(f"property example {example}")
    assert_accounted(count)
    assert count.enqueued == count.delivered + count.dead + count.still_queued
    letters = stack.dead_letters()
    # A refused payment is never delivered. It is dead-lettered as rejected, or as
    # exhausted when random faults used up its attempts before the 400 was seen.
    assert refused_tids <= {d.transaction_id for d in letters}
    assert {d.transaction_id for d in letters if d.reason == "rejected"} <= refused_tids
    for letter in letters:
        if letter.reason == "exhausted":
            assert letter.attempts == max_attempts
    assert count.max_attempts_seen <= max_attempts
    stack.close()


@settings(
    max_examples=5,
    deadline=None,
    database=None,
    suppress_health_check=_shared_fixtures,
    phases=_bounded,
)
@given(
    faults=fault_schedules,
    refused=st.sets(st.integers(0, EVENTS - 1), min_size=1, max_size=4),
    refunds=st.sets(st.integers(0, EVENTS - 1), max_size=10),
    max_attempts=st.integers(2, 6),
)
def test_accounting_identity_holds_after_any_fault_schedule(
    make_stack: MakeStack,
    redis_url: str,
    faults: dict[str, Any],
    refused: set[int],
    refunds: set[int],
    max_attempts: int,
) -> None:
    drain_under_schedule(
        make_stack,
        redis_url,
        events=EVENTS,
        faults=faults,
        refused=refused,
        refunds=refunds,
        max_attempts=max_attempts,
    )


@pytest.mark.soak
@pytest.mark.timeout(3600)
@settings(
    max_examples=30,
    deadline=None,
    database=None,
    suppress_health_check=_shared_fixtures,
    phases=_bounded,
)
@given(
    faults=fault_schedules,
    refused=st.sets(st.integers(0, SOAK_EVENTS - 1), min_size=1, max_size=20),
    refunds=st.sets(st.integers(0, SOAK_EVENTS - 1), max_size=100),
    max_attempts=st.integers(1, 8),
)
def test_accounting_identity_holds_over_many_fault_schedules_soak(
    make_stack: MakeStack,
    redis_url: str,
    faults: dict[str, Any],
    refused: set[int],
    refunds: set[int],
    max_attempts: int,
) -> None:
    drain_under_schedule(
        make_stack,
        redis_url,
        events=SOAK_EVENTS,
        faults=faults,
        refused=refused,
        refunds=refunds,
        max_attempts=max_attempts,
    )
