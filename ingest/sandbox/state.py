"""Everything one running sandbox holds: keys, faults, randomness and the store.

Shared between the event loop thread (request handlers) and in-process callers (tests),
so every piece is either swapped whole (faults, key tables) or locked (the store).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from .config import SandboxConfig, TokenGrant
from .faults import Faults
from .keys import KeyRing
from .ratelimit import TokenBuckets
from .store import PaymentStore


class SandboxState:
    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.config = config if config is not None else SandboxConfig()
        self.store = PaymentStore()
        self.keys = KeyRing(self.config.website_keys, self.config.account_tokens)
        self.rng = random.Random(self.config.faults.seed)
        self._faults = self.config.faults
        self.buckets = _buckets(self._faults)
        self._lock = threading.Lock()

    @property
    def faults(self) -> Faults:
        return self._faults

    def set_faults(self, **changes: Any) -> Faults:
        """Apply a partial update (unknown names or bad values raise ValueError)."""
        with self._lock:
            faults = self._faults.updated(changes)
            if "seed" in changes:
                self.rng.seed(faults.seed)
            self._faults = faults
            if {"rate_limit", "rate_limit_burst"} & set(changes):
                self.buckets = _buckets(faults)
            return faults

    def set_keys(
        self,
        *,
        website_keys: Mapping[str, str] | None = None,
        account_tokens: Mapping[str, TokenGrant | Mapping[str, Any]] | None = None,
        revoke: Iterable[str] = (),
        restore: Iterable[str] = (),
        defaults: bool = False,
    ) -> dict[str, Any]:
        """Change who may call the API; ``defaults`` first returns to the configured keys."""
        with self._lock:
            if defaults:
                self.keys = KeyRing(self.config.website_keys, self.config.account_tokens)
            self.keys.update(
                website_keys=website_keys,
                account_tokens=account_tokens,
                revoke=revoke,
                restore=restore,
            )
            return self.keys.to_json()

    def reset(self) -> None:
        """Back to the starting configuration: no records, zero counters, configured
        faults and keys (no faults and the demo keys for a default config)."""
        with self._lock:
            self.store.clear()
            self.keys = KeyRing(self.config.website_keys, self.config.account_tokens)
            self._faults = self.config.faults
            self.buckets = _buckets(self._faults)
            self.rng.seed(self.config.faults.seed)


def _buckets(faults: Faults) -> TokenBuckets | None:
    """Fresh (full) buckets for the faults' rate limit, None without one."""
    if faults.rate_limit is None:
        return None
    return TokenBuckets(faults.rate_limit, faults.bucket_size)
