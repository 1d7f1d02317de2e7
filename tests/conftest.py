"""Shared fixtures: a real Redis for integration tests, fakeredis for pure key logic.

By default the session starts its own ``redis-server`` on a free loopback port (see
``ingest.embedded``), so nothing depends on a Redis the machine may already run. Set
``REDIS_URL`` to test against an existing server instead; every test FLUSHALLs it.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import fakeredis
import pytest
import redis
import redis.asyncio

from ingest.embedded import RedisServer, find_redis_server
from ingest.errors import ConfigurationError

if TYPE_CHECKING:
    from ingest.sandbox import SandboxServer

REDIS_URL_ENV = "REDIS_URL"
# The tests FLUSHALL the REDIS_URL server, so one that already holds data is refused
# unless this is set: pointing REDIS_URL at the wrong server must not wipe it.
ALLOW_FLUSH_ENV = "INGEST_TEST_ALLOW_FLUSH"


@dataclass(frozen=True)
class ExternalRedis:
    """A server given by ``REDIS_URL``: only its URL, it cannot be stopped or killed."""

    url: str


def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=False)


def _close(client: redis.Redis) -> None:
    # Both: close() releases the client's connection, disconnect() every pooled socket,
    # or `filterwarnings = error` turns the leaked sockets' ResourceWarning into failures.
    client.close()
    client.connection_pool.disconnect()


def _flushall(url: str) -> None:
    client = _client(url)
    try:
        client.flushall()
    finally:
        _close(client)


def _key_count(url: str) -> int:
    client = _client(url)
    try:
        keyspace = client.info("keyspace")
    finally:
        _close(client)
    return sum(int(db["keys"]) for db in keyspace.values() if isinstance(db, dict))


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer | ExternalRedis]:
    """The session's Redis: ``REDIS_URL``'s server, or a ``RedisServer`` started here."""
    external_url = os.environ.get(REDIS_URL_ENV)
    if external_url:
        if _key_count(external_url) and not os.environ.get(ALLOW_FLUSH_ENV):
            pytest.fail(
                f"{REDIS_URL_ENV} points at a Redis that already holds keys and the tests "
                f"FLUSHALL it; use an empty server, or set {ALLOW_FLUSH_ENV}=1 to allow it",
                pytrace=False,
            )
        yield ExternalRedis(external_url)
        # Left empty, as found, so the next run's guard above does not trip.
        _flushall(external_url)
        return
    try:
        server = RedisServer()
    except ConfigurationError as exc:
        pytest.fail(f"cannot start a Redis for the tests: {exc}", pytrace=False)
    with server:
        yield server


@pytest.fixture
def restartable_redis() -> Iterator[RedisServer]:
    """A fresh append-only ``RedisServer`` this test may stop, kill and restart.

    Always its own process, even with ``REDIS_URL`` set: fault tests must never kill a
    server other tests share. Skipped only when ``REDIS_URL`` is set and this machine has
    no redis-server binary to start.
    """
    try:
        find_redis_server()
    except ConfigurationError as exc:
        if os.environ.get(REDIS_URL_ENV):
            pytest.skip(f"needs a redis-server it can kill and restart: {exc}")
        raise
    with RedisServer(appendonly=True) as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer | ExternalRedis) -> str:
    """The session server's URL, emptied (FLUSHALL) so the test starts from no keys."""
    _flushall(redis_server.url)
    return redis_server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A ``redis.Redis`` (bytes replies) on the emptied session server, closed after."""
    client = _client(redis_url)
    try:
        yield client
    finally:
        _close(client)


@pytest.fixture
def fake_redis() -> Iterator[fakeredis.FakeRedis]:
    """An in-memory fakeredis (with Lua) for pure key-logic tests.

    Its own ``FakeServer``: FakeRedis instances share data by host/port otherwise, which
    would leak keys between tests.
    """
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    try:
        yield client
    finally:
        client.close()


# -- the sandbox API and worker processes (integration lane) ------------------------------------

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    """A started in-process ``SandboxServer`` (demo keys, no faults), stopped after."""
    # Imported here: a sandbox being reworked must not stop the Redis-only tests collecting.
    from ingest.sandbox import SandboxServer

    with SandboxServer() as server:
        yield server


def worker_environment(
    redis_url: str,
    api_url: str,
    *,
    api_key: str | None,
    **settings: str,
) -> dict[str, str]:
    """The environment of an ``ingest`` process: this one's, minus any ``INGEST_*`` or
    ``REDIS_URL`` it had (never the machine's own Redis), plus the given settings.

    ``api_key`` ``None`` leaves ``INGEST_API_KEY`` unset. ``settings`` are ``INGEST_*``
    names without the prefix, e.g. ``concurrency="16"``.
    """
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("INGEST_") and name != REDIS_URL_ENV
    }
    env["INGEST_REDIS_URL"] = redis_url
    env["INGEST_API_URL"] = api_url
    if api_key is not None:
        env["INGEST_API_KEY"] = api_key
    env.setdefault("INGEST_LOG_LEVEL", "WARNING")
    env.update({f"INGEST_{name.upper()}": value for name, value in settings.items()})
    return env


def stop_process(process: subprocess.Popen[bytes], timeout: float) -> int:
    """Stop a child ``python -m ingest ...``: SIGTERM (a worker finishes or returns what is
    in flight), then SIGKILL if it is still running after ``timeout`` seconds. Returns its
    exit code; a child that already exited is left alone."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


@dataclass
class WorkerProcess:
    """One ``python -m ingest worker`` child; its stdout and stderr go to ``log``."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"worker {self.name} still running after {timeout} s; output:\n{self.output()}"
            )

    def stop(self, timeout: float = 20.0) -> int:
        return stop_process(self.process, timeout)


def spawn_worker(
    redis_url: str,
    api_url: str,
    log_dir: Path,
    *,
    burst: bool = True,
    name: str | None = None,
    concurrency: int | None = None,
    api_key: str | None = None,
    **settings: str,
) -> WorkerProcess:
    """Start ``python -m ingest worker [--burst]`` with ``INGEST_*`` pointing at ``redis_url``
    and ``api_url``; ``api_key`` defaults to the sandbox's demo website key. Stop it with
    :meth:`WorkerProcess.stop`; the ``start_worker`` fixture does that for you.
    """
    from ingest.sandbox import DEFAULT_WEBSITE_KEY

    worker_name = name or f"test-worker-{os.getpid()}-{next(_worker_numbers)}"
    command = [sys.executable, "-m", "ingest", "worker", "--name", worker_name]
    if burst:
        command.append("--burst")
    if concurrency is not None:
        command += ["--concurrency", str(concurrency)]
    env = worker_environment(
        redis_url,
        api_url,
        api_key=api_key or DEFAULT_WEBSITE_KEY,
        spool_dir=str(log_dir / "spool"),
        **settings,
    )
    log = log_dir / f"{worker_name}.log"
    with log.open("wb") as out:
        # The project root as working directory: `-m ingest` imports this checkout.
        process = subprocess.Popen(
            command, env=env, cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT
        )
    return WorkerProcess(worker_name, process, log)


_worker_numbers = itertools.count()

StartWorker = Callable[..., WorkerProcess]


@pytest.fixture
def start_worker(redis_url: str, sandbox: SandboxServer, tmp_path: Path) -> Iterator[StartWorker]:
    """Start real worker processes against the test Redis and the ``sandbox``
    (``start_worker(burst=True, name=None, concurrency=None, **settings)``, as
    :func:`spawn_worker`); any still running at the end of the test are stopped.
    """
    started: list[WorkerProcess] = []

    def start(**options: Any) -> WorkerProcess:
        worker = spawn_worker(redis_url, sandbox.url, tmp_path, **options)
        started.append(worker)
        return worker

    try:
        yield start
    finally:
        for worker in started:
            worker.stop()


T = TypeVar("T")


def run_on(redis_url: str, call: Callable[[redis.asyncio.Redis], Awaitable[T]]) -> T:
    """Run one of the worker's script wrappers (they are async) on the test's Redis."""

    async def main() -> T:
        conn = redis.asyncio.Redis.from_url(redis_url)
        try:
            return await call(conn)
        finally:
            await conn.aclose()

    return asyncio.run(main())
