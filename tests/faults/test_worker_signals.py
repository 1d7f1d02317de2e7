"""A worker killed (SIGKILL) or stopped (SIGTERM) mid-drain loses nothing."""

from __future__ import annotations

import random
import signal
import time

import pytest

from ingest.settings import Settings

from .harness import EXIT_SLACK, FAST_WORKER_SETTINGS, FaultStack, assert_accounted, payment_ids

pytestmark = pytest.mark.integration

LEASE = float(FAST_WORKER_SETTINGS["lease_seconds"])
# A dead worker's lease runs out at most LEASE after its last heartbeat, and a live worker
# reclaims expired leases every second; the rest is slack for process start-up on a loaded
# 2-core machine.
RECOVERY_BOUND = LEASE + 1.0 + 2.0


def test_sigkill_mid_drain_loses_nothing_and_recovers_within_bound(stack: FaultStack) -> None:
    total = 5000
    stack.sandbox.set_faults(latency_ms=20, latency_jitter_ms=30)
    stack.enqueue(payment_ids("kill", total))
    seed = random.randrange(1_000_000)
    kill_after = int(random.Random(seed).uniform(0.1, 0.6) * total)
    print(f"SIGKILL after {kill_after} deliveries (seed {seed})")
    victim = stack.start_worker(name="victim", concurrency="128")
    stack.wait_for(f"{kill_after} deliveries", lambda a: a.delivered >= kill_after, timeout=60)

    victim.send(signal.SIGKILL)
    killed_at = time.monotonic()
    victim.wait(5)
    orphans = {m.split(":", 1)[0] for m in stack.wip_members() if m.endswith(":victim")}
    assert orphans, "the victim held no lease when killed: not mid-drain"
    orphan_tids = {stack.enqueued[job_id] for job_id in orphans}
    stack.start_worker(name="rescuer", concurrency="128")

    back_after: float | None = None
    delivered_after: float | None = None
    deadline = killed_at + 4 * RECOVERY_BOUND
    while delivered_after is None:
        now = time.monotonic()
        if now > deadline:
            raise AssertionError(
                f"{len(orphans)} events of the killed worker not recovered after "
                f"{now - killed_at:.1f} s (back on the queue after {back_after} s)\n"
                f"{stack.explain()}"
            )
        if back_after is None and not any(m.endswith(":victim") for m in stack.wip_members()):
            back_after = now - killed_at
        if back_after is not None:
            places = stack.count("recovering").places
            if all(places[tid] == "delivered" for tid in orphan_tids):
                delivered_after = time.monotonic() - killed_at
        time.sleep(0.05)
    print(
        f"SIGKILL recovery: {len(orphans)} in-flight events of the killed worker back on "
        f"the queue after {back_after:.2f} s, all delivered after {delivered_after:.2f} s "
        f"(lease {LEASE:g} s, bound {RECOVERY_BOUND:g} s)"
    )

    stack.wait_drained(timeout=60)
    count = stack.count("SIGKILL mid-drain")
    assert_accounted(count)
    assert count.delivered == total
    assert count.dead == 0
    assert back_after is not None
    assert back_after <= RECOVERY_BOUND


