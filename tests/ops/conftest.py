"""Fixtures of the operations tests: a Redis with our ACL user, producers, worker processes."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import stop_process

from ingest.connection import connect
from ingest.embedded import RedisServer
from ingest.models import Payment, validate_payment
from ingest.producer import Producer
from ingest.settings import Settings

from .support import PROJECT_ROOT, acl_rules, clean_environment

ACL_PASSWORD = "ops-test-password"  # a throwaway server's password, not a secret


def close_client(client: redis.Redis) -> None:
    # `filterwarnings = error`: a pooled socket left open fails the test as a ResourceWarning.
    client.close()
    client.connection_pool.disconnect()


@dataclass(frozen=True)
class AclRedis:
    """A Redis of its own whose ``ingest`` user has exactly the rules of deploy/users.acl."""

    server: RedisServer
    admin_url: str
    url: str
    """``redis://ingest:...@127.0.0.1:PORT/0``: what every process under test uses."""

    def admin(self) -> redis.Redis:
        return redis.Redis.from_url(self.admin_url)


@pytest.fixture(scope="module")
def acl_redis_server() -> Iterator[AclRedis]:
    with RedisServer() as server:
        admin = redis.Redis.from_url(server.url)
        try:
            admin.execute_command(
                "ACL", "SETUSER", "ingest", *acl_rules("ingest"), f">{ACL_PASSWORD}"
            )
        finally:
            close_client(admin)
        url = f"redis://ingest:{ACL_PASSWORD}@{server.host}:{server.port}/0"
        yield AclRedis(server, server.url, url)


@pytest.fixture
def acl_redis(acl_redis_server: AclRedis) -> AclRedis:
    """The module's ACL Redis, emptied, with an empty ACL LOG, for one test."""
    admin = acl_redis_server.admin()
    try:
        admin.flushall()
        admin.execute_command("ACL", "LOG", "RESET")
    finally:
        close_client(admin)
    return acl_redis_server


def sample_payments(count: int, prefix: str, **fields: Any) -> list[Payment]:
    """``count`` valid payments with transaction ids ``{prefix}_00000``...; ``fields`` override."""
    payments = []
    for i in range(count):
        values: dict[str, Any] = {
            "amount": "19.99",
            "currency": "USD",
            "transaction_id": f"{prefix}_{i:05d}",
            "datafast_visitor_id": f"3f1c2a4e-{i % 65536:04x}-4c1b-9b7e-0000000000ab",
        }
        values.update(fields)
        payments.append(validate_payment(**values))
    return payments


def enqueue(url: str, payments: list[Payment]) -> list[str]:
    """Enqueue through the real producer, 500 a round trip, without a spool (a Redis failure
    must fail the test) and with a patient connection (a loaded test machine is slow)."""
    client = connect(url, socket_timeout=10)
    producer = Producer(Settings(redis_url=url), connection=client, spool=False)
    statuses: list[str] = []
    try:
        for start in range(0, len(payments), 500):
            statuses += [r.status for r in producer.enqueue_many(payments[start : start + 500])]
    finally:
        producer.close()
        close_client(client)
    return statuses


@dataclass
class Process:
    """A child ``python -m ingest ...`` with stdout and stderr in separate files."""

    process: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def output(self) -> str:
        return f"--- stdout\n{self.stdout()}\n--- stderr\n{self.stderr()}"

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            pytest.fail(f"still running after {timeout} s:\n{self.output()}")

    def stop(self, timeout: float = 20.0) -> int:
        return stop_process(self.process, timeout)


SpawnIngest = Callable[..., Process]


class ProcessGroup:
    """Children ``python -m ingest ARGS`` started for one test or module, stopped together."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[Process] = []

    def spawn(self, args: list[str], env: dict[str, str]) -> Process:
        """Start one; ``env`` should come from :func:`support.clean_environment` (or
        :func:`worker_env`) so that the machine's own INGEST_* never leak in."""
        n = len(self.started)
        out, err = self.directory / f"proc{n}.stdout", self.directory / f"proc{n}.stderr"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-m", "ingest", *args],
                env=env,
                cwd=PROJECT_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
            )
        self.started.append(Process(process, out, err))
        return self.started[-1]

    def stop_all(self) -> None:
        for process in self.started:
            process.stop()


@pytest.fixture
def spawn_ingest(tmp_path: Path) -> Iterator[SpawnIngest]:
    """``spawn_ingest(["worker", "--burst"], env)``: every one still running is stopped after."""
    group = ProcessGroup(tmp_path)
    try:
        yield group.spawn
    finally:
        group.stop_all()


def worker_env(
    redis_url: str, api_url: str, api_key: str, tmp_path: Path, **settings: str
) -> dict[str, str]:
    """The environment of a worker process: INGEST_* from scratch, logs as JSON lines."""
    env = clean_environment(
        INGEST_REDIS_URL=redis_url,
        INGEST_API_URL=api_url,
        INGEST_API_KEY=api_key,
        INGEST_SPOOL_DIR=str(tmp_path / "spool"),
        INGEST_LOG_LEVEL="INFO",
    )
    env.update({f"INGEST_{name.upper()}": value for name, value in settings.items()})
    return env
