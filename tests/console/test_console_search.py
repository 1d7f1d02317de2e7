"""Search while data is masked: ``q`` and ``id`` match what the page shows, so a masked
transaction id cannot be found (nor confirmed to exist) by its unmasked form."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from .conftest import Letter, seed

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

SECRET_TX = "order-jane.doe@example.com-7"
SHOWN_TX = "o***@example.com-7"  # what the page shows


def matched(answer: Any) -> int:
    assert answer.status_code == 200, answer.text
    return int(answer.json()["matched"])


async def test_a_masked_transaction_id_is_not_found_by_its_unmasked_text(
    make_console: Any, redis_client: redis.Redis
) -> None:
    seed(redis_client, [Letter(SECRET_TX), Letter("order-plain-8")])
    async with make_console() as console:
        found = [
            matched(await console.get("/api/dead-letters", params={"q": "jane.doe"})),
            matched(await console.get("/api/dead-letters", params={"id": SECRET_TX})),
        ]
        one = await console.get(f"/api/dead-letters/{SECRET_TX}")
        page = await console.get("/dead-letters", params={"q": "jane.doe"})
        preview = await console.post_json(
            "/api/purge", {"selection": {"search": "jane.doe"}, "confirm": False}
        )
    assert found == [0, 0]
    assert one.status_code == 404
    assert SHOWN_TX not in page.text
    assert preview.json()["preview"]["count"] == 0


async def test_search_matches_the_masked_transaction_id_as_shown(
    make_console: Any, redis_client: redis.Redis
) -> None:
    [dead_id, _] = seed(redis_client, [Letter(SECRET_TX), Letter("order-plain-8")])
    async with make_console() as console:
        found = [
            matched(await console.get("/api/dead-letters", params={"q": "o***@example"})),
            matched(await console.get("/api/dead-letters", params={"id": SHOWN_TX})),
            matched(await console.get("/api/dead-letters", params={"id": dead_id})),
            matched(await console.get("/api/dead-letters", params={"q": "plain"})),
        ]
        one = await console.get(f"/api/dead-letters/{SHOWN_TX}")
    assert found == [1, 1, 1, 1]
    assert one.json()["id"] == dead_id


async def test_a_confirmed_purge_takes_what_its_masked_search_showed(
    make_console: Any, redis_client: redis.Redis
) -> None:
    [secret_id, plain_id] = seed(redis_client, [Letter(SECRET_TX), Letter("order-plain-8")])
    async with make_console() as console:
        unmasked = await console.post_json(
            "/api/purge", {"selection": {"search": "jane.doe"}, "confirm": True}
        )
        masked = await console.post_json(
            "/api/purge", {"selection": {"search": "o***@"}, "confirm": True}
        )
    assert unmasked.json()["operation"]["purged"] == 0
    assert masked.json()["operation"]["purged"] == 1
    assert not redis_client.hexists("ingest:payments:dead", secret_id)
    assert redis_client.hexists("ingest:payments:dead", plain_id)
