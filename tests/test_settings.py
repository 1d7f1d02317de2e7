"""ingest.settings: the INGEST_* environment, its defaults, and a key that never shows.

Unit lane, except the ``ingest worker`` runs, which start the real command in a subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import PROJECT_ROOT, worker_environment
from pydantic import SecretStr

from ingest.errors import ConfigurationError, SettingsError
from ingest.settings import Settings, env_names

WEBSITE = "0123456789abcdef01234567"
SECRET_KEY = "df_live_5e4d3c2b1a09f8e7d6c5"
SECRET_TOKEN = "dft_live_9a8b7c6d5e4f3a2b1c0d"

# The spec's configuration table (shared/spec/payments-api.md, section 2).
SPEC_VARIABLES = [
    "INGEST_REDIS_URL",
    "INGEST_API_URL",
    "INGEST_API_KEY",
    "INGEST_WEBSITE_ID",
    "INGEST_QUEUE",
    "INGEST_CONCURRENCY",
    "INGEST_MAX_ATTEMPTS",
    "INGEST_BACKOFF_BASE",
    "INGEST_BACKOFF_MAX",
    "INGEST_METRICS_PORT",
    "INGEST_SPOOL_DIR",
]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No INGEST_* from the machine running the tests; a private per-user data dir."""
    for name in list(os.environ):
        if name.startswith("INGEST_"):
            monkeypatch.delenv(name)
    data_home = tmp_path / "data-home"
    monkeypatch.setenv("XDG_DATA_HOME", str(data_home))
    return data_home


# -- defaults --------------------------------------------------------------------------------------


def test_every_variable_of_the_spec_is_a_setting() -> None:
    assert set(SPEC_VARIABLES) <= set(env_names())


def test_every_setting_has_a_description_for_help() -> None:
    assert all(description for description in env_names().values())


@pytest.mark.parametrize(
    ("attribute", "default"),
    [
        # The spec's default URL (compared, never connected to): Redis's standard port.
        ("redis_url", "redis://localhost:" + "6379/0"),
        ("api_url", "https://datafa.st"),
        ("api_key", None),
        ("website_id", None),
        ("queue", "payments"),
        ("metrics_port", None),
    ],
)
def test_default_is_the_one_in_the_spec(attribute: str, default: Any) -> None:
    assert getattr(Settings(), attribute) == default


def test_default_concurrency_keeps_many_requests_in_flight() -> None:
    assert Settings().concurrency >= 16


def test_default_retry_policy_is_sensible() -> None:
    settings = Settings()
    assert 3 <= settings.max_attempts <= 100
    assert 0 < settings.backoff_base <= settings.backoff_max
    assert settings.backoff_max <= 3600


def test_default_spool_dir_is_in_the_per_user_data_dir(clean_environment: Path) -> None:
    assert Settings().spool_dir == clean_environment / "datafast-ingest" / "spool"


# -- the environment -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value", "attribute", "expected"),
    [
        ("INGEST_REDIS_URL", "redis://127.0.0.1:7777/3", "redis_url", "redis://127.0.0.1:7777/3"),
        ("INGEST_API_URL", "http://127.0.0.1:8900/", "api_url", "http://127.0.0.1:8900"),
        ("INGEST_WEBSITE_ID", WEBSITE, "website_id", WEBSITE),
        ("INGEST_QUEUE", "payments-eu", "queue", "payments-eu"),
        ("INGEST_CONCURRENCY", "32", "concurrency", 32),
        ("INGEST_MAX_ATTEMPTS", "4", "max_attempts", 4),
        ("INGEST_BACKOFF_BASE", "0.5", "backoff_base", 0.5),
        ("INGEST_BACKOFF_MAX", "30", "backoff_max", 30.0),
        ("INGEST_METRICS_PORT", "9464", "metrics_port", 9464),
        ("INGEST_SPOOL_DIR", "/var/lib/ingest/spool", "spool_dir", Path("/var/lib/ingest/spool")),
    ],
)
def test_setting_is_read_from_its_ingest_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, attribute: str, expected: Any
) -> None:
    monkeypatch.setenv(variable, value)
    assert getattr(Settings(), attribute) == expected


def test_api_key_is_read_from_the_environment_as_a_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("INGEST_API_KEY", SECRET_KEY)
    api_key = Settings().api_key
    assert isinstance(api_key, SecretStr)
    assert api_key.get_secret_value() == SECRET_KEY


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("INGEST_CONCURRENCY", "0"),
        ("INGEST_WEBSITE_ID", "not-a-website"),
        ("INGEST_API_URL", "datafa.st"),
        ("INGEST_BACKOFF_MAX", "0.1"),
        ("INGEST_REDIS_URL", "cache.example:6380"),
        ("INGEST_LOG_LEVEL", "LOUD"),
    ],
)
def test_invalid_setting_is_refused_naming_its_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as caught:
        Settings()
    assert list(caught.value.problems) == [variable]
    assert caught.value.setting == variable


