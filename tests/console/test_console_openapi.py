"""The JSON API against its own /openapi.json: schemathesis generates requests (bounded),
every answer must be documented, match its schema and never be a 500.

POSTs carry a valid CSRF token and a same-origin Origin, so the actions themselves run
(against letters seeded for the purpose), not only the guard's 403.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from ingest.console.app import create_app
from ingest.console.config import ConsoleOptions
from ingest.console.security import CSRF_COOKIE, CsrfTokens
from ingest.settings import Settings

from .conftest import BASE, CSRF_SECRET, QUEUE, Letter, seed

pytestmark = pytest.mark.integration

COOKIE = "c" * 43
HEADERS = {
    "Origin": BASE,
    "X-CSRF-Token": CsrfTokens(CSRF_SECRET).token_for(COOKIE),
    "Cookie": f"{CSRF_COOKIE}={COOKIE}",
}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture
def console_schema(redis_url: str, tmp_path: Any) -> Iterator[Any]:
    client = redis.Redis.from_url(redis_url)
    seed(client, [Letter(f"s{i}", status=(400, 422, 503)[i % 3]) for i in range(30)])
    client.hset(f"ingest:{QUEUE}:paused", "-", '{"status": 401, "error": "bad key"}')
    app = create_app(
        Settings(redis_url=redis_url, queue=QUEUE, spool_dir=tmp_path / "spool"),
        options=ConsoleOptions(replay_rate=10_000.0),
        connection=client,
        csrf_secret=CSRF_SECRET,
        warm_index=False,
    )
    try:
        yield schemathesis.openapi.from_asgi("/openapi.json", app, headers={"Host": "127.0.0.1"})
    finally:
        client.close()
        client.connection_pool.disconnect()


def test_the_api_keeps_its_contract(console_schema: Any) -> None:
    # schemathesis' pytest loader (`from_fixture`) does not run on pytest 9, so each
    # operation gets its own bounded hypothesis run here.
    operations = [result.ok() for result in console_schema.get_all_operations()]
    assert len(operations) >= 10

    for operation in operations:

        @settings(
            max_examples=12,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def call(case: schemathesis.Case) -> None:
            case.call_and_validate(base_url=BASE, headers=HEADERS, checks=CHECKS)

        call()
