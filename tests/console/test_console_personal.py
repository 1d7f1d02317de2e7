"""Personal data in free text: API error messages and attempt history quote the customer.

The console masks every email (whatever its local part or host) and the letter's own
customer name wherever they appear, on the page and in the API; revealing shows them."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from ingest.console.security import mask_text

from .conftest import Letter, seed

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

NAME = "Carol Danvers"
EMAIL = "jane'secret@localhost"
QUOTING = f"customer {NAME} <{EMAIL}> is not valid (DANVERS, carol)"


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("to jane'secret@localhost.", "to j***@localhost."),
        ('"john doe"@example.com refused', '"***@example.com refused'),
        ("ops@intranet and x@[10.0.0.1]", "o***@intranet and x***@[10.0.0.1]"),
        ("<o'brien+tag@mail.example.co.uk>", "<o***@mail.example.co.uk>"),
        ("jane@example.com", "j***@example.com"),
    ],
)
def test_mask_text_masks_unusual_email_addresses(text: str, masked: str) -> None:
    assert mask_text(text) == masked


async def test_a_letters_own_name_and_email_are_masked_in_its_error_and_history(
    make_console: Any, redis_client: redis.Redis
) -> None:
    [dead_id] = seed(
        redis_client, [Letter("tx_quote", error=QUOTING, email="jane@example.com", name=NAME)]
    )
    redis_client.hset(
        "ingest:payments:dead",
        dead_id,
        redis_client.hget("ingest:payments:dead", dead_id).replace(  # type: ignore[union-attr]
            b"jane@example.com", EMAIL.encode()
        ),
    )
    async with make_console() as console:
        pages = [
            await console.get(f"/dead-letters/{dead_id}"),
            await console.get("/dead-letters"),
            await console.get(f"/api/dead-letters/{dead_id}"),
            await console.get("/api/dead-letters"),
        ]
    for page in pages:
        assert page.status_code == 200, page.request.url
        text = page.text.lower()
        for secret in ("carol", "danvers", "jane", "secret"):
            assert secret not in text, (page.request.url, secret)
    detail = pages[2].json()
    assert detail["error"] == "customer C*** D*** <j***@localhost> is not valid (D***, c***)"
    assert {a["error"] for a in detail["history"]} == {detail["error"]}


async def test_revealing_a_letter_shows_its_error_as_stored(
    make_console: Any, redis_client: redis.Redis
) -> None:
    [dead_id] = seed(redis_client, [Letter("tx_quote", error=QUOTING, name=NAME)])
    async with make_console() as console:
        revealed = await console.post_json(f"/api/dead-letters/{dead_id}/reveal", None)
    assert revealed.json()["error"] == QUOTING
