"""How the ``ingest`` commands show things to a person: rich tables and progress bars.

The commands decide what to show; these functions only lay it out. ``--json`` output is
not here: it is the data itself, written by each command.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from rich.progress import Progress

    from ingest.deadletter import DeadLetter
    from ingest.importer import ImportResult

# The figures of ``ingest stats``, in the order of the accounting identity, then the rest.
_ACCOUNTING_ORDER = [
    "enqueued",
    "delivered",
    "dead",
    "queued",
    "in_flight",
    "rq_in_flight",
    "scheduled",
    "deferred",
    "deferred_on_dead",
    "parked",
    "purged",
    "erased",
    "rq_failed",
    "lost",
    "duplicates",
    "api_duplicates",
    "retried",
    "rate_per_second",
    "oldest_queued_age",
    "workers",
]
_LABELS = {
    "rq_in_flight": "  of which by rq worker",
    "rq_failed": "in rq:failed (rq requeue)",
    # Nothing of ours loses events; RQ's `rq empty` deletes them without a trace.
    "lost": "lost or removed outside ingest (rq empty)",
}
_DEAD_LETTER_FIELDS = (
    "transaction_id",
    "website",
    "reason",
    "status",
    "error",
    "attempts",
    "first_attempt_at",
    "last_attempt_at",
    "dead_at",
)
# Columns from which `dlq list` also shows each letter's error.
_WIDE = 110
# Rejected rows shown in the table; --json gives all of them.
_REJECTED_SHOWN = 200


def accounting_table(data: dict[str, Any], *, title: str) -> Table:
    table = Table(title=title, show_header=True)
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key in _ACCOUNTING_ORDER:
        value = data.get(key)
        if isinstance(value, float):
            shown = f"{value:,.1f}"
        elif value is None:
            shown = "-"
        else:
            shown = f"{value:,}"
        style = "bold red" if key == "lost" and value else None
        table.add_row(_LABELS.get(key, key.replace("_", " ")), shown, style=style)
    if data.get("paused"):
        for site, reason in data["paused"].items():
            table.add_row(f"paused {site}", reason, style="bold red")
    for view in data.get("send_rates", []):
        held = view["hold_seconds"]
        table.add_row(
            f"send rate {view['credential']}",
            f"{view['rate']:,.1f}/s" + (f", held {held:.1f} s" if held else ""),
            style="bold yellow" if held else None,
        )
    return table


def letters_table(letters: list[DeadLetter], title: str, *, width: int = 80) -> Table:
    """One row per dead letter, fit to ``width`` columns: the whole id, never cut, and the
    API's error only where there is room for it (``dlq show`` and ``--json`` have every
    field)."""
    from rich import box

    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0))
    # Whole ids, never wrapped or cut: they are what `ingest dlq show` and --id take.
    table.add_column("id", no_wrap=True, min_width=32)
    table.add_column("transaction", overflow="fold")
    table.add_column("reason", no_wrap=True)
    table.add_column("died (UTC)", no_wrap=True)
    with_error = width >= _WIDE
    if with_error:
        table.add_column("error", overflow="fold")
    for d in letters:
        status = d.status if d.status is not None else "no answer"
        row = [d.job_id, d.transaction_id, f"{d.reason} {status}", d.dead_at[:16].replace("T", " ")]
        table.add_row(*row, *([d.error[:80]] if with_error else []))
    return table


def print_dead_letter(console: Console, letter: DeadLetter) -> None:
    """One dead letter's fields and event, then a table of its attempts."""
    data = letter.as_dict()
    table = Table(title=f"dead letter {letter.job_id}", show_header=False)
    table.add_column("field")
    table.add_column("value", overflow="fold")
    for key in _DEAD_LETTER_FIELDS:
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


def print_import(console: Console, result: ImportResult, filename: str) -> None:
    """The rejected rows (the first 200), then the counts of an import."""
    if result.errors:
        errors = Table(title=f"rejected rows ({result.rejected})")
        for column in ("line", "field", "reason"):
            errors.add_column(column, overflow="fold")
        for error in result.errors[:_REJECTED_SHOWN]:
            errors.add_row(str(error.line), error.field, error.reason)
        console.print(errors)
        if len(result.errors) > _REJECTED_SHOWN:
            console.print(
                f"... and {len(result.errors) - _REJECTED_SHOWN} more (use --json for all)"
            )
    summary = Table(title=f"import of {filename}")
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
    console.print(summary)


def replay_progress(*, disable: bool) -> Progress:
    """A transient bar on stderr while a replay puts dead letters back."""
    from rich.progress import Progress

    return Progress(console=Console(stderr=True), transient=True, disable=disable)


def import_progress(*, disable: bool) -> Progress:
    """A bar on stderr with rows done of the total and the time left."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("importing"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=disable,
    )
