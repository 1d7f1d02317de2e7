"""Fixtures for the producer's fault tests: dead, hung and restarting Redis, the spool,
child processes, and reading what reached the queue.

Integration lane: real ``redis-server`` processes (the session's, or a ``restartable_redis``
of the test's own), real sockets, real child processes. Never the machine's own Redis.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client import REGISTRY

from ingest import keys
from ingest.embedded import free_port
from ingest.jobs import job_args
from ingest.producer import AsyncProducer, Producer
from ingest.settings import Settings

PROJECT_ROOT = Path(__file__).resolve().parents[2]
QUEUE = keys.QueueKeys("payments")

# The configured producer timeout, and the bound every enqueue must return within: ten
# times the timeout, so a loaded 2-core machine does not fail a test that is about seconds
# versus milliseconds.
PRODUCER_TIMEOUT = 0.05
LATENCY_BOUND = 0.5


@pytest.fixture(autouse=True)
def _no_ingest_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings come from the test alone, never from an INGEST_* the shell happens to set."""
    for name in list(os.environ):
        if name.startswith("INGEST_") or name == "REDIS_URL":
            monkeypatch.delenv(name)


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
def closed_redis_url() -> str:
    """A loopback port nothing listens on: every connection is refused at once."""
    return f"redis://127.0.0.1:{free_port()}/0"


class HangingRedis:
    """A TCP listener that never accepts and never answers: the kernel completes the
    handshake (the backlog), so a client connects and then waits forever for a reply."""

    def __init__(self) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(128)
        self.url = f"redis://127.0.0.1:{self._socket.getsockname()[1]}/0"

    def connections(self) -> int:
        """How many connections clients opened so far (taken off the backlog and closed)."""
        self._socket.setblocking(False)
        count = 0
        while True:
            try:
                conn, _ = self._socket.accept()
            except BlockingIOError:
                return count
            conn.close()
            count += 1

    def close(self) -> None:
        self._socket.close()


@pytest.fixture
def hanging_redis() -> Iterator[HangingRedis]:
    server = HangingRedis()
    try:
        yield server
    finally:
        server.close()


class ReplyDroppingProxy:
    """Forwards a client's commands to a real Redis, and drops every reply from its first
    ``EVALSHA`` on (the connection handshake before it is answered normally).

    The enqueue runs; the client never learns it did: the case where a retry after a
    timeout would push an event twice.
    """

    def __init__(self, upstream_port: int) -> None:
        self._upstream = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.url = f"redis://127.0.0.1:{self._listener.getsockname()[1]}/0"
        self._sockets: list[socket.socket] = []
        self._stopping = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._upstream))
            self._sockets += [client, upstream]
            muted = threading.Event()
            for source, target in ((client, upstream), (upstream, client)):
                thread = threading.Thread(
                    target=self._pump, args=(source, target, muted), daemon=True
                )
                self._threads.append(thread)
                thread.start()

    def _pump(self, source: socket.socket, target: socket.socket, muted: threading.Event) -> None:
        replies = source.getpeername()[1] == self._upstream
        source.settimeout(0.1)
        while not self._stopping.is_set():
            try:
                data = source.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            if not replies and b"EVALSHA" in data.upper():
                muted.set()
            if replies and muted.is_set():
                continue
            try:
                target.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(5)
        self._listener.close()
        for sock in self._sockets:
            sock.close()


@pytest.fixture
def reply_dropping_proxy(redis_url: str) -> Iterator[ReplyDroppingProxy]:
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    proxy = ReplyDroppingProxy(port)
    try:
        yield proxy
    finally:
        proxy.close()


def producer_settings(redis_url: str, spool_dir: Path, **changes: Any) -> Settings:
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "spool_dir": spool_dir,
        "producer_timeout": PRODUCER_TIMEOUT,
    }
    values.update(changes)
    return Settings(**values)


def _join_threads(name: str, timeout: float) -> list[threading.Thread]:
    """Wait up to ``timeout`` s for each of this process's threads called ``name``; the
    ones still running."""
    running = []
    for thread in threading.enumerate():
        if thread.name == name:
            thread.join(timeout)
            if thread.is_alive():
                running.append(thread)
    return running


