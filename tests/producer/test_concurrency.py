"""Threads and pre-forked processes share a producer: every event lands exactly once.

The fork tests fork inside a child Python process of their own (single-threaded, as a
gunicorn master is), never inside pytest, whose threads would make fork() unsafe.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path

import pytest
import redis

from ingest.producer import Receipt, enqueue_payment

from .conftest import (
    MakeProducer,
    assert_each_queued_once,
    fields,
    ingest_environment,
    metric,
    run_python,
)

pytestmark = pytest.mark.integration

THREADS = 8


def test_eight_threads_sharing_a_producer_queue_each_event_exactly_once(
    redis_url: str, redis_client: redis.Redis, make_producer: MakeProducer
) -> None:
    # A generous timeout: this is about sharing, not latency, on a loaded 2-core machine.
    producer = make_producer(redis_url, producer_timeout=2.0)
    shared = [f"shared-{i}" for i in range(50)]  # every thread enqueues these too
    receipts: list[list[Receipt]] = [[] for _ in range(THREADS)]
    errors: list[BaseException] = []
    start = threading.Barrier(THREADS)

    def enqueue_all(n: int) -> None:
        try:
            start.wait()
            for i in range(100):
                receipts[n].append(enqueue_payment(**fields(f"t{n}-{i}"), producer=producer))
                receipts[n].append(enqueue_payment(**fields(shared[i % 50]), producer=producer))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=enqueue_all, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert not errors
    statuses = Counter(r.status for batch in receipts for r in batch)
    assert statuses == {"queued": THREADS * 100 + 50, "duplicate": THREADS * 100 - 50}
    own = {f"t{n}-{i}" for n in range(THREADS) for i in range(100)}
    assert_each_queued_once(redis_client, own | set(shared))


FORKING_PARENT = """
import json, os, sys, traceback
from ingest.producer import Producer, enqueue_payment

children, per_process, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
producer = Producer()
# The parent's connection exists before the fork, as a gunicorn master's would.
parent_client = producer.connection.client_id()
enqueue_payment(amount="1", currency="USD", transaction_id="before-fork", producer=producer)

def enqueue(name):
    statuses = [
        enqueue_payment(amount="1", currency="USD", transaction_id=f"{name}-{i}",
                        producer=producer).status
        for i in range(per_process)
    ]
    return {"client": producer.connection.client_id(), "statuses": statuses}

pids = []
for n in range(children):
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            with open(f"{out}/child-{n}.json", "w") as f:
                json.dump(enqueue(f"child{n}"), f)
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    pids.append(pid)
mine = enqueue("parent")
codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
producer.close()
print(json.dumps({"parent_client": parent_client, "parent": mine, "codes": codes}))
"""


def run_forking_parent(
    redis_url: str, spool_dir: Path, out: Path, children: int, per_process: int
) -> tuple[dict[str, object], list[dict[str, object]]]:
    out.mkdir()
    env = ingest_environment(redis_url, spool_dir, producer_timeout="2.0")
    done = run_python(FORKING_PARENT, env, str(children), str(per_process), str(out))
    assert done.returncode == 0, done.stderr
    parent = json.loads(done.stdout)
    assert parent["codes"] == [0] * children, done.stderr
    kids = [json.loads((out / f"child-{n}.json").read_text()) for n in range(children)]
    return parent, kids


def test_forked_children_do_not_reuse_the_parents_redis_connection(
    redis_url: str, spool_dir: Path, tmp_path: Path
) -> None:
    parent, children = run_forking_parent(redis_url, spool_dir, tmp_path / "out", 3, 20)

    clients = [parent["parent_client"]] + [child["client"] for child in children]
    assert len(set(clients)) == len(clients), f"a connection was shared: {clients}"


def test_forked_children_and_their_parent_queue_each_event_exactly_once(
    redis_url: str, redis_client: redis.Redis, spool_dir: Path, tmp_path: Path
) -> None:
    parent, children = run_forking_parent(redis_url, spool_dir, tmp_path / "out", 4, 100)

    for process in [parent["parent"], *children]:
        assert isinstance(process, dict)
        assert set(process["statuses"]) == {"queued"}
    expected = {"before-fork"} | {f"parent-{i}" for i in range(100)}
    expected |= {f"child{n}-{i}" for n in range(4) for i in range(100)}
    assert_each_queued_once(redis_client, expected)


def test_forked_children_spool_to_files_of_their_own_and_lose_nothing(
    closed_redis_url: str,
    redis_url: str,
    redis_client: redis.Redis,
    spool_dir: Path,
    tmp_path: Path,
    make_producer: MakeProducer,
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    env = ingest_environment(closed_redis_url, spool_dir)
    script = FORKING_PARENT.replace("producer.connection.client_id()", "None")

    done = run_python(script, env, "4", "100", str(out))

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["codes"] == [0] * 4, done.stderr
    assert len(list(spool_dir.glob("spool-*.jsonl"))) == 5  # the parent's and one per child
    result = make_producer(redis_url).flush_spool()
    assert (result.events, result.quarantined) == (501, 0)
    expected = {"before-fork"} | {f"parent-{i}" for i in range(100)}
    expected |= {f"child{n}-{i}" for n in range(4) for i in range(100)}
    assert_each_queued_once(redis_client, expected)


def test_more_threads_than_the_connection_pool_has_are_queued_not_spooled(
    redis_url: str, make_producer: MakeProducer
) -> None:
    # A threaded server with 150 checkouts in flight at once; Redis is healthy.
    producer = make_producer(redis_url, producer_timeout=2.0)
    enqueue_payment(**fields("warm-up"), producer=producer)
    exhausted_before = metric(
        "ingest_producer_redis_errors_total", queue="payments", kind="MaxConnectionsError"
    )
    receipts: list[Receipt] = []
    start = threading.Barrier(150)

    def enqueue_some(n: int) -> None:
        start.wait()
        for i in range(3):
            receipts.append(enqueue_payment(**fields(f"many-{n}-{i}"), producer=producer))

    threads = [threading.Thread(target=enqueue_some, args=(n,)) for n in range(150)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    statuses = Counter(r.status for r in receipts)
    exhausted = metric(
        "ingest_producer_redis_errors_total", queue="payments", kind="MaxConnectionsError"
    )
    assert statuses == {"queued": 450}, (
        f"{statuses}: a healthy Redis was treated as down when the client's connection "
        f"pool ran out ({exhausted - exhausted_before:g} MaxConnectionsError)"
    )
