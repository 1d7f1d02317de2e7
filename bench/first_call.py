"""The first call of a process: importing ingest and the first enqueue_payment, beside
``import redis`` plus one LPUSH.

    python bench/first_call.py [--runs 15]

What a checkout app pays once per process (a gunicorn or uvicorn worker's first request, a
serverless cold start). Every run is a new interpreter against an embedded redis-server
(never 6379); the two programs alternate, so machine noise falls on both alike. Before each
run of ours the server's script cache is flushed, so the first call pays the script load as
a fresh deployment would. Columns are medians over ``--runs`` (p90 beside them):

- import: ``import ingest`` (validation, settings, Redis client, metrics), against
  ``import redis``;
- first call: the first ``enqueue_payment`` (settings from the environment, the lazy default
  producer, a connection, the script load), against the first ``LPUSH``;
- process: interpreter start to exit, measured from outside.

Target (issue 12): the README example returns a receipt in under 1 s on a core install.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis
from rich.console import Console
from rich.table import Table

from ingest.embedded import RedisServer

BASELINE = """
import time
started = time.perf_counter()
import redis
imported = time.perf_counter()
redis.Redis.from_url(URL).lpush("bench:first-call", b'{"amount":29.99}')
called = time.perf_counter()
print(json.dumps({"import": imported - started, "call": called - imported}))
"""

OURS = """
import time
started = time.perf_counter()
from ingest import enqueue_payment
imported = time.perf_counter()
receipt = enqueue_payment(amount=29.99, currency="usd", transaction_id=TX)
called = time.perf_counter()
assert receipt.status == "queued", receipt
print(json.dumps({"import": imported - started, "call": called - imported}))
"""


def run_once(program: str, env: dict[str, str], **names: str) -> dict[str, float]:
    source = "import json\n" + "".join(f"{k} = {v!r}\n" for k, v in names.items()) + program
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", source],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    wall = time.perf_counter() - started
    return {**json.loads(result.stdout), "process": wall}


def summary(samples: list[dict[str, float]], key: str) -> tuple[float, float]:
    values = sorted(s[key] * 1000 for s in samples)
    p90 = values[min(len(values) - 1, int(len(values) * 0.9))]
    return statistics.median(values), p90


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="fresh processes of each kind")
    args = parser.parse_args(argv)

    ours: list[dict[str, float]] = []
    baseline: list[dict[str, float]] = []
    with RedisServer() as server, tempfile.TemporaryDirectory() as spool:
        client = redis.Redis.from_url(server.url)
        env = {
            "PATH": os.environ.get("PATH", ""),
            "INGEST_REDIS_URL": server.url,
            "INGEST_SPOOL_DIR": spool,
        }
        for run in range(args.runs):
            print(f"\rrun {run + 1}/{args.runs}", end="", file=sys.stderr, flush=True)
            baseline.append(run_once(BASELINE, env, URL=server.url))
            client.script_flush()
            ours.append(run_once(OURS, env, TX=f"first-call-{run}-{time.time_ns()}"))
        print(file=sys.stderr)
        client.close()

    table = Table(title=f"first call of a fresh process, medians of {args.runs} (p90)")
    for column in ("figure", "ours", "import redis + LPUSH", "ratio"):
        table.add_column(column, justify="left" if column == "figure" else "right")
    for key, label in (
        ("import", "import"),
        ("call", "first call"),
        ("process", "process, start to exit"),
    ):
        (ours_p50, ours_p90), (base_p50, base_p90) = summary(ours, key), summary(baseline, key)
        table.add_row(
            f"{label}, ms",
            f"{ours_p50:,.1f} ({ours_p90:,.1f})",
            f"{base_p50:,.1f} ({base_p90:,.1f})",
            f"{ours_p50 / base_p50:.2f}x",
        )
    Console().print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
