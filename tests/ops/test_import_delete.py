"""``ingest import`` of a large file with bad rows, and the guarded ``ingest delete``.

Real ``ingest`` processes against a real Redis and the sandbox API.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from ingest import keys
from ingest.embedded import RedisServer
from ingest.jobs import job_args
from ingest.sandbox import DEFAULT_WEBSITE_KEY, FailSpec, RecordView, SandboxServer
from ingest.stats import Accounting, read_accounting

from .conftest import (
    SpawnIngest,
    close_client,
    enqueue,
    sample_payments,
    worker_env,
)
from .support import run_ingest

pytestmark = pytest.mark.integration

QUEUE = keys.QueueKeys("payments")

# -- import ----------------------------------------------------------------------------------------

ROWS = 10_000
HEADER = "amount,currency,transaction_id,datafast_visitor_id,email,renewal,timestamp"
# Row index -> a row the validation must refuse, and the field it must name.
BAD_ROWS = {
    0: ("-5,USD,imp_bad_0,v0,,false,2026-05-01T10:00:00Z", "amount"),
    17: ("abc,USD,imp_bad_17,v17,,false,2026-05-01T10:00:00Z", "amount"),
    999: ("10,US,imp_bad_999,v999,,false,2026-05-01T10:00:00Z", "currency"),
    2500: ("10,USD,,v2500,,false,2026-05-01T10:00:00Z", "transaction_id"),
    4321: ("10,USD,imp_bad_4321,v4321,,maybe,2026-05-01T10:00:00Z", "renewal"),
    5000: ("10,USD,imp_bad_5000,v5000,not-an-email,false,2026-05-01T10:00:00Z", "email"),
    6666: ("10,USD,imp_bad_6666,v6666,,false,yesterday", "timestamp"),
    8000: ("10,USD,imp_bad_8000,v8000,,false,2026-05-01T10:00:00Z,extra", "(row)"),
    9998: ("10,,imp_bad_9998,v9998,,false,2026-05-01T10:00:00Z", "currency"),
    9999: (",USD,imp_bad_9999,v9999,,false,2026-05-01T10:00:00Z", "amount"),
}
# The header is line 1, so row index i is on line i + 2.
BAD_LINES = {index + 2: field for index, (_, field) in BAD_ROWS.items()}


def write_import_file(path: Path) -> None:
    lines = [HEADER]
    for i in range(ROWS):
        if i in BAD_ROWS:
            lines.append(BAD_ROWS[i][0])
        else:
            lines.append(f"{10 + i % 90}.99,USD,imp_{i:05d},v{i},,false,2026-05-01T10:00:00Z")
    path.write_text("\n".join(lines) + "\n")


@dataclass(frozen=True)
class Imported:
    first: subprocess.CompletedProcess[str]
    second: subprocess.CompletedProcess[str]
    table: subprocess.CompletedProcess[str]
    queued_after_first: int
    queued_after_second: int
    accounting: Accounting


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> Imported:
    directory = tmp_path_factory.mktemp("import")
    path = directory / "payments.csv"
    write_import_file(path)
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        try:
            env = worker_env(server.url, "http://127.0.0.1:9", DEFAULT_WEBSITE_KEY, directory)
            first = run_ingest(["import", str(path), "--json"], env, timeout=120)
            queued_after_first = int(client.llen(QUEUE.queue))
            second = run_ingest(["import", str(path), "--json"], env, timeout=120)
            queued_after_second = int(client.llen(QUEUE.queue))
            table = run_ingest(["import", str(path)], env, timeout=120)
            accounting = read_accounting(client, QUEUE.name)
        finally:
            close_client(client)
    return Imported(first, second, table, queued_after_first, queued_after_second, accounting)


def test_import_exits_1_when_any_row_is_rejected(imported: Imported) -> None:
    assert imported.first.returncode == 1, imported.first.stderr


def test_import_enqueues_every_valid_row(imported: Imported) -> None:
    summary = json.loads(imported.first.stdout)
    assert (summary["rows"], summary["queued"], summary["rejected"]) == (ROWS, ROWS - 10, 10)
    assert imported.queued_after_first == ROWS - 10


def test_import_reports_each_bad_row_by_line_and_field(imported: Imported) -> None:
    errors = json.loads(imported.first.stdout)["errors"]
    reported = {e["line"]: e["field"] for e in errors}
    assert reported == BAD_LINES


def test_importing_the_same_file_again_enqueues_nothing_new(imported: Imported) -> None:
    summary = json.loads(imported.second.stdout)
    assert (summary["queued"], summary["duplicates"], summary["rejected"]) == (0, ROWS - 10, 10)
    assert imported.queued_after_second == ROWS - 10
    assert imported.accounting.enqueued == ROWS - 10
    assert imported.accounting.lost == 0


def test_import_prints_the_rejected_lines_for_a_person(imported: Imported) -> None:
    assert imported.table.returncode == 1
    out = imported.table.stdout
    assert "rejected rows (10)" in out
    for line in BAD_LINES:
        assert f"│ {line} " in out


# -- delete ----------------------------------------------------------------------------------------

VISITOR = "visitor-to-forget"
OTHER = "visitor-to-keep"


@dataclass(frozen=True)
class Held:
    """Events of a visitor we still hold: queued, and in the dead-letter store."""

    queued: int
    dead: int


def held(client: redis.Redis, visitor: str) -> Held:
    def visitor_of(data: bytes) -> str:
        return str(json.loads(job_args(data).body).get("datafast_visitor_id"))

    queued = 0
    for job_id in client.lrange(QUEUE.queue, 0, -1):
        data = client.hget(keys.job_key(keys.text(job_id)), "data")
        queued += data is not None and visitor_of(data) == visitor
    dead = sum(
        visitor_of(json.loads(raw)["data"].encode()) == visitor
        for raw in client.hgetall(QUEUE.dead).values()
    )
    return Held(queued, dead)


def api_status(records: list[RecordView], visitor: str) -> Counter[str]:
    return Counter(r["status"] for r in records if r["body"].get("datafast_visitor_id") == visitor)


def prepare_visitors(
    url: str, sandbox: SandboxServer, spawn: SpawnIngest, tmp_path: Path
) -> dict[str, str]:
    """At the API: 5 payments of each visitor. Held by us: a dead letter of VISITOR's, and 3
    of VISITOR's and 2 of OTHER's still queued. Returns the environment for ``ingest``."""
    forget = sample_payments(6, "forget", datafast_visitor_id=VISITOR)
    keep = sample_payments(5, "keep", datafast_visitor_id=OTHER)
    sandbox.set_faults(fail_ids={forget[5].transaction_id: FailSpec(400)})
    enqueue(url, forget + keep)
    env = worker_env(url, sandbox.url, DEFAULT_WEBSITE_KEY, tmp_path)
    worker = spawn(["worker", "--burst"], env)
    assert worker.wait(60) == 0, worker.output()
    enqueue(url, sample_payments(3, "forget_later", datafast_visitor_id=VISITOR))
    enqueue(url, sample_payments(2, "keep_later", datafast_visitor_id=OTHER))
    return env


@pytest.fixture
def visitors(
    redis_url: str, sandbox: SandboxServer, spawn_ingest: SpawnIngest, tmp_path: Path
) -> dict[str, str]:
    env = prepare_visitors(redis_url, sandbox, spawn_ingest, tmp_path)
    client = redis.Redis.from_url(redis_url)
    try:
        assert held(client, VISITOR) == Held(queued=3, dead=1)
    finally:
        close_client(client)
    assert api_status(sandbox.records(), VISITOR) == {"recorded": 5}
    return env


def test_delete_by_visitor_without_a_range_refuses_and_changes_nothing(
    visitors: dict[str, str], redis_client: redis.Redis, sandbox: SandboxServer
) -> None:
    requests_before = sandbox.stats()["requests"]
    result = run_ingest(["delete", "--visitor-id", VISITOR], visitors)
    assert result.returncode == 2
    assert "ALL TIME" in result.stderr
    assert "--all-time" in result.stderr
    assert sandbox.stats()["requests"] == requests_before
    assert held(redis_client, VISITOR) == Held(queued=3, dead=1)


def test_delete_dry_run_prints_the_request_and_sends_nothing(
    visitors: dict[str, str], redis_client: redis.Redis, sandbox: SandboxServer
) -> None:
    requests_before = sandbox.stats()["requests"]
    args = ["delete", "--visitor-id", VISITOR, "--all-time", "--dry-run"]
    result = run_ingest(args, visitors)
    assert result.returncode == 0, result.stderr
    assert f"DELETE {sandbox.url}/api/v1/payments?datafast_visitor_id={VISITOR}" in result.stdout
    assert "nothing sent or erased" in result.stdout
    assert DEFAULT_WEBSITE_KEY not in result.stdout + result.stderr
    assert sandbox.stats()["requests"] == requests_before
    assert held(redis_client, VISITOR) == Held(queued=3, dead=1)


@dataclass(frozen=True)
class Deleted:
    result: subprocess.CompletedProcess[str]
    records: list[RecordView]
    forgotten: Held
    kept: Held
    accounting: Accounting


@pytest.fixture(scope="module")
def deleted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deleted]:
    from .conftest import ProcessGroup

    tmp_path = tmp_path_factory.mktemp("delete")
    group = ProcessGroup(tmp_path)
    with RedisServer() as server, SandboxServer() as sandbox:
        client = redis.Redis.from_url(server.url)
        try:
            env = prepare_visitors(server.url, sandbox, group.spawn, tmp_path)
            args = ["delete", "--visitor-id", VISITOR, "--all-time", "--yes", "--json"]
            result = run_ingest(args, env)
            yield Deleted(
                result=result,
                records=sandbox.records(),
                forgotten=held(client, VISITOR),
                kept=held(client, OTHER),
                accounting=read_accounting(client, QUEUE.name),
            )
        finally:
            group.stop_all()
            close_client(client)


def test_delete_all_time_succeeds_and_reports_what_it_erased(deleted: Deleted) -> None:
    assert deleted.result.returncode == 0, deleted.result.stderr
    report = json.loads(deleted.result.stdout)
    assert report["api_status"] == 200
    assert report["erased"] == {"queued": 3, "dead": 1}


def test_delete_removes_the_visitors_payments_at_the_api(deleted: Deleted) -> None:
    assert api_status(deleted.records, VISITOR) == {"deleted": 5}


def test_delete_leaves_other_visitors_payments_at_the_api(deleted: Deleted) -> None:
    assert api_status(deleted.records, OTHER) == {"recorded": 5}


def test_delete_erases_the_visitors_queued_and_dead_lettered_events(deleted: Deleted) -> None:
    assert deleted.forgotten == Held(queued=0, dead=0)


def test_delete_keeps_other_visitors_queued_events(deleted: Deleted) -> None:
    assert deleted.kept == Held(queued=2, dead=0)


def test_delete_keeps_the_accounting_whole(deleted: Deleted) -> None:
    a = deleted.accounting
    assert (a.erased, a.queued, a.lost) == (4, 2, 0)