def test_sigterm_mid_drain_exits_0_within_grace_and_loses_nothing(stack: FaultStack) -> None:
    grace = 5.0
    total = 2000
    stack.sandbox.set_faults(latency_ms=20, latency_jitter_ms=30)
    stack.enqueue(payment_ids("term", total))
    worker = stack.start_worker(name="stopping", shutdown_grace=str(grace))
    stack.wait_for("a quarter delivered", lambda a: a.delivered >= total // 4, timeout=60)

    worker.send(signal.SIGTERM)
    asked_at = time.monotonic()
    code = worker.wait(grace + 10, explain=stack.explain)
    took = time.monotonic() - asked_at
    print(f"SIGTERM: exit code {code} after {took:.2f} s (grace {grace:g} s)")
    assert code == 0, worker.output()[-3000:]
    assert took <= grace + EXIT_SLACK
    # What it had in flight was finished or handed back: no lease of it is left.
    assert not [m for m in stack.wip_members() if m.endswith(":stopping")]
    stopped = stack.count("after SIGTERM")
    assert_accounted(stopped, drained=False)
    assert 0 < stopped.delivered < total
    acc = stopped.accounting
    assert acc is not None
    assert acc.in_flight == 0
    assert acc.queued + acc.scheduled == stopped.still_queued

    assert stack.start_worker(burst=True).wait(60, explain=stack.explain) == 0
    final = stack.count("SIGTERM then drained")
    assert_accounted(final)
    assert final.delivered == total


def test_sigterm_with_requests_slower_than_grace_returns_them_to_the_queue(
    stack: FaultStack,
) -> None:
    grace = 1.0
    total = 200
    stack.sandbox.set_faults(latency_ms=4000)  # nothing can finish within the grace period
    stack.enqueue(payment_ids("slow", total))
    worker = stack.start_worker(
        name="impatient", concurrency="32", shutdown_grace=str(grace), request_timeout="10"
    )
    stack.wait_for("32 requests in flight", lambda a: a.in_flight >= 32, timeout=20)

    worker.send(signal.SIGTERM)
    asked_at = time.monotonic()
    code = worker.wait(grace + 10, explain=stack.explain)
    took = time.monotonic() - asked_at
    print(f"SIGTERM (slow API): exit code {code} after {took:.2f} s (grace {grace:g} s)")
    assert code == 0, worker.output()[-3000:]
    assert took <= grace + EXIT_SLACK
    returned = stack.count("slow requests returned")
    assert_accounted(returned, drained=False)
    acc = returned.accounting
    assert acc is not None
    assert acc.in_flight == 0
    assert acc.queued == total, "every event, in flight or not, must be back on the queue"

    stack.sandbox.set_faults(latency_ms=0)
    assert stack.start_worker(burst=True).wait(60, explain=stack.explain) == 0
    final = stack.count("slow SIGTERM then drained")
    assert_accounted(final)
    assert final.delivered == total


# The default lease, as a worker started without INGEST_LEASE_SECONDS gets it.
DEFAULT_LEASE = str(Settings.model_fields["lease_seconds"].default)
DEFAULT_RECOVERY_TARGET = 10.0  # seconds (issue 17)


def test_sigkill_at_default_lease_recovers_within_10_s_and_resends_no_live_workers_events(
    stack: FaultStack,
) -> None:
    total = 4000
    stack.sandbox.set_faults(latency_ms=50)
    stack.enqueue(payment_ids("default-lease", total))
    stack.start_worker(name="alive", concurrency="32", lease_seconds=DEFAULT_LEASE)
    victim = stack.start_worker(name="victim", concurrency="32", lease_seconds=DEFAULT_LEASE)
    stack.wait_for("500 deliveries", lambda a: a.delivered >= 500, timeout=60)

    victim.send(signal.SIGKILL)
    killed_at = time.monotonic()
    victim.wait(5)
    orphans = {m for m in stack.wip_members() if m.endswith(":victim")}
    assert orphans, "the victim held no lease when killed: not mid-drain"
    back_after: float | None = None
    while back_after is None:
        if not orphans & set(stack.wip_members()):
            back_after = time.monotonic() - killed_at
        elif time.monotonic() - killed_at > 4 * DEFAULT_RECOVERY_TARGET:
            raise AssertionError(f"orphans still leased after 40 s\n{stack.explain()}")
        time.sleep(0.05)
    print(f"SIGKILL at the default {DEFAULT_LEASE} s lease: back after {back_after:.2f} s")

    stack.wait_drained(timeout=60)
    count = stack.count("SIGKILL at the default lease")
    assert_accounted(count)
    assert count.delivered == total
    # Only the killed worker's events may have been sent twice: the live worker kept its own.
    assert count.duplicates <= len(orphans)
    assert back_after <= DEFAULT_RECOVERY_TARGET, (
        f"events of a worker killed at the default lease back after {back_after:.1f} s"
    )
