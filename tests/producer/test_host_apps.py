"""The library inside host apps as users run them, through the lazily built default producer.

Each app is a fresh process configured by environment alone (no ``configure()``); each test
counts what reached the queue by transaction_id: every event exactly once.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from ingest.embedded import free_port

from .conftest import (
    assert_each_queued_once,
    ingest_environment,
    queued_transaction_ids,
    wait_until,
)
from .fresh import run_fresh

pytestmark = pytest.mark.integration

THREADS = 32
FORKED_CHILDREN = 4
REQUESTS = 60


def test_thirty_two_threads_making_the_first_call_together_build_one_producer(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    code = f"""
import threading
import ingest.producer
from ingest import enqueue_payment

built = []
original_init = ingest.producer.Producer.__init__
def counting_init(self, *args, **kwargs):
    built.append(threading.get_ident())
    original_init(self, *args, **kwargs)
ingest.producer.Producer.__init__ = counting_init

start = threading.Barrier({THREADS})
receipts = []
def checkout(n):
    start.wait()
    receipts.append(enqueue_payment(amount=10, currency="EUR", transaction_id=f"thread-{{n}}"))

threads = [threading.Thread(target=checkout, args=(n,)) for n in range({THREADS})]
with watchdog(10):
    for t in threads:
        t.start()
    for t in threads:
        t.join()
report(built=len(built), receipts=[receipt(r) for r in receipts])
"""
    run = run_fresh(code, ingest_environment(redis_url, tmp_path / "spool"), tmp_path)

    assert run.returncode == 0, run.explain()
    (result,) = [r for r in run.reports if "built" in r]
    assert result["built"] == 1
    assert {r["status"] for r in run.receipts()} == {"queued"}
    assert_each_queued_once(redis_client, {f"thread-{n}" for n in range(THREADS)})


def test_children_forked_after_the_parent_enqueued_each_enqueue_through_their_own_connection(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    # gunicorn --preload: the master imports the app (and here enqueues), then forks.
    code = f"""
import os
from ingest import enqueue_payment

with watchdog():
    enqueue_payment(amount=10, currency="EUR", transaction_id="parent-before-fork")
children = []
for n in range({FORKED_CHILDREN}):
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            for i in range(25):
                r = enqueue_payment(amount=10, currency="EUR", transaction_id=f"child-{{n}}-{{i}}")
                code |= r.status != "queued"
        finally:
            os._exit(code)
    children.append(pid)
enqueue_payment(amount=10, currency="EUR", transaction_id="parent-after-fork")
report(exit_codes=[os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children])
"""
    run = run_fresh(code, ingest_environment(redis_url, tmp_path / "spool"), tmp_path)

    assert run.returncode == 0, run.explain()
    (result,) = [r for r in run.reports if "exit_codes" in r]
    assert result["exit_codes"] == [0] * FORKED_CHILDREN
    expected = {f"child-{n}-{i}" for n in range(FORKED_CHILDREN) for i in range(25)}
    assert_each_queued_once(redis_client, expected | {"parent-before-fork", "parent-after-fork"})


ASGI_APP = """
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ingest import ValidationError, enqueue_payment_async


async def checkout(request: Request) -> JSONResponse:
    order = await request.json()
    try:
        receipt = await enqueue_payment_async(
            amount=order["amount"], currency=order["currency"], transaction_id=order["id"]
        )
    except ValidationError as exc:
        return JSONResponse({"error": str(exc)}, status_code=422)
    return JSONResponse({"status": receipt.status})


app = Starlette(routes=[Route("/checkout", checkout, methods=["POST"])])
"""

WSGI_APP = """
import json
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIServer, make_server

from ingest import ValidationError, enqueue_payment


def app(environ, start_response):
    size = int(environ.get("CONTENT_LENGTH") or 0)
    order = json.loads(environ["wsgi.input"].read(size))
    try:
        receipt = enqueue_payment(
            amount=order["amount"], currency=order["currency"], transaction_id=order["id"]
        )
        status, body = "200 OK", {"status": receipt.status}
    except ValidationError as exc:
        status, body = "422 Unprocessable Entity", {"error": str(exc)}
    start_response(status, [("Content-Type", "application/json")])
    return [json.dumps(body).encode()]


