"""``ingest console``: serve the operator console with uvicorn.

Registered in :mod:`ingest.cli` as ``cli.add_command(console_command)``; also runnable
alone as ``python -m ingest.console``. FastAPI and uvicorn are imported only when the
command runs.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from ingest.deadletter import DEFAULT_REPLAY_RATE
from ingest.errors import ConfigurationError
from ingest.extras import require

from .config import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    ConsoleOptions,
    ConsoleSettings,
    check_bind,
    plain_http_warning,
)


def load_console_settings() -> ConsoleSettings:
    try:
        return ConsoleSettings()
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise ConfigurationError(f"invalid configuration: {exc}") from exc


@click.command(
    "console",
    help="Serve the operator console: the pipeline's figures, dead letters (browse, replay, "
    "purge) and paused websites. Binds 127.0.0.1 unless told otherwise; any other address "
    "requires INGEST_CONSOLE_TOKEN, and HTTPS (--ssl-certfile/--ssl-keyfile, or a TLS proxy "
    "named by --forwarded-allow-ips): off loopback, login cookies are Secure.",
)
@click.option("--host", default=DEFAULT_HOST, show_default=True, help="Address to bind.")
@click.option(
    "--port",
    default=DEFAULT_PORT,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="TCP port to listen on.",
)
@click.option(
    "--read-only", is_flag=True, help="Hide and refuse every action (replay, purge, probe)."
)
@click.option(
    "--replay-rate",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_REPLAY_RATE,
    show_default=True,
    help="Events per second a replay puts back on the queue (as `ingest dlq replay --rate`).",
)
@click.option(
    "--ssl-certfile",
    type=click.Path(dir_okay=False),
    help="Serve HTTPS with this certificate (PEM); needs --ssl-keyfile.",
)
@click.option(
    "--ssl-keyfile", type=click.Path(dir_okay=False), help="The certificate's private key (PEM)."
)
@click.option(
    "--forwarded-allow-ips",
    metavar="IPS",
    help="Behind a TLS proxy: comma-separated addresses (or '*') whose X-Forwarded-Proto "
    "and X-Forwarded-For are trusted. Unset: those headers are ignored.",
)
def console_command(
    host: str,
    port: int,
    read_only: bool,
    replay_rate: float,
    ssl_certfile: str | None,
    ssl_keyfile: str | None,
    forwarded_allow_ips: str | None,
) -> None:
    require("console", "ingest console")
    if (ssl_certfile is None) != (ssl_keyfile is None):
        raise click.UsageError("--ssl-certfile and --ssl-keyfile go together: give both")
    settings = load_console_settings()
    check_bind(host, settings.console_token)

    import uvicorn

    from ingest.logs import configure_logging, get_logger

    from .app import create_app

    configure_logging(settings.log_level)
    options = ConsoleOptions(
        token=settings.console_token, read_only=read_only, replay_rate=replay_rate
    )
    app = create_app(settings, options=options)
    shown = f"[{host}]" if ":" in host else host
    scheme = "https" if ssl_certfile else "http"
    log = get_logger(component="console")
    warning = plain_http_warning(
        host, https=ssl_certfile is not None, behind_proxy=forwarded_allow_ips is not None
    )
    if warning is not None:
        log.warning(warning)
    log.info(
        "console listening",
        url=f"{scheme}://{shown}:{port}/",
        behind_proxy=forwarded_allow_ips is not None,
        read_only=read_only,
        token_required=options.token_value is not None,
        queue=settings.queue,
    )
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=settings.log_level.lower(),
        server_header=False,
        # Only a proxy named here may say the request came over HTTPS (and from whom).
        proxy_headers=forwarded_allow_ips is not None,
        forwarded_allow_ips=forwarded_allow_ips or "127.0.0.1",
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
        access_log=False,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``console_command``; the exit code as ``ingest`` would give it (2: usage or
    configuration error)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        console_command.main(args=args, prog_name="ingest console", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.UsageError as exc:
        exc.show()
        return 2
    except ConfigurationError as exc:
        click.echo(f"error: {exc}", err=True)
        return 2
    except click.exceptions.Abort:
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
