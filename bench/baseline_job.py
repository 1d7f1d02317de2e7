"""The baseline: what a plain RQ deployment runs, one POST of one payment per job.

Run by a stock ``rq worker`` (``SimpleWorker`` or the forking ``Worker``) in its own process,
so it must stay importable as ``bench.baseline_job`` and read its configuration from the
environment (``BENCH_API_URL``, ``BENCH_API_KEY``), as a real job module would.

The ``httpx.Client`` is kept per process (keep-alive across jobs), which is the generous
choice for the baseline: a ``SimpleWorker`` reuses one connection; the forking ``Worker``
starts every job in a fresh horse and so pays for a new client and connection each time.
"""

from __future__ import annotations

import os

import httpx

PAYMENTS_PATH = "/api/v1/payments"

_client: httpx.Client | None = None
_client_pid: int | None = None


def _get_client() -> httpx.Client:
    global _client, _client_pid
    if _client is None or _client_pid != os.getpid():
        _client = httpx.Client(
            base_url=os.environ["BENCH_API_URL"],
            headers={
                "Authorization": f"Bearer {os.environ['BENCH_API_KEY']}",
                "Content-Type": "application/json",
            },
            timeout=10.0,
        )
        _client_pid = os.getpid()
    return _client


def post_payment(body: str) -> int:
    """POST one payment; raise (so RQ records a failure) on anything but a 2xx."""
    response = _get_client().post(PAYMENTS_PATH, content=body.encode())
    response.raise_for_status()
    return response.status_code


def noop() -> None:
    """A job that does nothing: RQ's own per-job cost, without any HTTP."""
