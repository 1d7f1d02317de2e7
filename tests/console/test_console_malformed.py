"""Malformed requests answer 400, never 500; and every error page, whoever writes it,
carries the security headers."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import redis
from pydantic import SecretStr

from ingest.console.config import ConsoleOptions

from .conftest import BASE, TOKEN, Letter, seed

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


def assert_security_headers(answer: httpx.Response) -> None:
    csp = answer.headers.get("content-security-policy", "")
    assert "frame-ancestors 'none'" in csp, (answer.status_code, dict(answer.headers))
    assert answer.headers.get("x-content-type-options") == "nosniff"
    assert answer.headers.get("x-frame-options") == "DENY"
    assert answer.headers.get("cache-control") == "no-store"


@pytest.mark.parametrize("host", ["[evil", "[::1", "127.0.0.1:99999", "a]b"])
async def test_a_malformed_host_header_is_a_400(make_console: Any, host: str) -> None:
    async with make_console() as console:
        page = await console.get("/", headers={"Host": host})
        api = await console.get("/api/overview", headers={"Host": host})
    for answer in (page, api):
        assert answer.status_code == 400, answer.text
        assert_security_headers(answer)


async def test_a_malformed_referer_is_a_400(make_console: Any) -> None:
    async with make_console() as console:
        token = await console.csrf()
        answer = await console.http.post(
            "/api/paused/probe",
            json={"website": "-"},
            headers={"Referer": "http://[x", "X-CSRF-Token": token},
        )
    assert answer.status_code == 400, answer.text
    assert_security_headers(answer)


@pytest.mark.parametrize("as_of", ["nan", "1e999", "-inf", "-1"])
async def test_a_confirmation_with_an_impossible_as_of_is_a_400(
    make_console: Any, redis_client: redis.Redis, as_of: str
) -> None:
    seed(redis_client, [Letter("a")])
    async with make_console() as console:
        form = await console.post_form("/purge", {"q": "a", "confirm": "yes", "as_of": as_of})
        api = await console.post_json(
            "/api/purge", {"selection": {"search": "a"}, "confirm": True, "as_of": as_of}
        )
    assert form.status_code == 400, form.text
    assert api.status_code in (400, 422), api.text
    assert_security_headers(form)
    assert_security_headers(api)
    assert redis_client.hlen("ingest:payments:dead") == 1


async def test_every_error_page_carries_the_security_headers(
    make_console: Any, redis_client: redis.Redis
) -> None:
    async with make_console(ConsoleOptions(token=SecretStr(TOKEN))) as console:
        answers = {
            401: await console.get("/api/overview"),
            403: await console.http.post("/api/purge", json={}, headers={"Origin": BASE}),
            404: await console.get("/nope", headers={"Authorization": f"Bearer {TOKEN}"}),
            405: await console.http.request("PUT", "/"),
        }
    for status, answer in answers.items():
        assert answer.status_code == status, answer.text
        assert_security_headers(answer)


async def test_an_unexpected_error_is_a_500_with_the_security_headers(
    make_console: Any, redis_client: redis.Redis
) -> None:
    async with make_console() as console:
        console.app.state.console.overview = _explode
        page = await console.get("/")
        api = await console.get("/api/overview")
    for answer in (page, api):
        assert answer.status_code == 500
        assert_security_headers(answer)
        assert "boom" not in answer.text  # never the exception's text


def _explode() -> None:
    raise RuntimeError("boom")
