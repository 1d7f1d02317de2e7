"""The console in a real browser: Debian's chromium, headless, driven by playwright.

The whole operator flow against real processes: payments go through a real worker
(``python -m ingest worker``) to the sandbox, which refuses some; the operator opens the
overview, filters the dead letters to one reason, previews the replay, confirms it, and
sees a second real worker deliver the events to the sandbox while the page's counts drop.
Once with the mouse, once with the keyboard alone.

Screenshots go to the test's temporary directory, and also to
``$INGEST_CONSOLE_SCREENSHOTS`` when that is set (``docs/`` keeps them as
``docs/console-*.png``).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
from pydantic import SecretStr

from ingest import keys
from ingest.console.app import create_app
from ingest.console.config import ConsoleOptions
from ingest.deadletter import DeadLetterStore
from ingest.models import validate_payment
from ingest.producer import Producer
from ingest.ratelimit import credential_id, read_send_rates
from ingest.settings import Settings

from .conftest import QUEUE, TOKEN

sync_api = pytest.importorskip(
    "playwright.sync_api",
    reason="playwright is not installed (pip install playwright; no browser download needed)",
)
uvicorn = pytest.importorskip("uvicorn", reason="uvicorn is not installed")

CHROMIUM = os.environ.get("INGEST_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(),
        reason=f"no chromium at {CHROMIUM} (apt-get install -y chromium)",
    ),
]

K = keys.QueueKeys(QUEUE)
PAUSED_SITE = "aaaaaaaaaaaaaaaaaaaaaaaa"
REJECTED = [f"ord_rejected_{i}" for i in range(3)]
EXHAUSTED = [f"ord_timeout_{i}" for i in range(2)]
DELIVERED = [f"ord_ok_{i}" for i in range(5)]
WAIT_MS = 15_000


def serve(app: Any) -> Iterator[str]:
    """``app`` served by uvicorn on a free loopback port, in a thread."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the console did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture
def live_console(settings: Settings) -> Iterator[str]:
    yield from serve(create_app(settings, options=ConsoleOptions()))


@pytest.fixture
def guarded_console(settings: Settings) -> Iterator[str]:
    yield from serve(create_app(settings, options=ConsoleOptions(token=SecretStr(TOKEN))))


@pytest.fixture
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def shoot(tmp_path: Path) -> Callable[[Any, str], None]:
    keep = os.environ.get("INGEST_CONSOLE_SCREENSHOTS")

    def shoot(page: Any, name: str) -> None:
        path = tmp_path / f"console-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(keep) / path.name)

    return shoot


@pytest.fixture
def dead_letters(
    settings: Settings, sandbox: Any, start_worker: Any, redis_client: redis.Redis
) -> None:
    """10 payments through a real worker: 5 delivered, 3 refused (400), 2 out of attempts
    (503 with one attempt allowed); then the cause is fixed and a website is paused."""
    sandbox.set_faults(
        fail_ids={
            **{t: {"status": 400, "message": "currency not supported"} for t in REJECTED},
            **{t: {"status": 503, "message": "upstream unavailable"} for t in EXHAUSTED},
        }
    )
    producer = Producer(settings.with_overrides(producer_timeout=5.0))
    try:
        for n, transaction_id in enumerate(DELIVERED + REJECTED + EXHAUSTED):
            producer.enqueue(
                validate_payment(
                    amount=Decimal("19.90"),
                    currency="eur",
                    transaction_id=transaction_id,
                    email=f"buyer{n}@example.com",
                    name="Ada Lovelace",
                )
            )
    finally:
        producer.close()
    worker = start_worker(burst=True, max_attempts="1")
    assert worker.wait(60) == 0, worker.output()
    assert redis_client.hlen(K.dead) == 5
    sandbox.set_faults(fail_ids={})
    redis_client.hset(
        K.paused,
        PAUSED_SITE,
        '{"status": 403, "error": "token lacks payments:write", '
        '"since": "2026-11-26T09:00:00.000Z", "last_probe_at": "2026-11-26T09:04:30.000Z"}',
    )


def nav(page: Any, name: str) -> Any:
    return page.get_by_role("navigation", name="Main").get_by_role("link", name=name)


