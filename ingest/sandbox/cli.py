"""``python -m ingest.sandbox`` / ``ingest sandbox``: serve the sandbox until stopped.

The first line on stdout is always ``sandbox listening on http://HOST:PORT``;
:class:`~ingest.sandbox.server.SandboxProcess` reads it to learn the port it got.
Exit codes: 0 after SIGINT/SIGTERM, 1 when it cannot listen, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from .config import (
    DEFAULT_ACCOUNT_TOKEN,
    DEFAULT_CLI_PORT,
    DEFAULT_HOST,
    DEFAULT_WEBSITE_ID,
    DEFAULT_WEBSITE_KEY,
    SandboxConfig,
)
from .faults import RATE_LIMIT_HEADERS
from .server import LISTENING_PREFIX, Listener, format_url
from .state import SandboxState

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

# Flags that set the Faults field of the same name (argparse dests match field names).
_FAULT_FLAGS = (
    "latency_ms",
    "latency_jitter_ms",
    "rate_429",
    "retry_after",
    "rate_500",
    "rate_503",
    "rate_timeout",
    "slow_ms",
    "record_before_slow",
    "rate_drop",
    "record_before_drop",
    "fail_all_status",
    "seed",
    "rate_limit",
    "rate_limit_burst",
    "rate_limit_headers",
)


def _retry_after(value: str) -> int | str | None:
    if value.lower() in {"none", "null", "off"}:
        return None
    if value.isdigit():
        return int(value)
    return value


def _rate(value: str) -> float:
    rate = float(value)
    if not 0 <= rate <= 1:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return rate


def _positive(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return number


def _milliseconds(value: str) -> float:
    ms = float(value)
    if not ms >= 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return ms


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ingest sandbox",
        description="A local stand-in for the DataFast Payments API: both endpoints, auth, "
        "validation, duplicates, and injectable latency and faults. Admin API under "
        "/_sandbox (faults, keys, records, stats, reset).",
    )
    parser.add_argument("--host", default=None, help=f"address to bind (default {DEFAULT_HOST})")
    parser.add_argument(
        "--port", type=int, default=None, help=f"port (default {DEFAULT_CLI_PORT}; 0 = any free)"
    )
    faults = parser.add_argument_group("faults (none by default)")
    faults.add_argument("--latency-ms", type=_milliseconds, help="fixed delay before answering")
    faults.add_argument(
        "--latency-jitter-ms", type=_milliseconds, help="uniform random extra delay, up to this"
    )
    faults.add_argument("--rate-429", type=_rate, help="share of POSTs answered 429")
    faults.add_argument(
        "--retry-after",
        type=_retry_after,
        help='Retry-After of a 429: seconds, "http-date", "http-date:N" or "none" (default 1)',
    )
    faults.add_argument("--rate-500", type=_rate, help="share of POSTs answered 500")
    faults.add_argument("--rate-503", type=_rate, help="share of POSTs answered 503")
    faults.add_argument(
        "--rate-timeout", type=_rate, help="share of POSTs answered only after --slow-ms"
    )
    faults.add_argument(
        "--slow-ms", type=_milliseconds, help="delay of a --rate-timeout answer (default 15000)"
    )
    faults.add_argument(
        "--no-record-before-slow",
        dest="record_before_slow",
        action="store_false",
        default=None,
        help="process a slow POST after its delay instead of before it",
    )
    faults.add_argument(
        "--rate-drop", type=_rate, help="share of POSTs whose connection is closed unanswered"
    )
    faults.add_argument(
        "--no-record-before-drop",
        dest="record_before_drop",
        action="store_false",
        default=None,
        help="drop without recording the payment first",
    )
    faults.add_argument("--fail-all-status", type=int, help="answer every POST with this status")
    faults.add_argument("--seed", type=int, help="seed for reproducible random faults")
    limit = parser.add_argument_group("rate limit (none by default)")
    limit.add_argument(
        "--rate-limit",
        type=_positive,
        metavar="N",
        help="requests/s each credential may make: a token bucket answering 429 at once, "
        "with Retry-After, when exceeded",
    )
    limit.add_argument(
        "--rate-limit-burst",
        type=_positive,
        metavar="B",
        help="the bucket's size (default: N, one second's worth)",
    )
    limit.add_argument(
        "--rate-limit-headers",
        choices=RATE_LIMIT_HEADERS,
        help="rate-limit fields on every answer: none (default), ietf (RateLimit-*), "
        "x (X-RateLimit-*) or both",
    )
    parser.add_argument(
        "--config-json",
        help="a whole SandboxConfig as JSON (used by SandboxProcess); flags override it",
    )
    parser.add_argument("--quiet", action="store_true", help="print only the listening line")
    return parser


def config_from_args(args: argparse.Namespace) -> SandboxConfig:
    """The config the flags describe; raises ValueError for values that cannot work."""
    if args.config_json is not None:
        try:
            data: Any = json.loads(args.config_json)
        except ValueError as exc:
            raise ValueError(f"--config-json is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError("--config-json must be a JSON object")
        base = SandboxConfig.from_json(data)
    else:
        base = SandboxConfig(port=DEFAULT_CLI_PORT)
    changes = {
        name: getattr(args, name) for name in _FAULT_FLAGS if getattr(args, name) is not None
    }
    return SandboxConfig(
        host=args.host if args.host is not None else base.host,
        port=args.port if args.port is not None else base.port,
        website_keys=base.website_keys,
        account_tokens=base.account_tokens,
        faults=base.faults.updated(changes),
        shutdown_timeout=base.shutdown_timeout,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the sandbox until SIGINT/SIGTERM; the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(None if argv is None else list(argv))
    except SystemExit as exc:
        # argparse exits by itself: 0 after --help, 2 for a usage error.
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        config = config_from_args(args)
    except ValueError as exc:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    _raise_open_file_limit()
    try:
        return asyncio.run(_serve(config, quiet=args.quiet))
    except OSError as exc:
        print(f"sandbox: cannot listen on {config.host}:{config.port}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_OK


OPEN_FILES_WANTED = 65_536


def _raise_open_file_limit() -> None:
    """Lift this process's soft limit on open files toward its hard limit: every worker
    keeps up to ``INGEST_CONCURRENCY`` (256) connections open, so four workers alone
    reach the 1,024 that many systems give a process by default."""
    try:
        import resource
    except ImportError:  # not on Windows
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = OPEN_FILES_WANTED if hard == resource.RLIM_INFINITY else min(hard, OPEN_FILES_WANTED)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


async def _serve(config: SandboxConfig, *, quiet: bool) -> int:
    listener = Listener(SandboxState(config), config.host, config.port, config.shutdown_timeout)
    port = await listener.start()
    url = format_url(config.host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Signal handlers can only be installed from the main thread; elsewhere (main()
    # called from a worker thread) the caller stops us by other means.
    signals = (
        (signal.SIGINT, signal.SIGTERM)
        if threading.current_thread() is threading.main_thread()
        else ()
    )
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        print(f"{LISTENING_PREFIX}{url}", flush=True)
        if not quiet:
            _print_help(url, config)
        await stop.wait()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        await listener.stop()
    return EXIT_OK


def _print_help(url: str, config: SandboxConfig) -> None:
    lines = [
        f"  payments:  POST/DELETE {url}/api/v1/payments",
        f"  admin:     {url}/_sandbox/{{faults,keys,records,stats,reset,health}}",
    ]
    if DEFAULT_WEBSITE_KEY in config.website_keys:
        lines.append(f"  website key:   {DEFAULT_WEBSITE_KEY} (website {DEFAULT_WEBSITE_ID})")
    if DEFAULT_ACCOUNT_TOKEN in config.account_tokens:
        lines.append(f"  account token: {DEFAULT_ACCOUNT_TOKEN} (add ?websiteId=...)")
    print("\n".join(lines), file=sys.stderr, flush=True)
