"""A refund never overtakes its payment through the spool, whichever process spooled what.

Producers on one machine share the spool directory; a payment spooled by one process may
still be on disk when another process enqueues its refund.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from ingest import keys
from ingest.models import validate_payment
from ingest.producer import enqueue_payment
from ingest.spool import Spool, encode_line

from .conftest import MakeProducer, fields, queued_transaction_ids

pytestmark = pytest.mark.integration

# Long enough that no watchdog flushes behind the test's back: the test flushes itself.
QUIET = {"breaker_cooldown": 30.0}


def refund_status(client: redis.Redis, transaction_id: str) -> bytes | None:
    refund = validate_payment(**fields(transaction_id, refunded=True))
    status = client.hget(keys.job_key(refund.job_id), "status")
    return status if isinstance(status, bytes) else None


def test_refund_enqueued_while_its_payment_is_spooled_waits_behind_it(
    closed_redis_url: str,
    redis_url: str,
    redis_client: redis.Redis,
    make_producer: MakeProducer,
) -> None:
    # Process A spools the payment during the outage and exits.
    a = make_producer(closed_redis_url, **QUIET)
    assert enqueue_payment(**fields("pi_spooled"), producer=a).status == "spooled"
    a.close()
    # Redis is back; process B takes the refund, then the spool is flushed.
    b = make_producer(redis_url, **QUIET)
    enqueue_payment(**fields("pi_spooled", refunded=True), producer=b)
    b.flush_spool()
    assert queued_transaction_ids(redis_client) == ["pi_spooled"]
    assert refund_status(redis_client, "pi_spooled") == b"deferred"


def test_spool_files_are_flushed_in_the_order_they_were_started(
    spool_dir: Path,
    redis_url: str,
    redis_client: redis.Redis,
    make_producer: MakeProducer,
) -> None:
    # By name, spool-100-... sorts before spool-20-...; by start time it comes second.
    spool_dir.mkdir(parents=True)
    earlier = validate_payment(**fields("pi_earlier"))
    later = validate_payment(**fields("pi_later"))
    (spool_dir / "spool-20-1000000000000000000.jsonl").write_bytes(encode_line(earlier))
    (spool_dir / "spool-100-2000000000000000000.jsonl").write_bytes(encode_line(later))
    make_producer(redis_url, **QUIET).flush_spool()
    assert queued_transaction_ids(redis_client) == ["pi_earlier", "pi_later"]


def test_spooled_refund_is_held_back_while_a_live_producer_still_holds_spooled_events(
    spool_dir: Path,
    redis_url: str,
    redis_client: redis.Redis,
    make_producer: MakeProducer,
) -> None:
    # Process A (alive, its file locked) still holds the payment on disk.
    a = Spool(spool_dir, max_bytes=1 << 20)
    a.append(validate_payment(**fields("pi_live")))
    b = make_producer(redis_url, **QUIET)
    assert enqueue_payment(**fields("pi_live", refunded=True), producer=b).status == "spooled"
    held = b.flush_spool()
    assert (held.held_back, redis_client.llen(keys.QueueKeys("payments").queue)) == (1, 0)
    a.close()  # A exits (or flushes its own file)
    b.flush_spool()
    assert queued_transaction_ids(redis_client) == ["pi_live"]
    assert refund_status(redis_client, "pi_live") == b"deferred"
