"""Console logins: one random session id per login, kept in Redis for a lifetime.

The browser holds the id (an HttpOnly cookie); Redis holds only a hash of it under
``ingest:{q}:session:{hash}`` (:mod:`ingest.keys`), so reading Redis gives no one a live
session. The hash is an HMAC keyed with ``INGEST_CONSOLE_TOKEN``: rotating the token (a
leaked one, say) ends every session signed in with the old one, as the new token finds no
key for them (theirs expire unused). A session also ends at logout (the key is deleted) or
when its lifetime, ``INGEST_CONSOLE_SESSION_LIFETIME``, runs out (the key expires),
whichever comes first. Each change is one Redis command, so no script is needed to keep it
atomic.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable

import redis

from ingest import keys
from ingest.timestamps import utc_iso

_SESSION_ID = re.compile(r"[A-Za-z0-9_\-]{43}")


class Sessions:
    """The logins of the console of one queue."""

    def __init__(
        self,
        connection: redis.Redis,
        queue: str,
        *,
        lifetime: int,
        token: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``token``: the console's ``INGEST_CONSOLE_TOKEN``, which session keys are bound
        to (None: no token, a plain SHA-256)."""
        self.connection = connection
        self._token = token.encode() if token else None
        self.keys = keys.QueueKeys(queue)
        self.lifetime = lifetime
        self._clock = clock

    def _key(self, session_id: str) -> str:
        if self._token is None:
            digest = hashlib.sha256(session_id.encode()).hexdigest()
        else:
            digest = hmac.new(self._token, session_id.encode(), hashlib.sha256).hexdigest()
        return self.keys.console_session(digest)

    def start(self) -> str:
        """A new session id, valid for ``lifetime`` seconds."""
        session_id = secrets.token_urlsafe(32)
        self.connection.set(self._key(session_id), utc_iso(self._clock()), ex=self.lifetime)
        return session_id

    def valid(self, session_id: str) -> bool:
        """True while the session exists: not ended, not expired. Raises redis-py's errors."""
        if not _SESSION_ID.fullmatch(session_id):
            return False
        return bool(self.connection.exists(self._key(session_id)))

    def end(self, session_id: str) -> None:
        if _SESSION_ID.fullmatch(session_id):
            self.connection.delete(self._key(session_id))
