"""The console's guard: CSRF and origin, the token, read-only mode, security headers,
escaping of hostile values, and where it may listen."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any

import pytest
import redis
from pydantic import SecretStr

from ingest import keys
from ingest.console.config import ConsoleOptions, check_bind, is_loopback
from ingest.console.security import mask_email, mask_event, mask_name, safe_next
from ingest.errors import ConfigurationError

from .conftest import BASE, QUEUE, TOKEN, Letter, seed, snapshot

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

K = keys.QueueKeys(QUEUE)
EVIL = "https://evil.example"


# -- pure rules -------------------------------------------------------------------------------


def test_masking_keeps_the_first_letter_and_the_domain() -> None:
    assert mask_email("jane@example.com") == "j***@example.com"
    assert mask_name("Jane van Doe") == "J*** v*** D***"
    assert mask_event({"customer_email": "a@b.co", "customer_name": "Al", "note": "x@y.io"}) == {
        "customer_email": "a***@b.co",
        "customer_name": "A***",
        "note": "x***@y.io",
    }


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.5", False),
        ("console.example.com", False),
    ],
)
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_binding_elsewhere_requires_a_token() -> None:
    check_bind("127.0.0.1", None)
    check_bind("0.0.0.0", SecretStr(TOKEN))
    with pytest.raises(ConfigurationError, match="INGEST_CONSOLE_TOKEN is not set"):
        check_bind("0.0.0.0", None)
    with pytest.raises(ConfigurationError, match="too short"):
        check_bind("127.0.0.1", SecretStr("short"))


def test_ingest_console_refuses_to_start_on_a_public_address_without_a_token(
    redis_url: str,
) -> None:
    from conftest import worker_environment

    env = worker_environment(redis_url, "http://127.0.0.1:9", api_key=None)
    run = subprocess.run(
        [sys.executable, "-m", "ingest.console", "--host", "0.0.0.0", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert "refusing to serve the console on 0.0.0.0" in run.stderr
    assert "INGEST_CONSOLE_TOKEN" in run.stderr


def test_login_redirects_stay_on_this_site() -> None:
    assert safe_next("/dead-letters?reason=x") == "/dead-letters?reason=x"
    for hostile in ("//evil.example/", "https://evil.example/", "/\\evil.example", "", None):
        assert safe_next(hostile) == "/"


# -- CSRF and origin --------------------------------------------------------------------------


async def test_cross_site_form_post_changes_nothing(
    make_console: Any, redis_client: redis.Redis
) -> None:
    seed(redis_client, [Letter("a"), Letter("b")])
    before = snapshot(redis_client)
    async with make_console() as console:
        token = await console.csrf()
        fields = {"csrf_token": token, "confirm": "yes", "all": "1"}
        answers = [
            await console.http.post("/replay", data=fields, headers={"Origin": EVIL}),
            await console.http.post("/purge", data=fields, headers={"Origin": "null"}),
            await console.http.post("/purge", data=fields, headers={"Referer": f"{EVIL}/x"}),
            await console.http.post(
                "/purge", data=fields, headers={"Origin": BASE, "Sec-Fetch-Site": "cross-site"}
            ),
            await console.http.post(
                "/api/replay",
                json={"all": True, "confirm": True},
                headers={"Origin": EVIL, "X-CSRF-Token": token},
            ),
        ]
    assert [a.status_code for a in answers] == [403] * 5
    assert snapshot(redis_client) == before


async def test_post_without_the_csrf_token_changes_nothing(
    make_console: Any, redis_client: redis.Redis
) -> None:
    seed(redis_client, [Letter("a")])
    redis_client.hset(K.paused, "-", "{}")
    before = snapshot(redis_client)
    origin = {"Origin": BASE}
    async with make_console() as console:
        await console.csrf()  # the browser has its CSRF cookie, but sends no token
        answers = [
            await console.http.post("/purge", data={"confirm": "yes", "all": "1"}, headers=origin),
            await console.http.post(
                "/purge",
                data={"confirm": "yes", "all": "1", "csrf_token": "0" * 64},
                headers=origin,
            ),
            await console.http.post(
                "/api/purge", json={"all": True, "confirm": True}, headers=origin
            ),
            await console.http.post("/paused/probe", data={"website": "-"}, headers=origin),
            await console.http.post("/api/paused/probe", json={"website": "-"}, headers=origin),
        ]
    async with make_console() as fresh:  # no CSRF cookie at all, but a token from elsewhere
        answers.append(
            await fresh.http.post(
                "/api/purge",
                json={"all": True, "confirm": True},
                headers={**origin, "X-CSRF-Token": "f" * 64},
            )
        )
    assert [a.status_code for a in answers] == [403] * 6
    assert all("CSRF" in a.text for a in answers)
    assert snapshot(redis_client) == before


async def test_post_without_origin_or_referer_is_refused_and_a_same_origin_referer_is_not(
    make_console: Any, redis_client: redis.Redis
) -> None:
    redis_client.hset(K.paused, "-", "{}")
    async with make_console() as console:
        token = await console.csrf()
        headless = await console.http.post(
            "/api/paused/probe", json={"website": "-"}, headers={"X-CSRF-Token": token}
        )
        referred = await console.http.post(
            "/api/paused/probe",
            json={"website": "-"},
            headers={"X-CSRF-Token": token, "Referer": f"{BASE}/paused"},
        )
    assert headless.status_code == 403
    assert referred.status_code == 200


async def test_only_get_head_and_post_exist(make_console: Any) -> None:
    async with make_console() as console:
        answers = [await console.http.request(m, "/api/dead-letters") for m in ("PUT", "DELETE")]
    assert [a.status_code for a in answers] == [405, 405]


async def test_a_foreign_host_name_is_refused_without_a_token(make_console: Any) -> None:
    # A DNS-rebinding page reaches 127.0.0.1 under its own name: refuse that name.
    async with make_console(base_url="http://rebind.evil.example:8000") as console:
        answer = await console.get("/api/overview")
    assert answer.status_code == 403


# -- the token --------------------------------------------------------------------------------


async def test_with_a_token_every_request_needs_it(make_console: Any) -> None:
    options = ConsoleOptions(token=SecretStr(TOKEN))
    async with make_console(options, base_url="http://console.example:8000") as console:
        page = await console.get("/dead-letters?reason=rejected")
        api = await console.get("/api/overview")
        static = await console.get("/static/console.css")
        schema = await console.get("/openapi.json")
        wrong = await console.get("/api/overview", headers={"Authorization": "Bearer nope"})
        bearer = await console.get("/api/overview", headers={"Authorization": f"Bearer {TOKEN}"})
        login = await console.get("/login")
    assert page.status_code == 303
    assert page.headers["location"] == "/login?next=%2Fdead-letters%3Freason%3Drejected"
    assert api.status_code == 401
    assert "Bearer" in api.headers["www-authenticate"]
    assert static.status_code == 303
    assert schema.status_code == 401
    assert wrong.status_code == 401
    assert bearer.status_code == 200
    assert login.status_code == 200
    assert 'name="token"' in login.text


async def test_the_login_form_sets_an_httponly_samesite_strict_cookie(make_console: Any) -> None:
    options = ConsoleOptions(token=SecretStr(TOKEN))
    async with make_console(options) as console:
        form = await console.get("/login?next=/paused")
        csrf = re.search(r'name="csrf_token" value="([0-9a-f]+)"', form.text)
        assert csrf is not None
        fields = {"csrf_token": csrf.group(1), "next": "/paused"}
        refused = await console.http.post(
            "/login", data={**fields, "token": "wrong"}, headers={"Origin": BASE}
        )
        accepted = await console.http.post(
            "/login", data={**fields, "token": TOKEN}, headers={"Origin": BASE}
        )
        after = await console.get("/paused")
        # Signed in, the CSRF token is the session's: the login form's no longer serves.
        signed_in = re.search(r'name="csrf_token" value="([0-9a-f]+)"', after.text)
        assert signed_in is not None
        out = await console.http.post(
            "/logout", data={"csrf_token": signed_in.group(1)}, headers={"Origin": BASE}
        )
        gone = await console.get("/paused")
    assert refused.status_code == 401
    assert "not right" in refused.text
    assert accepted.status_code == 303
    assert accepted.headers["location"] == "/paused"
    cookie = accepted.headers["set-cookie"]
    assert "ingest_console_session=" in cookie
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert "Path=/" in cookie
    assert TOKEN not in cookie
    assert after.status_code == 200
    assert out.status_code == 303
    assert gone.status_code == 303


async def test_the_login_page_allows_only_its_own_inline_style(make_console: Any) -> None:
    async with make_console(ConsoleOptions(token=SecretStr(TOKEN))) as console:
        answer = await console.get("/login")
    csp = answer.headers["content-security-policy"]
    assert "'sha256-" in csp
    assert "unsafe-inline" not in csp
    assert "script-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp


# -- read-only --------------------------------------------------------------------------------


async def test_read_only_hides_and_refuses_every_action(
    make_console: Any, redis_client: redis.Redis
) -> None:
    [dead_id] = seed(redis_client, [Letter("a")])
    redis_client.hset(K.paused, "-", "{}")
    before = snapshot(redis_client)
    async with make_console(ConsoleOptions(read_only=True)) as console:
        pages = [
            await console.get(p)
            for p in ("/", "/dead-letters", f"/dead-letters/{dead_id}", "/paused")
        ]
        previews = [await console.get(p) for p in ("/replay?q=a", f"/purge?id={dead_id}")]
        refused = [
            await console.post_form("/replay", {"q": "a", "confirm": "yes"}),
            await console.post_form("/purge", {"q": "a", "confirm": "yes"}),
            await console.post_json("/api/replay", {"all": True, "confirm": True}),
            await console.post_form("/paused/probe", {"website": "-"}),
            await console.post_json("/api/paused/probe", {"website": "-"}),
        ]
        reveal = await console.post_json(f"/api/dead-letters/{dead_id}/reveal", None)
    for page in pages:
        assert page.status_code == 200
        main = page.text.split('<main id="main"')[1]
        for action in ('"/replay', '"/purge', '"/paused/probe"', "Probe now", "selected…"):
            assert action not in main
        assert "read-only" in page.text
    assert [a.status_code for a in refused] == [403] * 5
    assert [p.status_code for p in previews] == [403, 403]
    assert reveal.status_code == 200  # a read, logged; it changes nothing
    assert snapshot(redis_client) == before


# -- headers and escaping ---------------------------------------------------------------------


async def test_every_answer_carries_the_security_headers(
    make_console: Any, redis_client: redis.Redis
) -> None:
    seed(redis_client, [Letter("a")])
    async with make_console() as console:
        answers = [
            await console.get(p)
            for p in ("/", "/dead-letters", "/api/overview", "/static/console.js", "/nope")
        ]
        answers.append(await console.http.post("/api/purge", json={}, headers={"Origin": EVIL}))
    for answer in answers:
        csp = answer.headers["content-security-policy"]
        assert "script-src 'self'" in csp
        assert "unsafe-inline" not in csp
        assert "frame-ancestors 'none'" in csp
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["x-frame-options"] == "DENY"


async def test_hostile_values_from_redis_render_as_text(
    make_console: Any, redis_client: redis.Redis
) -> None:
    script = "<script>alert(1)</script>"
    image = '"><img src=x onerror=alert(2)>'
    [dead_id] = seed(
        redis_client,
        # (A name of other words: the letter's own name is masked in its error too.)
        [Letter(f"tx{script}", website=image, error=f"bad {script}", name='"><svg onload=x>')],
    )
    redis_client.hset(K.paused, image, json.dumps({"status": 401, "error": script, "since": image}))
    async with make_console() as console:
        pages = [
            await console.get(p)
            for p in (
                "/",
                "/dead-letters",
                f"/dead-letters/{dead_id}",
                f"/replay?id={dead_id}",
                "/paused",
                "/dead-letters?q=%3Cscript%3E",
            )
        ]
        pages.append(await console.post_form(f"/dead-letters/{dead_id}/reveal", {}))
    for page in pages:
        assert page.status_code == 200, page.request.url
        assert "<script>alert" not in page.text
        assert "<img src=x" not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in pages[1].text
    assert "&#34;&gt;&lt;img src=x onerror=alert(2)&gt;" in pages[4].text


def test_ingest_console_serves_with_its_token(redis_url: str, tmp_path: Any) -> None:
    import socket
    import time

    import httpx
    from conftest import worker_environment

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = worker_environment(redis_url, "http://127.0.0.1:9", api_key=None, console_token=TOKEN)
    log = (tmp_path / "console.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "ingest.console", "--port", str(port), "--read-only"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                anonymous = httpx.get(f"{base}/api/overview")
                break
            except httpx.TransportError:
                assert process.poll() is None, (tmp_path / "console.log").read_text()
                assert time.monotonic() < deadline, "the console did not start"
                time.sleep(0.1)
        bearer = httpx.get(f"{base}/api/session", headers={"Authorization": f"Bearer {TOKEN}"})
    finally:
        process.terminate()
        process.wait(10)
        log.close()
    assert anonymous.status_code == 401
    assert bearer.status_code == 200
    assert bearer.json()["read_only"] is True
    assert bearer.json()["token_required"] is True
    assert "server" not in bearer.headers