def delivered(sandbox: Any, transaction_ids: list[str], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(sandbox.records(transaction_id=t) for t in transaction_ids):
            return True
        time.sleep(0.1)
    return False


def test_an_operator_replays_one_reason_with_the_mouse(
    dead_letters: None,
    live_console: str,
    browser: Any,
    shoot: Callable[[Any, str], None],
    sandbox: Any,
    start_worker: Any,
    redis_client: redis.Redis,
) -> None:
    expect = sync_api.expect
    page = browser.new_page(viewport={"width": 1360, "height": 900})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.goto(live_console + "/")
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    expect(page.locator('[data-field="identity.dead"]')).to_have_text("5")
    expect(page.locator('[data-field="identity.delivered"]')).to_have_text("5")
    expect(page.get_by_text("identity holds")).to_be_visible()
    shoot(page, "overview")

    nav(page, "Paused websites").click()
    expect(page.get_by_text("token lacks payments:write")).to_be_visible()
    shoot(page, "paused")
    page.get_by_role("button", name=f"Probe {PAUSED_SITE} now").click()
    expect(page.get_by_text("probe requested").first).to_be_visible()
    assert redis_client.sismember(K.probe_requests, PAUSED_SITE)

    nav(page, "Dead letters").click()
    expect(page.locator("[data-total]")).to_have_text("5")
    page.get_by_role("checkbox", name="rejected (API refused, 4xx)").check()
    page.get_by_role("button", name="Apply filters").click()
    expect(page).to_have_url(re.compile(r"reason=rejected"))
    expect(page.locator("table.letters tbody tr")).to_have_count(3)
    shoot(page, "dead-letters")

    page.get_by_role("link", name=REJECTED[0]).click()
    expect(page.get_by_text("currency not supported").first).to_be_visible()
    expect(page.get_by_text("b***@example.com")).to_be_visible()
    shoot(page, "dead-letter")
    page.go_back()

    page.get_by_role("link", name="Replay these 3…").click()
    expect(page.locator("[data-preview-count] strong")).to_have_text("3")
    expect(page.get_by_text("Nothing has changed yet.")).to_be_visible()
    assert redis_client.hlen(K.dead) == 5
    shoot(page, "replay-preview")

    page.get_by_role("button", name="Replay 3 dead letters").click()
    expect(page.locator("[data-requeued]")).to_have_text("3")
    shoot(page, "replay-result")
    assert redis_client.hlen(K.dead) == 2

    nav(page, "Overview").click()
    expect(page.locator('[data-field="identity.queued"]')).to_have_text("3")
    worker = start_worker(burst=True)
    assert worker.wait(60) == 0, worker.output()
    assert delivered(sandbox, REJECTED)
    # The overview refreshes itself: no reload.
    expect(page.locator('[data-field="identity.delivered"]')).to_have_text("8", timeout=WAIT_MS)
    expect(page.locator('[data-field="identity.queued"]')).to_have_text("0")

    nav(page, "Dead letters").click()
    expect(page.locator("[data-total]")).to_have_text("2")
    page.get_by_role("link", name="Purge all 2…").click()
    expect(page.locator("[data-preview-count] strong")).to_have_text("2")
    expect(page.get_by_text("Purged payments never reach DataFast.")).to_be_visible()
    shoot(page, "purge-preview")
    page.get_by_role("link", name="Cancel").click()
    expect(page.locator("[data-total]")).to_have_text("2")
    page.get_by_role("checkbox", name="rejected (API refused, 4xx)").check()
    page.get_by_role("button", name="Apply filters").click()
    expect(page.get_by_text("No dead letter matches these filters.")).to_be_visible()
    assert errors == []


def tab_to(page: Any, describe: str, test: str, limit: int = 80) -> None:
    """Press Tab until the focused element passes ``test`` (JS, ``el`` is the element)."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        if page.evaluate(f"(() => {{ const el = document.activeElement; return {test}; }})()"):
            return
    raise AssertionError(f"Tab never reached {describe}")


def text_is(text: str) -> str:
    return f"el && el.textContent.trim() === {text!r}"


def test_the_same_flow_with_the_keyboard_alone(
    dead_letters: None,
    live_console: str,
    browser: Any,
    sandbox: Any,
    start_worker: Any,
    redis_client: redis.Redis,
) -> None:
    expect = sync_api.expect
    page = browser.new_page(viewport={"width": 1360, "height": 900})
    page.goto(live_console + "/")
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()

    tab_to(page, "the Dead letters link", text_is("Dead letters"))
    page.keyboard.press("Enter")
    expect(page.locator("[data-total]")).to_have_text("5")

    tab_to(page, "the rejected checkbox", "el && el.name === 'reason' && el.value === 'rejected'")
    page.keyboard.press("Space")
    tab_to(page, "Apply filters", text_is("Apply filters"))
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"reason=rejected"))
    expect(page.locator("table.letters tbody tr")).to_have_count(3)

    tab_to(page, "the replay link", text_is("Replay these 3…"))
    page.keyboard.press("Enter")
    expect(page.locator("[data-preview-count] strong")).to_have_text("3")
    assert redis_client.hlen(K.dead) == 5

    tab_to(page, "the confirmation button", text_is("Replay 3 dead letters"))
    page.keyboard.press("Enter")
    expect(page.locator("[data-requeued]")).to_have_text("3")

    worker = start_worker(burst=True)
    assert worker.wait(60) == 0, worker.output()
    assert delivered(sandbox, REJECTED)

    tab_to(page, "the Dead letters link", text_is("Dead letters"))
    page.keyboard.press("Enter")
    expect(page.locator("[data-total]")).to_have_text("2")
    remaining = DeadLetterStore(redis_client, QUEUE).iter()
    assert sorted(d.transaction_id for d in remaining) == EXHAUSTED


def test_logging_in_with_the_token(
    guarded_console: str, browser: Any, shoot: Callable[[Any, str], None]
) -> None:
    expect = sync_api.expect
    page = browser.new_page(viewport={"width": 1360, "height": 900})
    page.goto(guarded_console + "/paused")
    expect(page).to_have_url(re.compile(r"/login\?next=%2Fpaused$"))
    shoot(page, "login")
    page.get_by_label("Token").fill("not the token")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_text("That token is not right.")).to_be_visible()
    page.get_by_label("Token").fill(TOKEN)
    page.keyboard.press("Enter")
    expect(page).to_have_url(guarded_console + "/paused")
    nav(page, "Overview").click()
    # The live refresh fetches /api/overview with the session cookie.
    expect(page.locator("[data-live-status]")).to_contain_text("live", timeout=WAIT_MS)
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_label("Token")).to_be_visible()


def test_the_overview_shows_the_send_rate_a_real_worker_learned(
    settings: Settings,
    sandbox: Any,
    start_worker: Any,
    live_console: str,
    browser: Any,
    shoot: Callable[[Any, str], None],
    redis_client: redis.Redis,
) -> None:
    """Payments through a real worker against the sandbox's token bucket of 100/s: the
    overview shows the rate the worker learned, by the credential's short hash, never the
    key."""
    from ingest.sandbox import DEFAULT_WEBSITE_KEY

    expect = sync_api.expect
    sandbox.set_faults(rate_limit=100)
    producer = Producer(settings.with_overrides(producer_timeout=5.0))
    try:
        producer.enqueue_many(
            validate_payment(amount=Decimal("9.90"), currency="usd", transaction_id=f"ord_r{i}")
            for i in range(600)
        )
    finally:
        producer.close()
    worker = start_worker(burst=True)
    assert worker.wait(60) == 0, worker.output()
    [learned] = read_send_rates(redis_client, QUEUE, now=time.time())
    assert learned.credential == credential_id(DEFAULT_WEBSITE_KEY, None)
    assert 30.0 < learned.rate < 200.0  # started at 30/s, learned near the limit of 100/s

    page = browser.new_page(viewport={"width": 1360, "height": 900})
    page.goto(live_console + "/")
    expect(page.locator("[data-send-rate]")).to_have_text(re.compile(r"^\d+(\.\d)?/s"))
    expect(page.get_by_text(f"Send rate {learned.credential}")).to_be_visible()
    shoot(page, "send-rate")
    assert DEFAULT_WEBSITE_KEY not in page.content()
