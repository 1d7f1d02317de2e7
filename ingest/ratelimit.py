"""A send rate per credential, shared by every worker process on every host.

The Payments API limits each key, not each worker: a ``df_`` website key, or a ``dft_``
account token together with the website it acts for, is one *credential*. Its limiter lives
in Redis (``ingest:send-rate:{credential}``, see :mod:`ingest.keys`): a token bucket refilled
at the learned rate, the hold that a run of 429s puts on it, and the current window of
answers, all changed by the one ``ACQUIRE`` script (:mod:`ingest.scripts`). A worker takes
permits for a whole batch of events in one round trip, and reports the answers its requests
got in the same call. The worker whose call closes a window decides the next rate
(:mod:`ingest.ratelearner`) and stores it here, for everyone.

A credential is named by :func:`credential_id`, a short hash: the key itself never reaches
Redis, a log or a metric label.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import redis
import redis.asyncio

from . import keys, scripts
from .scripts import NO_ANSWERS, Answers, BucketShape, Permits


def credential_id(api_key: str, website: str | None) -> str:
    """The short, stable name of what the API limits: a hash of the key, and of the website
    for an account token (``website`` None for a ``df_`` key, which names its own)."""
    digest = hashlib.sha256(f"{api_key}\0{website or ''}".encode()).hexdigest()
    return digest[:12]


class SendRate:
    """One credential's shared limiter, seen from one worker of ``queue``."""

    def __init__(self, queue: keys.QueueKeys, credential: str, shape: BucketShape) -> None:
        self.queue = queue
        self.credential = credential
        self.shape = shape

    def acquire(
        self,
        conn: redis.Redis,
        wanted: int,
        *,
        now: float,
        unused: int = 0,
        answers: Answers = NO_ANSWERS,
    ) -> Permits:
        """Up to ``wanted`` permits now (none while held), one round trip; gives back
        ``unused`` permits taken before and reports ``answers``."""
        return scripts.acquire(
            conn,
            self.queue,
            self.credential,
            self.shape,
            now=now,
            wanted=wanted,
            unused=unused,
            answers=answers,
        )

    async def acquire_async(
        self,
        conn: redis.asyncio.Redis,
        wanted: int,
        *,
        now: float,
        unused: int = 0,
        answers: Answers = NO_ANSWERS,
    ) -> Permits:
        """:meth:`acquire` on an asyncio connection."""
        return await scripts.acquire_async(
            conn,
            self.queue,
            self.credential,
            self.shape,
            now=now,
            wanted=wanted,
            unused=unused,
            answers=answers,
        )

    def store(
        self,
        conn: redis.Redis,
        *,
        rate: float,
        hold_until: float,
        learner: str,
        window_min: float | None = None,
    ) -> None:
        """Set the learned rate, the hold (never shortened), the learner's state and (when
        given) the shortest window from now on, atomically."""
        call = scripts.store_rate_call(self.credential, rate, hold_until, learner, window_min)
        scripts.STORE_RATE_SCRIPT.run(conn, *call)

    async def store_async(
        self,
        conn: redis.asyncio.Redis,
        *,
        rate: float,
        hold_until: float,
        learner: str,
        window_min: float | None = None,
    ) -> None:
        """:meth:`store` on an asyncio connection."""
        call = scripts.store_rate_call(self.credential, rate, hold_until, learner, window_min)
        await scripts.STORE_RATE_SCRIPT.run_async(conn, *call)


@dataclass(frozen=True, slots=True)
class SendRateView:
    """A credential's shared state, as ``ingest stats``, metrics and the console show it."""

    credential: str
    rate: float
    """The learned send rate, requests/s."""
    hold_seconds: float
    """Seconds left of a hold (0: not held)."""


def read_send_rates(conn: redis.Redis, queue: str, *, now: float) -> list[SendRateView]:
    """Every credential ``queue``'s workers send with, whose state is still in Redis."""
    members = sorted(keys.text(m) for m in conn.smembers(keys.QueueKeys(queue).send_rates))
    if not members:
        return []
    with conn.pipeline(transaction=False) as pipe:
        for credential in members:
            pipe.hmget(keys.send_rate(credential), "rate", "hold_until")
        rows = pipe.execute()
    views = []
    for credential, (rate, hold_until) in zip(members, rows, strict=True):
        if rate is None:
            continue  # expired: not used for a day
        hold = 0.0 if hold_until is None else float(hold_until)
        views.append(SendRateView(credential, float(rate), max(0.0, hold - now)))
    return views