def _wait_for_background_flushes() -> None:
    # A flush thread still running at teardown would leak its socket into a later test.
    _join_threads("ingest-spool-flush", 10.0)


def _assert_no_watchdog_left() -> None:
    # A watchdog that outlives its producer flushes the spool into whatever server later
    # takes the same port: another test's Redis.
    assert not _join_threads("ingest-redis-watchdog", 2.0), "a closed producer still watches"


MakeProducer = Callable[..., Producer]


@pytest.fixture
def make_producer(spool_dir: Path) -> Iterator[MakeProducer]:
    """``make_producer(redis_url, **settings)``: a spooling Producer, closed after the test."""
    made: list[Producer] = []

    def make(redis_url: str, **changes: Any) -> Producer:
        producer = Producer(producer_settings(redis_url, spool_dir, **changes))
        made.append(producer)
        return producer

    yield make
    _wait_for_background_flushes()
    for producer in made:
        producer.close()
    _assert_no_watchdog_left()


MakeAsyncProducer = Callable[..., AsyncProducer]


@pytest.fixture
def make_async_producer(spool_dir: Path) -> Iterator[MakeAsyncProducer]:
    """``make_async_producer(redis_url, **settings)``; the test awaits ``aclose()`` itself
    (the connection belongs to the test's event loop)."""

    def make(redis_url: str, **changes: Any) -> AsyncProducer:
        return AsyncProducer(producer_settings(redis_url, spool_dir, **changes))

    yield make
    _wait_for_background_flushes()
    _assert_no_watchdog_left()


def fields(transaction_id: str, **changes: Any) -> dict[str, Any]:
    """A valid payment's keyword arguments."""
    values: dict[str, Any] = {"amount": "29.99", "currency": "USD"}
    values.update(changes)
    return {"transaction_id": transaction_id, **values}


def client_for(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=10)


def close_client(client: redis.Redis) -> None:
    client.close()
    client.connection_pool.disconnect()


def queued_transaction_ids(client: redis.Redis) -> list[str]:
    """The transaction id of every entry of the queue, in queue order (repeats kept)."""
    ids = [raw.decode() for raw in client.lrange(QUEUE.queue, 0, -1)]
    result = []
    for job_id in ids:
        data = client.hget(keys.job_key(job_id), "data")
        assert data is not None, f"queued id {job_id} has no job hash"
        result.append(json.loads(job_args(data).body)["transaction_id"])
    return result


def assert_each_queued_once(client: redis.Redis, expected: set[str]) -> list[str]:
    """Every expected transaction is in the queue exactly once, and nothing else is."""
    queued = queued_transaction_ids(client)
    repeats = {tx: n for tx, n in Counter(queued).items() if n > 1}
    assert not repeats, f"queued more than once: {sorted(repeats.items())[:10]}"
    missing = expected - set(queued)
    assert not missing, f"{len(missing)} never reached the queue, e.g. {sorted(missing)[:10]}"
    extra = set(queued) - expected
    assert not extra, f"unexpected in the queue: {sorted(extra)[:10]}"
    return queued


def wait_until(condition: Callable[[], bool], timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s: {message}")
        time.sleep(0.02)


def metric(name: str, **labels: str) -> float:
    """A sample of the default Prometheus registry, 0 when it was never set."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def metric_total(name: str) -> float:
    """The sum of a counter's samples over all its label values."""
    total = 0.0
    for family in REGISTRY.collect():
        for sample in family.samples:
            if sample.name == name:
                total += sample.value
    return total


def ingest_environment(redis_url: str, spool_dir: Path, **settings: str) -> dict[str, str]:
    """The environment of an ``ingest`` child process: none of this one's INGEST_* values."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("INGEST_") and name != "REDIS_URL"
    }
    env["INGEST_REDIS_URL"] = redis_url
    env["INGEST_SPOOL_DIR"] = str(spool_dir)
    env["INGEST_LOG_LEVEL"] = "WARNING"
    env.update({f"INGEST_{name.upper()}": value for name, value in settings.items()})
    return env


def run_python(
    code: str, env: dict[str, str], *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``python -c code`` from the project root (so it imports this checkout)."""
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_ingest(
    env: dict[str, str], *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m ingest ARGS`` from the project root."""
    return subprocess.run(
        [sys.executable, "-m", "ingest", *args],
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
