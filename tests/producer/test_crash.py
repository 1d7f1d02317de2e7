"""A producer process killed with SIGKILL while spooling loses nothing: its spool file
outlives it, and the next process (``ingest spool flush``, or the next producer) moves it.

The child prints each receipt only after ``enqueue_payment`` returned, so every printed
transaction id is one the caller was told is safe.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from ingest.producer import enqueue_payment
from ingest.spool import QUARANTINE

from .conftest import (
    PROJECT_ROOT,
    MakeProducer,
    fields,
    ingest_environment,
    queued_transaction_ids,
    run_ingest,
    wait_until,
)

pytestmark = pytest.mark.integration

SPOOLING_CHILD = """
from ingest.producer import Producer, enqueue_payment

producer = Producer()  # INGEST_REDIS_URL is a closed port: every event is spooled
i = 0
while True:
    receipt = enqueue_payment(amount="9.99", currency="USD", transaction_id=f"crash-{i}",
                              producer=producer)
    print(receipt.transaction_id, receipt.status, flush=True)
    i += 1
"""

WAITING_CHILD = """
import sys
from ingest.producer import Producer, enqueue_payment

producer = Producer()
for i in range(int(sys.argv[1])):
    enqueue_payment(amount="9.99", currency="USD", transaction_id=f"alive-{i}",
                    producer=producer)
print("spooled", flush=True)
sys.stdin.readline()  # alive, holding its spool file, until told to exit
"""


def spool_until_killed(closed_redis_url: str, spool_dir: Path, at_least: int) -> list[str]:
    """Run SPOOLING_CHILD, SIGKILL it once it reported ``at_least`` receipts, and return
    every transaction id it reported as spooled."""
    errors = spool_dir.parent / "child.stderr"
    with (
        errors.open("w") as stderr,
        subprocess.Popen(
            [sys.executable, "-c", SPOOLING_CHILD],
            env=ingest_environment(closed_redis_url, spool_dir),
            cwd=PROJECT_ROOT,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        ) as child,
    ):
        assert child.stdout is not None
        reported = []
        try:
            while len(reported) < at_least:
                line = child.stdout.readline()
                if not line:
                    pytest.fail(f"the child stopped early: {errors.read_text()}")
                reported.append(line)
            child.send_signal(signal.SIGKILL)
            child.wait(30)
            reported += child.stdout.readlines()  # what it printed before it died
        finally:
            if child.poll() is None:
                child.kill()
    assert child.returncode == -signal.SIGKILL
    spooled = []
    for line in reported:
        transaction_id, status = line.split()
        assert status == "spooled"
        spooled.append(transaction_id)
    return spooled


def quarantined(spool_dir: Path) -> list[dict[str, object]]:
    path = spool_dir / QUARANTINE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_nothing_lost(queued: list[str], spooled: list[str], spool_dir: Path) -> None:
    """Every reported event is queued once, in order; beyond them only the one the child
    was writing when it died may be queued, or quarantined if its write was torn."""
    assert queued[: len(spooled)] == spooled
    in_progress = f"crash-{len(spooled)}"
    assert queued[len(spooled) :] in ([], [in_progress])
    assert len(quarantined(spool_dir)) <= 1
    assert not list(spool_dir.glob("spool-*")), "a spool file was left behind"


def test_spool_of_a_sigkilled_producer_is_moved_by_ingest_spool_flush(
    closed_redis_url: str, redis_url: str, redis_client: redis.Redis, spool_dir: Path
) -> None:
    spooled = spool_until_killed(closed_redis_url, spool_dir, at_least=300)

    flush = run_ingest(ingest_environment(redis_url, spool_dir), "spool", "flush", "--json")

    assert flush.returncode in (0, 1), flush
    assert (flush.returncode == 1) == bool(quarantined(spool_dir))
    assert_nothing_lost(queued_transaction_ids(redis_client), spooled, spool_dir)


def test_spool_of_a_sigkilled_producer_is_picked_up_by_the_next_producer(
    closed_redis_url: str,
    redis_url: str,
    redis_client: redis.Redis,
    spool_dir: Path,
    make_producer: MakeProducer,
) -> None:
    spooled = spool_until_killed(closed_redis_url, spool_dir, at_least=300)
    successor = make_producer(redis_url, producer_timeout=1.0)

    # Its first successful enqueue starts moving what it found on disk, in the background.
    assert enqueue_payment(**fields("successor"), producer=successor).status == "queued"

    wait_until(lambda: not list(spool_dir.glob("spool-*")), 20, "the old spool was not moved")
    queued = queued_transaction_ids(redis_client)
    assert queued[0] == "successor"
    assert_nothing_lost(queued[1:], spooled, spool_dir)


def test_flush_leaves_the_spool_file_of_a_live_producer_alone(
    closed_redis_url: str, redis_url: str, redis_client: redis.Redis, spool_dir: Path
) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", WAITING_CHILD, "50"],
        env=ingest_environment(closed_redis_url, spool_dir),
        cwd=PROJECT_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdin is not None
        assert child.stdout is not None
        env = ingest_environment(redis_url, spool_dir)
        try:
            assert child.stdout.readline().strip() == "spooled"

            while_alive = run_ingest(env, "spool", "flush", "--json")

            assert json.loads(while_alive.stdout)["events"] == 0
            assert queued_transaction_ids(redis_client) == []
            child.stdin.close()  # the child exits normally, releasing its file
            assert child.wait(30) == 0
        finally:
            if child.poll() is None:
                child.kill()
    after_exit = run_ingest(env, "spool", "flush", "--json")
    assert json.loads(after_exit.stdout)["queued"] == 50
    assert queued_transaction_ids(redis_client) == [f"alive-{i}" for i in range(50)]
