"""Prometheus metrics: counters and gauges behind one small module.

Process-local figures (what this producer or worker did) are prometheus-client metrics in
the default registry; queue-wide figures (depth, dead letters, the accounting identity) are
read from Redis by :func:`ingest.stats.read_accounting` and exported as gauges by
``ingest metrics``. Names follow Prometheus conventions: ``_total`` counters, base units
(seconds), no PII or secret in any label.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

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


class QueueCollector:
    """Queue-wide figures read from Redis at scrape time (served by ``ingest metrics``).

    One scrape is one consistent snapshot (:func:`ingest.stats.read_accounting`), so the
    accounting identity holds between the exported series too.
    """

    def __init__(self, connection: Any, queue: str) -> None:
        self.connection = connection
        self.queue = queue

    def describe(self) -> list[Any]:
        return []  # collected lazily: a scrape must not fail at registration

    def collect(self) -> Iterator[Any]:
        from .stats import read_accounting

        try:
            a = read_accounting(self.connection, self.queue)
        except Exception:  # Redis down: report it rather than failing the scrape
            up = GaugeMetricFamily("ingest_redis_up", "Whether Redis answered this scrape.")
            up.add_metric([], 0)
            yield up
            return
        up = GaugeMetricFamily("ingest_redis_up", "Whether Redis answered this scrape.")
        up.add_metric([], 1)
        yield up
        events = CounterMetricFamily(
            "ingest_events", "Events by what finally happened to them.", labels=["outcome"]
        )
        for outcome, value in (
            ("enqueued", a.enqueued),
            ("delivered", a.delivered),
            ("api_duplicate", a.api_duplicates),
            ("enqueue_duplicate", a.duplicates),
            ("retried", a.retried),
            ("dead_lettered", a.dead_lettered_total),
            ("replayed", a.replayed),
            ("purged", a.purged),
            ("erased", a.erased),
        ):
            events.add_metric([outcome], value)
        yield events
        state = GaugeMetricFamily(
            "ingest_queue_events", "Events currently in each state.", labels=["state"]
        )
        for name, value in (
            ("queued", a.queued),
            ("in_flight", a.in_flight),
            ("scheduled", a.scheduled),
            ("deferred", a.deferred),
            ("parked", a.parked),
            ("dead", a.dead),
        ):
            state.add_metric([name], value)
        yield state
        lost = GaugeMetricFamily(
            "ingest_accounting_lost_events",
            "Enqueued minus every place an event can be; anything but 0 is a bug.",
        )
        lost.add_metric([], a.lost)
        yield lost
        age = GaugeMetricFamily(
            "ingest_oldest_queued_event_age_seconds", "Age of the oldest queued event."
        )
        age.add_metric([], a.oldest_queued_age or 0.0)
        yield age
        rate = GaugeMetricFamily(
            "ingest_delivery_rate_per_second", "Deliveries per second over the last minute."
        )
        rate.add_metric([], a.rate_per_second)
        yield rate
        workers = GaugeMetricFamily("ingest_workers", "RQ workers alive on this queue's Redis.")
        workers.add_metric([], a.workers)
        yield workers
        paused = GaugeMetricFamily(
            "ingest_paused_websites", "Websites paused after a 401/403 from the API."
        )
        paused.add_metric([], len(a.paused))
        yield paused