class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    request_queue_size = 128  # socketserver's 5 resets a burst of connections


if __name__ == "__main__":
    import sys
    make_server("127.0.0.1", int(sys.argv[1]), app, ThreadingWSGIServer).serve_forever()
"""


def _serve(command: list[str], env: dict[str, str], cwd: Path, port: int) -> Iterator[str]:
    server = subprocess.Popen(
        command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(base, timeout=1)
                break
            except httpx.TransportError:
                if server.poll() is not None or time.monotonic() > deadline:
                    output = server.communicate(timeout=5)[0] if server.poll() is not None else ""
                    pytest.fail(f"the app did not start: {output}")
                time.sleep(0.05)
        yield base
    finally:
        server.terminate()
        server.communicate(timeout=10)


@pytest.fixture
def asgi_app(redis_url: str, tmp_path: Path) -> Iterator[str]:
    (tmp_path / "shop.py").write_text(ASGI_APP)
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "shop:app", "--port", str(port)]
    command += ["--log-level", "warning"]
    env = ingest_environment(redis_url, tmp_path / "spool")
    yield from _serve(command, env, tmp_path, port)


@pytest.fixture
def wsgi_app(redis_url: str, tmp_path: Path) -> Iterator[str]:
    (tmp_path / "shop.py").write_text(WSGI_APP)
    port = free_port()
    env = ingest_environment(redis_url, tmp_path / "spool")
    yield from _serve([sys.executable, "shop.py", str(port)], env, tmp_path, port)


async def _checkouts(base: str) -> list[httpx.Response]:
    """REQUESTS checkouts at once, then one repeated and one invalid."""
    orders = [{"amount": 5 + n, "currency": "usd", "id": f"web-{n}"} for n in range(REQUESTS)]
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        responses = await asyncio.gather(*(client.post("/checkout", json=o) for o in orders))
        responses.append(await client.post("/checkout", json=orders[0]))
        bad = {"amount": -1, "currency": "usd", "id": "web-bad"}
        responses.append(await client.post("/checkout", json=bad))
    return responses


def _drive(base: str) -> list[httpx.Response]:
    return asyncio.run(_checkouts(base))


def _assert_each_checkout_queued_once(
    responses: list[httpx.Response], redis_client: redis.Redis
) -> None:
    answers = [(r.status_code, json.loads(r.text)) for r in responses]
    # Spooled is a right answer too (a loaded machine can overrun the producer's timeout):
    # the producer moves it to the queue by itself, and the count below waits for that.
    accepted = [(200, {"status": "queued"}), (200, {"status": "spooled"})]
    assert all(answer in accepted for answer in answers[:REQUESTS]), answers
    # The repeat is refused as a duplicate, unless its original still sat in the spool: then
    # either may reach Redis first, and the other is the duplicate (counted below).
    if answers[0][1]["status"] == "queued":
        assert answers[REQUESTS][1]["status"] == "duplicate"
    else:
        assert answers[REQUESTS][1]["status"] in {"queued", "duplicate", "spooled"}
    assert answers[REQUESTS + 1][0] == 422
    assert "amount" in answers[REQUESTS + 1][1]["error"]
    expected = {f"web-{n}" for n in range(REQUESTS)}
    wait_until(lambda: set(queued_transaction_ids(redis_client)) == expected, 10, "spool to move")
    assert_each_queued_once(redis_client, expected)


def test_asgi_app_under_uvicorn_enqueues_each_checkout_once(
    asgi_app: str, redis_client: redis.Redis
) -> None:
    _assert_each_checkout_queued_once(_drive(asgi_app), redis_client)


def test_threaded_wsgi_app_enqueues_each_checkout_once(
    wsgi_app: str, redis_client: redis.Redis
) -> None:
    _assert_each_checkout_queued_once(_drive(wsgi_app), redis_client)
