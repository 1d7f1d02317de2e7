"""A Sentinel failover in the middle of a drain: the worker follows the new primary, and
every event reaches the API at least once, with nothing missing from the accounting.

Real processes on free loopback ports: a primary, a replica and one sentinel (quorum 1), with
``INGEST_REDIS_URL=redis+sentinel://127.0.0.1:<sentinel>/mymaster/0`` everywhere. Replication
is asynchronous: a write the old primary acknowledged but had not yet sent to the replica is
gone after a failover. The tests wait for the replica (``WAIT 1``) after enqueueing, so only
the worker's own bookkeeping is at risk, and that is safe to lose: an event whose delivery was
not recorded is sent again and the API counts it once. docs/operations.md discusses the rest.
"""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ingest.connection import connect
from ingest.embedded import RedisServer, find_redis_server, free_port
from ingest.sandbox import DEFAULT_WEBSITE_KEY, SandboxConfig, SandboxServer
from ingest.sandbox.faults import Faults
from ingest.stats import Accounting, read_accounting

from .conftest import SpawnIngest, close_client, enqueue, sample_payments, worker_env
from .support import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

SERVICE = "mymaster"


def quick_client(port: int) -> redis.Redis:
    return redis.Redis(
        host="127.0.0.1",
        port=port,
        socket_timeout=2,
        socket_connect_timeout=2,
        retry=Retry(NoBackoff(), 0),
        decode_responses=True,
    )


