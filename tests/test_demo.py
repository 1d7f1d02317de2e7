"""``ingest demo``, the README's first command, as a new user runs it: piped, from a shell.

Each run is a real subprocess (embedded redis-server, the sandbox in its own process, real
worker processes), made small with ``--events`` so the lane stays fast. The default run is
read once and checked for the table, ``lost 0``, the delivery rate and the width; the
``--chaos`` run for ``lost 0`` and for evidence that every fault it announces happened.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
PIPED_WIDTH = 100
LOST_ZERO_ROW = re.compile(r"│ lost +│ +0 │")


def run_demo(
    tmp_path: Path, *args: str, timeout: float = 150, **settings: str
) -> subprocess.CompletedProcess[str]:
    """``python -m ingest demo ARGS`` with stdout piped (not a terminal), no INGEST_* but
    ``settings`` (names without the prefix)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGEST_")}
    env.update({f"INGEST_{name.upper()}": value for name, value in settings.items()})
    env.pop("COLUMNS", None)  # rich would take its width from it
    env["HOME"] = str(tmp_path)  # a spool, if any, stays out of the real home
    return subprocess.run(
        [sys.executable, "-m", "ingest", "demo", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> subprocess.CompletedProcess[str]:
    result = run_demo(tmp_path_factory.mktemp("demo"), "--events", "1500")
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def chaos_run(tmp_path_factory: pytest.TempPathFactory) -> subprocess.CompletedProcess[str]:
    result = run_demo(tmp_path_factory.mktemp("chaos"), "--chaos", "--events", "2000")
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def line_with(output: str, phrase: str) -> str:
    (line,) = [line for line in output.splitlines() if phrase in line]
    return line


def fault_account(output: str, phrase: str) -> str:
    """The line of the closing account of faults that mentions ``phrase``."""
    _, heading, account = output.partition("faults injected")
    assert heading, output
    return line_with(account, phrase)


def count_in(line: str, pattern: str) -> int:
    match = re.search(pattern, line)
    assert match is not None, f"{pattern!r} not in {line!r}"
    return int(match.group(1).replace(",", ""))


# -- the default run -------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_demo_ends_with_the_table_and_lost_0(demo_run: subprocess.CompletedProcess[str]) -> None:
    assert "where every event ended up" in demo_run.stdout
    assert LOST_ZERO_ROW.search(demo_run.stdout), demo_run.stdout
    assert demo_run.stdout.rstrip().splitlines()[-1].startswith("lost 0"), demo_run.stdout


@pytest.mark.timeout(180)
def test_demo_rate_is_measured_from_the_first_delivery_and_shows_its_window(
    demo_run: subprocess.CompletedProcess[str],
) -> None:
    line = line_with(demo_run.stdout, "from the first delivery")
    assert re.search(r"[\d,]+ events/s", line), line
    assert re.search(r"over [\d.]+ s", line), line
    assert "enqueue to last delivery" not in demo_run.stdout


@pytest.mark.timeout(180)
def test_demo_piped_renders_at_a_fixed_width_without_wrapping_phrases(
    demo_run: subprocess.CompletedProcess[str],
) -> None:
    lines = demo_run.stdout.splitlines()
    assert max(len(line) for line in lines) <= PIPED_WIDTH, demo_run.stdout
    # Wrapped at 80 columns, this header used to end its line at "in" and go on below.
    header = line_with(demo_run.stdout, "datafast-ingest demo")
    assert header.rstrip().endswith("answering in 50 ms"), demo_run.stdout


@pytest.mark.timeout(180)
def test_demo_refuses_exactly_the_re_sent_events_as_duplicates(
    demo_run: subprocess.CompletedProcess[str],
) -> None:
    assert "re-sent 25: 25 reported as duplicates" in demo_run.stdout
    row = line_with(demo_run.stdout, "duplicates refused at enqueue")
    assert count_in(row, r"│ +([\d,]+) │") == 25, demo_run.stdout


@pytest.mark.timeout(180)
def test_demo_ignores_the_users_ingest_settings(tmp_path: Path) -> None:
    # Another queue name, and a value that would not even validate: the demo takes neither.
    result = run_demo(tmp_path, "--events", "300", queue="elsewhere", concurrency="abc")

    assert result.returncode == 0, result.stdout + result.stderr
    assert LOST_ZERO_ROW.search(result.stdout), result.stdout


def test_demo_without_a_redis_server_prints_the_error_first_and_alone(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGEST_")}
    env["INGEST_REDIS_SERVER_BIN"] = str(tmp_path / "no-such-redis-server")
    result = subprocess.run(
        [sys.executable, "-m", "ingest", "demo"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: "), line
    assert "[embedded]" in line, line


# -- --chaos ---------------------------------------------------------------------------------


@pytest.mark.timeout(240)
def test_chaos_ends_with_the_same_table_and_lost_0(
    chaos_run: subprocess.CompletedProcess[str],
) -> None:
    assert "where every event ended up" in chaos_run.stdout
    assert LOST_ZERO_ROW.search(chaos_run.stdout), chaos_run.stdout
    assert chaos_run.stdout.rstrip().splitlines()[-1].startswith("lost 0"), chaos_run.stdout


@pytest.mark.timeout(240)
def test_chaos_sandbox_answered_500s_and_503s(chaos_run: subprocess.CompletedProcess[str]) -> None:
    line = fault_account(chaos_run.stdout, "answered 500")
    assert count_in(line, r"500s ([\d,]+)") > 0, line
    assert count_in(line, r"503s ([\d,]+)") > 0, line


@pytest.mark.timeout(240)
def test_chaos_opened_a_429_window_with_retry_after(
    chaos_run: subprocess.CompletedProcess[str],
) -> None:
    line = fault_account(chaos_run.stdout, "429 window")
    assert "Retry-After" in line, line
    assert count_in(line, r"429s ([\d,]+)") > 0, line


@pytest.mark.timeout(240)
def test_chaos_sigkilled_a_worker_whose_events_came_back(
    chaos_run: subprocess.CompletedProcess[str],
) -> None:
    line = fault_account(chaos_run.stdout, "SIGKILL demo-")
    in_flight = count_in(line, r"\(([\d,]+) in flight\)")
    assert in_flight > 0, line
    settled = count_in(line, r"([\d,]+) delivered,") + count_in(line, r"([\d,]+) dead-lettered")
    assert settled == in_flight, line


@pytest.mark.timeout(240)
def test_chaos_restarted_redis_mid_run(chaos_run: subprocess.CompletedProcess[str]) -> None:
    line = fault_account(chaos_run.stdout, "redis-server")
    assert re.search(r"killed, restarted [\d.]+ s later", line), line


@pytest.mark.timeout(240)
def test_chaos_output_fits_the_piped_width(chaos_run: subprocess.CompletedProcess[str]) -> None:
    assert max(len(line) for line in chaos_run.stdout.splitlines()) <= PIPED_WIDTH


@pytest.mark.timeout(240)
def test_chaos_prints_no_traceback(chaos_run: subprocess.CompletedProcess[str]) -> None:
    # A SIGKILLed worker resets its connections mid-request: the sandbox's log of that
    # belongs in its log file, not on the user's terminal.
    assert "Traceback" not in chaos_run.stderr + chaos_run.stdout, chaos_run.stderr
