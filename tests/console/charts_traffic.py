"""Real traffic for the screenshot of the overview's charts (``docs/console-charts.png``).

A redis-server, the sandbox (25-65 ms per answer), two real ``python -m ingest worker``
processes and a producer whose rate varies; a worker outage from minute 4 to 6.5 (the
backlog builds, then drains) and a bad release from minute 10 to 13 (the API refuses 20% of
payments: dead letters). Then the console is opened in chromium and the charts card shot::

    python -m tests.console.charts_traffic --minutes 26 --out docs

Not a test (it runs for ``--minutes``); run by hand to redraw the README's picture.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

from ingest.console.app import create_app
from ingest.console.config import ConsoleOptions
from ingest.embedded import RedisServer
from ingest.models import validate_payment
from ingest.producer import Producer
from ingest.sandbox import DEFAULT_WEBSITE_KEY, SandboxServer
from ingest.settings import Settings

from .test_console_browser import CHROMIUM, CHROMIUM_ARGS, serve, sync_api

REFUSAL = {"status": 400, "message": "amount does not match the order"}


def _environment(redis_url: str, api_url: str, state: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGEST_")}
    env.update(
        INGEST_REDIS_URL=redis_url,
        INGEST_API_URL=api_url,
        INGEST_API_KEY=DEFAULT_WEBSITE_KEY,
        INGEST_LOG_LEVEL="WARNING",
        INGEST_SPOOL_DIR=str(state / "spool"),
        INGEST_CONCURRENCY="32",
        INGEST_MAX_ATTEMPTS="3",
        INGEST_BACKOFF_BASE="1",
        INGEST_BACKOFF_MAX="5",
    )
    return env


def _start(name: str, env: dict[str, str], state: Path) -> subprocess.Popen[bytes]:
    with (state / f"{name}.log").open("ab") as log:
        command = [sys.executable, "-m", "ingest", "worker", "--name", name]
        return subprocess.Popen(command, env=env, stdout=log, stderr=log)


def _stop(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)


def _drive(minutes: float, redis_url: str, sandbox: SandboxServer, state: Path) -> int:
    """Enqueue for ``minutes`` with the outage and the bad release; how many events."""
    rng = random.Random(7)
    env = _environment(redis_url, sandbox.url, state)
    workers = [_start(f"worker-{i}", env, state) for i in (1, 2)]
    producer = Producer(Settings(redis_url=redis_url, spool_dir=state / "spool"))
    start, n, outage = time.time(), 0, False
    try:
        while (m := (time.time() - start) / 60) < minutes:
            if 4 <= m < 6.5 and not outage:
                for worker in workers:
                    _stop(worker)
                outage = True
            if outage and not 4 <= m < 6.5:
                workers = [_start(f"worker-{i}", env, state) for i in (1, 2)]
                outage = False
            transaction_id = f"ord_{n:06d}"
            if 10 <= m < 13 and rng.random() < 0.2:
                transaction_id = f"bad_{n:06d}"
                refused = {**sandbox.faults().fail_ids, transaction_id: REFUSAL}
                sandbox.set_faults(fail_ids=refused)
            payment = validate_payment(
                amount=Decimal("19.90"), currency="eur", transaction_id=transaction_id
            )
            producer.enqueue(payment)
            n += 1
            rate = 12 + 8 * math.sin(m / 2.5) + (25 if m >= 16 else 0)
            time.sleep(rng.expovariate(rate))
        time.sleep(15)  # the last batches acknowledged, a last sample of the queue taken
    finally:
        producer.close()
        for worker in workers:
            _stop(worker)
    return n


def _shoot(redis_url: str, out: Path) -> Path:
    app = create_app(Settings(redis_url=redis_url), options=ConsoleOptions())
    served = serve(app)
    base = next(served)
    path = out / "console-charts.png"
    try:
        with sync_api.sync_playwright() as playwright:
            chromium = playwright.chromium.launch(
                executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
            )
            page = chromium.new_page(viewport={"width": 1360, "height": 900})
            page.goto(base + "/")
            card = page.locator(".card").filter(has=page.locator("#charts-title"))
            card.screenshot(path=str(path))
            chromium.close()
    finally:
        served.close()
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=26.0, help="traffic to run (26)")
    parser.add_argument("--out", type=Path, default=Path("docs"), help="where the PNG goes")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory() as state,
        RedisServer() as server,
        SandboxServer() as sandbox,
    ):
        sandbox.set_faults(latency_ms=25, latency_jitter_ms=40)
        events = _drive(args.minutes, server.url, sandbox, Path(state))
        print(f"{events} events; {_shoot(server.url, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