class Topology:
    """A primary, a replica and a sentinel: processes this test starts, owns and stops."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.binary = find_redis_server()
        ports: set[int] = set()
        while len(ports) < 3:
            ports.add(free_port())
        self.primary_port, self.replica_port, self.sentinel_port = sorted(ports)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel_port}/{SERVICE}/0"

    def _start(self, name: str, args: list[str]) -> None:
        node_dir = self.directory / name
        node_dir.mkdir()
        with (node_dir / "out.log").open("wb") as out:
            self.processes[name] = subprocess.Popen(
                [self.binary, *args],
                cwd=node_dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def _data_node(self, name: str, port: int, *extra: str) -> None:
        # The production settings (deploy/redis.conf), on loopback.
        self._start(
            name,
            [
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--maxmemory-policy",
                "noeviction",
                # A replica's full sync otherwise waits 5 s for more replicas to join it.
                "--repl-diskless-sync-delay",
                "0",
                *extra,
            ],
        )

    def start(self) -> None:
        self._data_node("primary", self.primary_port)
        self._data_node(
            "replica", self.replica_port, "--replicaof", "127.0.0.1", str(self.primary_port)
        )
        wait_until(
            lambda: self._replication("replica").get("master_link_status") == "up",
            20,
            "the replica to sync",
            details=self.logs,
        )
        # Started after the replica synced, so that its first INFO of the primary lists the
        # replica (the next one comes 10 s later).
        conf = self.directory / "sentinel.conf"  # sentinel rewrites it: a file of its own
        conf.write_text(
            f"port {self.sentinel_port}\n"
            "bind 127.0.0.1\n"
            f"dir {self.directory}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary_port} 1\n"
            f"sentinel down-after-milliseconds {SERVICE} 1000\n"
            f"sentinel failover-timeout {SERVICE} 10000\n"
        )
        self._start("sentinel", [str(conf), "--sentinel"])
        wait_until(
            self._sentinel_sees_replica, 20, "sentinel to see the replica", details=self.logs
        )

    def _replication(self, name: str) -> dict[str, str]:
        port = self.primary_port if name == "primary" else self.replica_port
        client = quick_client(port)
        try:
            return {k: str(v) for k, v in client.info("replication").items()}
        except redis.RedisError:
            return {}
        finally:
            close_client(client)

    def _sentinel(self, *command: str) -> object:
        client = quick_client(self.sentinel_port)
        try:
            return client.execute_command(*command)
        finally:
            close_client(client)

    def _sentinel_sees_replica(self) -> bool:
        try:
            replicas = self._sentinel("SENTINEL", "REPLICAS", SERVICE)
        except redis.RedisError:
            return False
        assert isinstance(replicas, list)
        return any("s_down" not in str(r) and "disconnected" not in str(r) for r in replicas)

    def primary_port_now(self) -> int | None:
        try:
            address = self._sentinel("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
        except redis.RedisError:
            return None
        assert isinstance(address, list)
        return int(address[1])

    def wait_for_replica_copy(self) -> int:
        """WAIT 1: how many replicas have every write the primary took so far."""
        client = connect(self.url, socket_timeout=10)
        try:
            return int(client.execute_command("WAIT", 1, 5000))
        finally:
            close_client(client)

    def crash_primary(self) -> None:
        self.processes["primary"].kill()
        self.processes["primary"].wait()

    def request_failover(self) -> None:
        assert self._sentinel("SENTINEL", "FAILOVER", SERVICE) in ("OK", b"OK", True)

    def old_primary_demoted(self) -> bool:
        return self._replication("primary").get("role") == "slave"

    def logs(self) -> str:
        return "\n".join(
            f"--- {name}\n{(self.directory / name / 'out.log').read_text(errors='replace')[-2000:]}"
            for name in self.processes
        )

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[Topology]:
    nodes = Topology(tmp_path / "redis")
    nodes.directory.mkdir()
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.stop()


@pytest.fixture
def slow_sandbox() -> Iterator[SandboxServer]:
    # 20 ms an answer and 16 in flight: a drain of a few seconds, long enough to fail over in.
    with SandboxServer(SandboxConfig(faults=Faults(latency_ms=20))) as server:
        yield server


def drain_env(topology: Topology, sandbox: SandboxServer, tmp_path: Path) -> dict[str, str]:
    # A short lease: events whose delivery was recorded only on the lost primary come back
    # within seconds instead of the default 20.
    return worker_env(
        topology.url,
        sandbox.url,
        DEFAULT_WEBSITE_KEY,
        tmp_path,
        lease_seconds="3",
        concurrency="16",
    )


def accounting(url: str) -> Accounting:
    client = connect(url, socket_timeout=10)
    try:
        return read_accounting(client, "payments")
    finally:
        close_client(client)


def test_worker_follows_sentinel_to_the_new_primary_after_a_crash(
    topology: Topology, slow_sandbox: SandboxServer, spawn_ingest: SpawnIngest, tmp_path: Path
) -> None:
    events = 1500
    payments = sample_payments(events, "sentinel_crash")
    assert Counter(enqueue(topology.url, payments)) == {"queued": events}
    assert topology.wait_for_replica_copy() == 1
    started = time.monotonic()
    worker = spawn_ingest(["worker", "--burst"], drain_env(topology, slow_sandbox, tmp_path))
    wait_until(
        lambda: slow_sandbox.stats()["recorded"] >= events // 3,
        30,
        "a third of the events to be delivered",
        details=worker.output,
    )
    delivered_before = slow_sandbox.stats()["recorded"]
    topology.crash_primary()
    crashed_at = time.monotonic()
    wait_until(
        lambda: topology.primary_port_now() == topology.replica_port,
        20,
        "sentinel to promote the replica",
        details=topology.logs,
    )
    promoted_after = time.monotonic() - crashed_at
    assert worker.wait(45) == 0, worker.output()

    sent = Counter(r["transaction_id"] for r in slow_sandbox.records())
    assert set(sent) == {p.transaction_id for p in payments}, "an event never reached the API"
    a = accounting(topology.url)
    resent = slow_sandbox.stats()["duplicates"]
    print(
        f"\nsentinel crash: {delivered_before} of {events} delivered when the primary died; "
        f"replica promoted {promoted_after:.1f} s later; drained in "
        f"{time.monotonic() - started:.1f} s; {resent} events sent twice "
        f"(their delivery was recorded only on the dead primary); accounting: {a}"
    )
    assert (a.delivered, a.in_system, a.lost) == (events, 0, 0)


def test_sentinel_failover_of_a_live_primary_resends_what_it_took_but_loses_nothing(
    topology: Topology, slow_sandbox: SandboxServer, spawn_ingest: SpawnIngest, tmp_path: Path
) -> None:
    events = 900
    payments = sample_payments(events, "sentinel_switch")
    enqueue(topology.url, payments)
    assert topology.wait_for_replica_copy() == 1
    env = drain_env(topology, slow_sandbox, tmp_path)
    first = spawn_ingest(["worker", "--burst"], env)
    wait_until(
        lambda: slow_sandbox.stats()["recorded"] >= events // 3,
        30,
        "a third of the events to be delivered",
        details=first.output,
    )
    topology.request_failover()
    requested_at = time.monotonic()
    wait_until(
        lambda: topology.primary_port_now() == topology.replica_port,
        20,
        "sentinel to promote the replica",
        details=topology.logs,
    )
    assert first.wait(45) == 0, first.output()
    # Until sentinel turns it into a replica, the old primary still takes the worker's writes;
    # they are discarded when it resyncs from the new primary.
    wait_until(topology.old_primary_demoted, 40, "the old primary to be demoted", interval=0.2)
    demoted_after = time.monotonic() - requested_at
    second = spawn_ingest(["worker", "--burst"], env)
    assert second.wait(45) == 0, second.output()

    sent = Counter(r["transaction_id"] for r in slow_sandbox.records())
    assert set(sent) == {p.transaction_id for p in payments}, "an event never reached the API"
    a = accounting(topology.url)
    resent = slow_sandbox.stats()["duplicates"]
    print(
        f"\nsentinel failover of a live primary: old primary demoted {demoted_after:.1f} s "
        f"after SENTINEL FAILOVER; {resent} of {events} events sent twice; accounting: {a}"
    )
    assert (a.delivered, a.in_system, a.lost) == (events, 0, 0)


# -- a primary that refuses writes for a while ----------------------------------------------------


def test_worker_waits_out_a_primary_refusing_writes(
    slow_sandbox: SandboxServer, spawn_ingest: SpawnIngest, tmp_path: Path
) -> None:
    # min-replicas-to-write 1 with no replica in sync: the primary answers NOREPLICAS to every
    # write, as a primary cut off from its replicas does (docs/operations.md).
    events = 200
    with RedisServer() as server:
        enqueue(server.url, sample_payments(events, "norepl"))
        env = worker_env(
            server.url, slow_sandbox.url, DEFAULT_WEBSITE_KEY, tmp_path, lease_seconds="3"
        )
        worker = spawn_ingest(["worker", "--burst", "--concurrency", "8"], env)
        wait_until(lambda: slow_sandbox.stats()["recorded"] >= 20, 30, "the drain to start")
        admin = redis.Redis.from_url(server.url)
        try:
            admin.config_set("min-replicas-to-write", 1)
            time.sleep(2)
            alive = worker.process.poll() is None
            admin.config_set("min-replicas-to-write", 0)
        finally:
            close_client(admin)
        assert alive, worker.output()
        assert worker.wait(45) == 0, worker.output()
    assert {r["transaction_id"] for r in slow_sandbox.records()} == {
        f"norepl_{i:05d}" for i in range(events)
    }
