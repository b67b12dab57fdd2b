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


_JSON = click.option("--json", "as_json", is_flag=True,
                     help="Print one JSON object on stdout instead of the report.")


@cli.command()
@click.argument("spec", metavar="SPEC.json")
@_JSON
@click.option("--solve", is_flag=True,
              help="Also morph a random C→C K×K filter into the module and report the residual.")
@click.option("--channels", type=click.IntRange(min=1), default=16, show_default=True,
              help="--solve: width C of the morphed layer (s and t).")
@click.option("--kernel", type=click.IntRange(min=1), default=3, show_default=True,
              help="--solve: kernel K of the morphed layer (odd).")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float64",
              show_default=True, help="--solve: precision of the solve.")
@click.option("--device", default="cpu", show_default=True, help="--solve: cpu, cuda or cuda:N.")
@click.option("--seed", type=int, default=0, show_default=True, help="--solve: random seed.")
def reduce(spec: str, as_json: bool, solve: bool, channels: int, kernel: int, dtype: str,
           device: str, seed: int) -> None:
    """Classify a module and find its morphing sequence (Algorithm 1).

    Reduces SPEC.json by inverse TYPE-I/TYPE-II morphs, then prints the morphing sequence in
    morph order (from M0 outward), the irreducible remainder of a complex module, the number
    of source→sink paths, the effective kernel and the module equation. With --solve it also
    morphs a random filter into the module (Algorithm 2 for the irreducible part) and reports
    the relative residual ‖module(F) − G̃‖ / ‖G̃‖; a module too narrow to be exact fails with
    exit 1 and says which inner widths to raise.

    \b
    Examples:
      netmorph reduce examples/modules/D.json --json
      netmorph reduce examples/modules/D.json --solve --channels 16 --dtype float64
    """
    from .reduce import reduce_module
    from .spec import load_spec

    plan = reduce_module(load_spec(spec))
    result = None
    if solve:
        from .runtime import resolve_device, resolve_dtype
        from .solve import solve_random

        if kernel % 2 == 0:
            raise click.BadParameter(f"kernel must be odd, got {kernel}", param_hint="--kernel")
        result = solve_random(plan.module, channels=channels, kernel=kernel,
                              dtype=resolve_dtype(dtype), device=resolve_device(device),
                              seed=seed)
    if as_json:
        out = plan.to_json()
        if result is not None:
            out["solve"] = {"channels": channels, "kernel": kernel, "dtype": dtype,
                            "device": device, "seed": seed, **result.to_json()}
        _emit_json(out)
        return
    from .report import reduction_report, solve_report

    console = _console()
    console.print(reduction_report(plan))
    if result is not None:
        console.print(solve_report(result, channels, kernel, dtype, device))


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
