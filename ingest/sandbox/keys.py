"""Who may call the API: website keys, account tokens, and keys revoked for a while.

The tables are replaced whole, never edited in place: the event loop thread looks keys up
while a test thread may be revoking one, and a reference swap is atomic.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from .config import (
    PAYMENTS_WRITE,
    TokenGrant,
    check_account_tokens,
    check_website_keys,
    is_website_id,
)


class AuthFailure(NamedTuple):
    status: int
    message: str


_MISSING = AuthFailure(401, "missing API key: send Authorization: Bearer <key>")
_INVALID = AuthFailure(401, "invalid API key")
_NO_SCOPE = AuthFailure(403, f"this account token lacks the {PAYMENTS_WRITE} scope")
# 403 rather than 400: a token without websiteId is a configuration problem that fails
# every request alike, and a sender pauses on 403 where it would dead-letter on 400.
_NO_WEBSITE = AuthFailure(403, "an account token needs the websiteId query parameter")


class KeyRing:
    """The current keys; ``authorize`` maps a request's credentials to its website."""

    def __init__(self, website_keys: Mapping[str, str], account_tokens: Mapping[str, TokenGrant]):
        self._website_keys: dict[str, str] = check_website_keys(website_keys)
        self._account_tokens: dict[str, TokenGrant] = check_account_tokens(account_tokens)
        self._revoked: frozenset[str] = frozenset()

    def authorize(self, authorization: str | None, website_param: str | None) -> str | AuthFailure:
        """The website the request acts for, or why it may not act at all."""
        if not authorization or authorization[:7].lower() != "bearer ":
            return _MISSING
        key = authorization[7:].strip()
        if not key:
            return _MISSING
        if key in self._revoked:
            return _INVALID
        website = self._website_keys.get(key)
        if website is not None:
            if website_param is not None and website_param != website:
                return AuthFailure(
                    403, f"this website API key cannot act for website {website_param!r}"
                )
            return website
        grant = self._account_tokens.get(key)
        if grant is None:
            return _INVALID
        if PAYMENTS_WRITE not in grant.scopes:
            return _NO_SCOPE
        if not website_param:
            return _NO_WEBSITE
        if not is_website_id(website_param) or not grant.reaches(website_param):
            return AuthFailure(403, f"this account token cannot reach website {website_param!r}")
        return website_param

    def update(
        self,
        *,
        website_keys: Mapping[str, str] | None = None,
        account_tokens: Mapping[str, TokenGrant | Mapping[str, Any]] | None = None,
        revoke: Iterable[str] = (),
        restore: Iterable[str] = (),
    ) -> None:
        """Replace either table, and/or revoke keys (401 until restored) or restore them."""
        if isinstance(revoke, str) or isinstance(restore, str):
            raise ValueError("revoke and restore take a list of keys")
        new_keys = None if website_keys is None else check_website_keys(website_keys)
        new_tokens = None if account_tokens is None else check_account_tokens(account_tokens)
        revoked = (self._revoked | frozenset(revoke)) - frozenset(restore)
        if not all(isinstance(key, str) for key in revoked):
            raise ValueError("revoke and restore take a list of keys")
        # Everything is checked before anything changes: a bad request changes nothing.
        if new_keys is not None:
            self._website_keys = new_keys
        if new_tokens is not None:
            self._account_tokens = new_tokens
        self._revoked = revoked

    def to_json(self) -> dict[str, Any]:
        return {
            "website_keys": dict(self._website_keys),
            "account_tokens": {t: g.to_json() for t, g in self._account_tokens.items()},
            "revoked": sorted(self._revoked),
        }
