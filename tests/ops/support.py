"""Helpers for the operations tests: deployment files, child processes, bounded waits.

Plain functions (the fixtures live in ``conftest.py``). Every wait here is bounded.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = PROJECT_ROOT / "docker-compose.yml"
DOCKERFILE = PROJECT_ROOT / "Dockerfile"
DEPLOY = PROJECT_ROOT / "deploy"
USERS_ACL = DEPLOY / "users.acl"
REDIS_CONF = DEPLOY / "redis.conf"
REDIS_START = DEPLOY / "redis-start.sh"


def require_binary(name: str) -> str:
    """The path of ``name`` on PATH, or skip the test saying what is missing."""
    path = shutil.which(name)
    if path is None:
        package = _APT_PACKAGE.get(name, name)
        pytest.skip(f"`{name}` is not installed here (apt-get install -y {package})")
    return path


_APT_PACKAGE = {"promtool": "prometheus", "docker-compose": "docker-compose"}


def venv_script(name: str) -> str | None:
    """A console script installed beside this interpreter (``rq``, ``rq-dashboard``)."""
    candidate = Path(sys.executable).with_name(name)
    if candidate.exists():
        return str(candidate)
    return shutil.which(name)


# -- deploy/users.acl -----------------------------------------------------------------------------


def acl_rules(user: str) -> list[str]:
    """The rules of ``user`` in deploy/users.acl, as ``ACL SETUSER`` arguments."""
    for line in USERS_ACL.read_text().splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "user" and words[1] == user:
            return words[2:]
    raise AssertionError(f"no `user {user}` line in {USERS_ACL}")


def redis_conf() -> dict[str, str]:
    """deploy/redis.conf as directive -> value (the last occurrence wins, as in Redis)."""
    settings: dict[str, str] = {}
    for line in REDIS_CONF.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, value = line.partition(" ")
        settings[name.lower()] = value.strip()
    return settings


# -- docker-compose.yml ---------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


def compose_env_names() -> set[str]:
    """Every environment variable name the compose file sets in any service."""
    names: set[str] = set()
    for service in compose()["services"].values():
        names.update((service.get("environment") or {}).keys())
    return names


def interpolation_default(value: str) -> str:
    """``"${NAME:-default}"`` -> ``"default"`` (what compose uses when NAME is unset)."""
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", value)


# -- processes ------------------------------------------------------------------------------------


def clean_environment(**extra: str) -> dict[str, str]:
    """This process's environment without any INGEST_* or REDIS_URL, plus ``extra``."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("INGEST_") and name != "REDIS_URL"
    }
    env.update(extra)
    return env


def run_ingest(
    args: Sequence[str], env: Mapping[str, str], *, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """``python -m ingest ARGS`` in the project root; stdout and stderr captured apart."""
    return subprocess.run(
        [sys.executable, "-m", "ingest", *args],
        env=dict(env),
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    *,
    interval: float = 0.05,
    details: Callable[[], str] | None = None,
) -> None:
    """Poll ``predicate`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    extra = f"\n{details()}" if details else ""
    pytest.fail(f"timed out after {timeout} s waiting for {what}{extra}")


def http_get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # only loopback URLs here
        body: bytes = response.read()
    return body.decode()


def try_http_get(url: str, timeout: float = 2.0) -> str | None:
    try:
        return http_get(url, timeout)
    except OSError:
        return None


def metric_value(exposition: str, name: str, labels: str = "") -> float | None:
    """The value of the first sample of ``name`` whose labels include ``labels``
    (``'outcome="delivered"'``) in a Prometheus text exposition."""
    wanted = set(_LABEL.findall(labels))
    sample = re.compile(rf"{re.escape(name)}(?:{{(.*)}})? (\S+)$")
    for line in exposition.splitlines():
        found = sample.match(line)
        if found and wanted <= set(_LABEL.findall(found.group(1) or "")):
            return float(found.group(2))
    return None


_LABEL = re.compile(r'(\w+)="([^"]*)"')


def promtool_check(exposition: str) -> subprocess.CompletedProcess[str]:
    """``promtool check metrics`` on an exposition (skips without promtool)."""
    promtool = require_binary("promtool")
    return subprocess.run(
        [promtool, "check", "metrics"],
        input=exposition,
        capture_output=True,
        text=True,
        timeout=30,
    )
