"""Shared fixtures: a real Redis for integration tests, fakeredis for pure key logic.

By default the session starts its own ``redis-server`` on a free loopback port (see
``ingest.embedded``), so nothing depends on a Redis the machine may already run. Set
``REDIS_URL`` to test against an existing server instead; every test FLUSHALLs it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import fakeredis
import pytest
import redis

from ingest.embedded import RedisServer, find_redis_server
from ingest.errors import ConfigurationError

REDIS_URL_ENV = "REDIS_URL"
# The tests FLUSHALL the REDIS_URL server, so one that already holds data is refused
# unless this is set: pointing REDIS_URL at the wrong server must not wipe it.
ALLOW_FLUSH_ENV = "INGEST_TEST_ALLOW_FLUSH"


@dataclass(frozen=True)
class ExternalRedis:
    """A server given by ``REDIS_URL``: only its URL, it cannot be stopped or killed."""

    url: str


def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=False)


def _close(client: redis.Redis) -> None:
    # Both: close() releases the client's connection, disconnect() every pooled socket,
    # or `filterwarnings = error` turns the leaked sockets' ResourceWarning into failures.
    client.close()
    client.connection_pool.disconnect()


def _flushall(url: str) -> None:
    client = _client(url)
    try:
        client.flushall()
    finally:
        _close(client)


def _key_count(url: str) -> int:
    client = _client(url)
    try:
        keyspace = client.info("keyspace")
    finally:
        _close(client)
    return sum(int(db["keys"]) for db in keyspace.values() if isinstance(db, dict))


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer | ExternalRedis]:
    """The session's Redis: ``REDIS_URL``'s server, or a ``RedisServer`` started here."""
    external_url = os.environ.get(REDIS_URL_ENV)
    if external_url:
        if _key_count(external_url) and not os.environ.get(ALLOW_FLUSH_ENV):
            pytest.fail(
                f"{REDIS_URL_ENV} points at a Redis that already holds keys and the tests "
                f"FLUSHALL it; use an empty server, or set {ALLOW_FLUSH_ENV}=1 to allow it",
                pytrace=False,
            )
        yield ExternalRedis(external_url)
        # Left empty, as found, so the next run's guard above does not trip.
        _flushall(external_url)
        return
    try:
        server = RedisServer()
    except ConfigurationError as exc:
        pytest.fail(f"cannot start a Redis for the tests: {exc}", pytrace=False)
    with server:
        yield server


@pytest.fixture
def restartable_redis() -> Iterator[RedisServer]:
    """A fresh append-only ``RedisServer`` this test may stop, kill and restart.

    Always its own process, even with ``REDIS_URL`` set: fault tests must never kill a
    server other tests share. Skipped only when ``REDIS_URL`` is set and this machine has
    no redis-server binary to start.
    """
    try:
        find_redis_server()
    except ConfigurationError as exc:
        if os.environ.get(REDIS_URL_ENV):
            pytest.skip(f"needs a redis-server it can kill and restart: {exc}")
        raise
    with RedisServer(appendonly=True) as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer | ExternalRedis) -> str:
    """The session server's URL, emptied (FLUSHALL) so the test starts from no keys."""
    _flushall(redis_server.url)
    return redis_server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A ``redis.Redis`` (bytes replies) on the emptied session server, closed after."""
    client = _client(redis_url)
    try:
        yield client
    finally:
        _close(client)


@pytest.fixture
def fake_redis() -> Iterator[fakeredis.FakeRedis]:
    """An in-memory fakeredis (with Lua) for pure key-logic tests.

    Its own ``FakeServer``: FakeRedis instances share data by host/port otherwise, which
    would leak keys between tests.
    """
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    try:
        yield client
    finally:
        client.close()
