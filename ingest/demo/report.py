"""What the demo shows: the console it writes to, the final table and its closing lines."""

from __future__ import annotations

from typing import IO

from rich.console import Console
from rich.table import Table

from ingest.stats import Accounting

from .stack import EventCount

PIPED_WIDTH = 100
"""Columns when stdout is not a terminal. Rich's own default there, 80, wrapped the header
and the rejection lines mid-phrase; every line the demo prints fits in 100."""


def demo_console(file: IO[str] | None = None) -> Console:
    """A console the width of the terminal, or :data:`PIPED_WIDTH` when piped."""
    console = Console(file=file)
    if console.is_terminal:
        return console
    return Console(file=file, width=PIPED_WIDTH)


def print_line(console: Console, text: str) -> None:
    """One line, cut with an ellipsis rather than wrapped if the terminal is narrower."""
    console.print(text, no_wrap=True, overflow="ellipsis", highlight=False)


def summary_table(
    count: EventCount, accounting: Accounting | None, *, refused_at_enqueue: int, rejected: int
) -> Table:
    """Where every event ended up, counted by transaction id; Redis's counters beside."""
    table = Table(title="where every event ended up", title_justify="left")
    table.add_column("events")
    table.add_column("count", justify="right")
    rows = [
        ("enqueued", count.enqueued),
        ("delivered (recorded by the API)", count.delivered),
        ("  of which the API received more than once", count.resent),
        ("dead-lettered (refused by the API, or out of attempts)", count.dead),
        ("still queued / in flight / scheduled", count.still_queued),
        ("lost", count.lost),
        ("duplicates refused at enqueue", refused_at_enqueue),
        ("rejected at enqueue (invalid)", rejected),
    ]
    for label, value in rows:
        style = "bold red" if label == "lost" and value else None
        table.add_row(label, f"{value:,}", style=style)
    return table


def agreement(count: EventCount, accounting: Accounting | None) -> str:
    """How the table was counted, and whether Redis's own counters say the same."""
    if accounting is None:
        return "counted by transaction_id; Redis's own counters could not be read"
    agrees = (
        accounting.lost == 0
        and accounting.enqueued == count.enqueued
        and accounting.dead == count.dead
        and accounting.in_system == count.still_queued
    )
    if agrees:
        return "counted by transaction_id; Redis's own counters agree"
    return (
        f"counted by transaction_id; Redis's own counters say enqueued "
        f"{accounting.enqueued:,}, dead {accounting.dead:,}, in the system "
        f"{accounting.in_system:,}, lost {accounting.lost:,}"
    )


def rate_line(count: EventCount) -> str:
    """The delivery rate from the API's first reception of an event to its last.

    Not from the start of the enqueue: that would count the workers' start-up, which on a
    short run is most of it.
    """
    window = count.delivery_window
    if count.delivered < 2 or window <= 0:
        return f"delivered {count.delivered:,}: too few to measure a rate"
    rate = (count.delivered - 1) / window
    return f"delivery rate {rate:,.0f} events/s from the first delivery on, over {window:.2f} s"


def verdict(count: EventCount, accounting: Accounting | None, *, timed_out: bool) -> str:
    """The last line: ``lost 0`` and what it means, or what went wrong."""
    if count.lost or (accounting is not None and accounting.lost):
        lost = max(count.lost, accounting.lost if accounting is not None else 0)
        return f"[bold red]lost {lost:,}[/]: events missing from the API's records and from Redis"
    if count.still_queued:
        why = "when the demo gave up waiting" if timed_out else ""
        return f"lost 0, but [yellow]{count.still_queued:,} still queued[/] {why}".rstrip()
    return "lost 0: every event enqueued was delivered or dead-lettered"
