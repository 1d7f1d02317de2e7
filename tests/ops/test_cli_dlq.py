"""``ingest dlq`` as a new user meets it: ids that ``list`` prints are ids ``show`` takes, totals
that follow the filters, plain words when nothing matches, ``--json`` on every subcommand.

Each case runs ``python -m ingest dlq ...`` in a fresh interpreter against the session's real
Redis, configured by environment only. Dead letters are written as the worker writes them.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from datetime import UTC, datetime

import pytest
import redis

from ingest import keys
from ingest.jobs import job_data
from ingest.models import validate_payment
from ingest.timestamps import utc_iso

from .support import clean_environment, run_ingest

pytestmark = pytest.mark.integration

QUEUE = keys.QueueKeys("payments")
SUBCOMMANDS = ["list", "show", "replay", "purge", "export"]


def seed(client: redis.Redis, transaction_ids: list[str], *, reason: str = "rejected") -> list[str]:
    """Dead letters for these transaction ids, one second apart (oldest first), written and
    counted as the worker writes them; returns their ids."""
    ids = []
    base = time.time() - 100
    for n, transaction_id in enumerate(transaction_ids):
        payment = validate_payment(
            amount="9.99",
            currency="USD",
            transaction_id=transaction_id,
            timestamp=datetime(2026, 5, 1, tzinfo=UTC),
        )
        at = base + n
        history = [{"at": utc_iso(at), "status": 400, "error": "invalid currency"}]
        record = {
            "job_id": payment.job_id,
            "transaction_id": transaction_id,
            "website": "-",
            "data": job_data(payment),
            "reason": reason,
            "status": 400 if reason == "rejected" else 503,
            "error": "invalid currency",
            "attempts": 1,
            "first_attempt_at": utc_iso(at),
            "last_attempt_at": utc_iso(at),
            "dead_at": utc_iso(at),
            "history": history,
            "history_json": json.dumps(history),
        }
        client.hset(QUEUE.dead, payment.job_id, json.dumps(record))
        client.zadd(QUEUE.dead_index, {payment.job_id: at})
        client.hincrby(QUEUE.stats, "dead_lettered", 1)
        client.hincrby(QUEUE.stats, "enqueued", 1)
        ids.append(payment.job_id)
    return ids


def dlq(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_ingest(["dlq", *args], clean_environment(INGEST_REDIS_URL=redis_url))


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stdout + result.stderr, result.stderr


def test_list_prints_whole_ids_that_show_accepts(redis_url: str, redis_client: redis.Redis) -> None:
    ids = seed(redis_client, ["dlq_whole_1", "dlq_whole_2"])
    listed = dlq(redis_url, "list")
    assert listed.returncode == 0, listed.stderr
    shown_ids = re.findall(r"\b[0-9a-f]{32}\b", listed.stdout)
    assert sorted(shown_ids) == sorted(ids)
    shown = dlq(redis_url, "show", shown_ids[0])
    assert shown.returncode == 0, shown.stderr
    assert f"dead letter {shown_ids[0]}" in shown.stdout


def test_show_accepts_a_unique_prefix_of_an_id(redis_url: str, redis_client: redis.Redis) -> None:
    (dead_id,) = seed(redis_client, ["dlq_prefix_1"])
    result = dlq(redis_url, "show", dead_id[:8], "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["id"] == dead_id


def test_show_refuses_an_ambiguous_prefix_in_one_line_with_the_count(
    redis_url: str, redis_client: redis.Redis
) -> None:
    ids = seed(redis_client, [f"dlq_ambiguous_{n}" for n in range(40)])
    # 40 random hex ids: some first character is shared by at least two of them.
    prefix = next(c for c in "0123456789abcdef" if sum(i.startswith(c) for i in ids) >= 2)
    count = sum(i.startswith(prefix) for i in ids)
    result = dlq(redis_url, "show", prefix)
    no_traceback(result)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: {prefix!r} is the start of {count} dead-letter ids; give more of the id"
    ]


def test_show_of_an_unknown_id_is_one_line(redis_url: str) -> None:
    result = dlq(redis_url, "show", "nosuchid")
    no_traceback(result)
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["error: no dead letter with id 'nosuchid'"]


def test_list_totals_count_only_what_the_filters_match(
    redis_url: str, redis_client: redis.Redis
) -> None:
    seed(redis_client, ["dlq_rej_1", "dlq_rej_2", "dlq_rej_3"], reason="rejected")
    seed(redis_client, ["dlq_exh_1"], reason="exhausted")
    as_json = json.loads(dlq(redis_url, "list", "--reason", "exhausted", "--json").stdout)
    assert (as_json["total"], len(as_json["items"])) == (1, 1)
    table = dlq(redis_url, "list", "--reason", "exhausted").stdout
    assert "1 of 4 dead letters match" in table
    assert "by reason: exhausted (503): 1" in table
    assert "rejected" not in table.split("by reason:")[1]


def test_purge_with_nothing_matching_says_so_plainly(
    redis_url: str, redis_client: redis.Redis
) -> None:
    seed(redis_client, ["dlq_keep_1"])
    result = dlq(redis_url, "purge", "--search", "no-such-transaction", "--yes")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "no dead letters match: nothing purged"
    assert "nothing changed" not in result.stdout
    assert redis_client.hlen(QUEUE.dead) == 1


def test_purge_takes_json(redis_url: str, redis_client: redis.Redis) -> None:
    seed(redis_client, ["dlq_purge_1", "dlq_purge_2"])
    result = dlq(redis_url, "purge", "--all", "--yes", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"dry_run": False, "matched": 2, "purged": 2}


@pytest.mark.parametrize("subcommand", SUBCOMMANDS)
def test_every_dlq_subcommand_takes_json(subcommand: str) -> None:
    result = run_ingest(["dlq", subcommand, "--help"], clean_environment())
    assert result.returncode == 0, result.stderr
    assert "--json" in result.stdout


def test_since_that_is_not_a_time_names_since(redis_url: str) -> None:
    result = dlq(redis_url, "list", "--since", "yesterday")
    no_traceback(result)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: Invalid value for '--since': 'yesterday'")
