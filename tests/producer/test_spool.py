"""The spool: what a producer keeps on disk while Redis is down, and how it gets back.

Corrupt lines are quarantined with their reason and never block the rest; the size cap
raises to the caller; ``ingest spool flush`` and ``ingest spool status`` are run as the
operator would, in a child process.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from ingest.embedded import RedisServer
from ingest.errors import SpoolFullError
from ingest.producer import Producer, enqueue_payment
from ingest.spool import QUARANTINE

from .conftest import (
    MakeProducer,
    assert_each_queued_once,
    fields,
    ingest_environment,
    metric,
    queued_transaction_ids,
    run_ingest,
)

pytestmark = pytest.mark.integration


def spool_events(producer: Producer, prefix: str, count: int) -> list[str]:
    ids = [f"{prefix}-{i}" for i in range(count)]
    for transaction_id in ids:
        assert enqueue_payment(**fields(transaction_id), producer=producer).status == "spooled"
    return ids


def spool_file(spool_dir: Path) -> Path:
    [path] = spool_dir.glob("spool-*.jsonl")
    return path


def flip_a_byte_of_line_5(lines: list[bytes]) -> list[bytes]:
    line = lines[4]
    at = line.index(b'"transaction_id"') + 20
    lines[4] = line[:at] + bytes([line[at] ^ 0x01]) + line[at + 1 :]
    return lines


def truncate_the_last_line(lines: list[bytes]) -> list[bytes]:
    lines[-1] = lines[-1][: len(lines[-1]) // 2]  # a torn write: no newline either
    return lines


def replace_line_5_with_binary_garbage(lines: list[bytes]) -> list[bytes]:
    lines[4] = b"\xff\xfe\x00garbage\x80\n"
    return lines


CORRUPTIONS: dict[str, tuple[Callable[[list[bytes]], list[bytes]], int]] = {
    "flipped byte": (flip_a_byte_of_line_5, 5),
    "truncated last line": (truncate_the_last_line, 10),
    "binary garbage": (replace_line_5_with_binary_garbage, 5),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_corrupt_spool_line_is_quarantined_and_the_rest_flushed_in_order(
    corruption: str,
    closed_redis_url: str,
    redis_url: str,
    redis_client: redis.Redis,
    spool_dir: Path,
    make_producer: MakeProducer,
) -> None:
    producer = make_producer(closed_redis_url)
    ids = spool_events(producer, "corrupt", 10)
    producer.close()
    path = spool_file(spool_dir)
    corrupt, bad_line = CORRUPTIONS[corruption]
    path.write_bytes(b"".join(corrupt(path.read_bytes().splitlines(keepends=True))))

    result = make_producer(redis_url).flush_spool()

    assert (result.quarantined, result.queued) == (1, 9)
    expected = [tx for n, tx in enumerate(ids, 1) if n != bad_line]
    assert queued_transaction_ids(redis_client) == expected
    [record] = [json.loads(line) for line in (spool_dir / QUARANTINE).read_text().splitlines()]
    assert record["file"].startswith(path.stem)
    assert record["line"] == bad_line
    assert record["reason"]
    assert not list(spool_dir.glob("spool-*")), "the flushed file is still on disk"


def test_ingest_spool_flush_exits_1_when_it_quarantined_a_line(
    closed_redis_url: str,
    redis_url: str,
    redis_client: redis.Redis,
    spool_dir: Path,
    make_producer: MakeProducer,
) -> None:
    producer = make_producer(closed_redis_url)
    ids = spool_events(producer, "cli", 10)
    producer.close()
    path = spool_file(spool_dir)
    path.write_bytes(b"".join(flip_a_byte_of_line_5(path.read_bytes().splitlines(True))))

    flush = run_ingest(ingest_environment(redis_url, spool_dir), "spool", "flush")

    assert flush.returncode == 1, flush  # an operator must look at the quarantine
    assert "9 queued" in flush.stdout
    assert "1 corrupt lines quarantined" in flush.stdout
    assert queued_transaction_ids(redis_client) == ids[:4] + ids[5:]


def test_flush_reports_the_quarantine_on_stderr_and_only_its_summary_on_stdout(
    closed_redis_url: str,
    redis_url: str,
    spool_dir: Path,
    make_producer: MakeProducer,
) -> None:
    producer = make_producer(closed_redis_url)
    spool_events(producer, "message", 3)
    producer.close()
    path = spool_file(spool_dir)
    path.write_bytes(b"".join(truncate_the_last_line(path.read_bytes().splitlines(True))))

    flush = run_ingest(ingest_environment(redis_url, spool_dir), "spool", "flush", "--json")

    assert flush.returncode == 1
    assert QUARANTINE in flush.stderr, "the operator is not told where the bad line went"
    assert json.loads(flush.stdout)["quarantined"] == 1, "--json output is not only JSON"


def test_spool_status_reports_pending_events_and_quarantined_lines(
    closed_redis_url: str, spool_dir: Path, make_producer: MakeProducer
) -> None:
    producer = make_producer(closed_redis_url)
    spool_events(producer, "status", 7)
    (spool_dir / QUARANTINE).write_text('{"reason": "checksum mismatch"}\n')

    status = run_ingest(
        ingest_environment(closed_redis_url, spool_dir), "spool", "status", "--json"
    )

    assert status.returncode == 0, status
    report = json.loads(status.stdout)
    assert (report["pending"], report["quarantined"]) == (7, 1)
    assert report["bytes"] == spool_file(spool_dir).stat().st_size


def test_spool_flushed_twice_queues_each_event_once(
    closed_redis_url: str,
    redis_url: str,
    redis_client: redis.Redis,
    spool_dir: Path,
    make_producer: MakeProducer,
) -> None:
    producer = make_producer(closed_redis_url)
    ids = spool_events(producer, "twice", 20)
    producer.close()
    saved = spool_file(spool_dir).read_bytes()
    flusher = make_producer(redis_url)

    first = flusher.flush_spool()
    # As if the first flush had died after queueing but before deleting its file.
    (spool_dir / "spool-1-1.jsonl").write_bytes(saved)
    second = flusher.flush_spool()

    assert (first.queued, first.duplicates) == (20, 0)
    assert (second.queued, second.duplicates) == (0, 20)
    assert queued_transaction_ids(redis_client) == ids


def fill_until_full(producer: Producer, prefix: str) -> tuple[list[str], SpoolFullError]:
    """Spool events until the cap refuses one: those accepted, and the refusal."""
    accepted = []
    for i in range(10_000):
        try:
            enqueue_payment(**fields(f"{prefix}-{i}"), producer=producer)
        except SpoolFullError as exc:
            return accepted, exc
        accepted.append(f"{prefix}-{i}")
    pytest.fail("the spool never reached its cap")


def test_spool_at_its_cap_raises_to_the_caller_and_keeps_what_it_accepted(
    closed_redis_url: str,
    redis_url: str,
    redis_client: redis.Redis,
    make_producer: MakeProducer,
) -> None:
    producer = make_producer(closed_redis_url, spool_max_bytes=4096)
    full_before = metric("ingest_producer_spool_full_total")

    accepted, refusal = fill_until_full(producer, "cap")

    assert "INGEST_SPOOL_MAX_BYTES" in str(refusal)
    assert accepted
    assert metric("ingest_producer_spool_full_total") == full_before + 1
    assert producer.spool is not None
    assert producer.spool.size_bytes() <= 4096
    producer.close()
    make_producer(redis_url).flush_spool()
    assert_each_queued_once(redis_client, set(accepted))  # the refused one was not kept


def test_spool_keeps_raising_while_full_instead_of_dropping_silently(
    closed_redis_url: str, make_producer: MakeProducer
) -> None:
    producer = make_producer(closed_redis_url, spool_max_bytes=2048)
    fill_until_full(producer, "full")

    for i in range(5):
        with pytest.raises(SpoolFullError):
            enqueue_payment(**fields(f"after-full-{i}"), producer=producer)


def test_a_closed_producer_stops_watching_for_redis_and_leaves_its_spool_on_disk(
    closed_redis_url: str, make_producer: MakeProducer
) -> None:
    # Its watchdog once outlived it and flushed its spool into a later test's Redis, a
    # fresh server that happened to get the same free port.
    producer = make_producer(closed_redis_url, breaker_cooldown=0.05)
    spooled = spool_events(producer, "closed", 3)
    [watchdog] = [t for t in threading.enumerate() if t.name == "ingest-redis-watchdog"]

    producer.close()
    watchdog.join(timeout=2)

    assert not watchdog.is_alive()
    port = int(closed_redis_url.rsplit(":", 1)[1].split("/")[0])
    with RedisServer(port=port) as server:
        time.sleep(0.3)  # six cooldowns: a live watchdog would have flushed by now
        client = redis.Redis.from_url(server.url)
        try:
            assert queued_transaction_ids(client) == []
        finally:
            client.close()
    assert producer.spool is not None
    assert producer.spool.pending() == len(spooled)


@pytest.mark.parametrize(("policy", "syncs_per_event"), [(True, 1), (False, 0)])
def test_spooled_receipt_follows_the_fsync_policy(
    policy: bool,
    syncs_per_event: int,
    closed_redis_url: str,
    make_producer: MakeProducer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    producer = make_producer(closed_redis_url, spool_fsync=policy)
    synced: list[int] = []
    real_fdatasync = os.fdatasync

    def recording_fdatasync(fd: int) -> None:
        real_fdatasync(fd)
        synced.append(fd)

    monkeypatch.setattr(os, "fdatasync", recording_fdatasync)

    spool_events(producer, "fsync", 5)

    assert len(synced) == 5 * syncs_per_event
