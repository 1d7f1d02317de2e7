"""The first call of a fresh process returns: every public entry point, as the README shows
it, configured by environment alone, with Redis up, refusing, silent, and restarting.

Each call runs under a 2 s watchdog (``fresh.py``): a hang fails with every thread's stack.
With Redis unreachable each call must return within ``INGEST_PRODUCER_TIMEOUT`` plus
``OUTAGE_BOUND`` (stated here: half a second, for interpreter noise on a loaded 2-core
machine), its event kept in the spool.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from ingest.embedded import RedisServer
from ingest.spool import decode_line

from .conftest import (
    assert_each_queued_once,
    client_for,
    close_client,
    ingest_environment,
    queued_transaction_ids,
    wait_until,
)
from .fresh import ENTRY_POINTS, WATCHDOG_SECONDS, FreshRun, run_fresh, spawn_fresh

pytestmark = pytest.mark.integration

PRODUCER_TIMEOUT = 0.1
OUTAGE_BOUND = 0.5


class SilentRedis:
    """Accepts connections and reads everything sent, and never answers a byte."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.url = f"redis://127.0.0.1:{self._listener.getsockname()[1]}/0"
        self._stopping = threading.Event()
        self._accepted: list[socket.socket] = []
        self.bytes_read = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                conn = None
            if conn is not None:
                conn.setblocking(False)
                self._accepted.append(conn)
            for accepted in self._accepted:
                with contextlib.suppress(BlockingIOError, OSError):
                    self.bytes_read += len(accepted.recv(65536))

    def close(self) -> None:
        self._stopping.set()
        self._thread.join(5)
        for conn in self._accepted:
            conn.close()
        self._listener.close()


@pytest.fixture
def silent_redis() -> Iterator[SilentRedis]:
    server = SilentRedis()
    try:
        yield server
    finally:
        server.close()


def program(entry: str, transaction_id: str) -> str:
    return ENTRY_POINTS[entry].replace("TX", transaction_id)


def assert_returned(run: FreshRun) -> None:
    assert "Timeout (" not in run.stderr, f"a call hung for {WATCHDOG_SECONDS} s\n{run.explain()}"
    assert run.returncode == 0, run.explain()


def assert_spooled_in_time(run: FreshRun, spool_dir: Path, transaction_id: str) -> None:
    assert_returned(run)
    assert [r["status"] for r in run.receipts()] == ["spooled"], run.explain()
    (elapsed,) = run.elapsed()
    assert elapsed < PRODUCER_TIMEOUT + OUTAGE_BOUND, f"took {elapsed:.3f} s\n{run.explain()}"
    files = sorted(spool_dir.glob("spool-*"))
    lines = [line for path in files for line in path.read_bytes().splitlines()]
    assert [decode_line(line).transaction_id for line in lines] == [transaction_id]


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_first_call_of_a_fresh_process_returns_and_queues_the_event(
    entry: str, redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    env = ingest_environment(redis_url, tmp_path / "spool")
    run = run_fresh(program(entry, f"first-{entry}"), env, tmp_path)

    assert_returned(run)
    assert [r["status"] for r in run.receipts()] == ["queued"], run.explain()
    assert_each_queued_once(redis_client, {f"first-{entry}"})


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_first_call_spools_in_time_when_redis_refuses_connections(
    entry: str, closed_redis_url: str, tmp_path: Path
) -> None:
    env = ingest_environment(
        closed_redis_url, tmp_path / "spool", producer_timeout=str(PRODUCER_TIMEOUT)
    )
    run = run_fresh(program(entry, f"refused-{entry}"), env, tmp_path)

    assert_spooled_in_time(run, tmp_path / "spool", f"refused-{entry}")


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_first_call_spools_in_time_when_redis_accepts_and_never_answers(
    entry: str, silent_redis: SilentRedis, tmp_path: Path
) -> None:
    env = ingest_environment(
        silent_redis.url, tmp_path / "spool", producer_timeout=str(PRODUCER_TIMEOUT)
    )
    run = run_fresh(program(entry, f"silent-{entry}"), env, tmp_path)

    assert_spooled_in_time(run, tmp_path / "spool", f"silent-{entry}")
    assert silent_redis.bytes_read > 0  # the command was sent; only the answer never came


# A process that enqueues one transaction id per line of stdin, as a long-lived app does.
_SYNC_LOOP = """
import sys
from ingest import {function}
for line in sys.stdin:
    with watchdog():
        result = {function}({arguments})
    report(receipts=[receipt(r) for r in (result if isinstance(result, list) else [result])])
"""
_ASYNC_LOOP = """
import asyncio, sys
from ingest import enqueue_payment_async

async def serve():
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        with watchdog():
            r = await enqueue_payment_async(
                amount=29.99, currency="usd", transaction_id=line.strip())
        report(receipts=[receipt(r)])

asyncio.run(serve())
"""
_ONE = 'amount=29.99, currency="usd", transaction_id=line.strip()'
LOOPS = {
    "enqueue_payment": _SYNC_LOOP.format(function="enqueue_payment", arguments=_ONE),
    "enqueue_payment_async": _ASYNC_LOOP,
    "enqueue_payments": _SYNC_LOOP.format(
        function="enqueue_payments",
        arguments='[{"amount": 29.99, "currency": "usd", "transaction_id": line.strip()}]',
    ),
    "configure": "import ingest\ningest.configure()\n"
    + _SYNC_LOOP.format(function="enqueue_payment", arguments=_ONE),
}


@pytest.mark.parametrize("entry", sorted(LOOPS))
def test_calls_across_a_redis_restart_each_return_and_every_event_is_queued_once(
    entry: str, restartable_redis: RedisServer, tmp_path: Path
) -> None:
    env = ingest_environment(
        restartable_redis.url,
        tmp_path / "spool",
        producer_timeout=str(PRODUCER_TIMEOUT),
        breaker_cooldown="0.2",
    )
    child = spawn_fresh(LOOPS[entry], env, tmp_path)
    assert child.stdin is not None
    assert child.stdout is not None

    def call(transaction_id: str) -> tuple[float, str]:
        child.stdin.write(transaction_id + "\n")
        child.stdin.flush()
        timing, result = (json.loads(child.stdout.readline() or "{}") for _ in range(2))
        assert result, f"the child died: {child.communicate(timeout=10)}"
        return timing["elapsed"], result["receipts"][0]["status"]

    try:
        assert call("before")[1] == "queued"
        restartable_redis.stop()
        elapsed, status = call("during")
        assert status == "spooled"
        assert elapsed < PRODUCER_TIMEOUT + OUTAGE_BOUND
        restartable_redis.restart()
        elapsed, status = call("after")
        assert status in {"queued", "spooled"}  # spooled while the breaker cools down
        assert elapsed < PRODUCER_TIMEOUT + OUTAGE_BOUND

        # No flush here: the producer's own watchdog thread moves the spool once Redis is back.
        client = client_for(restartable_redis.url)
        try:
            wanted = ["after", "before", "during"]
            wait_until(
                lambda: sorted(queued_transaction_ids(client)) == wanted,
                10,
                "the spooled event to reach the queue",
            )
            assert_each_queued_once(client, set(wanted))
        finally:
            close_client(client)
    finally:
        _, stderr = child.communicate(timeout=30)  # closes stdin: the loop ends
    assert child.returncode == 0, stderr
