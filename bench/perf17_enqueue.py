"""One checkout's enqueue latency beside a raw LPUSH, in this process (for bench/perf17.py).

    python bench/perf17_enqueue.py REDIS_URL OPS SLICES TAG SPOOL_DIR

Prints one JSON line: p50 and p99 in microseconds of ``enqueue_payment`` (validation
included) and of a raw ``LPUSH`` of the same job data, measured in interleaved slices.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import redis

from ingest.jobs import job_data
from ingest.models import validate_payment
from ingest.producer import configure, enqueue_payment
from ingest.settings import Settings

FIELDS = {
    "amount": "29.99",
    "currency": "USD",
    "datafast_visitor_id": "3f1c2a4e-0000-4c1b-9b7e-000000000001",
    "email": "jane@example.com",
    "customer_id": "cus_123",
}


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return 1e6 * ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def main(argv: list[str]) -> int:
    url, ops, slices, tag, spool = argv[0], int(argv[1]), int(argv[2]), argv[3], argv[4]
    configure(Settings(redis_url=url, spool_dir=Path(spool)))
    raw = redis.Redis.from_url(url)
    payload = job_data(validate_payment(transaction_id="floor", **FIELDS))
    for i in range(200):  # warm both paths: connections, the script cache
        raw.lpush("bench:floor", payload)
        enqueue_payment(transaction_id=f"{tag}-warm-{i}", **FIELDS)
    lpush: list[float] = []
    ours: list[float] = []
    cpu = {"lpush": 0.0, "ours": 0.0}
    n = 0
    for _ in range(slices):
        cpu_started = time.process_time()
        for _ in range(ops // slices):
            started = time.perf_counter()
            raw.lpush("bench:floor", payload)
            lpush.append(time.perf_counter() - started)
        cpu["lpush"] += time.process_time() - cpu_started
        raw.delete("bench:floor")
        cpu_started = time.process_time()
        for _ in range(ops // slices):
            n += 1
            started = time.perf_counter()
            enqueue_payment(transaction_id=f"{tag}-{n}", **FIELDS)
            ours.append(time.perf_counter() - started)
        cpu["ours"] += time.process_time() - cpu_started
    figures = {
        "lpush_p50": percentile(lpush, 0.5),
        "lpush_p99": percentile(lpush, 0.99),
        "p50": percentile(ours, 0.5),
        "p99": percentile(ours, 0.99),
        # CPU of this process per call: what contention from other processes moves least.
        "lpush_cpu": 1e6 * cpu["lpush"] / len(lpush),
        "cpu": 1e6 * cpu["ours"] / len(ours),
    }
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
