"""Signing in: a random session per login, kept in Redis for a lifetime and ended by
logout; cookies Secure (and ``__Host-``) off loopback; the CSRF token bound to the session."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx
import pytest
import redis
from pydantic import SecretStr

from ingest.console.config import ConsoleOptions
from ingest.settings import Settings

from .conftest import BASE, TOKEN

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

TOKEN_OPTIONS = ConsoleOptions(token=SecretStr(TOKEN))
SESSION_KEYS = "ingest:payments:session:*"


def form_token(page: httpx.Response) -> str:
    found = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page.text)
    assert found is not None, page.text
    return found.group(1)


async def log_in(http: httpx.AsyncClient, origin: str = BASE) -> httpx.Response:
    form = await http.get("/login")
    fields = {"csrf_token": form_token(form), "next": "/", "token": TOKEN}
    return await http.post("/login", data=fields, headers={"Origin": origin})


def session_cookie(answer: httpx.Response) -> str:
    found = re.search(r"ingest_console_session=([^;]+)", answer.headers["set-cookie"])
    assert found is not None, answer.headers
    return found.group(1)


async def test_each_login_gets_its_own_random_session(make_console: Any) -> None:
    async with make_console(TOKEN_OPTIONS) as first, make_console(TOKEN_OPTIONS) as second:
        one = session_cookie(await log_in(first.http))
        two = session_cookie(await log_in(second.http))
    assert one != two
    assert len(one) >= 40


async def test_a_session_is_kept_in_redis_for_its_lifetime(
    make_console: Any, settings: Settings, redis_client: redis.Redis
) -> None:
    lasting = settings.with_overrides(console_session_lifetime=600)
    async with make_console(TOKEN_OPTIONS, app_settings=lasting) as console:
        cookie = session_cookie(await log_in(console.http))
    [key] = redis_client.keys(SESSION_KEYS)
    assert 590 <= redis_client.ttl(key) <= 600
    assert cookie.encode() not in key  # Redis holds a hash of the id, not the id


async def test_a_session_cookie_stops_working_at_logout(make_console: Any) -> None:
    async with make_console(TOKEN_OPTIONS) as console:
        cookie = session_cookie(await log_in(console.http))
        kept = {"Cookie": f"ingest_console_session={cookie}"}
        before = await console.http.get("/paused")
        page = await console.http.get("/paused")
        await console.http.post(
            "/logout", data={"csrf_token": form_token(page)}, headers={"Origin": BASE}
        )
    async with make_console(TOKEN_OPTIONS) as replayed:  # the old cookie, kept by someone
        after = await replayed.http.get("/api/overview", headers=kept)
    assert before.status_code == 200
    assert after.status_code == 401


async def test_rotating_the_token_ends_the_sessions_signed_in_with_the_old_one(
    make_console: Any,
) -> None:
    async with make_console(TOKEN_OPTIONS) as console:
        cookie = session_cookie(await log_in(console.http))
        before = await console.http.get("/api/overview")
    kept = {"Cookie": f"ingest_console_session={cookie}"}
    rotated = ConsoleOptions(token=SecretStr("rotated-" + TOKEN))
    async with make_console(rotated) as restarted:
        after = await restarted.http.get("/api/overview", headers=kept)
    async with make_console(TOKEN_OPTIONS) as same_token:
        unchanged = await same_token.http.get("/api/overview", headers=kept)
    assert before.status_code == 200
    assert after.status_code == 401
    assert unchanged.status_code == 200  # a restart with the same token keeps sessions


async def test_a_session_ends_after_its_lifetime(make_console: Any, settings: Settings) -> None:
    short = settings.with_overrides(console_session_lifetime=1)
    async with make_console(TOKEN_OPTIONS, app_settings=short) as console:
        await log_in(console.http)
        during = await console.http.get("/api/overview")
        await asyncio.sleep(1.3)
        after = await console.http.get("/api/overview")
    assert during.status_code == 200
    assert after.status_code == 401


async def test_off_loopback_the_cookies_are_secure_with_the_host_prefix(
    make_console: Any,
) -> None:
    origin = "https://console.example"
    async with make_console(TOKEN_OPTIONS, base_url=origin) as console:
        answer = await log_in(console.http, origin)
        after = await console.http.get("/api/overview")
    cookies = answer.headers.get_list("set-cookie")
    assert any(c.startswith("__Host-ingest_console_session=") for c in cookies), cookies
    for cookie in cookies:
        assert cookie.startswith("__Host-"), cookie
        assert "; Secure" in cookie or "; secure" in cookie, cookie
        assert "Path=/" in cookie
        assert "Domain" not in cookie
    assert answer.status_code == 303
    assert after.status_code == 200


async def test_an_unprefixed_cookie_is_ignored_off_loopback(make_console: Any) -> None:
    # A sibling site can plant `ingest_console_session`, never `__Host-ingest_console_session`.
    origin = "https://console.example"
    async with make_console(TOKEN_OPTIONS, base_url=origin) as console:
        cookie = session_cookie(await log_in(console.http, origin))
    async with make_console(TOKEN_OPTIONS, base_url=origin) as other:
        planted = await other.http.get(
            "/api/overview", headers={"Cookie": f"ingest_console_session={cookie}"}
        )
    assert planted.status_code == 401


async def test_on_loopback_over_http_the_cookies_work_without_secure(make_console: Any) -> None:
    async with make_console(TOKEN_OPTIONS) as console:
        answer = await log_in(console.http)
        after = await console.http.get("/api/overview")
    assert "secure" not in answer.headers["set-cookie"].lower()
    assert after.status_code == 200


async def test_a_csrf_token_for_a_planted_cookie_is_refused_once_signed_in(
    make_console: Any, redis_client: redis.Redis
) -> None:
    redis_client.hset("ingest:payments:paused", "-", "{}")
    planted = "p" * 43  # a CSRF cookie the attacker chose and planted in the browser
    jar = {"Cookie": f"ingest_console_csrf={planted}"}
    async with make_console(TOKEN_OPTIONS) as attacker:
        stolen = form_token(await attacker.http.get("/login", headers=jar))
    async with make_console(TOKEN_OPTIONS) as victim:
        victim.http.cookies.set("ingest_console_csrf", planted)
        await log_in(victim.http)
        forged = await victim.http.post(
            "/paused/probe", data={"csrf_token": stolen, "website": "-"}, headers={"Origin": BASE}
        )
        own = form_token(await victim.http.get("/paused"))
        genuine = await victim.http.post(
            "/paused/probe", data={"csrf_token": own, "website": "-"}, headers={"Origin": BASE}
        )
    assert forged.status_code == 403
    assert own != stolen
    assert genuine.status_code == 303
