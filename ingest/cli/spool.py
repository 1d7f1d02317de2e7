"""``ingest spool``: the producer's disk spool (events kept while Redis was down)."""

from __future__ import annotations

import dataclasses
import json

import click

from ._common import EXIT_FAILURE, load_settings


@click.group(help="The producer's disk spool (events kept while Redis was down).")
def spool() -> None:
    pass


@spool.command("status", help="Events waiting on disk, and quarantined lines.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def spool_status(as_json: bool) -> None:
    from ingest.spool import QUARANTINE, Spool

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
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def spool_flush(as_json: bool) -> None:
    from ingest.producer import Producer

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
        if result.held_back:
            click.echo(
                f"{result.held_back:,} refund(s) kept on disk: another producer still writes "
                "a spool file here that may hold their payment; flush again once it is done"
            )
    if result.quarantined:
        raise SystemExit(EXIT_FAILURE)
