"""Every code block in the README is run by a test: a README example no test runs is a defect.

- ``python`` blocks run in a fresh interpreter configured by environment alone, against a
  real redis-server, under a watchdog;
- every command line of an ``sh`` block is run here, or is a line that ``.ci/run`` runs
  verbatim (the test command, ruff, mypy); benchmarks, run by hand, are run with ``--help``;
- every command of the command table runs ``--help``;
- ``text`` blocks are diagrams, not code.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from producer.fresh import run_fresh

from ingest.settings import env_names

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
CI_LINES = {line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()}
# What .ci/run runs: its lines, and each command of a line chained with &&.
CI_COMMANDS = CI_LINES | {part.strip() for line in CI_LINES for part in line.split(" && ")}
BIN = Path(sys.executable).parent  # the venv the README's commands create: .venv/bin


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.DOTALL)


def command_lines() -> list[str]:
    """Every command of every ``sh`` block, comments stripped."""
    lines = []
    for block in blocks("sh"):
        for line in block.splitlines():
            command = line.split("  #")[0].strip()
            if command and not command.startswith("#"):
                lines.append(command)
    return lines


def bench_commands() -> list[str]:
    return [c for c in command_lines() if c.startswith(("python bench/", "python -m bench"))]


def table_commands() -> list[list[str]]:
    """``ingest X`` and ``ingest X a/b/c`` of the command table, as argv lists."""
    found = []
    for cell in re.findall(r"^\| `(ingest [^`]+)` \|", README, flags=re.MULTILINE):
        words = [w for w in cell.split() if not w.startswith(("[", "-")) and w != "FILE"]
        words = [w for w in words if w != "..." and w.islower()]
        if len(words) == 3 and "/" in words[2]:
            found += [[words[1], sub] for sub in words[2].split("/")]
        else:
            found.append(words[1:])
    return found


def test_every_code_block_names_a_language_a_test_handles() -> None:
    openers = re.findall(r"^```(.*)$", README, flags=re.MULTILINE)[0::2]
    assert set(openers) <= {"sh", "python", "text"}, openers


def test_every_command_line_is_run_by_a_test_or_by_ci() -> None:
    demo = demo_command()
    unaccounted = [
        c
        for c in command_lines()
        if c not in CI_COMMANDS and c != demo and c not in bench_commands()
    ]
    assert unaccounted == [], "README commands that nothing runs"


def demo_command() -> str:
    (command,) = [c for c in command_lines() if c.endswith("ingest demo")]
    return command


def test_readme_test_command_is_the_one_ci_runs() -> None:
    (test_command,) = [
        c for c in command_lines() if c.startswith("python3 -m venv") and c.endswith("/pytest")
    ]
    assert test_command in CI_LINES


def test_readme_configuration_table_lists_every_setting() -> None:
    documented = set(re.findall(r"^\| `(INGEST_[A-Z_]+)`", README, flags=re.MULTILINE))
    assert documented == set(env_names())


@pytest.mark.integration
@pytest.mark.parametrize("block", range(len(blocks("python"))))
def test_python_block_runs_in_a_fresh_interpreter(
    block: int, redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    code = blocks("python")[block]
    env = {
        "PATH": os.environ["PATH"],
        "INGEST_REDIS_URL": redis_url,
        "INGEST_SPOOL_DIR": str(tmp_path / "spool"),
    }
    watched = "faulthandler.dump_traceback_later(10, exit=True)\n" + code
    run = run_fresh(watched, env, tmp_path)

    assert run.returncode == 0, run.explain()
    named = set(re.findall(r'transaction_id="(\w+)"', code))
    queued = [json.loads(job)["transaction_id"] for job in queued_bodies(redis_client)]
    assert queued, "the block queued nothing"
    assert set(queued) <= named
    assert len(queued) == len(set(queued))


def queued_bodies(client: redis.Redis) -> list[str]:
    bodies = []
    for job_id in client.lrange("rq:queue:payments", 0, -1):
        data = client.hget(b"rq:job:" + job_id, "data")
        assert data is not None
        _function, _instance, (body, _website), _kwargs = json.loads(data)
        bodies.append(body)
    return bodies


@pytest.mark.integration
def test_readme_demo_command_runs_the_demo_to_lost_zero(tmp_path: Path) -> None:
    # The venv it creates is this one (CI creates it with the README's test command, whose
    # extras include [all]); a clean core install is tested in test_install.py.
    setup, _, run_demo = demo_command().rpartition(" && ")
    assert setup == 'python3 -m venv .venv && .venv/bin/pip install -e ".[all]"'
    argv = shlex.split(run_demo)
    assert argv == [".venv/bin/ingest", "demo"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGEST_")}
    env["HOME"] = str(tmp_path)  # the demo's spool, if any, stays out of the real home
    # The README's command, made small: the default 12,000 events take a minute on a loaded
    # 2-core runner, and the size changes nothing this test checks.
    result = subprocess.run(
        [str(BIN / "ingest"), "demo", "--events", "1000"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"│ lost +│ +0 │", result.stdout), result.stdout
    assert result.stdout.rstrip().splitlines()[-1].startswith("lost 0"), result.stdout


@pytest.mark.parametrize("command", bench_commands())
def test_benchmark_command_in_the_readme_answers_help(command: str) -> None:
    argv = shlex.split(command)
    assert argv[0] == "python"
    result = subprocess.run(
        [sys.executable, *argv[1:], "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout


@pytest.mark.parametrize("argv", table_commands(), ids=" ".join)
def test_command_in_the_readme_table_answers_help(argv: list[str]) -> None:
    result = subprocess.run(
        [str(BIN / "ingest"), *argv, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert f"usage: ingest {' '.join(argv)}" in result.stdout.lower()


def test_command_table_covers_every_ingest_command() -> None:
    result = subprocess.run(
        [str(BIN / "ingest"), "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    listed = set(re.findall(r"^  (\w+)  ", result.stdout.split("Commands:")[1], re.MULTILINE))
    assert listed == {argv[0] for argv in table_commands()}
