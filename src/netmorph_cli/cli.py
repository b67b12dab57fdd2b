"""The ``netmorph`` command line: click + rich, the only place that prints.

Each command parses its options, calls one library function and shows the result. Library
errors (``NetmorphError``) become one ``Error: …`` line on stderr with the error's exit code
(2 bad input, 1 failed check); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from . import __version__
from .errors import NetmorphError

_DEBUG = False


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="netmorph")
@click.option("--debug", is_flag=True, help="Show a traceback on errors.")
def cli(debug: bool) -> None:
    """Modular network morphism: grow a trained network into any module, exactly.

    \b
    Example:
      netmorph reduce examples/modules/D.json
    """
    global _DEBUG
    _DEBUG = debug


def _emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2))


def _console():
    from rich.console import Console

    return Console(highlight=False)


@cli.command()
@click.argument("spec", metavar="SPEC.json")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the report.")
def reduce(spec: str, as_json: bool) -> None:
    """Classify a module and find its morphing sequence (Algorithm 1).

    Reduces SPEC.json by inverse TYPE-I/TYPE-II morphs, then prints the morphing sequence in
    morph order (from M0 outward), the irreducible remainder of a complex module, the number
    of source→sink paths, the effective kernel and the module equation.

    \b
    Example:
      netmorph reduce examples/modules/D.json --json
    """
    from .reduce import reduce_module
    from .spec import load_spec

    plan = reduce_module(load_spec(spec))
    if as_json:
        _emit_json(plan.to_json())
        return
    from .report import reduction_report

    _console().print(reduction_report(plan))


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: maps every failure to one ``Error:`` line."""
    try:
        rc = cli.main(args=argv, prog_name="netmorph", standalone_mode=False)
    except NetmorphError as exc:
        if _DEBUG:
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
