"""Prometheus metrics, scraped from live processes: a worker's own and ``ingest metrics``.

One drain per module: 300 payments (2 of them refused by the API with a 400) through a real
worker process serving ``INGEST_METRICS_PORT``; its /metrics is scraped during and after the
drain, and ``ingest metrics --once`` reads the queue-wide figures. ``promtool check metrics``
(skipped, with the reason, where Prometheus's promtool is not installed) lints every exposition.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from ingest.embedded import RedisServer, free_port
from ingest.sandbox import DEFAULT_WEBSITE_KEY, FailSpec, SandboxConfig, SandboxServer
from ingest.sandbox.faults import Faults

from .conftest import ProcessGroup, SpawnIngest, enqueue, sample_payments, worker_env
from .support import (
    DEPLOY,
    clean_environment,
    metric_value,
    promtool_check,
    require_binary,
    run_ingest,
    try_http_get,
    wait_until,
)

pytestmark = pytest.mark.integration

EVENTS = 300
REFUSED = ("metrics_00007", "metrics_00123")
ALERTS = DEPLOY / "alerts.yml"


@dataclass(frozen=True)
class Scraped:
    during: str
    """The first scrape that answered, while the drain was running."""
    after: str
    queue: str
    """``ingest metrics --once`` after the drain."""
    queue_exit_code: int


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Scraped:
    tmp_path = tmp_path_factory.mktemp("metrics")
    faults = Faults(latency_ms=20, fail_ids={tid: FailSpec(400) for tid in REFUSED})
    with RedisServer() as server, SandboxServer(SandboxConfig(faults=faults)) as sandbox:
        enqueue(server.url, sample_payments(EVENTS, "metrics"))
        port = free_port()
        env = worker_env(
            server.url, sandbox.url, DEFAULT_WEBSITE_KEY, tmp_path, metrics_port=str(port)
        )
        group = ProcessGroup(tmp_path)
        try:
            worker = group.spawn(["worker", "--concurrency", "8"], env)
            url = f"http://127.0.0.1:{port}/metrics"
            first: list[str] = []

            def answered() -> bool:
                text = try_http_get(url)
                if text is not None:
                    first.append(text)
                return bool(first)

            wait_until(answered, 30, "the worker's metrics endpoint", details=worker.output)
            latest: list[str] = []

            def drained() -> bool:
                text = try_http_get(url) or ""
                latest[:] = [text]
                delivered = metric_value(
                    text, "ingest_worker_deliveries_total", 'outcome="delivered"'
                )
                return delivered == EVENTS - len(REFUSED)

            wait_until(drained, 60, "the drain, as the worker's metrics tell it", interval=0.2)
            queue = run_ingest(["metrics", "--once"], env)
            assert worker.stop() == 0, worker.output()
        finally:
            group.stop_all()
    return Scraped(first[0], latest[0], queue.stdout, queue.returncode)


WORKER_METRICS = [
    "ingest_worker_deliveries_total",
    "ingest_worker_api_responses_total",
    "ingest_worker_delivery_seconds_bucket",
    "ingest_worker_delivery_seconds_count",
    "ingest_worker_in_flight_requests",
    "ingest_worker_send_limit",
    "ingest_worker_reclaimed_total",
]


def sample_names(exposition: str) -> set[str]:
    return {
        line.split("{")[0].split(" ")[0]
        for line in exposition.splitlines()
        if line and not line.startswith("#")
    }


def test_worker_serves_metrics_while_it_drains(scraped: Scraped) -> None:
    # 300 events at 20 ms each, 8 at a time, take 0.75 s or more: the first scrape came first.
    assert "# TYPE ingest_worker_in_flight_requests gauge" in scraped.during
    delivered = metric_value(
        scraped.during, "ingest_worker_deliveries_total", 'outcome="delivered"'
    )
    assert (delivered or 0) < EVENTS - len(REFUSED)


@pytest.mark.parametrize("name", WORKER_METRICS)
def test_worker_exports(scraped: Scraped, name: str) -> None:
    assert name in sample_names(scraped.after)


def test_worker_metrics_pass_promtool(scraped: Scraped) -> None:
    result = promtool_check(scraped.after)
    assert result.returncode == 0, result.stdout + result.stderr


def test_worker_counts_each_delivery_and_dead_letter_once(scraped: Scraped) -> None:
    text = scraped.after
    delivered = EVENTS - len(REFUSED)
    assert metric_value(text, "ingest_worker_deliveries_total", 'outcome="delivered"') == delivered
    assert metric_value(text, "ingest_worker_deliveries_total", 'outcome="dead_lettered"') == len(
        REFUSED
    )
    assert metric_value(text, "ingest_worker_api_responses_total", 'status="200"') == delivered
    assert metric_value(text, "ingest_worker_api_responses_total", 'status="400"') == len(REFUSED)
    assert metric_value(text, "ingest_worker_delivery_seconds_count") == EVENTS


def test_worker_has_nothing_in_flight_after_the_drain(scraped: Scraped) -> None:
    assert metric_value(scraped.after, "ingest_worker_in_flight_requests") == 0


def test_worker_metrics_never_show_the_api_key(scraped: Scraped) -> None:
    assert DEFAULT_WEBSITE_KEY not in scraped.during + scraped.after


def test_queue_metrics_pass_promtool(scraped: Scraped) -> None:
    assert scraped.queue_exit_code == 0
    result = promtool_check(scraped.queue)
    assert result.returncode == 0, result.stdout + result.stderr


def test_queue_metrics_show_empty_queue_dead_letters_and_no_loss(scraped: Scraped) -> None:
    text = scraped.queue
    assert metric_value(text, "ingest_redis_up") == 1
    assert metric_value(text, "ingest_events", 'state="queued"') == 0
    assert metric_value(text, "ingest_events", 'state="dead"') == len(REFUSED)
    assert metric_value(text, "ingest_events_enqueued_total", 'queue="payments"') == EVENTS
    assert metric_value(text, "ingest_accounting_lost_events") == 0


def test_queue_metrics_outcomes_and_states_add_up_to_every_event_enqueued(
    scraped: Scraped,
) -> None:
    # Label values never overlap, so sum() over them means something (and PromQL can check
    # the accounting identity itself).
    text = scraped.queue
    finished = sum_of(text, "ingest_events_finished_total")
    in_states = sum_of(text, "ingest_events")
    lost = metric_value(text, "ingest_accounting_lost_events")
    assert finished + in_states + (lost or 0) == metric_value(text, "ingest_events_enqueued_total")
    assert finished == EVENTS - len(REFUSED)


def test_every_queue_wide_series_carries_the_queue_label(scraped: Scraped) -> None:
    samples = [line for line in scraped.queue.splitlines() if line and not line.startswith("#")]
    assert samples
    assert [line for line in samples if 'queue="payments"' not in line] == []


def sum_of(exposition: str, name: str) -> float:
    return sum(
        float(line.split()[-1])
        for line in exposition.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    )


def test_queue_metrics_show_the_backlog_and_its_age(redis_url: str) -> None:
    enqueue(redis_url, sample_payments(10, "backlog"))
    result = run_ingest(["metrics", "--once"], clean_environment(INGEST_REDIS_URL=redis_url))
    assert result.returncode == 0, result.stderr
    assert metric_value(result.stdout, "ingest_events", 'state="queued"') == 10
    age = metric_value(result.stdout, "ingest_oldest_queued_event_age_seconds")
    assert age is not None
    assert age > 0


def test_queue_metrics_report_redis_down_instead_of_failing(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    result = run_ingest(["metrics", "--once"], clean_environment(INGEST_REDIS_URL=url))
    assert result.returncode == 0, result.stderr
    assert metric_value(result.stdout, "ingest_redis_up") == 0


def test_metrics_service_serves_on_ingest_metrics_port(
    redis_url: str, spawn_ingest: SpawnIngest
) -> None:
    # As docker-compose runs it: `ingest metrics`, the port from INGEST_METRICS_PORT.
    port = free_port()
    env = clean_environment(INGEST_REDIS_URL=redis_url, INGEST_METRICS_PORT=str(port))
    service = spawn_ingest(["metrics"], env)
    scraped: list[str] = []

    def answered() -> bool:
        text = try_http_get(f"http://127.0.0.1:{port}/metrics")
        if text:
            scraped.append(text)
        return bool(scraped)

    wait_until(answered, 30, "`ingest metrics` to serve", details=service.output)
    assert metric_value(scraped[0], "ingest_accounting_lost_events") == 0


# -- deploy/alerts.yml -----------------------------------------------------------------------------


def test_alert_rules_pass_promtool_check() -> None:
    promtool = require_binary("promtool")
    result = subprocess.run(
        [promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_pass_their_unit_tests() -> None:
    promtool = require_binary("promtool")
    result = subprocess.run(
        [promtool, "test", "rules", str(ALERTS.with_name("alerts.test.yml"))],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_name_only_metrics_that_are_exported(scraped: Scraped) -> None:
    rules = [line for line in ALERTS.read_text().splitlines() if not line.lstrip().startswith("#")]
    named = set(re.findall(r"\bingest_[a-z_]+", "\n".join(rules)))
    exported = sample_names(scraped.after) | sample_names(scraped.queue)
    assert named
    assert named - exported == set()
