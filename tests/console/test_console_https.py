"""The console behind HTTPS: served with its own certificate, or behind a proxy whose
``X-Forwarded-Proto`` it trusts only from ``--forwarded-allow-ips``. Either way an
``https://`` origin is this console's own, and its cookies are Secure."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import TOKEN

pytestmark = pytest.mark.integration

BEARER = {"Authorization": f"Bearer {TOKEN}"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def console(
    redis_url: str, tmp_path: Path, port: int, *options: str, scheme: str = "http"
) -> Iterator[str]:
    """``ingest console`` with ``options`` on ``port``; yields its base URL once it answers."""
    from conftest import stop_process, worker_environment

    env = worker_environment(redis_url, "http://127.0.0.1:9", api_key=None, console_token=TOKEN)
    log_path = tmp_path / f"console-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "ingest.console", "--port", str(port), *options],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"{scheme}://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    httpx.get(f"{base}/api/session", verify=False, timeout=5)
                    break
                except httpx.TransportError:
                    assert process.poll() is None, log_path.read_text()
                    assert time.monotonic() < deadline, "the console did not start"
                    time.sleep(0.1)
            yield base
        finally:
            stop_process(process, 10)


def probe(base: str, origin: str, **headers: str) -> httpx.Response:
    """A same-origin POST as a browser at ``origin`` makes it (its CSRF cookie and token)."""
    session = httpx.get(f"{base}/api/session", headers={**BEARER, **headers}, verify=False)
    cookie = session.headers["set-cookie"].split(";")[0]
    return httpx.post(
        f"{base}/api/paused/probe",
        json={"website": "nowhere"},
        headers={
            **BEARER,
            **headers,
            "Origin": origin,
            "Cookie": cookie,
            "X-CSRF-Token": session.json()["csrf_token"],
        },
        verify=False,
    )


def test_behind_a_trusted_proxy_an_https_origin_is_same_origin(
    redis_url: str, tmp_path: Path
) -> None:
    port = free_port()
    with console(redis_url, tmp_path, port, "--forwarded-allow-ips", "127.0.0.1") as base:
        answer = probe(base, f"https://127.0.0.1:{port}", **{"X-Forwarded-Proto": "https"})
        session = httpx.get(f"{base}/api/session", headers={**BEARER, "X-Forwarded-Proto": "https"})
    assert answer.status_code == 404, answer.text  # past the guard: that website is not paused
    cookie = session.headers["set-cookie"]
    assert cookie.startswith("__Host-ingest_console_csrf=")
    assert "Secure" in cookie


def test_x_forwarded_proto_from_an_untrusted_address_is_ignored(
    redis_url: str, tmp_path: Path
) -> None:
    port = free_port()
    # 192.0.2.1 is a documentation address: trusted, but nothing comes from there.
    with console(redis_url, tmp_path, port, "--forwarded-allow-ips", "192.0.2.1") as base:
        answer = probe(base, f"https://127.0.0.1:{port}", **{"X-Forwarded-Proto": "https"})
    assert answer.status_code == 403
    assert "cross-site" in answer.text


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_served_with_a_certificate_an_https_origin_is_same_origin(
    redis_url: str, tmp_path: Path
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    port = free_port()
    options = ("--ssl-certfile", str(cert), "--ssl-keyfile", str(key))
    with console(redis_url, tmp_path, port, *options, scheme="https") as base:
        answer = probe(base, f"https://127.0.0.1:{port}")
    assert answer.status_code == 404, answer.text


def test_a_certificate_without_its_key_is_a_usage_error(redis_url: str, tmp_path: Path) -> None:
    from conftest import worker_environment

    env = worker_environment(redis_url, "http://127.0.0.1:9", api_key=None)
    run = subprocess.run(
        [sys.executable, "-m", "ingest.console", "--ssl-certfile", str(tmp_path / "c.pem")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert "--ssl-keyfile" in run.stderr


def test_plain_http_beyond_loopback_is_warned_about() -> None:
    from ingest.console.config import plain_http_warning

    assert plain_http_warning("127.0.0.1", https=False, behind_proxy=False) is None
    assert plain_http_warning("0.0.0.0", https=True, behind_proxy=False) is None
    assert plain_http_warning("0.0.0.0", https=False, behind_proxy=True) is None
    warning = plain_http_warning("0.0.0.0", https=False, behind_proxy=False)
    assert warning is not None
    assert "--ssl-certfile" in warning
