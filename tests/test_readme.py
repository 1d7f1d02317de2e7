"""The README's promises that a test can keep true: its commands and its settings table."""

from __future__ import annotations

import re
from pathlib import Path

from ingest.settings import env_names

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _shell_blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", README, flags=re.DOTALL)


def test_readme_test_command_is_the_one_ci_runs() -> None:
    test_command = next(b.strip() for b in _shell_blocks() if b.strip().endswith("pytest"))
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines


def test_readme_demo_command_runs_the_demo() -> None:
    assert any(b.strip().endswith("ingest demo") for b in _shell_blocks())


def test_readme_configuration_table_lists_every_setting() -> None:
    documented = set(re.findall(r"^\| `(INGEST_[A-Z_]+)`", README, flags=re.MULTILINE))
    assert documented == set(env_names())
