"""Redis restarting or gone under the workers (append-only file kept) costs time, not events."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from ingest.embedded import RedisServer

from .conftest import MakeStack
from .harness import EXIT_SLACK, assert_accounted, payment_ids

pytestmark = pytest.mark.integration


def test_redis_restart_mid_drain_workers_reconnect_and_finish(
    make_stack: MakeStack, restartable_redis: RedisServer
) -> None:
    stack = make_stack(restartable_redis.url)
    total = 3000
    stack.sandbox.set_faults(latency_ms=10, latency_jitter_ms=20)
    stack.enqueue(payment_ids("restart", total))
    workers = [stack.start_worker(name=f"survivor-{n}") for n in range(2)]
    stack.wait_for("a quarter delivered", lambda a: a.delivered >= total // 4, timeout=60)

    restartable_redis.kill()  # a crash: nothing beyond what redis already wrote
    down_at = time.monotonic()
    time.sleep(2.0)
    restartable_redis.restart()
    print(f"redis down for {time.monotonic() - down_at:.2f} s")

    took = stack.wait_drained(timeout=60)
    print(f"drained {took:.2f} s after the restart")
    for worker in workers:
        assert worker.running, f"{worker.name} died instead of reconnecting:\n{worker.output()}"
        assert "redis unavailable" in worker.output(), "the outage was never noticed"
    count = stack.count("redis restart")
    assert_accounted(count)
    assert count.delivered == total
    assert count.dead == 0
    assert stack.stop_workers() == [0, 0]


def test_sigterm_while_redis_is_down_exits_within_grace_and_loses_nothing(
    make_stack: MakeStack, restartable_redis: RedisServer
) -> None:
    grace = 2.0
    total = 2000
    stack = make_stack(restartable_redis.url)
    stack.sandbox.set_faults(latency_ms=20, latency_jitter_ms=30)
    stack.enqueue(payment_ids("cutoff", total))
    worker = stack.start_worker(name="cut-off", shutdown_grace=str(grace))
    stack.wait_for("a quarter delivered", lambda a: a.delivered >= total // 4, timeout=60)

    restartable_redis.kill()
    time.sleep(2.0)  # past the worker's 1 s housekeeping: it is retrying Redis by now
    worker.send(signal.SIGTERM)
    asked_at = time.monotonic()
    try:
        code: int | None = worker.process.wait(timeout=grace + EXIT_SLACK)
    except subprocess.TimeoutExpired:
        code = None
        worker.process.kill()  # what a supervisor does next; its leases return by themselves
        worker.process.wait()
    took = time.monotonic() - asked_at
    print(f"SIGTERM with Redis down: exit code {code} after {took:.2f} s (grace {grace:g} s)")

    # Whatever it could not hand back returns when its leases expire: a new worker, once
    # Redis is back, delivers everything.
    restartable_redis.restart()
    assert stack.start_worker(burst=True).wait(60, explain=stack.explain) == 0
    count = stack.count("SIGTERM while redis down")
    assert_accounted(count)
    assert count.delivered == total

    assert code is not None, (
        f"the worker ignored SIGTERM while Redis was down: still running {took:.1f} s later "
        f"(grace {grace:g} s); killed. Its log:\n{worker.output()[-2000:]}"
    )
    assert code == 0, f"exit code {code}; its log:\n{worker.output()[-3000:]}"
