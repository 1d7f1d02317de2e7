"""Helpers for the operations tests: deployment files, child processes, bounded waits.

Plain functions (the fixtures live in ``conftest.py``). Every wait here is bounded.
"""

from __future__ import annotations

import json
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


# -- a small YAML reader for docker-compose.yml ---------------------------------------------------
# PyYAML is not a dependency of this project, and docker-compose v1 cannot print JSON. This
# reads the subset of YAML our compose file uses: block mappings and sequences, one-line flow
# sequences, plain and quoted scalars, comments, and `&anchor` / `<<: *anchor` merges.


class YamlSubsetError(ValueError):
    pass


def load_yaml(text: str) -> Any:
    lines: list[tuple[int, str, int]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = _strip_comment(raw).rstrip()
        if stripped.strip():
            lines.append((len(stripped) - len(stripped.lstrip(" ")), stripped.strip(), number))
    anchors: dict[str, Any] = {}
    value, end = _block(lines, 0, 0, anchors)
    if end != len(lines):
        raise YamlSubsetError(f"line {lines[end][2]}: unexpected indentation")
    return value


def _strip_comment(line: str) -> str:
    quote: str | None = None
    for i, char in enumerate(line):
        if quote:
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i]
    return line


def _block(lines: list[tuple[int, str, int]], i: int, indent: int, anchors: dict[str, Any]) -> Any:
    if lines[i][1].startswith("- ") or lines[i][1] == "-":
        return _sequence(lines, i, indent, anchors)
    return _mapping(lines, i, indent, anchors)


def _sequence(
    lines: list[tuple[int, str, int]], i: int, indent: int, anchors: dict[str, Any]
) -> tuple[list[Any], int]:
    items: list[Any] = []
    while i < len(lines) and lines[i][0] == indent and lines[i][1].startswith("-"):
        rest = lines[i][1][1:].strip()
        if not rest:
            raise YamlSubsetError(f"line {lines[i][2]}: nested block in a sequence")
        items.append(_scalar(rest, lines[i][2], anchors))
        i += 1
    return items, i


def _mapping(
    lines: list[tuple[int, str, int]], i: int, indent: int, anchors: dict[str, Any]
) -> tuple[dict[str, Any], int]:
    result: dict[str, Any] = {}
    while i < len(lines) and lines[i][0] == indent:
        _, content, number = lines[i]
        key, sep, rest = content.partition(":")
        if not sep or (rest and not rest.startswith(" ")):
            raise YamlSubsetError(f"line {number}: expected `key: value`")
        key, rest = _unquote(key.strip()), rest.strip()
        anchor = None
        if rest.startswith("&"):
            anchor, _, rest = rest[1:].partition(" ")
            rest = rest.strip()
        i += 1
        if rest:
            value = _scalar(rest, number, anchors)
        elif i < len(lines) and lines[i][0] > indent:
            value, i = _block(lines, i, lines[i][0], anchors)
        elif i < len(lines) and lines[i][0] == indent and lines[i][1].startswith("- "):
            value, i = _sequence(lines, i, indent, anchors)  # a sequence at the key's indent
        else:
            value = None
        if anchor:
            anchors[anchor] = value
        if key == "<<":
            if not isinstance(value, dict):
                raise YamlSubsetError(f"line {number}: `<<` needs a mapping alias")
            for merged_key, merged_value in value.items():
                result.setdefault(merged_key, merged_value)
        else:
            result[key] = value
    return result, i


def _scalar(text: str, number: int, anchors: dict[str, Any]) -> Any:
    if text.startswith("*"):
        try:
            return anchors[text[1:]]
        except KeyError:
            raise YamlSubsetError(f"line {number}: unknown alias {text}") from None
    if text.startswith("["):
        if not text.endswith("]"):
            raise YamlSubsetError(f"line {number}: multi-line flow sequence")
        return [_unquote(item) for item in _split_flow(text[1:-1], number)]
    if text.startswith(("{", "|", ">")):
        raise YamlSubsetError(f"line {number}: unsupported YAML: {text[:20]}")
    return _unquote(text)


def _split_flow(body: str, number: int) -> list[str]:
    items: list[str] = []
    current: list[str] = []
    quote: str | None = None
    for char in body:
        if quote:
            current.append(char)
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
            current.append(char)
        elif char == ",":
            items.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    if quote:
        raise YamlSubsetError(f"line {number}: unterminated quote")
    if "".join(current).strip():
        items.append("".join(current).strip())
    return items


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] == "'":
        return text[1:-1].replace("''", "'")
    if len(text) >= 2 and text[0] == text[-1] == '"':
        decoded: str = json.loads(text)
        return decoded
    return text


def compose() -> dict[str, Any]:
    data = load_yaml(COMPOSE_FILE.read_text())
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
    """The value of one sample (``name{labels}``) in a Prometheus text exposition."""
    selector = f"{name}{{{labels}}}" if labels else name
    for line in exposition.splitlines():
        if line.startswith(selector + " "):
            return float(line.split()[-1])
    return None


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
