"""A payment the API refuses for good is dead-lettered with the API's reason, and replayable."""

from __future__ import annotations

import json

import pytest

from .harness import FaultStack, assert_accounted, payment_ids

pytestmark = pytest.mark.integration

REFUSAL = "amount does not match the order total"


def redis_state(stack: FaultStack) -> dict[str, object]:
    k = stack.keys
    c = stack.connection
    return {
        "dead": c.hgetall(k.dead),
        "dead_index": c.zrange(k.dead_index, 0, -1, withscores=True),
        "queue": c.lrange(k.queue, 0, -1),
        "scheduled": c.zrange(k.scheduled, 0, -1),
        "stats": c.hgetall(k.stats),
    }


def test_400_dead_letters_exactly_the_refused_ids_and_replay_delivers_them(
    stack: FaultStack,
) -> None:
    tids = stack.enqueue(payment_ids("order", 400))
    refused = set(tids[::40])  # 10 of them
    stack.sandbox.set_faults(fail_ids={tid: {"status": 400, "message": REFUSAL} for tid in refused})
    assert stack.start_worker(burst=True).wait(60, explain=stack.explain) == 0

    first = stack.count("400s dead-lettered")
    assert_accounted(first)
    letters = stack.dead_letters()
    assert {d.transaction_id for d in letters} == refused
    for letter in letters:
        assert (letter.reason, letter.status, letter.error) == ("rejected", 400, REFUSAL)
        assert letter.attempts == 1, "a permanent refusal must not be retried"
    assert first.delivered == len(tids) - len(refused)

    # --dry-run shows what it would replay and changes nothing, and sends nothing.
    before, requests_before = redis_state(stack), stack.sandbox.stats()["requests"]
    dry = stack.run_cli("dlq", "replay", "--all", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    report = json.loads(dry.stdout)
    assert report["dry_run"] is True
    assert report["would_replay"] == len(refused)
    assert {item["transaction_id"] for item in report["items"]} == refused
    assert redis_state(stack) == before
    assert stack.sandbox.stats()["requests"] == requests_before

    # The cause is fixed; replay puts them back and a worker delivers them.
    stack.sandbox.set_faults(fail_ids={})
    replay = stack.run_cli("dlq", "replay", "--all", "--json")
    assert replay.returncode == 0, replay.stderr
    assert json.loads(replay.stdout)["requeued"] == len(refused)
    assert stack.start_worker(burst=True).wait(60, explain=stack.explain) == 0

    final = stack.count("after replay")
    assert_accounted(final)
    assert final.delivered == len(tids)
    assert final.dead == 0
    assert stack.dead_letters() == []
    acc = final.accounting
    assert acc is not None
    assert acc.replayed == len(refused)
