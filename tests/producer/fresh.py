"""Run user code in a fresh interpreter, configured by environment alone, under a watchdog.

This is where users start: no ``configure()`` first, no fixture's producer, the default
producer built lazily by the first call. Every public entry point is exercised this way,
because a suite that always configured first once hid a first call that never returned.

The watchdog is ``faulthandler.dump_traceback_later``: a call still running after
``WATCHDOG_SECONDS`` prints every thread's stack to stderr and exits the child with
status 1, so a hang fails the test with the stack that shows where it hangs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WATCHDOG_SECONDS = 2.0

# Put before user code. ``watchdog()`` bounds one call; ``report()`` hands results back.
PRELUDE = f"""\
import contextlib, faulthandler, json, sys, time

@contextlib.contextmanager
def watchdog(seconds={WATCHDOG_SECONDS}):
    faulthandler.dump_traceback_later(seconds, exit=True)  # every thread's stack, exit 1
    started = time.perf_counter()
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        report(elapsed=time.perf_counter() - started)

def report(**values):
    print(json.dumps(values, default=str), flush=True)

def receipt(r):
    return {{"transaction_id": r.transaction_id, "status": r.status}}
"""


@dataclass(frozen=True)
class FreshRun:
    """What a fresh interpreter reported: one dict per ``report()`` line, in order."""

    returncode: int
    reports: list[dict[str, Any]]
    stdout: str
    stderr: str

    def explain(self) -> str:
        return f"exit {self.returncode}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"

    def elapsed(self) -> list[float]:
        return [r["elapsed"] for r in self.reports if "elapsed" in r]

    def receipts(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for r in self.reports:
            found += r.get("receipts", [])
        return found


def _reports(stdout: str) -> list[dict[str, Any]]:
    reports = []
    for line in stdout.splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            reports.append(value)
    return reports


def run_fresh(
    code: str,
    env: dict[str, str],
    cwd: Path,
    *,
    stdin: str = "",
    timeout: float = 60,
    python: str = sys.executable,
) -> FreshRun:
    """Run ``PRELUDE + code`` in a new interpreter (``python``) with exactly ``env``."""
    result = subprocess.run(
        [python, "-c", PRELUDE + code],
        env=env,
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return FreshRun(result.returncode, _reports(result.stdout), result.stdout, result.stderr)


def spawn_fresh(code: str, env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    """Start ``PRELUDE + code`` with pipes, for a test that talks to it line by line."""
    return subprocess.Popen(
        [sys.executable, "-c", PRELUDE + code],
        env=env,
        cwd=cwd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
    )


# One program per public entry point, each exactly as the README shows it: import, call.
# ``TX`` is replaced by the transaction id of the test.
ENTRY_POINTS: dict[str, str] = {
    "enqueue_payment": """
from ingest import enqueue_payment
with watchdog():
    r = enqueue_payment(amount=29.99, currency="usd", transaction_id="TX")
report(receipts=[receipt(r)])
""",
    "enqueue_payment_async": """
import asyncio
from ingest import enqueue_payment_async

async def checkout():
    with watchdog():
        r = await enqueue_payment_async(amount=29.99, currency="usd", transaction_id="TX")
    report(receipts=[receipt(r)])

asyncio.run(checkout())
""",
    "enqueue_payments": """
from ingest import enqueue_payments
with watchdog():
    results = enqueue_payments([{"amount": 29.99, "currency": "usd", "transaction_id": "TX"}])
report(receipts=[receipt(r) for r in results])
""",
    "configure": """
import ingest
with watchdog():
    ingest.configure()
    r = ingest.enqueue_payment(amount=29.99, currency="usd", transaction_id="TX")
report(receipts=[receipt(r)])
""",
}
