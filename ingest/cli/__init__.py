"""The ``ingest`` command (also ``python -m ingest``). Thin: it parses, then calls modules.

Exit codes: 0 success, 1 failure, 2 usage or configuration error; a failure is one line on
stderr (:func:`._common.report`), never a traceback.

One module per family of commands (:mod:`.run`, :mod:`.stats`, :mod:`.dlq`, :mod:`.spool`,
:mod:`.payments`; ``ingest console`` lives with the console), and :mod:`.render` for the
tables and progress bars they show.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import click

from ingest.console.cli import console_command  # light: FastAPI loads on use
from ingest.settings import env_names

from . import dlq, payments, run, spool, stats
from ._common import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, load_settings, report
from .render import accounting_table

__all__ = [
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_USAGE",
    "accounting_table",
    "cli",
    "load_settings",
    "main",
]


def _env_help() -> str:
    lines = ["\b", "Configuration (environment variables):"]
    lines += [f"  {name:<28} {help_}" for name, help_ in env_names().items()]
    return "\n".join(lines)


@click.group(
    help="Deliver payments to DataFast's Payments API through a Redis queue.\n\n" + _env_help(),
    # Every subcommand's --help shows its defaults (click passes these settings down).
    context_settings={
        "help_option_names": ["-h", "--help"],
        "max_content_width": 110,
        "show_default": True,
    },
)
@click.version_option(package_name="datafast-ingest")
def cli() -> None:
    from ingest.logs import configure_logging

    # Once, for every command: log lines go to stderr (stdout is each command's report).
    configure_logging(os.environ.get("INGEST_LOG_LEVEL", "INFO"))


for _command in (
    run.worker,
    run.sandbox,
    run.demo,
    stats.stats,
    stats.metrics,
    dlq.dlq,
    spool.spool,
    payments.delete,
    payments.import_,
    console_command,
):
    cli.add_command(_command)


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
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (EXIT_OK if code is None else EXIT_FAILURE)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # every failure: one line on stderr, never a traceback
        return report(exc)
    return EXIT_OK
