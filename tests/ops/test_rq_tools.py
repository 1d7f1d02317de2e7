"""RQ's own tooling against our queue, as the least-privilege ``ingest`` user.

``rq info`` comes with rq. rq-dashboard is an optional extra: its tests are skipped, with the
reason, where it is not installed (``pip install rq-dashboard six``; rq-dashboard 0.9.0 imports
``six`` without declaring it).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from rq import Worker

from ingest.embedded import free_port
from ingest.sandbox import DEFAULT_WEBSITE_KEY, SandboxServer

from .conftest import (
    AclRedis,
    Process,
    SpawnIngest,
    close_client,
    enqueue,
    sample_payments,
    worker_env,
)
from .support import try_http_get, venv_script, wait_until

pytestmark = pytest.mark.integration


def rq_info(url: str) -> str:
    rq = venv_script("rq")
    assert rq is not None, "rq's command line is installed with the rq package"
    result = subprocess.run([rq, "info", "--url", url], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout


def start_registered_worker(
    acl: AclRedis, sandbox: SandboxServer, spawn: SpawnIngest, tmp_path: Path, name: str
) -> Process:
    env = worker_env(acl.url, sandbox.url, DEFAULT_WEBSITE_KEY, tmp_path)
    worker = spawn(["worker", "--name", name], env)
    client = acl.admin()
    try:
        wait_until(
            lambda: name in {w.name for w in Worker.all(connection=client)},
            30,
            "the worker to register with RQ",
            details=worker.output,
        )
    finally:
        close_client(client)
    return worker


def test_rq_info_lists_our_queue_with_its_depth(acl_redis: AclRedis) -> None:
    enqueue(acl_redis.url, sample_payments(7, "rq_info"))
    output = rq_info(acl_redis.url)
    (line,) = [line for line in output.splitlines() if line.startswith("payments ")]
    assert " 7" in line
    assert "1 queues, 7 jobs total" in output


def test_rq_info_lists_a_live_worker(
    acl_redis: AclRedis, sandbox: SandboxServer, spawn_ingest: SpawnIngest, tmp_path: Path
) -> None:
    enqueue(acl_redis.url, sample_payments(1, "rq_live"))  # RQ lists a queue once used
    worker = start_registered_worker(acl_redis, sandbox, spawn_ingest, tmp_path, "ops-rq-info")
    output = rq_info(acl_redis.url)
    assert "ops-rq-info" in output
    assert "1 workers, 1 queues" in output
    assert worker.stop() == 0, worker.output()
    assert "0 workers" in rq_info(acl_redis.url)


def test_rq_suspend_stops_our_worker_from_claiming(
    acl_redis: AclRedis, sandbox: SandboxServer, spawn_ingest: SpawnIngest, tmp_path: Path
) -> None:
    rq = venv_script("rq")
    assert rq is not None
    suspended = subprocess.run(
        [rq, "suspend", "--url", acl_redis.url], capture_output=True, text=True, timeout=30
    )
    assert suspended.returncode == 0, suspended.stderr
    enqueue(acl_redis.url, sample_payments(5, "suspended"))
    env = worker_env(acl_redis.url, sandbox.url, DEFAULT_WEBSITE_KEY, tmp_path)
    worker = spawn_ingest(["worker", "--burst"], env)
    assert worker.wait(30) == 0, worker.output()  # in burst mode, as RQ's: exit, leave the rest
    assert sandbox.stats()["recorded"] == 0


# -- rq-dashboard ----------------------------------------------------------------------------------


@pytest.fixture
def dashboard(acl_redis: AclRedis, tmp_path: Path) -> Iterator[str]:
    binary = venv_script("rq-dashboard")
    if binary is None:
        pytest.skip("rq-dashboard is not installed (pip install rq-dashboard six)")
    port = free_port()
    log = tmp_path / "rq-dashboard.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            # --json: our jobs are JSON-serialised (RQ's JSONSerializer), not pickled.
            [binary, "-b", "127.0.0.1", "-p", str(port), "-u", acl_redis.url, "--json"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:

        def answers() -> bool:
            if process.poll() is not None:
                pytest.fail(f"rq-dashboard exited {process.returncode}:\n{log.read_text()}")
            return try_http_get(f"{base}/0/data/queues.json") is not None

        wait_until(answers, 30, "rq-dashboard to serve", details=log.read_text)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def fetch_json(url: str) -> dict[str, object]:
    text = try_http_get(url, timeout=10)
    assert text is not None, f"no answer from {url}"
    data: dict[str, object] = json.loads(text)
    return data


def test_rq_dashboard_lists_our_queue_and_its_depth(acl_redis: AclRedis, dashboard: str) -> None:
    enqueue(acl_redis.url, sample_payments(4, "dashboard"))
    queues = fetch_json(f"{dashboard}/0/data/queues.json")["queues"]
    assert isinstance(queues, list)
    assert [(q["name"], q["count"]) for q in queues] == [("payments", 4)]


def test_rq_dashboard_lists_our_queued_jobs(acl_redis: AclRedis, dashboard: str) -> None:
    enqueue(acl_redis.url, sample_payments(2, "dashjobs"))
    jobs = fetch_json(f"{dashboard}/0/data/jobs/payments/queued/8/asc/1.json")["jobs"]
    assert isinstance(jobs, list)
    assert sorted(j["description"] for j in jobs) == [
        "payment dashjobs_00000",
        "payment dashjobs_00001",
    ]


def test_rq_dashboard_lists_a_live_worker(
    acl_redis: AclRedis,
    dashboard: str,
    sandbox: SandboxServer,
    spawn_ingest: SpawnIngest,
    tmp_path: Path,
) -> None:
    worker = start_registered_worker(acl_redis, sandbox, spawn_ingest, tmp_path, "ops-dashboard")
    workers = fetch_json(f"{dashboard}/0/data/workers.json")["workers"]
    assert isinstance(workers, list)
    assert [w["name"] for w in workers] == ["ops-dashboard"]
    assert worker.stop() == 0, worker.output()
