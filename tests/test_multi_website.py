"""One dft_ account token, several websites: each event goes to its own websiteId, and an
auth refusal pauses only the website it concerns."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from conftest import spawn_worker

from ingest.models import validate_payment
from ingest.producer import Producer
from ingest.sandbox import DEFAULT_ACCOUNT_TOKEN, SandboxConfig, SandboxServer, TokenGrant
from ingest.settings import Settings
from ingest.stats import read_accounting

SITE_A = "aaaaaaaaaaaaaaaaaaaaaaaa"
SITE_B = "bbbbbbbbbbbbbbbbbbbbbbbb"
BOTH = TokenGrant(websites=frozenset({SITE_A, SITE_B}))
ONLY_A = TokenGrant(websites=frozenset({SITE_A}))


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(SandboxConfig(account_tokens={DEFAULT_ACCOUNT_TOKEN: BOTH})) as server:
        yield server


def _enqueue(redis_url: str, site: str, count: int) -> None:
    producer = Producer(Settings(redis_url=redis_url), spool=False)
    try:
        producer.enqueue_many(
            validate_payment(
                amount=5, currency="EUR", transaction_id=f"{site[:1]}-{i}", website_id=site
            )
            for i in range(count)
        )
    finally:
        producer.close()


def _wait(condition: object, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def test_each_event_is_delivered_to_its_own_website(
    redis_url: str, redis_client: redis.Redis, sandbox: SandboxServer, tmp_path: Path
) -> None:
    _enqueue(redis_url, SITE_A, 20)
    _enqueue(redis_url, SITE_B, 30)

    worker = spawn_worker(
        redis_url, sandbox.url, tmp_path, api_key=DEFAULT_ACCOUNT_TOKEN, website_id=SITE_A
    )
    assert worker.wait(timeout=60) == 0

    assert len(sandbox.records(website=SITE_A)) == 20
    assert len(sandbox.records(website=SITE_B)) == 30
    assert {r["transaction_id"][:1] for r in sandbox.records(website=SITE_B)} == {"b"}
    assert read_accounting(redis_client, "payments").lost == 0


def test_a_website_the_token_cannot_reach_is_paused_alone_and_resumes_when_granted(
    redis_url: str, redis_client: redis.Redis, sandbox: SandboxServer, tmp_path: Path
) -> None:
    sandbox.set_keys(account_tokens={DEFAULT_ACCOUNT_TOKEN: ONLY_A})
    _enqueue(redis_url, SITE_A, 20)
    _enqueue(redis_url, SITE_B, 30)
    worker = spawn_worker(
        redis_url,
        sandbox.url,
        tmp_path,
        burst=False,
        api_key=DEFAULT_ACCOUNT_TOKEN,
        website_id=SITE_A,
        auth_probe_interval="0.5",
        lease_seconds="3",
    )
    try:
        _wait(lambda: len(sandbox.records(website=SITE_A)) == 20, 30, "website A delivered")
        _wait(
            lambda: SITE_B in read_accounting(redis_client, "payments").paused,
            30,
            "website B paused",
        )
        paused = read_accounting(redis_client, "payments")
        assert list(paused.paused) == [SITE_B]
        assert paused.dead == 0
        assert sandbox.records(website=SITE_B) == []

        sandbox.set_keys(account_tokens={DEFAULT_ACCOUNT_TOKEN: BOTH})
        _wait(lambda: len(sandbox.records(website=SITE_B)) == 30, 30, "website B delivered")
        _wait(lambda: not read_accounting(redis_client, "payments").paused, 10, "pause lifted")
    finally:
        assert worker.stop() == 0
    final = read_accounting(redis_client, "payments")
    print(
        f"enqueued={final.enqueued} delivered={final.delivered} dead={final.dead} lost={final.lost}"
    )
    assert (final.enqueued, final.delivered, final.dead, final.lost) == (50, 50, 0, 0)
