"""``ingest ... --help`` as a new user reads it, and ``ingest stats --watch`` in a terminal.

Each case runs ``python -m ingest`` in a fresh interpreter, configured by environment only;
the watch runs in a pseudo-terminal, as a person would see it.
"""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time

import click
import pytest

from ingest.cli import cli

from .support import PROJECT_ROOT, clean_environment, run_ingest


def command_paths() -> list[list[str]]:
    """Every ``ingest`` command and subcommand with options of its own (not ``sandbox``,
    which parses its own arguments)."""
    paths: list[list[str]] = []

    def walk(command: click.Command, path: list[str]) -> None:
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                walk(sub, [*path, name])
        elif path != ["sandbox"]:
            paths.append(path)

    walk(cli, [])
    return paths


# An option given no default: None before click 8.3, its UNSET sentinel from then on.
NO_DEFAULT = (None, getattr(click.core, "UNSET", None))


def options_with_a_default(path: list[str]) -> list[click.Option]:
    command: click.Command = cli
    for name in path:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    return [
        p
        for p in command.params
        if isinstance(p, click.Option)
        and not p.is_flag
        and p.default not in NO_DEFAULT
        and not p.multiple
        and p.name != "help"
    ]


@pytest.mark.parametrize("path", command_paths(), ids=" ".join)
def test_help_shows_every_default(path: list[str]) -> None:
    result = run_ingest([*path, "--help"], clean_environment(COLUMNS="200"))
    assert result.returncode == 0, result.stderr
    entries = help_entries(result.stdout)
    for option in options_with_a_default(path):
        (entry,) = [e for e in entries if option.opts[0] in e.split()[:3]]
        assert "[default: " in entry, entry


def help_entries(text: str) -> list[str]:
    """The options of a --help text, each entry with its continuation lines joined."""
    entries: list[str] = []
    for line in text.splitlines():
        if line.startswith("  -"):
            entries.append(line)
        elif entries and line.startswith("    ") and line.strip():
            entries[-1] += " " + line.strip()
    return [e.replace(",", " ") for e in entries]


@pytest.mark.parametrize("path", command_paths(), ids=" ".join)
def test_every_option_has_help_text(path: list[str]) -> None:
    command: click.Command = cli
    for name in path:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    missing = [p.opts[0] for p in command.params if isinstance(p, click.Option) and not p.help]
    assert missing == []


def test_stats_watch_redraws_in_place(redis_url: str) -> None:
    env = clean_environment(INGEST_REDIS_URL=redis_url, TERM="xterm-256color")
    env.update(COLUMNS="100", LINES="50")
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "ingest", "stats", "--watch", "--interval", "0.2"],
        env=env,
        cwd=PROJECT_ROOT,
        stdin=subprocess.DEVNULL,
        stdout=terminal,
        stderr=terminal,
    )
    os.close(terminal)
    output = b""
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and output.count(b"queue payments") < 4:
            ready, _, _ = select.select([controller], [], [], 0.5)
            if ready:
                try:
                    output += os.read(controller, 65536)
                except OSError:
                    break
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        os.close(controller)
    assert output.count(b"queue payments") >= 4, output[-2000:]
    assert b"Traceback" not in output
    # Rich's Live moves the cursor up and rewrites the lines; no clearing of the screen.
    assert b"\x1b[2J" not in output
    assert b"\x1b[1A\x1b[2K" in output
