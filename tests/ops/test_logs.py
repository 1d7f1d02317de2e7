"""Canaries: a recognisable API key, customer email and name are sent through the whole
system, and must never come out in a log line (nor the key anywhere at all).

One run per module: ``ingest import`` enqueues events carrying the canary email and name; a
worker process holding the canary key delivers them to the sandbox while the API refuses some
(400s whose messages echo the email and name, a 401 whose message echoes the key and pauses
the website until the fault is lifted). Then the worker's stderr, the dead-letter store,
``ingest dlq export`` and every value in Redis are searched. The dead-letter store keeps the
event body for replay, so the email and name may legitimately be there; the key never.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from ingest import keys
from ingest.embedded import RedisServer
from ingest.logs import REDACTED, redact, scrub
from ingest.sandbox import DEFAULT_WEBSITE_ID, FailSpec, SandboxConfig, SandboxServer
from ingest.sandbox.faults import Faults
from ingest.stats import read_accounting

from .conftest import SpawnIngest, close_client, enqueue, sample_payments, worker_env
from .support import PROJECT_ROOT, run_ingest, wait_until

pytestmark = pytest.mark.integration

CANARY_KEY = "df_canary_k3y_7Qz9XwLp4"  # a throwaway key the sandbox alone knows
CANARY_EMAIL = "zebulon.canary@example.org"
CANARY_NAME = "Zebulon Canaryfield"
ROWS = 40
REJECTED_400 = "canary_00003"  # the API refuses it for good, quoting the customer
REJECTED_401 = "canary_00005"  # the API refuses the key, quoting it, until the fault is lifted


@dataclass(frozen=True)
class CanaryRun:
    import_result: subprocess.CompletedProcess[str]
    worker_exit_code: int
    worker_stdout: str
    worker_stderr: str
    dead_letters: dict[bytes, bytes]
    dlq_export: subprocess.CompletedProcess[str]
    redis_values: list[bytes]
    delivered: int
    dead: int
    lost: int


def write_csv(path: Path) -> None:
    lines = ["amount,currency,transaction_id,datafast_visitor_id,email,name"]
    for i in range(ROWS):
        lines.append(f"19.99,USD,canary_{i:05d},v-{i},{CANARY_EMAIL},{CANARY_NAME}")
    lines.append(f"-1,USD,canary_bad,v-bad,{CANARY_EMAIL},{CANARY_NAME}")  # refused locally
    path.write_text("\n".join(lines) + "\n")


def every_value(client: redis.Redis) -> list[bytes]:
    """Every key name and value in Redis, whatever its type."""
    found: list[bytes] = []
    for key in client.scan_iter(count=1000):
        found.append(key)
        kind = client.type(key)
        if kind == b"string":
            found.append(client.get(key) or b"")
        elif kind == b"hash":
            for field, value in client.hgetall(key).items():
                found += [field, value]
        elif kind == b"list":
            found += client.lrange(key, 0, -1)
        elif kind == b"set":
            found += list(client.smembers(key))
        elif kind == b"zset":
            found += client.zrange(key, 0, -1)
        elif kind == b"stream":
            for _id, entry in client.xrange(key):
                for field, value in entry.items():
                    found += [field, value]
    return found


@pytest.fixture(scope="module")
def canary(tmp_path_factory: pytest.TempPathFactory) -> CanaryRun:
    from .conftest import ProcessGroup

    tmp_path = tmp_path_factory.mktemp("canary")
    faults = Faults(
        latency_ms=5,
        fail_ids={
            REJECTED_400: FailSpec(400, f"customer {CANARY_NAME} <{CANARY_EMAIL}> is not valid"),
            REJECTED_401: FailSpec(
                401, f"invalid API key {CANARY_KEY} used for {CANARY_NAME} <{CANARY_EMAIL}>"
            ),
        },
    )
    config = SandboxConfig(website_keys={CANARY_KEY: DEFAULT_WEBSITE_ID}, faults=faults)
    with RedisServer() as server, SandboxServer(config) as sandbox:
        client = redis.Redis.from_url(server.url)
        group = ProcessGroup(tmp_path)
        try:
            env = worker_env(
                server.url,
                sandbox.url,
                CANARY_KEY,
                tmp_path,
                log_level="DEBUG",
                auth_probe_interval="1",
                lease_seconds="3",
            )
            csv_path = tmp_path / "canary.csv"
            write_csv(csv_path)
            imported = run_ingest(["import", str(csv_path)], env)
            worker = group.spawn(["worker", "--concurrency", "4"], env)
            paused = keys.QueueKeys("payments").paused
            wait_until(lambda: client.hlen(paused) == 1, 30, "the 401 to pause delivery")
            sandbox.set_faults(fail_ids={REJECTED_400: faults.fail_ids[REJECTED_400]})

            def settled() -> bool:
                a = read_accounting(client, "payments")
                return a.enqueued == ROWS and a.delivered + a.dead == ROWS and not a.paused

            wait_until(settled, 40, "every event delivered or dead", details=worker.output)
            exit_code = worker.stop()
            accounting = read_accounting(client, "payments")
            run = CanaryRun(
                import_result=imported,
                worker_exit_code=exit_code,
                worker_stdout=worker.stdout(),
                worker_stderr=worker.stderr(),
                dead_letters=client.hgetall(keys.QueueKeys("payments").dead),
                dlq_export=run_ingest(["dlq", "export"], env),
                redis_values=every_value(client),
                delivered=accounting.delivered,
                dead=accounting.dead,
                lost=accounting.lost,
            )
        finally:
            group.stop_all()
            close_client(client)
    return run


def test_canary_run_delivers_all_but_the_refused_event(canary: CanaryRun) -> None:
    assert canary.worker_exit_code == 0, canary.worker_stderr
    assert (canary.delivered, canary.dead, canary.lost) == (ROWS - 1, 1, 0)


def test_import_reports_the_bad_row_without_echoing_the_customer(canary: CanaryRun) -> None:
    result = canary.import_result
    assert result.returncode == 1
    assert "amount" in result.stdout
    output = result.stdout + result.stderr
    assert CANARY_KEY not in output
    assert CANARY_EMAIL not in output
    assert CANARY_NAME not in output


def worker_log_lines(canary: CanaryRun) -> list[str]:
    return [line for line in canary.worker_stderr.splitlines() if line.strip()]


def test_worker_logs_json_lines_when_stderr_is_not_a_terminal(canary: CanaryRun) -> None:
    lines = worker_log_lines(canary)
    assert lines
    for line in lines:
        assert isinstance(json.loads(line), dict), line


def test_worker_logs_the_auth_pause_and_its_end(canary: CanaryRun) -> None:
    events = [json.loads(line) for line in worker_log_lines(canary)]
    paused = [e for e in events if e["event"].startswith("delivery paused")]
    assert paused
    assert paused[0]["level"] == "error"
    assert any(e["event"].startswith("delivery resumed") for e in events)


def test_worker_logs_never_show_the_api_key(canary: CanaryRun) -> None:
    # The 401 quoted the key; the log has its status and a hash of the message, not the text.
    assert CANARY_KEY not in canary.worker_stderr + canary.worker_stdout


def test_worker_logs_never_show_the_customers_email_or_name(canary: CanaryRun) -> None:
    logs = canary.worker_stderr + canary.worker_stdout
    assert CANARY_EMAIL not in logs
    assert CANARY_NAME not in logs


def test_dead_letters_keep_the_event_for_replay_but_never_the_key(canary: CanaryRun) -> None:
    assert len(canary.dead_letters) == 1
    stored = b"".join(canary.dead_letters.values()).decode()
    assert CANARY_KEY not in stored
    assert REJECTED_400 in stored
    assert CANARY_EMAIL in stored  # the event body, kept so that a replay sends it as it was


def test_dead_letter_errors_are_scrubbed_of_emails_and_names(canary: CanaryRun) -> None:
    (record,) = (json.loads(v) for v in canary.dead_letters.values())
    stored = record["error"] + json.dumps(record["history"])
    assert CANARY_EMAIL not in stored
    assert CANARY_NAME not in stored
    assert "Zebulon" not in stored


def test_worker_logs_an_api_refusal_by_status_and_hash_not_its_message(
    canary: CanaryRun,
) -> None:
    events = [json.loads(line) for line in worker_log_lines(canary)]
    paused = [e for e in events if e["event"].startswith("delivery paused")]
    assert paused
    for event in paused:
        assert event["status"] == 401
        assert re.fullmatch(r"[0-9a-f]{12}", event["api_message_sha256"])
        assert "invalid API key" not in json.dumps(event)


def test_dlq_export_never_shows_the_key(canary: CanaryRun) -> None:
    assert canary.dlq_export.returncode == 0, canary.dlq_export.stderr
    assert REJECTED_400 in canary.dlq_export.stdout
    assert CANARY_KEY not in canary.dlq_export.stdout + canary.dlq_export.stderr


def test_redis_holds_the_key_nowhere(canary: CanaryRun) -> None:
    assert canary.redis_values
    assert not [v for v in canary.redis_values if CANARY_KEY.encode() in v]


# -- Redis down: RQ's own log lines ---------------------------------------------------------------


def test_worker_stderr_stays_json_while_redis_is_down(
    spawn_ingest: SpawnIngest, tmp_path: Path
) -> None:
    with RedisServer() as server, SandboxServer() as sandbox:
        enqueue(server.url, sample_payments(5, "outage"))
        env = worker_env(server.url, sandbox.url, "df_sandbox_demo_key", tmp_path)
        worker = spawn_ingest(["worker"], env)
        wait_until(lambda: "worker started" in worker.stderr(), 30, "the worker to start")
        server.stop()
        time.sleep(3)  # RQ's pubsub thread notices the lost connection within this
        server.restart()
        time.sleep(1)
        assert worker.stop() == 0, worker.output()
    for line in worker.stderr().splitlines():
        if line.strip():
            json.loads(line)


# -- ingest.logs.redact and scrub, as functions ---------------------------------------------------


@pytest.mark.parametrize(
    "field", ["api_key", "authorization", "headers", "email", "customer_email", "name", "body"]
)
def test_redact_replaces_a_sensitive_field_whatever_its_value(field: str) -> None:
    event = {"event": "sent", field: {"anything": "at all"}}
    assert redact(None, "info", event)[field] == REDACTED


def test_redact_matches_field_names_case_insensitively() -> None:
    assert redact(None, "info", {"Authorization": "Bearer x"})["Authorization"] == REDACTED


def test_redact_scrubs_keys_tokens_and_emails_inside_free_text() -> None:
    event = {
        "event": f"refused {CANARY_KEY} and dft_account_token_123 for {CANARY_EMAIL}",
        "detail": "header was Bearer abc.def",
    }
    out = redact(None, "info", event)
    text = json.dumps(out)
    for secret in (CANARY_KEY, "dft_account_token_123", CANARY_EMAIL, "abc.def"):
        assert secret not in text
    assert out["event"].startswith("refused ")


def test_redact_turns_an_exception_into_scrubbed_text() -> None:
    out = redact(None, "error", {"error": ValueError(f"bad key {CANARY_KEY}")})
    assert out["error"] == f"ValueError: bad key {REDACTED}"


def test_redact_leaves_other_fields_alone() -> None:
    event = {"event": "delivered", "count": 3, "website": DEFAULT_WEBSITE_ID, "ok": True}
    assert redact(None, "info", dict(event)) == event


def test_scrub_keeps_text_without_secrets() -> None:
    assert scrub("rejected by sandbox fault fail_ids") == "rejected by sandbox fault fail_ids"


def test_redact_scrubs_nested_structures() -> None:
    event: dict[str, Any] = {
        "event": "batch",
        "payment": {"email": CANARY_EMAIL, "amount": 1},
        "messages": [f"key {CANARY_KEY}"],
    }
    text = json.dumps(redact(None, "info", event))
    assert CANARY_EMAIL not in text
    assert CANARY_KEY not in text


def test_configured_logging_writes_redacted_json_lines() -> None:
    program = (
        "from ingest.logs import configure_logging, get_logger\n"
        "configure_logging('INFO', json=True)\n"
        f"get_logger(worker='w').error('refused {CANARY_KEY}', email={CANARY_EMAIL!r},"
        f" api_message='for {CANARY_EMAIL}')\n"
        "get_logger().debug('hidden at INFO')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    (line,) = result.stderr.splitlines()
    record = json.loads(line)
    assert record["level"] == "error"
    assert record["email"] == REDACTED
    assert CANARY_KEY not in line
    assert CANARY_EMAIL not in line
