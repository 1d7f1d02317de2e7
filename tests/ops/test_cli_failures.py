"""Every ``ingest`` failure a new user meets is one line naming what to fix, never a traceback.

Exit 2 for usage and configuration errors, 1 for runtime errors. Each case runs ``python -m
ingest`` in a fresh interpreter, configured by environment only, as a user types it.
"""

from __future__ import annotations

import subprocess

import pytest

from ingest.embedded import free_port

from .support import clean_environment, run_ingest

PASSWORD = "hunter2-not-a-real-one"


def failure_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one line a failing command printed: nothing on stdout, no traceback."""
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert result.stdout == "", output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, output
    return lines[0]


@pytest.mark.parametrize(
    "args",
    [["stats"], ["dlq", "list"], ["dlq", "show", "abc"], ["worker", "--burst"]],
    ids=" ".join,
)
def test_unreachable_redis_names_the_address_with_the_password_masked(args: list[str]) -> None:
    port = free_port()  # nothing listens there
    env = clean_environment(
        INGEST_REDIS_URL=f"redis://:{PASSWORD}@127.0.0.1:{port}/0", INGEST_API_KEY="df_test"
    )
    result = run_ingest(args, env)
    assert result.returncode == 1
    assert failure_line(result) == (
        f"error: cannot reach Redis at redis://:***@127.0.0.1:{port}/0: Connection refused"
    )


def test_a_redis_url_without_a_scheme_names_ingest_redis_url() -> None:
    result = run_ingest(["stats"], clean_environment(INGEST_REDIS_URL="cache.example:6380"))
    assert result.returncode == 2
    assert failure_line(result) == (
        "error: INGEST_REDIS_URL: must start with redis://, rediss://, unix:// or "
        "redis+sentinel://, got 'cache.example:6380'"
    )


def test_a_bad_redis_url_never_shows_its_password() -> None:
    env = clean_environment(INGEST_REDIS_URL=f"redis://:{PASSWORD}@localhost:notaport/0")
    result = run_ingest(["stats"], env)
    assert result.returncode == 2
    line = failure_line(result)
    assert line.startswith("error: INGEST_REDIS_URL: ")
    assert "redis://:***@localhost:notaport/0" in line
    assert PASSWORD not in line


def test_a_bad_log_level_names_ingest_log_level() -> None:
    result = run_ingest(["stats"], clean_environment(INGEST_LOG_LEVEL="LOUD"))
    assert result.returncode == 2
    assert failure_line(result) == (
        "error: INGEST_LOG_LEVEL: must be one of DEBUG, INFO, WARNING, ERROR, got 'LOUD'"
    )


def test_a_bad_log_level_stops_the_console_in_one_line() -> None:
    result = run_ingest(["console"], clean_environment(INGEST_LOG_LEVEL="LOUD"), timeout=30)
    assert result.returncode == 2
    assert failure_line(result).startswith("error: INGEST_LOG_LEVEL: must be one of")


def test_a_word_for_a_number_names_the_variable_not_pydantic() -> None:
    result = run_ingest(["stats"], clean_environment(INGEST_CONCURRENCY="abc"))
    assert result.returncode == 2
    assert failure_line(result) == "error: INGEST_CONCURRENCY: must be an integer, got 'abc'"


def test_every_bad_variable_is_reported_at_once_one_line_each() -> None:
    env = clean_environment(INGEST_CONCURRENCY="abc", INGEST_MAX_ATTEMPTS="0")
    result = run_ingest(["stats"], env)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        "error: INGEST_CONCURRENCY: must be an integer, got 'abc'",
        "error: INGEST_MAX_ATTEMPTS: must be >= 1, got '0'",
    ]


def test_a_usage_error_is_one_line_naming_the_option() -> None:
    result = run_ingest(["dlq", "list", "--status", "x"], clean_environment())
    assert result.returncode == 2
    assert failure_line(result) == (
        "error: Invalid value for '--status': 'x' is not a valid integer "
        "(see 'ingest dlq list --help')"
    )
