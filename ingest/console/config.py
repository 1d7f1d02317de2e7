"""How the console is set up: its settings, its options, and where it may listen.

The console binds loopback by default. Listening anywhere else exposes payments and the
power to replay or purge them, so it requires ``INGEST_CONSOLE_TOKEN``: :func:`check_bind`
refuses to start otherwise, with a message that says what to do.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from pydantic import SecretStr

from ingest.deadletter import DEFAULT_REPLAY_RATE
from ingest.errors import ConfigurationError
from ingest.settings import Settings

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
MIN_TOKEN_LENGTH = 16


# The package's one settings object carries the console's token (INGEST_CONSOLE_TOKEN).
ConsoleSettings = Settings


@dataclass(frozen=True, slots=True)
class ConsoleOptions:
    """What one console process allows: its token, read-only mode and replay pace."""

    token: SecretStr | None = None
    read_only: bool = False
    replay_rate: float = DEFAULT_REPLAY_RATE

    @property
    def token_value(self) -> str | None:
        if self.token is None:
            return None
        return self.token.get_secret_value() or None


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``; a name other than that is not."""
    name = host.strip().strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: SecretStr | None) -> None:
    """Raise :class:`ConfigurationError` unless the console may listen on ``host``.

    Loopback needs nothing; any other address needs a token of at least
    ``MIN_TOKEN_LENGTH`` characters. A token that is set but too short is refused on
    loopback too, rather than silently protecting nothing much.
    """
    value = token.get_secret_value() if token is not None else ""
    if value and len(value) < MIN_TOKEN_LENGTH:
        raise ConfigurationError(
            f"INGEST_CONSOLE_TOKEN is too short: use at least {MIN_TOKEN_LENGTH} random "
            "characters (for example: python -c 'import secrets; print(secrets.token_urlsafe())')",
            setting="INGEST_CONSOLE_TOKEN",
        )
    if not is_loopback(host) and not value:
        raise ConfigurationError(
            f"refusing to serve the console on {host}: it is not a loopback address and "
            "INGEST_CONSOLE_TOKEN is not set. Anyone who can reach that address could read "
            "payments and replay or purge them. Set INGEST_CONSOLE_TOKEN to a long random "
            "secret, or bind 127.0.0.1 (the default) and use an SSH tunnel.",
            setting="INGEST_CONSOLE_TOKEN",
        )


def plain_http_warning(host: str, *, https: bool, behind_proxy: bool) -> str | None:
    """Why logging in will fail when the console listens beyond loopback over plain HTTP
    (its session cookie is then Secure, which browsers keep only over HTTPS); else None."""
    if is_loopback(host) or https or behind_proxy:
        return None
    return (
        f"serving plain HTTP on {host}: browsers keep the console's Secure login cookie only "
        "over HTTPS, so use --ssl-certfile/--ssl-keyfile or a TLS proxy named by "
        "--forwarded-allow-ips (or an SSH tunnel to 127.0.0.1)"
    )
