"""deploy/grafana-dashboard.json: it loads, every query parses, and every metric it names is
one that a worker, a producer or ``ingest metrics`` really exports."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client import REGISTRY as PROCESS_REGISTRY
from prometheus_client import CollectorRegistry, generate_latest

from ingest import metrics
from ingest.producer import Producer
from ingest.settings import Settings

from .support import PROJECT_ROOT, require_binary

DASHBOARD = PROJECT_ROOT / "deploy" / "grafana-dashboard.json"
# Grafana's macros and variables, as Prometheus would see them once Grafana filled them in.
GRAFANA_SUBSTITUTIONS = {"$__rate_interval": "5m", "$queue": ".*"}


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def queries() -> list[str]:
    found = [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]
    variable = next(v for v in dashboard()["templating"]["list"] if v["name"] == "queue")
    return [*found, variable["definition"]]


def as_prometheus_sees_it(expr: str) -> str:
    for macro, value in GRAFANA_SUBSTITUTIONS.items():
        expr = expr.replace(macro, value)
    return expr


def sample_names(exposition: str) -> set[str]:
    return {
        line.split("{")[0].split(" ")[0]
        for line in exposition.splitlines()
        if line and not line.startswith("#")
    }


def test_dashboard_loads_with_panels_ids_and_a_queue_variable() -> None:
    board = dashboard()
    ids = [p["id"] for p in board["panels"]]
    assert board["uid"] == "datafast-ingest"
    assert len(ids) == len(set(ids)) >= 10
    assert {v["name"] for v in board["templating"]["list"]} == {"datasource", "queue"}
    assert all(p["targets"] for p in board["panels"])


def test_every_query_parses_as_promql(tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": as_prometheus_sees_it(q)}
                    for i, q in enumerate(queries())
                    if not q.startswith("label_values(")  # Grafana's, not PromQL
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.integration
def test_every_metric_the_dashboard_names_is_exported(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    # What this process exports once a worker and a producer have made their series...
    metrics.WorkerMetrics("payments").response("200")
    settings = Settings(redis_url=redis_url, spool_dir=tmp_path / "spool")
    Producer(settings).connection.close()
    exported = sample_names(generate_latest(PROCESS_REGISTRY).decode())
    # ...and what `ingest metrics` reads from Redis.
    queue_wide = CollectorRegistry()
    queue_wide.register(metrics.QueueCollector(redis_client, "payments"))
    exported |= sample_names(generate_latest(queue_wide).decode())

    named = {n for q in queries() for n in re.findall(r"\bingest_[a-z_]+", q)}
    assert named
    assert named - exported == set()


def test_every_panel_filters_by_the_queue_variable_where_the_series_has_a_queue() -> None:
    unfiltered = [
        q
        for q in queries()
        if "ingest_" in q
        and "$queue" not in q
        and not q.startswith("label_values(")
        and "ingest_producer_spool_events" not in q  # one spool per process, not per queue
    ]
    assert unfiltered == []
