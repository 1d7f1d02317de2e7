"""The ``ingest`` command (also ``python -m ingest``). Thin: it parses, then calls modules.

Exit codes: 0 success, 1 failure, 2 usage error.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from .errors import ConfigurationError, IngestError
from .settings import Settings, env_names

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def _env_help() -> str:
    lines = ["\b", "Configuration (environment variables):"]
    lines += [f"  {name:<28} {help_}" for name, help_ in env_names().items()]
    return "\n".join(lines)


def load_settings(**overrides: Any) -> Settings:
    try:
        return Settings().with_overrides(**overrides)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise ConfigurationError(f"invalid configuration: {exc}") from exc


@click.group(
    help="Deliver payments to DataFast's Payments API through a Redis queue.\n\n" + _env_help(),
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
)
@click.version_option(package_name="datafast-ingest")
def cli() -> None:
    pass


@cli.command(help="Drain the queue and deliver payments (python worker.py is the same).")
@click.option("--burst", is_flag=True, help="Stop when nothing is queued, in flight or scheduled.")
@click.option("--concurrency", type=int, default=None, help="Override INGEST_CONCURRENCY.")
@click.option("--name", default=None, help="Worker name shown by `rq info` (default: random).")
def worker(burst: bool, concurrency: int | None, name: str | None) -> None:
    from .logs import configure_logging
    from .worker import run_worker

    settings = load_settings(concurrency=concurrency)
    configure_logging(settings.log_level)
    run_worker(settings, burst=burst, name=name)


@cli.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
    help="Run the local stand-in for the Payments API (see `ingest sandbox --help`).",
)
@click.pass_context
def sandbox(ctx: click.Context) -> None:
    from .sandbox import main as sandbox_main

    raise SystemExit(sandbox_main(list(ctx.args)))


@cli.command(help="Embedded Redis + local sandbox API + workers: send a burst and watch it land.")
@click.option("--events", type=int, default=2000, show_default=True, help="Payments to enqueue.")
@click.option("--workers", type=int, default=2, show_default=True, help="Worker processes.")
@click.option("--latency-ms", type=float, default=50.0, show_default=True,
              help="Sandbox answer time per request.")
@click.option("--timeout", type=float, default=120.0, show_default=True,
              help="Give up waiting after this many seconds.")
def demo(events: int, workers: int, latency_ms: float, timeout: float) -> None:
    from .demo import run_demo

    ok = run_demo(events=events, workers=workers, latency_ms=latency_ms, timeout=timeout)
    raise SystemExit(EXIT_OK if ok else EXIT_FAILURE)


@cli.command(help="Queued, in flight, scheduled, delivered, dead-lettered, rates.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--watch", is_flag=True, help="Refresh every --interval seconds.")
@click.option("--interval", type=float, default=2.0, show_default=True)
def stats(as_json: bool, watch: bool, interval: float) -> None:
    import redis

    from .stats import read_accounting

    settings = load_settings()
    connection = redis.Redis.from_url(settings.redis_url, socket_timeout=5)
    console = Console()
    try:
        while True:
            accounting = read_accounting(connection, settings.queue)
            if as_json:
                click.echo(json.dumps(accounting.as_dict(), sort_keys=True))
            else:
                if watch:
                    console.clear()
                console.print(accounting_table(accounting.as_dict(), title=f"queue {settings.queue}"))
            if not watch:
                break
            time.sleep(interval)
    finally:
        connection.close()


def accounting_table(data: dict[str, Any], *, title: str) -> Table:
    table = Table(title=title, show_header=True)
    table.add_column("figure")
    table.add_column("value", justify="right")
    order = [
        "enqueued", "delivered", "dead", "queued", "in_flight", "scheduled", "deferred",
        "parked", "purged", "erased", "lost", "duplicates", "api_duplicates", "retried",
        "rate_per_second", "oldest_queued_age", "workers",
    ]
    for key in order:
        value = data.get(key)
        if isinstance(value, float):
            shown = f"{value:,.1f}"
        elif value is None:
            shown = "-"
        else:
            shown = f"{value:,}"
        style = "bold red" if key == "lost" and value else None
        table.add_row(key.replace("_", " "), shown, style=style)
    if data.get("paused"):
        for site, reason in data["paused"].items():
            table.add_row(f"paused {site}", reason, style="bold red")
    return table


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code instead of exiting (entry points call sys.exit)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        cli.main(args=args, prog_name="ingest", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return EXIT_FAILURE
    except click.UsageError as exc:
        exc.show()
        return EXIT_USAGE
    except click.ClickException as exc:
        exc.show()
        return EXIT_FAILURE
    except ConfigurationError as exc:
        click.echo(f"error: {exc}", err=True)
        return EXIT_USAGE
    except IngestError as exc:
        click.echo(f"error: {exc}", err=True)
        return EXIT_FAILURE
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (EXIT_OK if code is None else EXIT_FAILURE)
    except KeyboardInterrupt:
        return 130
    return EXIT_OK
