"""The commands that read the queue's figures: ``stats`` for a person, ``metrics`` for
Prometheus."""

from __future__ import annotations

import json
import time

import click
from rich.console import Console
from rich.live import Live
from rich.table import Table

from ingest.connection import connect

from ._common import load_settings, open_redis
from .render import accounting_table


@click.command(help="Queued, in flight, scheduled, delivered, dead-lettered, rates.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--watch", is_flag=True, help="Refresh every --interval seconds until Ctrl-C, in place."
)
@click.option("--interval", type=float, default=2.0, help="Seconds between refreshes.")
def stats(as_json: bool, watch: bool, interval: float) -> None:
    from ingest.stats import read_accounting

    settings = load_settings()
    connection = open_redis(settings, socket_timeout=5)
    console = Console()

    def table() -> Table:
        accounting = read_accounting(connection, settings.queue)
        return accounting_table(accounting.as_dict(), title=f"queue {settings.queue}")

    try:
        if as_json:
            while True:
                accounting = read_accounting(connection, settings.queue)
                click.echo(json.dumps(accounting.as_dict(), sort_keys=True))
                if not watch:
                    return
                time.sleep(interval)
        if watch and console.is_terminal:
            # Redrawn in place; Ctrl-C leaves the last figures on the screen.
            with Live(table(), console=console, auto_refresh=False) as live:
                while True:
                    time.sleep(interval)
                    live.update(table(), refresh=True)
        while True:
            # Not a terminal (a pipe, a log file): one table after another.
            console.print(table())
            if not watch:
                return
            time.sleep(interval)
    finally:
        connection.close()


@click.command(
    help="Serve queue-wide Prometheus metrics read from Redis (depth, dead letters, "
    "the accounting identity)."
)
@click.option("--port", type=int, default=None, help="Default: INGEST_METRICS_PORT, else 9464.")
@click.option("--once", is_flag=True, help="Print one exposition to stdout and exit.")
def metrics(port: int | None, once: bool) -> None:
    from prometheus_client import CollectorRegistry, generate_latest, start_http_server

    from ingest.metrics import QueueCollector

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
