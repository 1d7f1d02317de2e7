"""``ingest dlq``: inspect, replay, purge and export dead letters."""

from __future__ import annotations

import json
from typing import Any

import click
from rich.console import Console

from ingest.deadletter import DEFAULT_REPLAY_RATE
from ingest.errors import IngestError

from ._common import load_settings, open_redis
from .render import letters_table, print_dead_letter, replay_progress


def _time_option(_ctx: click.Context, _param: click.Parameter, value: str | None) -> float | None:
    """``--since``/``--until`` as a unix time; click names the option when it is refused."""
    if value is None:
        return None
    from ingest.models import parse_timestamp

    # The same ISO 8601 rules as event timestamps (timezone required).
    try:
        return parse_timestamp(value).timestamp()
    except IngestError as exc:
        raise click.BadParameter(
            f"{value!r} is not an ISO 8601 time with a timezone, e.g. 2026-11-26T09:00:00Z"
        ) from exc


JSON_HELP = "Print JSON instead of a table."


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
            "--id",
            "ids",
            multiple=True,
            help="Dead-letter id or transaction id, whole (repeatable).",
        ),
        click.option("--search", default=None, help="Transaction id contains this text."),
        click.option(
            "--since",
            default=None,
            callback=_time_option,
            help="Died at or after this time (ISO 8601 with a timezone).",
        ),
        click.option(
            "--until",
            default=None,
            callback=_time_option,
            help="Died at or before this time (ISO 8601 with a timezone).",
        ),
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
    since: float | None,
    until: float | None,
) -> Any:
    from ingest.deadletter import DeadLetterFilter

    return DeadLetterFilter(
        reasons=frozenset(reasons),
        statuses=frozenset(statuses),
        websites=frozenset(websites),
        ids=frozenset(ids),
        transaction_contains=search,
        since=since,
        until=until,
    )


def _store() -> Any:
    from ingest.deadletter import DeadLetterStore

    settings = load_settings()
    return DeadLetterStore(open_redis(settings), settings.queue)


@click.group(help="Inspect, replay, purge and export dead letters.")
def dlq() -> None:
    pass


@dlq.command("list", help="Dead letters, newest first, with counts per reason.")
@dlq_filters
@click.option("--limit", type=click.IntRange(min=1), default=50, help="Show at most this many.")
@click.option(
    "--offset", type=click.IntRange(min=0), default=0, help="Skip this many of the newest first."
)
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
def dlq_list(limit: int, offset: int, as_json: bool, **filters: Any) -> None:
    store = _store()
    selection = _selection(**filters)
    letters = store.page(selection, offset=offset, limit=limit)
    in_store = store.count()
    # The totals follow the filters: what matches, not what the store holds.
    counts = store.counts_by_reason(selection)
    total = sum(counts.values())
    if as_json:
        click.echo(
            json.dumps(
                {"total": total, "in_store": in_store, "items": [d.as_dict() for d in letters]}
            )
        )
        return
    title = (
        f"dead letters ({in_store:,} in the store)"
        if selection.is_empty
        else f"{total:,} of {in_store:,} dead letters match"
    )
    console = Console()
    console.print(letters_table(letters, title, width=console.width))
    if len(letters) < total:
        console.print(f"showing {len(letters):,} of {total:,} (--limit, --offset for more)")
    if counts:
        console.print("by reason: " + ", ".join(f"{k}: {v:,}" for k, v in sorted(counts.items())))


@dlq.command(
    "show",
    help="One dead letter: the event, every attempt, the API's messages. DEAD_ID is an id "
    "as `dlq list` prints it, the start of one, or a transaction id.",
)
@click.argument("dead_id")
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
def dlq_show(dead_id: str, as_json: bool) -> None:
    letter = _store().find(dead_id)
    if as_json:
        click.echo(json.dumps(letter.as_dict(), indent=2))
        return
    print_dead_letter(Console(), letter)


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
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
def dlq_replay(all_: bool, dry_run: bool, rate: float, as_json: bool, **filters: Any) -> None:
    selection = _selection(**filters)
    if selection.is_empty and not all_:
        raise click.UsageError("choose what to replay with a filter, or pass --all")
    store = _store()
    letters = list(store.iter(selection))
    if not letters and not as_json:
        click.echo("no dead letters match: nothing replayed")
        return
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
            console = Console()
            console.print(
                letters_table(
                    letters[:100],
                    f"would replay {len(letters):,} (dry run: nothing changed)",
                    width=console.width,
                )
            )
        return
    with replay_progress(disable=as_json) as progress:
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
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
def dlq_purge(all_: bool, yes: bool, dry_run: bool, as_json: bool, **filters: Any) -> None:
    selection = _selection(**filters)
    if selection.is_empty and not all_:
        raise click.UsageError("choose what to purge with a filter, or pass --all")
    store = _store()
    letters = list(store.iter(selection))
    removed = 0
    if letters and not dry_run:
        if not yes:
            click.confirm(
                f"Permanently delete {len(letters):,} dead letters? These payments will "
                "never reach DataFast",
                abort=True,
                err=True,  # stdout stays the report (and valid JSON with --json)
            )
        removed = store.purge(d.job_id for d in letters)
    if as_json:
        click.echo(json.dumps({"dry_run": dry_run, "matched": len(letters), "purged": removed}))
    elif not letters:
        click.echo("no dead letters match: nothing purged")
    elif dry_run:
        click.echo(f"would purge {len(letters):,} dead letters (dry run: nothing changed)")
    else:
        click.echo(f"purged {removed:,}")


@dlq.command("export", help="Dead letters as JSON Lines (to a file or stdout).")
@dlq_filters
@click.option(
    "--output", "-o", type=click.File("w"), default="-", help="File to write; - is stdout."
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Report the count on stderr as JSON (the dead letters are JSON Lines either way).",
)
def dlq_export(output: Any, as_json: bool, **filters: Any) -> None:
    count = 0
    for letter in _store().iter(_selection(**filters)):
        output.write(json.dumps(letter.as_dict()) + "\n")
        count += 1
    if as_json:
        click.echo(json.dumps({"exported": count}), err=True)
    else:
        click.echo(f"exported {count:,} dead letters", err=True)
