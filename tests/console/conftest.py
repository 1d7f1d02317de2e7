"""Fixtures of the console tests: dead letters in the session's Redis, and the console app
served in-process through httpx's ASGI transport (no socket, no server thread).

Dead letters are written the way the worker writes them (the record of
``ingest.deadletter.dead_record``, the ``dead_lettered`` and ``enqueued`` counters of the ACK
script), from real validated payments, so a replayed one is an event a worker can deliver.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from ingest import keys
from ingest.console.app import create_app
from ingest.console.config import ConsoleOptions
from ingest.jobs import job_data
from ingest.models import validate_payment
from ingest.settings import Settings
from ingest.timestamps import utc_iso

QUEUE = "payments"
BASE = "http://127.0.0.1:8000"
ORIGIN = {"Origin": BASE}
# A key only these tests use: if it shows up in any page or answer, the secret leaked.
API_KEY = "df_console_canary_SECRET_4242"
TOKEN = "console-test-token-0123456789abcdef"
CSRF_SECRET = b"console-tests-csrf-secret-32-byt"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass(frozen=True)
class Letter:
    """What a test says about one dead letter; :func:`seed` turns it into a record."""

    transaction_id: str
    reason: str = "rejected"
    status: int | None = 400
    website: str = "-"
    error: str = "invalid currency"
    email: str | None = None
    name: str | None = None
    dead_at: float | None = None
    attempts: int = 1


def record(letter: Letter, now: float) -> tuple[str, dict[str, Any]]:
    """(job id, dead-letter record) as ``ingest.deadletter.dead_record`` writes them."""
    payment = validate_payment(
        amount=Decimal("29.99"),
        currency="usd",
        transaction_id=letter.transaction_id,
        email=letter.email,
        name=letter.name,
        customer_id="cus_1",
        timestamp=datetime(2026, 5, 1, tzinfo=UTC),
    )
    at = utc_iso(now)
    history = [
        {"at": at, "status": letter.status, "error": letter.error}
        for _ in range(max(1, letter.attempts))
    ]
    return payment.job_id, {
        "job_id": payment.job_id,
        "transaction_id": letter.transaction_id,
        "website": letter.website,
        "data": job_data(payment),
        "reason": letter.reason,
        "status": letter.status,
        "error": letter.error,
        "attempts": letter.attempts,
        "first_attempt_at": at,
        "last_attempt_at": at,
        "dead_at": at,
        "history": history,
        "history_json": json.dumps(history),
    }


def seed(client: redis.Redis, letters: Iterable[Letter], *, queue: str = QUEUE) -> list[str]:
    """Write dead letters (each 1 ms apart, newest last) and count them as the ACK does."""
    k = keys.QueueKeys(queue)
    ids: list[str] = []
    base = time.time() - 10
    with client.pipeline(transaction=True) as pipe:
        for n, letter in enumerate(letters):
            dead_at = letter.dead_at if letter.dead_at is not None else base + n / 1000
            job_id, rec = record(letter, dead_at)
            pipe.hset(k.dead, job_id, json.dumps(rec))
            pipe.zadd(k.dead_index, {job_id: dead_at})
            ids.append(job_id)
        pipe.hincrby(k.stats, "dead_lettered", len(ids))
        pipe.hincrby(k.stats, "enqueued", len(ids))
        pipe.execute()
    return ids


def snapshot(client: redis.Redis) -> dict[bytes, Any]:
    """Every key and its value, to show that something changed nothing."""
    out: dict[bytes, Any] = {}
    for key in client.scan_iter("*"):
        kind = client.type(key)
        if kind == b"hash":
            out[key] = client.hgetall(key)
        elif kind == b"zset":
            out[key] = client.zrange(key, 0, -1, withscores=True)
        elif kind == b"list":
            out[key] = client.lrange(key, 0, -1)
        elif kind == b"set":
            out[key] = client.smembers(key)
        else:
            out[key] = client.get(key)
    return out


def queued_ids(client: redis.Redis, queue: str = QUEUE) -> list[str]:
    return [keys.text(i) for i in client.lrange(keys.QueueKeys(queue).queue, 0, -1)]


@pytest.fixture
def settings(redis_url: str, tmp_path: Path) -> Settings:
    return Settings(
        redis_url=redis_url,
        queue=QUEUE,
        api_key=API_KEY,
        spool_dir=tmp_path / "spool",
        auth_probe_interval=30,
    )


class Console:
    """An in-process console and an httpx client on it, with the CSRF token at hand."""

    def __init__(self, client: httpx.AsyncClient, app: Any) -> None:
        self.http = client
        self.app = app
        self._csrf: str | None = None

    async def csrf(self) -> str:
        if self._csrf is None:
            answer = await self.http.get("/api/session")
            answer.raise_for_status()
            self._csrf = str(answer.json()["csrf_token"])
        return self._csrf

    async def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.http.get(path, **kwargs)

    async def post_json(self, path: str, body: Any, **headers: str) -> httpx.Response:
        sent = {**ORIGIN, "X-CSRF-Token": await self.csrf(), **headers}
        return await self.http.post(path, json=body, headers=sent)

    async def post_form(
        self, path: str, fields: list[tuple[str, str]] | dict[str, str], **headers: str
    ) -> httpx.Response:
        items = list(fields.items()) if isinstance(fields, dict) else list(fields)
        items.append(("csrf_token", await self.csrf()))
        return await self.http.post(path, data=dict(_group(items)), headers={**ORIGIN, **headers})


def _group(items: list[tuple[str, str]]) -> Iterator[tuple[str, str | list[str]]]:
    grouped: dict[str, list[str]] = {}
    for key, value in items:
        grouped.setdefault(key, []).append(value)
    for key, values in grouped.items():
        yield key, values if len(values) > 1 else values[0]


@pytest.fixture
def make_console(settings: Settings) -> Any:
    """``async with make_console(options=..., base_url=...) as console``: an app with its
    lifespan running and a client on it."""

    @contextlib.asynccontextmanager
    async def make(
        options: ConsoleOptions | None = None,
        *,
        base_url: str = BASE,
        app_settings: Settings | None = None,
        headers: dict[str, str] | None = None,
    ) -> AsyncIterator[Console]:
        app = create_app(
            app_settings or settings,
            options=options or ConsoleOptions(),
            csrf_secret=CSRF_SECRET,
            warm_index=False,
        )
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50123))
            async with httpx.AsyncClient(
                transport=transport, base_url=base_url, headers=headers or {}
            ) as client:
                yield Console(client, app)

    return make
