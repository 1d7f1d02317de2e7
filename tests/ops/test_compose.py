"""docker-compose.yml, the Dockerfile and deploy/: valid, consistent with the settings, safe.

No container engine runs here: the compose file is checked with ``docker-compose config``
(skipped, with the reason, where docker-compose is not installed) and read with PyYAML; the
Redis side is started for real in ``test_acl.py``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any

import pytest

from ingest.settings import Settings, env_names

from .support import (
    COMPOSE_FILE,
    DOCKERFILE,
    PROJECT_ROOT,
    USERS_ACL,
    acl_rules,
    clean_environment,
    compose,
    compose_env_names,
    interpolation_default,
    redis_conf,
    require_binary,
)

PLACEHOLDER_KEY = "df_placeholder_for_config_check"


def docker_compose(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    binary = require_binary("docker-compose")
    return subprocess.run(
        [binary, "-f", str(COMPOSE_FILE), *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def service(name: str) -> dict[str, Any]:
    services = compose()["services"]
    assert name in services, f"no `{name}` service in docker-compose.yml"
    result: dict[str, Any] = services[name]
    return result


def environment(name: str) -> dict[str, str]:
    env = service(name).get("environment") or {}
    assert isinstance(env, dict)
    return {key: interpolation_default(str(value)) for key, value in env.items()}


# -- docker-compose itself ------------------------------------------------------------------------


def test_docker_compose_config_accepts_the_file() -> None:
    result = docker_compose("config", env=clean_environment(INGEST_API_KEY=PLACEHOLDER_KEY))
    assert result.returncode == 0, result.stderr
    print(result.stdout)
    assert "redis-start.sh" in result.stdout


def test_docker_compose_demo_profile_adds_the_sandbox() -> None:
    env = clean_environment(INGEST_API_KEY=PLACEHOLDER_KEY)
    default = docker_compose("config", "--services", env=env)
    demo = docker_compose("--profile", "demo", "config", "--services", env=env)
    assert default.returncode == 0, default.stderr
    assert demo.returncode == 0, demo.stderr
    assert set(demo.stdout.split()) == {"redis", "worker", "metrics", "sandbox"}
    # docker-compose v1 lists profiled services too; v2 leaves them out without the profile.
    assert {"redis", "worker", "metrics"} <= set(default.stdout.split())


def test_docker_compose_refuses_to_run_without_an_api_key() -> None:
    result = docker_compose("config", env=clean_environment())
    assert result.returncode != 0
    assert "set INGEST_API_KEY" in result.stderr


# -- the compose file, read -----------------------------------------------------------------------


def test_every_ingest_variable_in_the_compose_file_is_a_setting() -> None:
    known = set(env_names())
    set_in_services = {n for n in compose_env_names() if n.startswith("INGEST_")}
    mentioned = set(re.findall(r"\bINGEST_[A-Z0-9_]+\b", COMPOSE_FILE.read_text()))
    assert set_in_services, "no INGEST_ variable found: the compose file was misread"
    assert set_in_services - known == set()
    assert mentioned - known == set()


def test_worker_and_metrics_services_read_the_same_redis_and_queue() -> None:
    worker, metrics = environment("worker"), environment("metrics")
    for name in ("INGEST_REDIS_URL", "INGEST_QUEUE"):
        assert worker[name] == metrics[name]
    assert worker["INGEST_REDIS_URL"] == "redis://ingest:change-me@redis:6379/0"


def test_worker_defaults_are_valid_settings() -> None:
    env = environment("worker")
    fields = {name.removeprefix("INGEST_").lower(): value for name, value in env.items()}
    settings = Settings.model_validate({**fields, "api_key": PLACEHOLDER_KEY})
    settings.require_delivery_credentials()
    assert settings.metrics_port == 9464


def test_worker_serves_metrics_on_all_interfaces_on_an_exposed_port() -> None:
    env = environment("worker")
    assert env["INGEST_METRICS_HOST"] == "0.0.0.0"
    assert env["INGEST_METRICS_PORT"] in [str(p) for p in service("worker")["expose"]]


def test_worker_runs_several_replicas_of_worker_py_built_here() -> None:
    worker = service("worker")
    assert worker["build"] == "."
    assert worker["command"] == ["python", "worker.py"]
    assert int(worker["deploy"]["replicas"]) >= 2


def test_worker_gets_longer_to_stop_than_its_shutdown_grace() -> None:
    grace = float(environment("worker")["INGEST_SHUTDOWN_GRACE"])
    stop_period = str(service("worker")["stop_grace_period"])
    assert stop_period.endswith("s")
    assert float(stop_period[:-1]) > grace + 5


def test_metrics_service_runs_ingest_metrics_on_a_published_port() -> None:
    metrics = service("metrics")
    env = environment("metrics")
    assert metrics["command"] == ["ingest", "metrics"]
    assert env["INGEST_METRICS_HOST"] == "0.0.0.0"
    published = [str(p) for p in metrics["ports"]]
    assert any(p.endswith(":" + env["INGEST_METRICS_PORT"]) for p in published)


def test_sandbox_runs_only_in_the_demo_profile() -> None:
    sandbox = service("sandbox")
    assert sandbox["profiles"] == ["demo"]
    assert sandbox["command"] == ["ingest", "sandbox", "--host", "0.0.0.0", "--port", "8900"]
    assert all("profiles" not in service(name) for name in ("redis", "worker", "metrics"))


def test_redis_is_version_7_started_with_the_deploy_config() -> None:
    redis = service("redis")
    assert str(redis["image"]).startswith("redis:7")
    assert redis["command"] == ["sh", "/usr/local/etc/redis/redis-start.sh"]
    assert "./deploy:/usr/local/etc/redis:ro" in redis["volumes"]
    assert "ports" not in redis


def test_redis_health_check_pings_as_the_ingest_user() -> None:
    test = service("redis")["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL"
    assert "redis-cli" in test[1]
    assert "--user ingest" in test[1]
    assert "ping | grep -q PONG" in test[1]  # redis-cli exits 0 even on a NOAUTH error


@pytest.mark.parametrize("name", ["worker", "metrics"])
def test_health_check_succeeds_when_the_metrics_endpoint_answers(name: str) -> None:
    from prometheus_client import CollectorRegistry, start_http_server

    test = service(name)["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    server, thread = start_http_server(0, addr="127.0.0.1", registry=CollectorRegistry())
    try:
        env = clean_environment(INGEST_METRICS_PORT=str(server.server_port))
        result = subprocess.run(
            [sys.executable, "-c", test[3]], env=env, capture_output=True, text=True, timeout=20
        )
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert result.returncode == 0, result.stderr


def test_health_check_fails_when_nothing_serves_metrics() -> None:
    from ingest.embedded import free_port

    test = service("worker")["healthcheck"]["test"]
    env = clean_environment(INGEST_METRICS_PORT=str(free_port()))
    result = subprocess.run(
        [sys.executable, "-c", test[3]], env=env, capture_output=True, text=True, timeout=20
    )
    assert result.returncode != 0


def test_only_placeholder_passwords_are_committed() -> None:
    text = COMPOSE_FILE.read_text()
    defaults = set(re.findall(r"\$\{REDIS_[A-Z_]*PASSWORD:-([^}]*)\}", text))
    assert defaults <= {"change-me", ""}
    assert "requirepass" not in redis_conf()
    for line in USERS_ACL.read_text().splitlines():
        if line.startswith("user "):
            # >password, <password, #sha256 and !sha256 would all put a secret in the file.
            assert [w for w in line.split() if w[0] in "><#!"] == [], line


# -- deploy/redis.conf ----------------------------------------------------------------------------


def test_redis_never_evicts_queued_jobs() -> None:
    assert redis_conf()["maxmemory-policy"] == "noeviction"


def test_redis_appends_every_write_and_fsyncs_every_second() -> None:
    conf = redis_conf()
    assert conf["appendonly"] == "yes"
    assert conf["appendfsync"] == "everysec"


# -- deploy/users.acl: what the ingest user may do ------------------------------------------------

# Commands Redis tags @dangerous, or that could wipe, reconfigure or stall the server.
DANGEROUS = {
    "flushall",
    "flushdb",
    "config",
    "debug",
    "keys",
    "shutdown",
    "eval",
    "script|flush",
    "script|kill",
    "function",
    "acl",
    "monitor",
    "migrate",
    "restore",
    "replicaof",
    "slaveof",
    "swapdb",
    "client|kill",
    "client|pause",
    "sort",
    "save",
    "bgsave",
    "bgrewriteaof",
    "module",
    "cluster",
    "failover",
}


def test_ingest_user_starts_from_no_command_and_drops_every_dangerous_one() -> None:
    rules = acl_rules("ingest")
    assert rules.index("-@all") < rules.index("-@dangerous")
    categories_added = [i for i, r in enumerate(rules) if r.startswith("+@")]
    assert all(i < rules.index("-@dangerous") for i in categories_added)
    assert {"+@all", "allcommands", "+@admin", "+@dangerous", "+@scripting"} & set(rules) == set()


def test_ingest_user_is_given_back_no_dangerous_command() -> None:
    rules = acl_rules("ingest")
    added_back = {r[1:].lower() for r in rules[rules.index("-@dangerous") :] if r.startswith("+")}
    assert {c for c in added_back if c.split("|")[0] in DANGEROUS or c in DANGEROUS} == set()


def test_ingest_user_may_run_our_scripts_and_read_info() -> None:
    rules = set(acl_rules("ingest"))
    assert {"+evalsha", "+script|load", "+script|exists", "+info"} <= rules
    assert "+eval" not in rules


def test_ingest_user_reaches_only_rq_and_ingest_keys_and_rq_channels() -> None:
    rules = acl_rules("ingest")
    assert [r for r in rules if r.startswith("~") or r in ("allkeys", "%RW~*")] == [
        "~rq:*",
        "~ingest:*",
    ]
    assert rules.index("resetkeys") < rules.index("~rq:*")
    assert [r for r in rules if r.startswith("&") or r == "allchannels"] == ["&rq:pubsub:*"]


def test_nobody_connects_without_credentials() -> None:
    rules = acl_rules("default")
    assert "off" in rules
    assert "on" not in rules
    assert "nopass" not in rules


# -- Dockerfile and .dockerignore -----------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def test_dockerfile_builds_on_python_311_slim() -> None:
    froms = [rest for keyword, rest in dockerfile_instructions() if keyword == "FROM"]
    assert froms == ["python:3.11-slim"]


def test_dockerfile_installs_the_package_with_pip() -> None:
    runs = [rest for keyword, rest in dockerfile_instructions() if keyword == "RUN"]
    # The package itself, with extras or without: `pip install .` or `pip install ".[uvloop]"`.
    assert any(re.match(r'pip install "?\.(\[[\w,]+\])?"?(\s|$)', run) for run in runs)


def test_dockerfile_runs_as_a_non_root_user() -> None:
    users = [rest for keyword, rest in dockerfile_instructions() if keyword == "USER"]
    assert users
    assert users[-1] not in ("root", "0", "0:0")


def test_dockerfile_runs_worker_py() -> None:
    cmds = [rest for keyword, rest in dockerfile_instructions() if keyword == "CMD"]
    assert json.loads(cmds[-1]) == ["python", "worker.py"]
    assert (PROJECT_ROOT / "worker.py").exists()


def test_dockerignore_keeps_the_repository_and_local_state_out_of_the_image() -> None:
    ignored = set((PROJECT_ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", ".env", "tests"} <= ignored
