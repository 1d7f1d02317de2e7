"""What every ``ingest`` command shares: exit codes and loading the settings."""

from __future__ import annotations

from typing import Any

from ingest.errors import ConfigurationError
from ingest.settings import Settings

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def load_settings(**overrides: Any) -> Settings:
    try:
        return Settings().with_overrides(**overrides)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise ConfigurationError(f"invalid configuration: {exc}") from exc
