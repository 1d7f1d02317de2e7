"""Prometheus metrics: counters and gauges behind one small module.

Process-local figures (what this producer or worker did) are prometheus-client metrics in
the default registry; queue-wide figures (depth, dead letters, the accounting identity) are
read from Redis by :func:`ingest.stats.read_accounting` and exported as gauges by
``ingest metrics``. Names follow Prometheus conventions: ``_total`` counters, base units
(seconds), no PII or secret in any label.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ENQUEUED = Counter(
    "ingest_producer_events_total",
    "Events handed to enqueue_payment, by result.",
    ["result"],  # queued, deferred, duplicate, spooled
)
REJECTED = Counter(
    "ingest_producer_rejected_total",
    "Events refused by validation before reaching Redis, by field.",
    ["field"],
)
REDIS_ERRORS = Counter(
    "ingest_producer_redis_errors_total", "Producer calls to Redis that failed.", ["kind"]
)
SPOOL_EVENTS = Gauge("ingest_producer_spool_events", "Events kept on local disk waiting for Redis.")
SPOOL_FULL = Counter(
    "ingest_producer_spool_full_total", "Events refused because the spool reached its cap."
)

DELIVERIES = Counter(
    "ingest_worker_deliveries_total",
    "Finished delivery attempts, by outcome.",
    ["outcome"],  # delivered, duplicate, retried, dead_lettered, parked, returned
)
API_RESPONSES = Counter(
    "ingest_worker_api_responses_total",
    "Answers of the Payments API, by HTTP status ('none' for a transport error).",
    ["status"],
)
DELIVERY_SECONDS = Histogram(
    "ingest_worker_delivery_seconds",
    "Time of one POST to the Payments API.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
IN_FLIGHT = Gauge("ingest_worker_in_flight_requests", "POSTs in flight in this worker.")
SEND_LIMIT = Gauge(
    "ingest_worker_send_limit", "Requests this worker may have in flight (shrinks after a 429)."
)
RECLAIMED = Counter(
    "ingest_worker_reclaimed_total", "Events of dead workers put back on the queue."
)
