"""All configuration, read once from ``INGEST_*`` environment variables.

The same names appear in the README, in ``docker-compose.yml`` and in ``ingest --help``;
``tests/test_settings.py`` keeps them in step.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydantic
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .errors import ConfigurationError, SettingsError

WEBSITE_ID_PATTERN = r"^[0-9a-fA-F]{24}$"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# What a person is told for pydantic's error types, instead of pydantic's own sentences.
_REASONS = {
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "int_type": "must be an integer",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "finite_number": "must be a finite number",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "greater_than_equal": "must be >= {ge}",
    "greater_than": "must be > {gt}",
    "less_than_equal": "must be <= {le}",
    "less_than": "must be < {lt}",
}
# Settings whose values are never quoted back, even when they are wrong.
_SECRETS = frozenset({"api_key", "console_token"})


def default_spool_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "datafast-ingest" / "spool"


class Settings(BaseSettings):
    """One frozen settings object; build it with ``Settings()`` to read the environment."""

    model_config = SettingsConfigDict(
        env_prefix="INGEST_", frozen=True, extra="ignore", validate_default=True
    )

    redis_url: str = Field(
        default="redis://localhost:6379/0",
        description="Where the queue lives (redis://, rediss://, unix://).",
    )
    api_url: str = Field(default="https://datafa.st", description="Payments API base URL.")
    api_key: SecretStr | None = Field(
        default=None,
        description="df_ website key or dft_ account token with payments:write (never logged).",
    )
    website_id: str | None = Field(
        default=None, description="24-hex website id; required with a dft_ account token."
    )
    queue: str = Field(default="payments", description="Queue name.")
    concurrency: int = Field(
        default=256,
        ge=1,
        le=4096,
        description="POSTs in flight per worker process (measured: see README, Performance).",
    )
    max_attempts: int = Field(
        default=12,
        ge=1,
        le=100,
        description="Attempts before a transient failure is dead-lettered.",
    )
    backoff_base: float = Field(
        default=1.0, gt=0, description="Seconds: first retry delay cap (doubles per attempt)."
    )
    backoff_max: float = Field(default=600.0, gt=0, description="Seconds: largest retry delay.")
    request_timeout: float = Field(
        default=10.0, gt=0, description="Seconds allowed for one POST to the API."
    )
    send_rate_initial: float = Field(
        default=30.0,
        gt=0,
        description="Requests/s a credential starts at before its rate is learned (shared "
        "by every worker; doubles every quarter second while the API accepts all). Low, "
        "so that start-up overshoots a small limit for a moment, not more.",
    )
    send_rate_max: float = Field(
        default=10_000.0,
        gt=0,
        description="Requests/s a credential's learned send rate never exceeds.",
    )
    lease_seconds: int = Field(
        default=8,
        ge=3,
        description="An event held by a worker that stops heartbeating returns to the queue "
        "after this long (plus up to a second).",
    )
    auth_probe_interval: float = Field(
        default=30.0,
        gt=0,
        description="Seconds between probes of a website paused after a 401/403.",
    )
    shutdown_grace: float = Field(
        default=15.0,
        ge=0,
        description="Seconds a stopping worker waits for in-flight requests before returning them.",
    )
    dedup_window: int = Field(
        default=86_400,
        ge=0,
        description="Seconds a delivered event's id is remembered so a re-enqueue is a duplicate.",
    )
    producer_timeout: float = Field(
        default=0.05,
        gt=0,
        description="Seconds the producer waits on Redis before spooling to disk.",
    )
    spool_dir: Path = Field(
        default_factory=default_spool_dir,
        description="Where the producer keeps events while Redis is down.",
    )
    spool_max_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=1024,
        description="Size cap of the spool; past it an enqueue raises SpoolFullError.",
    )
    spool_fsync: bool = Field(
        default=True, description="fdatasync every spooled event before returning (durable)."
    )
    breaker_cooldown: float = Field(
        default=1.0,
        gt=0,
        description="Seconds the producer sends straight to the spool after a Redis failure.",
    )
    metrics_port: int | None = Field(
        default=None, ge=0, le=65535, description="Serve Prometheus metrics on this port."
    )
    metrics_host: str = Field(
        default="127.0.0.1",
        description="Address the metrics endpoint binds (0.0.0.0 in a container).",
    )
    console_token: SecretStr | None = Field(
        default=None,
        description="Token the operator console requires on every request (bearer header or "
        "login form); required to bind an address other than loopback.",
    )
    console_session_lifetime: int = Field(
        default=28800,
        gt=0,
        le=30 * 86400,
        description="Seconds a console login lasts before the token is asked for again.",
    )
    log_level: str = Field(default="INFO", description="DEBUG, INFO, WARNING or ERROR.")

    if not TYPE_CHECKING:  # mypy keeps checking the fields' types at each Settings(...)

        def __init__(self, *args: Any, **values: Any) -> None:
            """Read the environment (``values`` win over it); raise :class:`SettingsError`
            naming every bad ``INGEST_*`` variable."""
            try:
                super().__init__(*args, **values)
            except pydantic.ValidationError as exc:
                raise settings_error(exc) from None

    @field_validator("redis_url")
    @classmethod
    def _redis_url_is_usable(cls, value: str) -> str:
        from .connection import check_url

        check_url(value)
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level_is_known(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}, got {value!r}")
        return level

    @field_validator("website_id")
    @classmethod
    def _website_id_is_hex(cls, value: str | None) -> str | None:
        if value is not None and value != "":
            import re

            if not re.fullmatch(WEBSITE_ID_PATTERN, value):
                raise ValueError("must be a 24-character hex string")
        return value or None

    @field_validator("api_url")
    @classmethod
    def _api_url_has_scheme(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _backoff_bounds(self) -> Settings:
        if self.backoff_max < self.backoff_base:
            raise ValueError("INGEST_BACKOFF_MAX must be >= INGEST_BACKOFF_BASE")
        if self.send_rate_max < self.send_rate_initial:
            raise ValueError("INGEST_SEND_RATE_MAX must be >= INGEST_SEND_RATE_INITIAL")
        return self

    @property
    def is_account_token(self) -> bool:
        return self.api_key is not None and self.api_key.get_secret_value().startswith("dft_")

    def require_delivery_credentials(self) -> None:
        """Raise :class:`ConfigurationError` unless a worker could authenticate with these."""
        if self.api_key is None or not self.api_key.get_secret_value():
            raise ConfigurationError(
                "INGEST_API_KEY is not set: a df_ website key or a dft_ account token is required",
                setting="INGEST_API_KEY",
            )
        key = self.api_key.get_secret_value()
        if not key.startswith(("df_", "dft_")):
            raise ConfigurationError(
                "INGEST_API_KEY must start with df_ (website key) or dft_ (account token)",
                setting="INGEST_API_KEY",
            )
        if key.startswith("dft_") and self.website_id is None:
            raise ConfigurationError(
                "INGEST_API_KEY is a dft_ account token, which needs INGEST_WEBSITE_ID "
                "(the 24-hex website id) or a website_id on every event",
                setting="INGEST_WEBSITE_ID",
            )

    def with_overrides(self, **changes: Any) -> Settings:
        """A copy with some fields replaced, validated like the original."""
        data = self.model_dump()
        data.update({k: v for k, v in changes.items() if v is not None})
        try:
            return Settings.model_validate(data)
        except pydantic.ValidationError as exc:
            raise settings_error(exc) from None


def settings_error(exc: pydantic.ValidationError) -> SettingsError:
    """pydantic's report as one :class:`SettingsError`: each problem under the environment
    variable to fix, in words, quoting the value given unless it is a secret."""
    problems: dict[str, str] = {}
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else None
        template = _REASONS.get(error["type"])
        if template is not None:
            reason = template.format(**error.get("ctx", {}))
            if field not in _SECRETS:
                reason += f", got {error['input']!r}"
        else:
            # Our own validators' messages, which quote only what is safe to show.
            reason = str(error["msg"]).removeprefix("Value error, ")
        if field is not None:
            name = f"INGEST_{field.upper()}"
        else:
            # A check across settings names its variable first ("INGEST_BACKOFF_MAX must ...").
            first, _, rest = reason.partition(" ")
            name, reason = (first, rest) if first.startswith("INGEST_") else ("settings", reason)
        problems.setdefault(name, reason)
    return SettingsError(problems)


def env_names() -> dict[str, str]:
    """``INGEST_*`` variable name -> description, for ``--help`` and documentation."""
    return {
        f"INGEST_{name.upper()}": field.description or ""
        for name, field in Settings.model_fields.items()
    }
