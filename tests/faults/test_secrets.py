"""The API key never shows up in a log line, a dead letter, an error message or Redis."""

from __future__ import annotations

import json
import time

import pytest
import redis

from ingest.logs import REDACTED

from .conftest import CANARY_KEY, MakeStack
from .harness import FaultStack, assert_accounted, payment_ids

pytestmark = pytest.mark.integration

# The whole key, its distinctive tail, and the header that would carry it.
NEEDLES = (CANARY_KEY, "SECRET123", "canary_sandbox", f"Bearer {CANARY_KEY}")


def dump_redis(connection: redis.Redis) -> str:
    """Every key and value in Redis as text (tests only: KEYS on a small database)."""
    lines = []
    for raw_key in connection.keys("*"):
        key = raw_key.decode()
        kind = connection.type(raw_key).decode()
        value: object
        if kind == "string":
            value = connection.get(raw_key)
        elif kind == "hash":
            value = connection.hgetall(raw_key)
        elif kind == "list":
            value = connection.lrange(raw_key, 0, -1)
        elif kind == "set":
            value = connection.smembers(raw_key)
        elif kind == "zset":
            value = connection.zrange(raw_key, 0, -1, withscores=True)
        else:
            value = f"<{kind}>"
        lines.append(f"{key} {value!r}")
    return "\n".join(lines)


def leaks(label: str, text: str) -> list[str]:
    return [f"{label}: {needle!r}" for needle in NEEDLES if needle in text]


def test_api_key_appears_in_no_log_dead_letter_error_or_redis_key(
    make_stack: MakeStack, redis_url: str
) -> None:
    stack: FaultStack = make_stack(redis_url, api_key=CANARY_KEY)
    tids = stack.enqueue(payment_ids("secret", 300))
    # An API that echoes the key back in an error message: it must be scrubbed before it
    # reaches a dead letter or a log line.
    echoed = f"key {CANARY_KEY} may not record this payment (Bearer {CANARY_KEY})"
    stack.sandbox.set_faults(
        fail_ids={tid: {"status": 400, "message": echoed} for tid in tids[:5]},
        rate_500=0.10,
        rate_drop=0.05,
        rate_timeout=0.05,
        slow_ms=1500,
    )
    stack.sandbox.set_keys(revoke=[CANARY_KEY])  # a 401 phase: pause, probe, log errors
    worker = stack.start_worker(log_level="DEBUG", max_attempts="3", request_timeout="0.5")
    stack.wait_for("the worker to pause on 401", lambda a: bool(a.paused), timeout=20)
    time.sleep(1.0)
    mid_run = dump_redis(stack.connection)  # the live worker's RQ keys included
    stack.sandbox.set_keys(restore=[CANARY_KEY])
    stack.wait_drained(timeout=60)

    count = stack.count("canary key")
    assert_accounted(count)
    letters = stack.dead_letters()
    assert {d.transaction_id for d in letters} >= set(tids[:5])
    first = letters[0].job_id
    cli_outputs = {
        args: stack.run_cli(*args)
        for args in (
            ("dlq", "list", "--json"),
            ("dlq", "show", first, "--json"),
            ("dlq", "export"),
            ("stats", "--json"),
        )
    }
    end_of_run = dump_redis(stack.connection)
    assert worker.stop() == 0
    log = worker.output()

    # The places a leak would be were really exercised.
    assert "delivery paused" in log
    rejected = [d for d in letters if d.reason == "rejected"]
    assert rejected
    assert all(REDACTED in d.error for d in rejected), "the echoed key was not scrubbed"
    assert all(result.returncode == 0 for result in cli_outputs.values()), cli_outputs

    found = leaks("worker log", log)
    found += leaks("redis during the run", mid_run)
    found += leaks("redis after the run", end_of_run)
    found += leaks("dead letters", json.dumps([d.as_dict() for d in letters]))
    for args, result in cli_outputs.items():
        found += leaks(f"ingest {' '.join(args)}", result.stdout + result.stderr)
    assert not found, f"the API key leaked: {found}"
