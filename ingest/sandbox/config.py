"""How a sandbox starts: address, keys and faults, plus the demo credentials."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .faults import Faults

DEFAULT_WEBSITE_ID = "5f0c0ffee0c0ffee0c0ffee0"
DEFAULT_WEBSITE_KEY = "df_sandbox_demo_key"
# Demo credentials of a local fake, printed on startup on purpose: not secrets.
DEFAULT_ACCOUNT_TOKEN = "dft_sandbox_demo_token"  # noqa: S105
PAYMENTS_WRITE = "payments:write"
ANY_WEBSITE = "*"
"""In ``TokenGrant.websites``: the token reaches every website."""

DEFAULT_HOST = "127.0.0.1"
DEFAULT_CLI_PORT = 8900

_WEBSITE_ID = re.compile(r"[0-9a-fA-F]{24}")


def is_website_id(value: str) -> bool:
    return _WEBSITE_ID.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class TokenGrant:
    """What a ``dft_`` account token may do: its scopes and the websites it reaches."""

    scopes: frozenset[str] = frozenset({PAYMENTS_WRITE})
    websites: frozenset[str] = frozenset({DEFAULT_WEBSITE_ID})

    def __post_init__(self) -> None:
        # Accept any iterable of strings (a list from JSON, a set in a test) but keep a
        # frozenset, so a grant stays hashable and nobody edits a live one in place.
        for name in ("scopes", "websites"):
            value = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, Iterable):
                raise ValueError(f"token {name} must be a list of strings")
            items = frozenset(value)
            if not all(isinstance(item, str) for item in items):
                raise ValueError(f"token {name} must be a list of strings")
            object.__setattr__(self, name, items)

    def reaches(self, website_id: str) -> bool:
        return ANY_WEBSITE in self.websites or website_id in self.websites

    @classmethod
    def from_json(cls, data: object) -> TokenGrant:
        if isinstance(data, TokenGrant):
            return data
        if not isinstance(data, Mapping):
            raise ValueError('an account token needs {"scopes": [...], "websites": [...]}')
        unknown = set(data) - {"scopes", "websites"}
        if unknown:
            raise ValueError(f"an account token takes scopes and websites, not {sorted(unknown)}")
        return cls(
            scopes=data.get("scopes", [PAYMENTS_WRITE]),
            websites=data.get("websites", [DEFAULT_WEBSITE_ID]),
        )

    def to_json(self) -> dict[str, list[str]]:
        return {"scopes": sorted(self.scopes), "websites": sorted(self.websites)}


def default_website_keys() -> dict[str, str]:
    return {DEFAULT_WEBSITE_KEY: DEFAULT_WEBSITE_ID}


def default_account_tokens() -> dict[str, TokenGrant]:
    return {DEFAULT_ACCOUNT_TOKEN: TokenGrant()}


def check_website_keys(data: object) -> dict[str, str]:
    if not isinstance(data, Mapping) or not all(
        isinstance(k, str) and k and isinstance(v, str) for k, v in data.items()
    ):
        raise ValueError("website_keys must map each df_ key to its website id")
    return dict(data)


def check_account_tokens(data: object) -> dict[str, TokenGrant]:
    if not isinstance(data, Mapping) or not all(isinstance(k, str) and k for k in data):
        raise ValueError("account_tokens must map each dft_ token to its grant")
    return {token: TokenGrant.from_json(grant) for token, grant in data.items()}


@dataclass(frozen=True, slots=True)
class SandboxConfig:
    """The starting state of a sandbox; ``reset`` returns to it.

    ``port`` 0 picks a free port (the CLI's default is 8900 instead).
    """

    host: str = DEFAULT_HOST
    port: int = 0
    website_keys: Mapping[str, str] = field(default_factory=default_website_keys)
    """df_ website key -> the website id it is scoped to."""
    account_tokens: Mapping[str, TokenGrant] = field(default_factory=default_account_tokens)
    """dft_ account token -> its scopes and reachable websites."""
    faults: Faults = field(default_factory=Faults)
    shutdown_timeout: float = 0.1
    """Seconds ``stop`` lets in-flight requests finish before cancelling them: short, so
    a test that stops a server holding slow answers is not held up by them."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "website_keys", check_website_keys(self.website_keys))
        object.__setattr__(self, "account_tokens", check_account_tokens(self.account_tokens))
        if not isinstance(self.faults, Faults):
            raise ValueError("faults must be a Faults")
        if isinstance(self.port, bool) or not isinstance(self.port, int):
            raise ValueError("port must be an integer")
        if not 0 <= self.port <= 65535:
            raise ValueError("port must be between 0 and 65535")

    def to_json(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "website_keys": dict(self.website_keys),
            "account_tokens": {t: g.to_json() for t, g in self.account_tokens.items()},
            "faults": self.faults.to_json(),
            "shutdown_timeout": self.shutdown_timeout,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SandboxConfig:
        unknown = set(data) - {
            "host",
            "port",
            "website_keys",
            "account_tokens",
            "faults",
            "shutdown_timeout",
        }
        if unknown:
            raise ValueError(f"unknown sandbox settings: {', '.join(sorted(unknown))}")
        defaults = cls()
        return cls(
            host=data.get("host", defaults.host),
            port=data.get("port", defaults.port),
            website_keys=data.get("website_keys", defaults.website_keys),
            account_tokens=data.get("account_tokens", defaults.account_tokens),
            faults=Faults.from_json(data.get("faults", {})),
            shutdown_timeout=data.get("shutdown_timeout", defaults.shutdown_timeout),
        )
