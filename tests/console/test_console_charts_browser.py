"""The overview's charts in a real browser, after real traffic.

Payments go through a real worker (``python -m ingest worker``) to the sandbox, which refuses
some (dead letters); the worker's scripts keep the minute history; the console, started
afterwards, draws it. Chromium as in ``test_console_browser.py``; the screenshot of the
charts goes to ``$INGEST_CONSOLE_SCREENSHOTS`` too when that is set.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis

from ingest import keys
from ingest.console.app import create_app
from ingest.console.config import ConsoleOptions
from ingest.models import validate_payment
from ingest.producer import Producer
from ingest.settings import Settings

from .conftest import QUEUE
from .test_console_browser import CHROMIUM, CHROMIUM_ARGS, serve, sync_api

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no chromium at {CHROMIUM}"),
]

K = keys.QueueKeys(QUEUE)
DELIVERED = [f"ord_chart_ok_{i}" for i in range(12)]
REFUSED = [f"ord_chart_refused_{i}" for i in range(4)]


@pytest.fixture
def traffic(settings: Settings, sandbox: Any, start_worker: Any, redis_client: redis.Redis) -> None:
    """16 payments through a real worker: 12 delivered, 4 refused by the API (dead letters)."""
    sandbox.set_faults(
        fail_ids={t: {"status": 400, "message": "currency not supported"} for t in REFUSED}
    )
    producer = Producer(settings.with_overrides(producer_timeout=5.0))
    try:
        for transaction_id in DELIVERED + REFUSED:
            producer.enqueue(
                validate_payment(
                    amount=Decimal("19.90"), currency="eur", transaction_id=transaction_id
                )
            )
    finally:
        producer.close()
    worker = start_worker(burst=True, max_attempts="1")
    assert worker.wait(60) == 0, worker.output()
    assert redis_client.hlen(K.dead) == len(REFUSED)
    # The current minute is drawn once 10 s of it have passed (charts.PARTIAL_MINUTE).
    while time.time() % 60 < 11:
        time.sleep(0.2)


@pytest.fixture
def console(settings: Settings) -> Iterator[str]:
    yield from serve(create_app(settings, options=ConsoleOptions()))


@pytest.fixture
def page(console: str) -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield chromium.new_page(viewport={"width": 1360, "height": 900})
        finally:
            chromium.close()


def test_the_overview_draws_the_workers_traffic_without_script_errors(
    traffic: None, console: str, page: Any, tmp_path: Path
) -> None:
    expect = sync_api.expect
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on(
        "response", lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None
    )
    page.goto(console + "/")
    charts = page.locator("figure.chart")
    expect(charts).to_have_count(4)
    for title in ("Delivered per second", "Dead-lettered per second", "Queue depth"):
        expect(page.get_by_role("img", name=title)).to_be_visible()
    # 12 deliveries and 4 dead letters within the last minute or two, the 16 sampled queued.
    expect(page.locator("svg.chart-delivered circle.dot").last).to_be_visible()
    expect(page.locator("svg.chart-dead-lettered circle.dot").last).to_be_visible()
    depth = page.locator("figure.chart").filter(has_text="Queue depth")
    expect(depth.locator("figcaption")).to_contain_text("peak 16")
    assert page.locator("svg.chart-depth .empty").count() == 0
    assert problems == []

    card = page.locator(".card").filter(has=page.locator("#charts-title"))
    path = tmp_path / "console-charts.png"
    card.screenshot(path=str(path))
    keep = os.environ.get("INGEST_CONSOLE_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        (Path(keep) / path.name).write_bytes(path.read_bytes())
