"""Prometheus metrics: counters and gauges behind one small module.

Process-local figures (what this producer or worker did) are prometheus-client metrics in
the default registry; queue-wide figures (depth, dead letters, the accounting identity) are
read from Redis by :func:`ingest.stats.read_accounting` and exported by ``ingest metrics``.
Names follow Prometheus conventions: ``_total`` counters, base units (seconds), no PII or
secret in any label, a ``queue`` label on every per-queue series, and rates left to PromQL.
Where a label splits events (``outcome``, ``state``), its values never overlap, so ``sum()``
over it means something: ``sum(ingest_events_finished_total) + sum(ingest_events)`` is every
event enqueued, and ``ingest_accounting_lost_events`` what is missing from that.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

if TYPE_CHECKING:  # stats imports redis helpers this module need not load at import
    from .stats import Accounting

ENQUEUED = Counter(
    "ingest_producer_events_total",
    "Events handed to enqueue_payment, by result.",
    ["queue", "result"],  # queued, deferred, duplicate, spooled
)
REJECTED = Counter(
    "ingest_producer_rejected_total",
    "Events refused by validation before reaching Redis, by field.",
    ["field"],
)
REDIS_ERRORS = Counter(
    "ingest_producer_redis_errors_total", "Producer calls to Redis that failed.", ["queue", "kind"]
)
SPOOL_EVENTS = Gauge("ingest_producer_spool_events", "Events kept on local disk waiting for Redis.")
SPOOL_FULL = Counter(
    "ingest_producer_spool_full_total", "Events refused because the spool reached its cap."
)

DELIVERIES = Counter(
    "ingest_worker_deliveries_total",
    "Finished delivery attempts, by outcome.",
    ["queue", "outcome"],  # delivered, duplicate, retried, dead_lettered, parked, returned
)
API_RESPONSES = Counter(
    "ingest_worker_api_responses_total",
    "Answers of the Payments API, by HTTP status ('none' for a transport error).",
    ["queue", "status"],
)
DELIVERY_SECONDS = Histogram(
    "ingest_worker_delivery_seconds",
    "Time of one POST to the Payments API.",
    ["queue"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
IN_FLIGHT = Gauge("ingest_worker_in_flight_requests", "POSTs in flight in this worker.", ["queue"])
SEND_LIMIT = Gauge(
    "ingest_worker_send_limit",
    "Requests this worker may have in flight (follows the API's latency).",
    ["queue"],
)
RECLAIMED = Counter(
    "ingest_worker_reclaimed_total", "Events of dead workers put back on the queue.", ["queue"]
)

DELIVERY_OUTCOMES = ("delivered", "duplicate", "retried", "dead_lettered", "parked", "returned")


class WorkerMetrics:
    """One worker's series for its queue, every label child resolved once: a ``labels()``
    lookup for each event costs more than the increment itself."""

    def __init__(self, queue: str) -> None:
        self.queue = queue
        self.outcomes = {o: DELIVERIES.labels(queue, o) for o in DELIVERY_OUTCOMES}
        self.delivery_seconds = DELIVERY_SECONDS.labels(queue)
        self.in_flight = IN_FLIGHT.labels(queue)
        self.send_limit = SEND_LIMIT.labels(queue)
        self.reclaimed = RECLAIMED.labels(queue)
        self._responses: dict[str, Any] = {}

    def response(self, status: str) -> None:
        child = self._responses.get(status)
        if child is None:
            child = self._responses[status] = API_RESPONSES.labels(self.queue, status)
        child.inc()


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

        up = GaugeMetricFamily(
            "ingest_redis_up", "Whether Redis answered this scrape.", labels=["queue"]
        )
        try:
            a = read_accounting(self.connection, self.queue)
        except Exception:  # Redis down: report it rather than failing the scrape
            up.add_metric([self.queue], 0)
            yield up
            return
        up.add_metric([self.queue], 1)
        yield up
        q = self.queue
        yield from _event_families(q, a)
        yield from _single_families(q, a)
        yield from _send_rate_families(q, a)


def _event_families(q: str, a: Accounting) -> Iterator[Any]:
    """Where events are: enqueued, finished by outcome, and in the system by state."""
    yield _family(
        CounterMetricFamily,
        "ingest_events_enqueued",
        "Events accepted into the queue.",
        q,
        a.enqueued,
    )
    finished = CounterMetricFamily(
        "ingest_events_finished",
        "Events that left the system for good, by how (values never overlap).",
        labels=["queue", "outcome"],
    )
    for outcome, value in (
        ("delivered", a.delivered),
        ("purged", a.purged),
        ("erased", a.erased),
    ):
        finished.add_metric([q, outcome], value)
    yield finished
    state = GaugeMetricFamily(
        "ingest_events",
        "Events in the system now, by state (values never overlap).",
        labels=["queue", "state"],
    )
    for name, value in (
        ("queued", a.queued),
        ("in_flight", a.in_flight),
        ("scheduled", a.scheduled),
        ("deferred", a.deferred),
        ("parked", a.parked),
        ("dead", a.dead),
    ):
        state.add_metric([q, name], value)
    yield state


def _single_families(q: str, a: Accounting) -> Iterator[Any]:
    """One series each: duplicates, retries, dead letters, replays, lost, age, workers."""
    singles: list[tuple[Any, str, str, float]] = [
        (
            CounterMetricFamily,
            "ingest_enqueue_duplicates",
            "Enqueues refused: the same event is in the system or was recently delivered.",
            a.duplicates,
        ),
        (
            CounterMetricFamily,
            "ingest_api_duplicates",
            "Deliveries the API reported as already recorded (a subset of delivered).",
            a.api_duplicates,
        ),
        (CounterMetricFamily, "ingest_retries", "Attempts scheduled for a retry.", a.retried),
        (
            CounterMetricFamily,
            "ingest_dead_lettered",
            "Times an event was put in the dead-letter store.",
            a.dead_lettered_total,
        ),
        (
            CounterMetricFamily,
            "ingest_replayed",
            "Dead letters put back on the queue by a replay.",
            a.replayed,
        ),
        (
            GaugeMetricFamily,
            "ingest_accounting_lost_events",
            "Enqueued minus every place an event can be; anything but 0 is a bug.",
            a.lost,
        ),
        (
            GaugeMetricFamily,
            "ingest_oldest_queued_event_age_seconds",
            "Age of the oldest queued event.",
            a.oldest_queued_age or 0.0,
        ),
        (GaugeMetricFamily, "ingest_workers", "RQ workers alive on this Redis.", a.workers),
        (
            GaugeMetricFamily,
            "ingest_paused_websites",
            "Websites paused after a 401/403 from the API.",
            len(a.paused),
        ),
    ]
    for family, name, documentation, figure in singles:
        yield _family(family, name, documentation, q, figure)


def _send_rate_families(q: str, a: Accounting) -> Iterator[Any]:
    """Each credential's learned send rate and hold (issue 14), by its short hash."""
    rate = GaugeMetricFamily(
        "ingest_send_rate_limit",
        "A credential's learned send rate, shared by every worker, in requests/s "
        "(credential: a short hash, never the key).",
        labels=["credential", "queue"],
    )
    hold = GaugeMetricFamily(
        "ingest_send_rate_hold_seconds",
        "Seconds left of a credential's hold after most answers were 429 (0: sending).",
        labels=["credential", "queue"],
    )
    for view in a.send_rates:
        rate.add_metric([view.credential, q], view.rate)
        hold.add_metric([view.credential, q], view.hold_seconds)
    yield rate
    yield hold


def _family(kind: Any, name: str, documentation: str, queue: str, value: float) -> Any:
    family = kind(name, documentation, labels=["queue"])
    family.add_metric([queue], value)
    return family
