"""``ingest import`` as a new user meets it: a JSON array or any ``.json`` file, a file in the
wrong encoding or with the wrong header refused in one line before anything is enqueued, and
every bad field of a row reported at once.

Each case runs ``python -m ingest import ...`` in a fresh interpreter against the session's
real Redis, configured by environment only.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import redis

from ingest import keys

from .support import clean_environment, run_ingest

pytestmark = pytest.mark.integration

QUEUE = keys.QueueKeys("payments")
ROWS = [
    {"amount": 19.99, "currency": "USD", "transaction_id": f"json_{n}", "renewal": False}
    for n in range(3)
]


def import_file(
    redis_url: str, path: Path, *extra: str, tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    env = clean_environment(INGEST_REDIS_URL=redis_url, INGEST_SPOOL_DIR=str(tmp_path / "spool"))
    return run_ingest(["import", str(path), *extra], env)


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert result.stdout == "", output
    (line,) = result.stderr.splitlines()
    return line


@pytest.mark.parametrize("name", ["payments.json", "payments.txt"])
def test_a_json_array_file_is_imported(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path, name: str
) -> None:
    path = tmp_path / name
    path.write_text(json.dumps(ROWS, indent=2))
    result = import_file(redis_url, path, "--json", tmp_path=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["queued"] == len(ROWS)
    assert redis_client.llen(QUEUE.queue) == len(ROWS)


def test_json_lines_in_a_json_file_are_imported(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    path = tmp_path / "payments.json"
    path.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    result = import_file(redis_url, path, "--json", tmp_path=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["queued"] == len(ROWS)


def test_a_bad_item_of_a_json_array_is_reported_by_its_line(redis_url: str, tmp_path: Path) -> None:
    path = tmp_path / "payments.json"
    rows = [*ROWS, {"amount": -1, "currency": "USD", "transaction_id": "json_bad"}]
    text = json.dumps(rows, indent=2)
    path.write_text(text)
    bad_object_line = text.count("\n", 0, text.rindex("{", 0, text.index("json_bad"))) + 1
    result = import_file(redis_url, path, "--json", tmp_path=tmp_path)
    assert result.returncode == 1
    errors = json.loads(result.stdout)["errors"]
    assert [(e["line"], e["field"]) for e in errors] == [(bad_object_line, "amount")]


def test_a_file_that_is_not_utf8_is_one_line_and_enqueues_nothing(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    path = tmp_path / "payments.csv"
    path.write_bytes(
        b"amount,currency,transaction_id,name\n"
        b"10,USD,latin_1,Jane\n"
        b"10,USD,latin_2,Ren\xe9e\n"  # Latin-1, as a spreadsheet may save it
    )
    result = import_file(redis_url, path, tmp_path=tmp_path)
    assert result.returncode == 2
    assert one_error_line(result) == (
        "error: payments.csv is not UTF-8 text (byte 0xe9 on line 3): "
        "save it as UTF-8 and import it again"
    )
    assert redis_client.llen(QUEUE.queue) == 0


def test_a_header_without_a_required_column_is_one_error_naming_it(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    path = tmp_path / "payments.csv"
    path.write_text("amt,currency,transaction_id\n10,USD,hdr_1\n11,USD,hdr_2\n")
    result = import_file(redis_url, path, tmp_path=tmp_path)
    assert result.returncode == 2
    assert one_error_line(result) == (
        "error: payments.csv: the header has no 'amount' column (required: amount, "
        "currency, transaction_id); unknown column 'amt'"
    )
    assert redis_client.llen(QUEUE.queue) == 0


def test_every_bad_field_of_a_row_is_reported_at_once(redis_url: str, tmp_path: Path) -> None:
    path = tmp_path / "payments.csv"
    path.write_text("amount,currency,transaction_id,renewal\n10,US,many_1,maybe\n")
    result = import_file(redis_url, path, "--json", tmp_path=tmp_path)
    assert result.returncode == 1
    errors = json.loads(result.stdout)["errors"]
    assert sorted((e["line"], e["field"]) for e in errors) == [(2, "currency"), (2, "renewal")]


def test_unknown_and_bad_fields_of_a_json_row_are_reported_at_once(
    redis_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "payments.jsonl"
    path.write_text(
        json.dumps({"amount": "x", "currency": "USD", "transaction_id": "u", "ammount": 1})
    )
    result = import_file(redis_url, path, "--json", tmp_path=tmp_path)
    assert result.returncode == 1
    errors = json.loads(result.stdout)["errors"]
    assert sorted(e["field"] for e in errors) == ["ammount", "amount"]
