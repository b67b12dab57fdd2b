"""The ``netmorph`` command line: click + rich, the only place that prints.

Each command parses its options, calls one library function and shows the result. Library
errors (``NetmorphError``) become one ``Error: …`` line on stderr with the error's exit code
(2 bad input, 1 failed check); ``--debug`` shows the traceback instead.
"""


from __future__ import annotations

import sys

import click

from ..errors import NetmorphError
from . import (  # noqa: F401 (they register the commands)
    common,
    networks,
    searching,
    solving,
    training,
)
from .common import cli

__all__ = ["cli", "main"]


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: maps every failure to one ``Error:`` line."""
    try:
        rc = cli.main(args=argv, prog_name="netmorph", standalone_mode=False)
    except NetmorphError as exc:
        if common._DEBUG:
            raise
        click.echo(f"Error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("Error: aborted", err=True)
        sys.exit(1)
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx else "netmorph"
        click.echo(f"Error: {exc.format_message()} (see '{where} --help')", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"Error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("Error: interrupted", err=True)
        sys.exit(130)
    sys.exit(rc if isinstance(rc, int) else 0)
