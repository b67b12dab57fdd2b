"""``netmorph reduce``: a module spec's class, morphing sequence and solve."""

from __future__ import annotations

import gc
from typing import Any

import click

from ..base.limits import MAX_KERNEL, MAX_WIDTH
from ..solver import METHODS
from .common import (
    _JSON,
    _console,
    _emit_json,
    _gib,
    _solve_progress,
    _solver_limits,
    cli,
)


@cli.command()
@click.argument("spec", metavar="SPEC.json")
@_JSON
@click.option("--solve", is_flag=True,
              help="Also morph a random C→C K×K filter into the module and report the residual.")
@click.option("--channels", type=click.IntRange(min=1, max=MAX_WIDTH), default=16,
              show_default=True, help="--solve: width C of the morphed layer (s and t).")
@click.option("--kernel", type=click.IntRange(min=1, max=MAX_KERNEL), default=3,
              show_default=True, help="--solve: kernel K of the morphed layer (odd).")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float64",
              show_default=True, help="--solve: precision of the solve.")
@click.option("--device", default="cpu", show_default=True, help="--solve: cpu, cuda or cuda:N.")
@click.option("--seed", type=int, default=0, show_default=True, help="--solve: random seed.")
@click.option("--method", type=click.Choice(METHODS), default="auto",
              show_default=True,
              help="--solve: auto (Algorithm 1's splits around Algorithm 2 on the irreducible "
                   "rest, Algorithm 2 on the whole module if a split cannot be exact), "
                   "algorithm2 (the whole module: every edge uses its full kernel) or "
                   "reduce (the splits, no fallback).")
@click.option("--pretty", is_flag=True,
              help="--json: indent the JSON (default: compact, one line; a 100,000-edge "
                   "module's plan is ~17 MB compact, ~37 MB indented).")
@_solver_limits("--solve")
def reduce(spec: str, as_json: bool, solve: bool, channels: int, kernel: int, dtype: str,
           device: str, seed: int, method: str, pretty: bool, max_seconds: float,
           max_sweeps: int, max_memory: float | None) -> None:
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
    from ..spec.parse import load_spec
    from ..spec.reduce import reduce_module

    plan = reduce_module(load_spec(spec))
    result = None
    if solve:
        from ..base.runtime import resolve_device, resolve_dtype
        from ..solver.solve import solve_random

        if kernel % 2 == 0:
            raise click.BadParameter(f"kernel must be odd, got {kernel}", param_hint="--kernel")
        result = solve_random(plan.module, channels=channels, kernel=kernel,
                              dtype=resolve_dtype(dtype), device=resolve_device(device),
                              seed=seed, method=method, max_seconds=max_seconds,
                              max_sweeps=max_sweeps, max_memory=_gib(max_memory),
                              progress=_solve_progress)
    if as_json:
        solved = None if result is None else {
            "channels": channels, "kernel": kernel, "dtype": dtype, "device": device,
            "seed": seed, "method": method, **result.to_json()}
        _reduce_json(plan, solved, pretty)
        return
    from .report import reduction_report, solve_report

    console = _console()
    console.print(reduction_report(plan))
    if result is not None:
        console.print(solve_report(result, channels, kernel, dtype, device))


def _reduce_json(plan: Any, solved: dict[str, Any] | None, pretty: bool) -> None:
    gc.disable()  # ~10⁶ small objects: the collector's rescans cost more than the build
    try:
        out = plan.to_json()
        if solved is not None:
            out["solve"] = solved
        _emit_json(out, pretty=pretty)
    finally:
        gc.enable()


# -- choices and help texts from the library's registries ---------------------------------
# Read when shown or parsed, not at import: the CLI starts without importing torch, and an
# entry added to a registry (data.DATASETS, archs.ARCHS, presets.PRESETS) is offered at once.

