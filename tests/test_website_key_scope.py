"""A ``df_`` website key acts for its own website only: an event carrying another website's
id is sent with that ``websiteId``, so the API refuses it (403) and that website is paused,
instead of the event being recorded under the key's own website."""

from __future__ import annotations

import redis
from conftest import StartWorker

from ingest.models import validate_payment
from ingest.producer import Producer
from ingest.sandbox import DEFAULT_WEBSITE_ID, SandboxServer
from ingest.settings import Settings
from ingest.stats import read_accounting

OTHER_SITE = "0123456789abcdef01234567"


def _enqueue(redis_url: str, prefix: str, count: int, website_id: str | None = None) -> None:
    producer = Producer(Settings(redis_url=redis_url), spool=False)
    try:
        producer.enqueue_many(
            validate_payment(
                amount=5, currency="EUR", transaction_id=f"{prefix}-{i}", website_id=website_id
            )
            for i in range(count)
        )
    finally:
        producer.close()


def test_event_for_another_website_is_not_recorded_under_the_keys_website(
    redis_url: str, sandbox: SandboxServer, start_worker: StartWorker
) -> None:
    _enqueue(redis_url, "foreign", 1, website_id=OTHER_SITE)
    _enqueue(redis_url, "own", 3)

    assert start_worker(burst=True).wait(timeout=60) == 0

    recorded = sorted(r["transaction_id"] for r in sandbox.records(website=DEFAULT_WEBSITE_ID))
    assert recorded == ["own-0", "own-1", "own-2"]


def test_event_for_another_website_pauses_that_website_and_stays_parked(
    redis_url: str, redis_client: redis.Redis, start_worker: StartWorker
) -> None:
    _enqueue(redis_url, "foreign", 2, website_id=OTHER_SITE)
    _enqueue(redis_url, "own", 3)

    assert start_worker(burst=True).wait(timeout=60) == 0

    accounting = read_accounting(redis_client, "payments")
    assert (accounting.delivered, accounting.parked, accounting.lost) == (3, 2, 0)
    assert list(accounting.paused) == [OTHER_SITE]


def test_event_naming_the_keys_own_website_is_delivered(
    redis_url: str, sandbox: SandboxServer, start_worker: StartWorker
) -> None:
    _enqueue(redis_url, "named", 2, website_id=DEFAULT_WEBSITE_ID)

    assert start_worker(burst=True).wait(timeout=60) == 0

    assert len(sandbox.records(website=DEFAULT_WEBSITE_ID)) == 2