def test_a_bad_number_is_reported_in_words_with_the_value_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("INGEST_CONCURRENCY", "abc")
    with pytest.raises(SettingsError) as caught:
        Settings()
    assert caught.value.lines == ["INGEST_CONCURRENCY: must be an integer, got 'abc'"]


def test_a_bad_redis_url_is_quoted_with_its_password_masked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("INGEST_REDIS_URL", "redis://:pw-s3cret@localhost:notaport/0")
    with pytest.raises(SettingsError) as caught:
        Settings()
    assert "redis://:***@localhost:notaport/0" in str(caught.value)
    assert "pw-s3cret" not in str(caught.value)


def test_log_level_is_read_in_any_case() -> None:
    assert Settings(log_level="warning").log_level == "WARNING"  # type: ignore[arg-type]


def test_an_override_out_of_range_names_the_variable() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings().with_overrides(concurrency=0)
    assert caught.value.lines == ["INGEST_CONCURRENCY: must be >= 1, got 0"]


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(ValueError, match="frozen"):
        settings.queue = "other"  # type: ignore[misc]


# -- the key stays secret --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "show", [repr, str, lambda s: s.model_dump_json()], ids=["repr", "str", "json"]
)
def test_api_key_never_appears_when_settings_are_shown(show: Any) -> None:
    settings = Settings(api_key=SECRET_TOKEN, website_id=WEBSITE)  # type: ignore[arg-type]
    assert SECRET_TOKEN not in show(settings)


def test_overrides_keep_the_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    # `ingest worker --concurrency` builds its settings this way.
    monkeypatch.setenv("INGEST_API_KEY", SECRET_KEY)
    overridden = Settings().with_overrides(concurrency=4)
    assert overridden.concurrency == 4
    assert overridden.api_key is not None
    assert overridden.api_key.get_secret_value() == SECRET_KEY


# -- credentials a worker can use ------------------------------------------------------------------


def test_account_token_without_website_id_names_ingest_website_id() -> None:
    settings = Settings(api_key=SECRET_TOKEN)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError) as caught:
        settings.require_delivery_credentials()
    assert caught.value.setting == "INGEST_WEBSITE_ID"
    assert "INGEST_WEBSITE_ID" in str(caught.value)
    assert SECRET_TOKEN not in str(caught.value)


def test_account_token_with_website_id_is_enough() -> None:
    settings = Settings(api_key=SECRET_TOKEN, website_id=WEBSITE)  # type: ignore[arg-type]
    settings.require_delivery_credentials()
    assert settings.is_account_token


def test_website_key_needs_no_website_id() -> None:
    settings = Settings(api_key=SECRET_KEY)  # type: ignore[arg-type]
    settings.require_delivery_credentials()
    assert not settings.is_account_token


def test_missing_api_key_names_ingest_api_key() -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings().require_delivery_credentials()
    assert caught.value.setting == "INGEST_API_KEY"


def test_api_key_of_an_unknown_kind_is_refused_without_showing_it() -> None:
    settings = Settings(api_key="sk_live_abcdef123456")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError) as caught:
        settings.require_delivery_credentials()
    assert caught.value.setting == "INGEST_API_KEY"
    assert "sk_live_abcdef123456" not in str(caught.value)


# -- `ingest worker` refuses to start without usable credentials (subprocess) ----------------------


def run_worker_command(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60
    )


@pytest.mark.integration
def test_worker_with_account_token_and_no_website_id_exits_2_naming_the_variable(
    redis_url: str,
) -> None:
    env = worker_environment(redis_url, "http://127.0.0.1:9", api_key=SECRET_TOKEN)
    result = run_worker_command([sys.executable, "-m", "ingest", "worker", "--burst"], env)
    assert result.returncode == 2, result.stderr
    assert "INGEST_WEBSITE_ID" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.integration
def test_worker_refusing_an_account_token_never_prints_it(redis_url: str) -> None:
    env = worker_environment(redis_url, "http://127.0.0.1:9", api_key=SECRET_TOKEN)
    result = run_worker_command([sys.executable, "-m", "ingest", "worker", "--burst"], env)
    assert SECRET_TOKEN not in result.stdout + result.stderr
    assert SECRET_TOKEN.removeprefix("dft_") not in result.stdout + result.stderr


@pytest.mark.integration
def test_worker_script_with_account_token_and_no_website_id_exits_2(redis_url: str) -> None:
    env = worker_environment(redis_url, "http://127.0.0.1:9", api_key=SECRET_TOKEN)
    result = run_worker_command([sys.executable, "worker.py", "--burst"], env)
    assert result.returncode == 2, result.stderr
    assert "INGEST_WEBSITE_ID" in result.stderr


@pytest.mark.integration
def test_worker_without_api_key_exits_2_naming_the_variable(redis_url: str) -> None:
    env = worker_environment(redis_url, "http://127.0.0.1:9", api_key=None)
    result = run_worker_command([sys.executable, "-m", "ingest", "worker", "--burst"], env)
    assert result.returncode == 2, result.stderr
    assert "INGEST_API_KEY" in result.stderr
