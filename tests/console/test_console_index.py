"""The dead-letter index: the same selections as ``DeadLetterFilter``, kept current by
counters instead of re-reading, and pages read by rank."""

from __future__ import annotations

import time

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from ingest.console.config import ConsoleOptions
from ingest.console.index import DeadLetterIndex, Entry, matches
from ingest.console.operations import Target
from ingest.console.service import Console, RateTracker
from ingest.deadletter import DeadLetter, DeadLetterFilter, DeadLetterStore
from ingest.settings import Settings

from .conftest import QUEUE, Letter, seed

WORDS = st.sampled_from(["", "a", "B", "ord", "x1", "Ord_A1"])
REASONS = st.sampled_from(["rejected", "exhausted"])
STATUSES = st.sampled_from([None, 400, 422, 503])
SITES = st.sampled_from(["-", "s1", "s2"])


@st.composite
def entries(draw: st.DrawFn) -> Entry:
    return Entry(
        id=draw(st.sampled_from(["j1", "j2", "ord_a1"])),
        transaction_id=draw(st.sampled_from(["ord_a1", "ORD_b2", "x", ""])),
        website=draw(SITES),
        reason=draw(REASONS),
        status=draw(STATUSES),
        dead_at=draw(st.floats(0, 100)),
    )


@st.composite
def selections(draw: st.DrawFn) -> DeadLetterFilter:
    return DeadLetterFilter(
        reasons=frozenset(draw(st.sets(REASONS, max_size=2))),
        statuses=frozenset(draw(st.sets(st.sampled_from([400, 422, 503]), max_size=2))),
        websites=frozenset(draw(st.sets(SITES, max_size=2))),
        ids=frozenset(draw(st.sets(st.sampled_from(["j1", "ord_a1", "x"]), max_size=2))),
        transaction_contains=draw(WORDS) or None,
        since=draw(st.none() | st.floats(0, 100)),
        until=draw(st.none() | st.floats(0, 100)),
    )


@given(selections(), entries())
def test_the_index_selects_what_the_store_selects(selection: DeadLetterFilter, e: Entry) -> None:
    letter = DeadLetter(
        job_id=e.id,
        transaction_id=e.transaction_id,
        website=e.website,
        reason=e.reason,
        status=e.status,
        error="",
        attempts=1,
        first_attempt_at="",
        last_attempt_at="",
        dead_at="",
        history=[],
        body={},
    )
    in_window = (selection.since is None or e.dead_at >= selection.since) and (
        selection.until is None or e.dead_at <= selection.until
    )
    assert matches(selection, e) == (in_window and selection.matches(letter))


def test_rates_need_a_few_seconds_then_cover_the_last_minute() -> None:
    rates = RateTracker(window=60, minimum=5)
    assert rates.observe(0.0, [0]) == [None]
    assert rates.observe(4.0, [40]) == [None]
    assert rates.observe(10.0, [100]) == [10.0]
    assert rates.observe(100.0, [100]) == [0.0]


@pytest.mark.integration
def test_the_index_follows_arrivals_replays_and_purges(redis_client: redis.Redis) -> None:
    index = DeadLetterIndex(redis_client, QUEUE)
    store = DeadLetterStore(redis_client, QUEUE)
    rejected = DeadLetterFilter(reasons=frozenset({"rejected"}))
    first = seed(redis_client, [Letter(f"a{i}") for i in range(5)])
    assert [e.id for e in index.select(rejected)] == list(reversed(first))

    later = seed(redis_client, [Letter(f"b{i}", reason="exhausted", status=503) for i in range(3)])
    assert len(index.select(DeadLetterFilter())) == 8
    assert index.counts().by_reason == {"rejected": 5, "exhausted": 3}

    store.replay(first[:2])
    store.purge(later[:1])
    assert [e.id for e in index.select(rejected)] == list(reversed(first[2:]))
    assert index.counts().by_reason == {"rejected": 3, "exhausted": 2}

    # A replayed event that dies again is the same id with a new time of death.
    again = seed(redis_client, [Letter("a0", status=409)])
    assert again == first[:1]
    [entry] = [e for e in index.select(DeadLetterFilter(statuses=frozenset({409})))]
    assert entry.id == first[0]


@pytest.mark.integration
def test_a_worker_running_behind_is_not_missed(redis_client: redis.Redis) -> None:
    index = DeadLetterIndex(redis_client, QUEUE)
    seed(redis_client, [Letter("now")])
    assert len(index.select(DeadLetterFilter())) == 1
    seed(redis_client, [Letter("late", dead_at=time.time() - 3600)])
    assert {e.transaction_id for e in index.select(DeadLetterFilter())} == {"now", "late"}


@pytest.mark.integration
def test_pages_by_rank_match_the_store(redis_client: redis.Redis, settings: Settings) -> None:
    now = time.time()
    seed(redis_client, [Letter(f"t{i:03d}", dead_at=now - 1000 + i) for i in range(300)])
    console = Console(settings, redis_client, options=ConsoleOptions())
    store = DeadLetterStore(redis_client, QUEUE)
    for selection in (
        DeadLetterFilter(),
        DeadLetterFilter(since=now - 900),
        DeadLetterFilter(until=now - 800),
        DeadLetterFilter(since=now - 950, until=now - 750.5),
    ):
        for offset in (0, 40, 195):
            page = console.dead_letters(selection, offset=offset, limit=30, with_counts=False)
            expected = store.page(selection, offset=offset, limit=30)
            assert [d.id for d in page.items] == [d.job_id for d in expected]
            assert page.matched == sum(1 for _ in store.iter(selection))


@pytest.mark.integration
def test_the_consoles_own_replays_need_no_re_read(
    redis_client: redis.Redis, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = seed(redis_client, [Letter(f"o{i}") for i in range(20)])
    console = Console(settings, redis_client, options=ConsoleOptions(replay_rate=10_000))
    assert len(console.index.select(DeadLetterFilter(reasons=frozenset({"rejected"})))) == 20

    def no_resync() -> None:
        raise AssertionError("the index re-read the store after its own replay")

    monkeypatch.setattr(console.index, "_resync", no_resync)
    operation = console.operations.start(
        "replay", Target(ids=tuple(ids[:5])), description="five", actor="test"
    )
    assert console.operations.wait(operation.id, 10).state == "done"
    operation = console.operations.start(
        "purge", Target(ids=tuple(ids[5:8])), description="three", actor="test"
    )
    assert console.operations.wait(operation.id, 10).state == "done"
    [new] = seed(redis_client, [Letter("new")])
    remaining = console.index.select(DeadLetterFilter(reasons=frozenset({"rejected"})))
    assert {e.id for e in remaining} == {*ids[8:], new}


@pytest.mark.integration
def test_unreadable_records_are_listed_as_such(
    redis_client: redis.Redis, settings: Settings
) -> None:
    seed(redis_client, [Letter("fine")])
    redis_client.hset("ingest:payments:dead", "broken\x00id", "{not json")
    redis_client.zadd("ingest:payments:dead:index", {"broken\x00id": time.time()})
    console = Console(settings, redis_client, options=ConsoleOptions())
    page = console.dead_letters(DeadLetterFilter(reasons=frozenset({"unreadable"})))
    assert [item.reason for item in page.items] == ["unreadable"]
    assert console.counts().by_reason == {"rejected": 1, "unreadable": 1}
    everything = console.dead_letters(DeadLetterFilter())
    assert {item.reason for item in everything.items} == {"rejected", "unreadable"}
