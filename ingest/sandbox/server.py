"""Ways to run a sandbox: in a background thread, or in a child process.

Both handles offer the same accessors (``set_faults``, ``records``, ``stats``, ``reset``,
``set_keys``), so a test written against one runs against the other. Benchmarks use
:class:`SandboxProcess`: a server in the benchmark's own process would share its GIL and
measure the two together.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import os
import re
import selectors
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import IO, Any, Self, cast

import httpx
from aiohttp import web

from .app import ADMIN_PREFIX, make_app
from .config import SandboxConfig, TokenGrant
from .faults import Faults
from .state import SandboxState
from .store import RecordView, StatsView

LISTENING_PREFIX = "sandbox listening on "
_LISTENING = re.compile(re.escape(LISTENING_PREFIX) + r"(http://\S+)")
# Room for thousands of benchmark connections arriving at once.
_BACKLOG = 4096


def format_url(host: str, port: int) -> str:
    if ":" in host:
        return f"http://[{host}]:{port}"
    return f"http://{host}:{port}"


class Listener:
    """One bind of the app to host:port on the running event loop."""

    def __init__(self, state: SandboxState, host: str, port: int, shutdown_timeout: float):
        self._state = state
        self._host = host
        self._port = port
        self._shutdown_timeout = shutdown_timeout
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        """Bind and serve; the port actually bound (useful when asked for port 0)."""
        runner = web.AppRunner(
            make_app(self._state),
            handle_signals=False,
            access_log=None,
            shutdown_timeout=self._shutdown_timeout,
        )
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port, backlog=_BACKLOG, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        address = runner.addresses[0]
        return int(address[1])

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()


class SandboxHandle(abc.ABC):
    """A running sandbox: its URL and the admin accessors."""

    @property
    @abc.abstractmethod
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8900`` (no trailing slash)."""

    @abc.abstractmethod
    def start(self) -> Self: ...

    @abc.abstractmethod
    def stop(self) -> None: ...

    @abc.abstractmethod
    def set_faults(self, **changes: Any) -> Faults:
        """Partial update of the faults; returns them all as they now are."""

    @abc.abstractmethod
    def faults(self) -> Faults: ...

    @abc.abstractmethod
    def records(
        self, *, transaction_id: str | None = None, website: str | None = None
    ) -> list[RecordView]: ...

    @abc.abstractmethod
    def stats(self) -> StatsView: ...

    @abc.abstractmethod
    def reset(self) -> None:
        """Clear records and counters; faults and keys back to the configured ones."""

    @abc.abstractmethod
    def set_keys(
        self,
        *,
        website_keys: Mapping[str, str] | None = None,
        account_tokens: Mapping[str, TokenGrant | Mapping[str, Any]] | None = None,
        revoke: Iterable[str] = (),
        restore: Iterable[str] = (),
        defaults: bool = False,
    ) -> dict[str, Any]:
        """Replace key tables, revoke keys (401 until restored) or restore them."""

    @property
    def payments_url(self) -> str:
        return f"{self.url}/api/v1/payments"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class SandboxServer(SandboxHandle):
    """The sandbox on its own event loop in a background thread of this process.

    Stop and start again to simulate an outage: the second start binds the same port
    (the one picked on the first start when asked for 0) and keeps the records, like a
    real service restarting on its database.
    """

    def __init__(
        self,
        config: SandboxConfig | None = None,
        *,
        host: str | None = None,
        port: int | None = None,
        state: SandboxState | None = None,
        start_timeout: float = 10.0,
    ) -> None:
        self.config = config if config is not None else SandboxConfig()
        self.state = state if state is not None else SandboxState(self.config)
        self.host = host if host is not None else self.config.host
        self.port = port if port is not None else self.config.port
        self._start_timeout = start_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._thread is None:
            raise RuntimeError("the sandbox is not running")
        return format_url(self.host, self.port)

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> Self:
        if self._thread is not None:
            raise RuntimeError("the sandbox is already running")
        loop = asyncio.new_event_loop()
        listener = Listener(self.state, self.host, self.port, self.config.shutdown_timeout)
        ready = threading.Event()
        outcome: dict[str, Any] = {}
        thread = threading.Thread(
            target=self._run,
            args=(loop, listener, ready, outcome),
            name=f"sandbox-{self.host}:{self.port}",
            daemon=True,
        )
        thread.start()
        if not ready.wait(self._start_timeout):
            loop.call_soon_threadsafe(loop.stop)
            thread.join(self._start_timeout)
            raise RuntimeError("the sandbox did not start in time")
        if "error" in outcome:
            thread.join()
            raise cast(BaseException, outcome["error"])
        self.port = cast(int, outcome["port"])
        self._loop, self._thread = loop, thread
        return self

    def _run(
        self,
        loop: asyncio.AbstractEventLoop,
        listener: Listener,
        ready: threading.Event,
        outcome: dict[str, Any],
    ) -> None:
        asyncio.set_event_loop(loop)
        try:
            try:
                outcome["port"] = loop.run_until_complete(listener.start())
            except BaseException as exc:
                outcome["error"] = exc
                return
            finally:
                ready.set()
            loop.run_forever()
            loop.run_until_complete(listener.stop())
        finally:
            _close_loop(loop)

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._loop = self._thread = None
        loop.call_soon_threadsafe(loop.stop)
        thread.join()

    def faults(self) -> Faults:
        return self.state.faults

    def set_faults(self, **changes: Any) -> Faults:
        return self.state.set_faults(**changes)

    def records(
        self, *, transaction_id: str | None = None, website: str | None = None
    ) -> list[RecordView]:
        return self.state.store.views(transaction_id=transaction_id, website=website)

    def stats(self) -> StatsView:
        return self.state.store.stats()

    def reset(self) -> None:
        self.state.reset()

    def set_keys(
        self,
        *,
        website_keys: Mapping[str, str] | None = None,
        account_tokens: Mapping[str, TokenGrant | Mapping[str, Any]] | None = None,
        revoke: Iterable[str] = (),
        restore: Iterable[str] = (),
        defaults: bool = False,
    ) -> dict[str, Any]:
        return self.state.set_keys(
            website_keys=website_keys,
            account_tokens=account_tokens,
            revoke=revoke,
            restore=restore,
            defaults=defaults,
        )


