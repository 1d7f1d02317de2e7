"""Acting on payments by hand: ``ingest import`` enqueues them from a file, ``ingest delete``
deletes them at DataFast and erases our own copies."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from ingest.errors import IngestError

from ._common import EXIT_FAILURE, load_settings, open_redis
from .render import import_progress, print_import


@click.command(
    help="Delete payments at DataFast (DELETE /api/v1/payments) and erase matching "
    "events still in our queue, retry schedule and dead-letter store."
)
@click.option("--transaction-id", default=None, help="The payment's transaction_id.")
@click.option("--visitor-id", default=None, help="datafast_visitor_id")
@click.option("--start", default=None, help="startAt, ISO 8601 with a timezone.")
@click.option("--end", default=None, help="endAt, ISO 8601 with a timezone.")
@click.option("--website-id", default=None, help="With a dft_ token: the website (24 hex).")
@click.option("--all-time", is_flag=True, help="Allow a visitor delete without a date range.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--dry-run", is_flag=True, help="Print the request; send and erase nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
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
    from ingest.erasure import build_request, delete_payments

    settings = load_settings()
    # Checked here first (a usage error), then built again by delete_payments.
    criteria: dict[str, Any] = {
        "transaction_id": transaction_id,
        "visitor_id": visitor_id,
        "start": start,
        "end": end,
        "all_time": all_time,
        "website_id": website_id,
    }
    try:
        request = build_request(**criteria)
    except IngestError as exc:
        raise click.UsageError(str(exc)) from exc
    described = request.describe(settings)
    if dry_run:
        click.echo(f"dry run, nothing sent or erased: {described}")
        return
    open_redis(settings).close()  # unreachable: say so before asking anything
    spans_all_time = not (request.start or request.end) and not request.transaction_id
    if not yes:
        warning = " ACROSS ALL TIME" if spans_all_time else ""
        click.confirm(
            f"{described}\nDelete these payments{warning} at DataFast and erase "
            "matching queued events?",
            abort=True,
        )
    result = delete_payments(**criteria, settings=settings)
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


@click.command(
    "import",
    help="Enqueue payments from a CSV file (header row of API field names), a JSON array of "
    "objects, or JSON Lines. Exit 1 if any row was rejected; exit 2, enqueuing nothing, if "
    "the file cannot be read as payments at all (not UTF-8, a wrong header).",
)
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Summary as JSON.")
def import_(path: Path, as_json: bool) -> None:
    from ingest.importer import count_rows, import_file
    from ingest.producer import Producer

    settings = load_settings()
    total = count_rows(path)  # refuses an unreadable file before anything is enqueued
    producer = Producer(
        settings.with_overrides(producer_timeout=max(5.0, settings.producer_timeout))
    )
    try:
        with import_progress(disable=as_json) as progress:
            task = progress.add_task("import", total=total)
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
        print_import(Console(), result, path.name)
    if result.errors:
        raise SystemExit(EXIT_FAILURE)
