"""The learned send rate and hold of each credential, where operators look: ``ingest
stats``, the queue metrics and the console overview. Never the key, only its short hash."""

from __future__ import annotations

import json
import time

import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest

from ingest import keys
from ingest.cli import main
from ingest.metrics import QueueCollector
from ingest.ratelimit import SendRate, credential_id
from ingest.scripts import BucketShape

API_KEY = "df_visibility_SECRET_key"
SHAPE = BucketShape(100.0, 0.1, 1.0, 10, 5.0, 3600)


@pytest.fixture
def credential(redis_client: redis.Redis) -> str:
    """A credential whose rate was learned as 250/s and is held for ~30 s."""
    limiter = SendRate(keys.QueueKeys("payments"), credential_id(API_KEY, None), SHAPE)
    limiter.acquire(redis_client, 1, now=time.time())
    limiter.store(redis_client, rate=250.0, hold_until=time.time() + 30, learner="{}")
    return limiter.credential


@pytest.fixture
def environment(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INGEST_REDIS_URL", redis_url)
    monkeypatch.setenv("COLUMNS", "200")


@pytest.mark.usefixtures("environment")
def test_ingest_stats_shows_each_credentials_rate_and_hold(
    credential: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["stats"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if f"send rate {credential}" in line)
    assert "250.0/s, held" in line
    assert API_KEY not in out


@pytest.mark.usefixtures("environment")
def test_ingest_stats_json_lists_the_send_rates(
    credential: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["stats", "--json"]) == 0
    [rate] = json.loads(capsys.readouterr().out)["send_rates"]
    assert (rate["credential"], rate["rate"]) == (credential, 250.0)
    assert 25 < rate["hold_seconds"] <= 30


def test_queue_metrics_label_the_send_rate_with_the_credential_hash(
    redis_client: redis.Redis, credential: str
) -> None:
    registry = CollectorRegistry()
    registry.register(QueueCollector(redis_client, "payments"))
    text = generate_latest(registry).decode()
    assert f'ingest_send_rate_limit{{credential="{credential}",queue="payments"}} 250.0' in text
    assert f'ingest_send_rate_hold_seconds{{credential="{credential}",queue="payments"}}' in text
    assert API_KEY not in text
