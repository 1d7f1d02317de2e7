"""The ``ingest`` command (also ``python -m ingest``). Thin: it parses, then calls modules.

Exit codes: 0 success, 1 failure, 2 usage error.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from .connection import connect
from .deadletter import DEFAULT_REPLAY_RATE
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
    import os

    from .logs import configure_logging

    # Once, for every command: log lines go to stderr (stdout is each command's report).
    configure_logging(os.environ.get("INGEST_LOG_LEVEL", "INFO"))


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
@click.option(
    "--latency-ms",
    type=float,
    default=50.0,
    show_default=True,
    help="Sandbox answer time per request.",
)
@click.option(
    "--timeout",
    type=float,
    default=120.0,
    show_default=True,
    help="Give up waiting after this many seconds.",
)
def demo(events: int, workers: int, latency_ms: float, timeout: float) -> None:
    from .demo import run_demo

    ok = run_demo(events=events, workers=workers, latency_ms=latency_ms, timeout=timeout)
    raise SystemExit(EXIT_OK if ok else EXIT_FAILURE)


@cli.command(help="Queued, in flight, scheduled, delivered, dead-lettered, rates.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--watch", is_flag=True, help="Refresh every --interval seconds.")
@click.option("--interval", type=float, default=2.0, show_default=True)
def stats(as_json: bool, watch: bool, interval: float) -> None:

    from .stats import read_accounting

    settings = load_settings()
    connection = connect(settings.redis_url, socket_timeout=5)
    console = Console()
    try:
        while True:
            accounting = read_accounting(connection, settings.queue)
            if as_json:
                click.echo(json.dumps(accounting.as_dict(), sort_keys=True))
            else:
                if watch:
                    console.clear()
                console.print(
                    accounting_table(accounting.as_dict(), title=f"queue {settings.queue}")
                )
            if not watch:
                break
            time.sleep(interval)
    finally:
        connection.close()


def _parse_time(value: str | None) -> float | None:
    if value is None:
        return None
    from .models import parse_timestamp

    # The same ISO 8601 rules as event timestamps (timezone required).
    try:
        return parse_timestamp(value).timestamp()
    except IngestError as exc:
        raise click.BadParameter(
            f"{value!r}: an ISO 8601 time with a timezone, e.g. 2026-11-26T09:00:00Z"
        ) from exc


def dlq_filters(func: Any) -> Any:
    options = [
        click.option(
            "--reason",
            "reasons",
            multiple=True,
            type=click.Choice(["rejected", "exhausted"]),
            help="rejected: the API refused it (4xx); exhausted: ran out of attempts.",
        ),
        click.option(
            "--status", "statuses", multiple=True, type=int, help="Last HTTP status (repeatable)."
        ),
        click.option("--website", "websites", multiple=True, help="Website id (repeatable)."),
        click.option(
            "--id", "ids", multiple=True, help="Dead-letter id or transaction id (repeatable)."
        ),
        click.option("--search", default=None, help="Transaction id contains this text."),
        click.option("--since", default=None, help="Died at or after (ISO 8601)."),
        click.option("--until", default=None, help="Died at or before (ISO 8601)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _selection(
    reasons: tuple[str, ...],
    statuses: tuple[int, ...],
    websites: tuple[str, ...],
    ids: tuple[str, ...],
    search: str | None,
    since: str | None,
    until: str | None,
) -> Any:
    from .deadletter import DeadLetterFilter

    return DeadLetterFilter(
        reasons=frozenset(reasons),
        statuses=frozenset(statuses),
        websites=frozenset(websites),
        ids=frozenset(ids),
        transaction_contains=search,
        since=_parse_time(since),
        until=_parse_time(until),
    )


def _store() -> Any:

    from .deadletter import DeadLetterStore

    settings = load_settings()
    return DeadLetterStore(connect(settings.redis_url, socket_timeout=10), settings.queue)


def _letters_table(letters: list[Any], title: str) -> Table:
    table = Table(title=title)
    for column in ("id", "transaction", "website", "reason", "status", "attempts", "died", "error"):
        table.add_column(column, overflow="fold")
    for d in letters:
        table.add_row(
            d.job_id[:12],
            d.transaction_id,
            d.website,
            d.reason,
            str(d.status if d.status is not None else "-"),
            str(d.attempts),
            d.dead_at,
            d.error[:80],
        )
    return table


@cli.group(help="Inspect, replay, purge and export dead letters.")
def dlq() -> None:
    pass


@dlq.command("list", help="Dead letters, newest first, with counts per reason.")
@dlq_filters
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--offset", type=int, default=0)
@click.option("--json", "as_json", is_flag=True)
def dlq_list(limit: int, offset: int, as_json: bool, **filters: Any) -> None:
    store = _store()
    letters = store.page(_selection(**filters), offset=offset, limit=limit)
    if as_json:
        click.echo(json.dumps({"total": store.count(), "items": [d.as_dict() for d in letters]}))
        return
    console = Console()
    console.print(_letters_table(letters, f"dead letters ({store.count():,} in the store)"))
    counts = store.counts_by_reason()
    if counts:
        console.print("by reason: " + ", ".join(f"{k}: {v:,}" for k, v in sorted(counts.items())))


@dlq.command("show", help="One dead letter: the event, every attempt, the API's messages.")
@click.argument("dead_id")
@click.option("--json", "as_json", is_flag=True)
def dlq_show(dead_id: str, as_json: bool) -> None:
    letter = _store().get(dead_id)
    data = letter.as_dict()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    console = Console()
    table = Table(title=f"dead letter {letter.job_id}", show_header=False)
    table.add_column("field")
    table.add_column("value", overflow="fold")
    for key in (
        "transaction_id",
        "website",
        "reason",
        "status",
        "error",
        "attempts",
        "first_attempt_at",
        "last_attempt_at",
        "dead_at",
    ):
        table.add_row(key, str(data[key]))
    table.add_row("event", json.dumps(letter.body, indent=1))
    console.print(table)
    attempts = Table(title="attempts")
    for column in ("#", "at", "status", "error"):
        attempts.add_column(column)
    for n, attempt in enumerate(letter.history, 1):
        attempts.add_row(
            str(n), attempt.get("at", ""), str(attempt.get("status")), attempt.get("error", "")
        )
    console.print(attempts)


@dlq.command("replay", help="Put dead letters back on the queue (fix the cause first).")
@dlq_filters
@click.option("--all", "all_", is_flag=True, help="Replay every dead letter (no filter).")
@click.option("--dry-run", is_flag=True, help="Show what would be replayed; change nothing.")
@click.option(
    "--rate",
    type=float,
    default=DEFAULT_REPLAY_RATE,
    show_default=True,
    help="Events per second put back on the queue.",
)
@click.option("--json", "as_json", is_flag=True)
def dlq_replay(all_: bool, dry_run: bool, rate: float, as_json: bool, **filters: Any) -> None:
    selection = _selection(**filters)
    if selection.is_empty and not all_:
        raise click.UsageError("choose what to replay with a filter, or pass --all")
    store = _store()
    letters = list(store.iter(selection))
    if dry_run:
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "dry_run": True,
                        "would_replay": len(letters),
                        "items": [d.as_dict() for d in letters],
                    }
                )
            )
        else:
            Console().print(
                _letters_table(
                    letters[:100], f"would replay {len(letters):,} (dry run: nothing changed)"
                )
            )
        return
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True, disable=as_json) as progress:
        task = progress.add_task("replaying", total=len(letters))
        result = store.replay(
            [d.job_id for d in letters], rate=rate, progress=lambda n: progress.advance(task, n)
        )
    if as_json:
        click.echo(
            json.dumps(
                {
                    "selected": result.selected,
                    "requeued": result.requeued,
                    "skipped": result.skipped,
                }
            )
        )
    else:
        click.echo(
            f"requeued {result.requeued:,} of {result.selected:,} ({result.skipped:,} already gone)"
        )


@dlq.command("purge", help="Delete dead letters for good (asks first unless --yes).")
@dlq_filters
@click.option("--all", "all_", is_flag=True, help="Purge every dead letter (no filter).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--dry-run", is_flag=True, help="Show what would be purged; change nothing.")
def dlq_purge(all_: bool, yes: bool, dry_run: bool, **filters: Any) -> None:
    selection = _selection(**filters)
    if selection.is_empty and not all_:
        raise click.UsageError("choose what to purge with a filter, or pass --all")
    store = _store()
    letters = list(store.iter(selection))
    if dry_run or not letters:
        click.echo(f"would purge {len(letters):,} dead letters (nothing changed)")
        return
    if not yes:
        click.confirm(
            f"Permanently delete {len(letters):,} dead letters? These payments will "
            "never reach DataFast",
            abort=True,
        )
    removed = store.purge(d.job_id for d in letters)
    click.echo(f"purged {removed:,}")


@dlq.command("export", help="Dead letters as JSON Lines (to a file or stdout).")
@dlq_filters
@click.option("--output", "-o", type=click.File("w"), default="-")
def dlq_export(output: Any, **filters: Any) -> None:
    count = 0
    for letter in _store().iter(_selection(**filters)):
        output.write(json.dumps(letter.as_dict()) + "\n")
        count += 1
    click.echo(f"exported {count:,} dead letters", err=True)


@cli.group(help="The producer's disk spool (events kept while Redis was down).")
def spool() -> None:
    pass


@spool.command("status", help="Events waiting on disk, and quarantined lines.")
@click.option("--json", "as_json", is_flag=True)
def spool_status(as_json: bool) -> None:
    from .spool import QUARANTINE, Spool

    settings = load_settings()
    store = Spool(settings.spool_dir, max_bytes=settings.spool_max_bytes)
    quarantine = settings.spool_dir / QUARANTINE
    quarantined = sum(1 for _ in quarantine.open()) if quarantine.exists() else 0
    data = {
        "directory": str(settings.spool_dir),
        "pending": store.pending(),
        "bytes": store.size_bytes(),
        "max_bytes": settings.spool_max_bytes,
        "quarantined": quarantined,
    }
    if as_json:
        click.echo(json.dumps(data))
    else:
        for key, value in data.items():
            click.echo(f"{key:>12}: {value}")


@spool.command("flush", help="Move spooled events into the queue now (idempotent).")
@click.option("--json", "as_json", is_flag=True)
def spool_flush(as_json: bool) -> None:
    from .producer import Producer

    settings = load_settings()
    producer = Producer(settings.with_overrides(producer_timeout=10.0))
    try:
        result = producer.flush_spool()
    finally:
        producer.close()
    data = dataclasses.asdict(result)
    if as_json:
        click.echo(json.dumps(data))
    else:
        click.echo(
            f"moved {result.events:,} events from {result.files} file(s): "
            f"{result.queued:,} queued, {result.duplicates:,} already there, "
            f"{result.quarantined:,} corrupt lines quarantined"
        )
    if result.quarantined:
        raise SystemExit(EXIT_FAILURE)


@cli.command(
    help="Serve queue-wide Prometheus metrics read from Redis (depth, dead letters, "
    "the accounting identity)."
)
@click.option("--port", type=int, default=None, help="Default: INGEST_METRICS_PORT, else 9464.")
@click.option("--once", is_flag=True, help="Print one exposition to stdout and exit.")
def metrics(port: int | None, once: bool) -> None:
    from prometheus_client import CollectorRegistry, generate_latest, start_http_server

    from .metrics import QueueCollector

    settings = load_settings()
    registry = CollectorRegistry()
    registry.register(QueueCollector(connect(settings.redis_url, socket_timeout=5), settings.queue))
    if once:
        click.echo(generate_latest(registry).decode(), nl=False)
        return
    bind = port if port is not None else (settings.metrics_port or 9464)
    start_http_server(bind, addr=settings.metrics_host, registry=registry)
    click.echo(f"serving queue metrics on http://{settings.metrics_host}:{bind}/metrics", err=True)
    while True:
        time.sleep(3600)


@cli.command(
    help="Delete payments at DataFast (DELETE /api/v1/payments) and erase matching "
    "events still in our queue, retry schedule and dead-letter store."
)
@click.option("--transaction-id", default=None)
@click.option("--visitor-id", default=None, help="datafast_visitor_id")
@click.option("--start", default=None, help="startAt, ISO 8601 with a timezone.")
@click.option("--end", default=None, help="endAt, ISO 8601 with a timezone.")
@click.option("--website-id", default=None, help="With a dft_ token: the website (24 hex).")
@click.option("--all-time", is_flag=True, help="Allow a visitor delete without a date range.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--dry-run", is_flag=True, help="Print the request; send and erase nothing.")
@click.option("--json", "as_json", is_flag=True)
def delete(
    transaction_id: str | None,
    visitor_id: str | None,
    start: str | None,
    end: str | None,
    website_id: str | None,
    all_time: bool,
    yes: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    from .erasure import build_request, delete_payments

    settings = load_settings()
    try:
        request = build_request(
            transaction_id=transaction_id,
            visitor_id=visitor_id,
            start=start,
            end=end,
            all_time=all_time,
            website_id=website_id,
        )
    except IngestError as exc:
        raise click.UsageError(str(exc)) from exc
    described = request.describe(settings)
    if dry_run:
        click.echo(f"dry run, nothing sent or erased: {described}")
        return
    spans_all_time = not (request.start or request.end) and not request.transaction_id
    if not yes:
        warning = " ACROSS ALL TIME" if spans_all_time else ""
        click.confirm(
            f"{described}\nDelete these payments{warning} at DataFast and erase "
            "matching queued events?",
            abort=True,
        )
    result = delete_payments(
        transaction_id=transaction_id,
        visitor_id=visitor_id,
        start=start,
        end=end,
        all_time=all_time,
        website_id=website_id,
        settings=settings,
    )
    data = {**dataclasses.asdict(result), "erased_total": result.erased_total}
    if as_json:
        click.echo(json.dumps(data))
        return
    click.echo(f"{result.api_status} {result.api_message}")
    click.echo(
        f"erased {result.erased_total} of our own events "
        f"({', '.join(f'{k}: {v}' for k, v in result.erased.items()) or 'none held'})"
    )
    if result.in_flight:
        click.echo(
            f"{result.in_flight} matching events were being sent at that moment; run "
            "the delete again in a few seconds to remove them too",
            err=True,
        )


@cli.command(
    "import",
    help="Enqueue payments from a CSV (header row of API field names) or "
    "JSON Lines file. Exit 1 if any row was rejected.",
)
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Summary as JSON.")
def import_(path: Path, as_json: bool) -> None:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )

    from .importer import count_rows, import_file
    from .producer import Producer

    settings = load_settings()
    producer = Producer(
        settings.with_overrides(producer_timeout=max(5.0, settings.producer_timeout))
    )
    console = Console(stderr=True)
    try:
        with Progress(
            TextColumn("importing"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=as_json,
        ) as progress:
            task = progress.add_task("import", total=count_rows(path))
            result = import_file(path, producer, progress=lambda n: progress.advance(task, n))
    finally:
        producer.close()
    if as_json:
        click.echo(
            json.dumps(
                {
                    "rows": result.rows,
                    "queued": result.queued,
                    "duplicates": result.duplicates,
                    "spooled": result.spooled,
                    "rejected": result.rejected,
                    "errors": [
                        {"line": e.line, "field": e.field, "reason": e.reason}
                        for e in result.errors
                    ],
                }
            )
        )
    else:
        out = Console()
        if result.errors:
            errors = Table(title=f"rejected rows ({result.rejected})")
            for column in ("line", "field", "reason"):
                errors.add_column(column, overflow="fold")
            for error in result.errors[:200]:
                errors.add_row(str(error.line), error.field, error.reason)
            out.print(errors)
            if len(result.errors) > 200:
                out.print(f"... and {len(result.errors) - 200} more (use --json for all)")
        summary = Table(title=f"import of {path.name}")
        summary.add_column("rows")
        summary.add_column("count", justify="right")
        for label, value in (
            ("read", result.rows),
            ("enqueued", result.queued),
            ("already queued or delivered (duplicates)", result.duplicates),
            ("spooled (Redis unreachable)", result.spooled),
            ("rejected", result.rejected),
        ):
            summary.add_row(label, f"{value:,}")
        out.print(summary)
    if result.errors:
        raise SystemExit(EXIT_FAILURE)


from .console.cli import console_command  # noqa: E402 - light: FastAPI loads on use

cli.add_command(console_command)


def accounting_table(data: dict[str, Any], *, title: str) -> Table:
    table = Table(title=title, show_header=True)
    table.add_column("figure")
    table.add_column("value", justify="right")
    order = [
        "enqueued",
        "delivered",
        "dead",
        "queued",
        "in_flight",
        "scheduled",
        "deferred",
        "parked",
        "purged",
        "erased",
        "lost",
        "duplicates",
        "api_duplicates",
        "retried",
        "rate_per_second",
        "oldest_queued_age",
        "workers",
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