def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
    # Cancel what is left (a slow answer still sleeping) so closing the loop neither
    # warns about pending tasks nor leaks their sockets.
    pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.run_until_complete(loop.shutdown_default_executor())
    loop.close()


class SandboxProcess(SandboxHandle):
    """The sandbox in a child process (``python -m ingest.sandbox``), with its own GIL.

    The whole config travels to the child as JSON, so ``reset`` there returns to exactly
    this config, as it does in-process. The accessors use the admin endpoints over HTTP.
    """

    def __init__(
        self,
        config: SandboxConfig | None = None,
        *,
        host: str | None = None,
        port: int | None = None,
        extra_args: Sequence[str] = (),
        start_timeout: float = 20.0,
        python: str | None = None,
        env: Mapping[str, str] | None = None,
        stderr: IO[bytes] | None = None,
    ) -> None:
        """``stderr``: where the child's own log lines go (default: this process's stderr);
        ``ingest demo`` keeps them out of its report in a file."""
        self.config = config if config is not None else SandboxConfig()
        self.host = host if host is not None else self.config.host
        self.port = port if port is not None else self.config.port
        self._extra_args = list(extra_args)
        self._start_timeout = start_timeout
        self._python = python or sys.executable
        self._env = dict(env) if env is not None else None
        self._stderr = stderr
        self._process: subprocess.Popen[bytes] | None = None
        self._client: httpx.Client | None = None
        self._url: str | None = None
        self._returncode: int | None = None

    @property
    def returncode(self) -> int | None:
        """The child's exit code once stopped (0 after a clean SIGTERM shutdown)."""
        return self._returncode

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("the sandbox is not running")
        return self._url

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def command(self) -> list[str]:
        return [
            self._python,
            "-m",
            "ingest.sandbox",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--quiet",
            "--config-json",
            json.dumps(self.config.to_json()),
            *self._extra_args,
        ]

    def start(self) -> Self:
        if self._process is not None:
            raise RuntimeError("the sandbox is already running")
        process = subprocess.Popen(
            self.command(), stdout=subprocess.PIPE, stderr=self._stderr, env=self._env, bufsize=0
        )
        try:
            line = _read_line(process, self._start_timeout)
            match = _LISTENING.match(line)
            if match is None:
                raise RuntimeError(f"unexpected first line from the sandbox: {line!r}")
        except BaseException:
            _terminate(process)
            raise
        self._process = process
        self._returncode = None
        self._url = match.group(1)
        self.port = int(self._url.rsplit(":", 1)[1])
        self._client = httpx.Client(base_url=self._url + ADMIN_PREFIX, timeout=10.0)
        return self

    def stop(self) -> None:
        process, client = self._process, self._client
        self._process = self._client = None
        self._url = None
        if client is not None:
            client.close()
        if process is not None:
            _terminate(process)
            self._returncode = process.returncode

    def _admin(self, method: str, path: str, body: Any = None, **params: str | None) -> Any:
        if self._client is None:
            raise RuntimeError("the sandbox is not running")
        response = self._client.request(
            method, path, json=body, params={k: v for k, v in params.items() if v is not None}
        )
        if response.status_code == 400:
            raise ValueError(response.json()["error"]["message"])
        response.raise_for_status()
        return response.json()

    def faults(self) -> Faults:
        return Faults.from_json(self._admin("GET", "/faults"))

    def set_faults(self, **changes: Any) -> Faults:
        return Faults.from_json(self._admin("POST", "/faults", _jsonable_faults(changes)))

    def records(
        self, *, transaction_id: str | None = None, website: str | None = None
    ) -> list[RecordView]:
        data = self._admin("GET", "/records", transaction_id=transaction_id, website=website)
        return cast(list[RecordView], data["records"])

    def stats(self) -> StatsView:
        return cast(StatsView, self._admin("GET", "/stats"))

    def reset(self) -> None:
        self._admin("POST", "/reset")

    def set_keys(
        self,
        *,
        website_keys: Mapping[str, str] | None = None,
        account_tokens: Mapping[str, TokenGrant | Mapping[str, Any]] | None = None,
        revoke: Iterable[str] = (),
        restore: Iterable[str] = (),
        defaults: bool = False,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"revoke": list(revoke), "restore": list(restore)}
        if defaults:
            body["defaults"] = True
        if website_keys is not None:
            body["website_keys"] = dict(website_keys)
        if account_tokens is not None:
            body["account_tokens"] = {
                token: TokenGrant.from_json(grant).to_json()
                for token, grant in account_tokens.items()
            }
        return cast(dict[str, Any], self._admin("POST", "/keys", body))


def _jsonable_faults(changes: Mapping[str, Any]) -> dict[str, Any]:
    data = dict(changes)
    fail_ids = data.get("fail_ids")
    if isinstance(fail_ids, Mapping):
        data["fail_ids"] = {
            tid: spec.to_json() if hasattr(spec, "to_json") else spec
            for tid, spec in fail_ids.items()
        }
    return data


def _read_line(process: subprocess.Popen[bytes], timeout: float) -> str:
    """The child's first stdout line, without blocking past ``timeout``."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    deadline = time.monotonic() + timeout
    buffer = b""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while b"\n" not in buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"the sandbox did not report its address in {timeout} s")
            if not selector.select(remaining):
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                code = process.wait(timeout=5)
                raise RuntimeError(f"the sandbox exited with code {code} before listening")
            buffer += chunk
    return buffer.split(b"\n", 1)[0].decode(errors="replace").strip()


def _terminate(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stdout is not None:
        with contextlib.suppress(OSError):
            process.stdout.close()
