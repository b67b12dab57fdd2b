"""Commands of the architecture search: ``search`` and ``search-report``."""

from __future__ import annotations

import os
import re
import time
from typing import Any

import click

from ..training.recipes import GROWING, RECIPES
from .common import _DATASETS, _FORCE, _JSON, _console, _emit_json, cli

_UNITS: dict[str, float] = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_SECONDS: dict[str, float] = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _with_unit(value: str | None, units: dict[str, float], example: str, param: Any
               ) -> float | None:
    """A positive number with an optional unit suffix (a key of ``units``)."""
    if value is None:
        return None
    keys = "".join(k for k in units if k)
    m = re.fullmatch(rf"\s*([0-9]*\.?[0-9]+)\s*([{keys}{keys.upper()}]?)\s*", value)
    if not m or float(m[1]) <= 0:
        raise click.BadParameter(f"must be a positive {example}, not {value!r}", param=param)
    return float(m[1]) * units[m[2].lower()]


def _count(ctx: Any, param: Any, value: str | None) -> int | None:
    """A count with an optional K/M/G/T suffix: 120M, 1.5G, 300000."""
    n = _with_unit(value, _UNITS, "count such as 120M or 1.5G", param)
    return None if n is None else int(n)


def _duration(ctx: Any, param: Any, value: str | None) -> float | None:
    """Wall-clock seconds: 3h, 90m, 5400s or 5400."""
    return _with_unit(value, _SECONDS, "duration such as 3h, 90m or 5400s", param)


@cli.command(name="search")
@click.argument("parent", required=False, metavar="PARENT")
@click.option("--space", default=None, metavar="SPACE.json",
              help="The moves the search may draw: presets, or module specs at 'at'/'after' "
                   "sites, with weights (README, 'Search').")
@click.option("--dataset", type=_DATASETS, default=None,
              help="Data set: a name, your FILE.npz or image FOLDER (as train's).")
@click.option("--data-dir", default=None, metavar="DIR",
              help="Where data sets live [default: $NETMORPH_DATA, else ~/.cache/netmorph].")
@click.option("-o", "--output", "out", default=None, metavar="RUN_DIR",
              help="Run directory to create (new or empty): every candidate, its record "
                   "and the selection are written there as they happen.")
@click.option("--steps", type=click.IntRange(min=1, max=1000), default=3, show_default=True,
              help="Hill-climbing steps.")
@click.option("--children", type=click.IntRange(min=1, max=1000), default=3,
              show_default=True,
              help="Children drawn per step (the current best competes as one more).")
@click.option("--epochs", type=click.IntRange(min=1, max=10**4), default=1, show_default=True,
              help="Training epochs of every candidate per step.")
@click.option("--recipe", type=click.Choice(list(RECIPES)), default="grow",
              show_default=True,
              help="The children's training recipe (train's --recipe).")
@click.option("--parent-recipe", type=click.Choice([r for r in RECIPES if r not in GROWING]),
              default="continue",
              show_default=True, help="The current best's, trained on beside its children.")
@click.option("--val-fraction", type=click.FloatRange(min=0, max=1, min_open=True,
                                                      max_open=True),
              default=0.1, show_default=True,
              help="Share of the training images held out to select on (never the test set).")
@click.option("--max-flops", callback=_count, default=None, metavar="N",
              help="A child above this many FLOPs per image is not drawn (e.g. 120M).")
@click.option("--max-params", callback=_count, default=None, metavar="N",
              help="A child above this many parameters is not drawn (e.g. 1M).")
@click.option("--budget", callback=_duration, default=None, metavar="TIME",
              help="Time budget of the whole search, over all sessions (3h, 90m): the "
                   "seconds its draws and trainings took; a step that would run past it (by "
                   "the last step's time) is not started.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seeds the draws, the morphs, the batch order and the validation split.")
@click.option("--batch-size", type=click.IntRange(min=1, max=4096), default=128,
              show_default=True, help="Training batch size.")
@click.option("--precision", type=click.Choice(("auto", "bf16", "fp32")), default="auto",
              show_default=True, help="As train's --precision.")
@click.option("--device", default=None,
              help="cpu, cuda or cuda:N [default: cuda if present].")
@click.option("--resume", "resume_dir", default=None, metavar="RUN_DIR",
              help="Continue the search in RUN_DIR with its own settings (give no PARENT "
                   "and no search options; --data-dir and --device may change).")
@click.option("--quiet", is_flag=True, help="No progress; only the summary.")
def search_cmd(parent: str | None, space: str | None, dataset: str | None,
               data_dir: str | None, out: str | None, steps: int, children: int,
               epochs: int, recipe: str, parent_recipe: str, val_fraction: float,
               max_flops: int | None, max_params: int | None, budget: float | None,
               seed: int, batch_size: int, precision: str, device: str | None,
               resume_dir: str | None, quiet: bool) -> None:
    """Search for a better network by hill climbing over exact morphs (NASH-style).

    Each step draws --children children of the current best from the search space, morphs
    each exactly (calibrated on training images, verified in eval and training mode: a
    child that fails is recorded and dropped, never trained), trains every candidate — the
    current best too — --epochs epochs on the same batches, and keeps the one with the
    lowest error on a held-out validation split of the training set. The test set is read
    once, at the end, for the final best. Everything is written under RUN_DIR as it
    happens; --resume RUN_DIR continues a killed search exactly (losing at most the
    candidate in flight). netmorph search-report RUN_DIR shows what it found.

    \b
    Examples:
      netmorph search r20.safetensors --dataset cifar10 --space space.json \\
          --steps 3 --children 3 --epochs 1 -o run
      netmorph search --resume run
    """
    from ..base.runtime import default_device, resolve_device

    dev = resolve_device(device) if device else default_device()
    with SearchProgress(_console(), quiet=quiet) as progress:
        result = _search(progress, parent, space, dataset, data_dir, out, resume_dir, dev,
                         dict(steps=steps, children=children, epochs=epochs, recipe=recipe,
                              parent_recipe=parent_recipe, seed=seed,
                              val_fraction=val_fraction, max_flops=max_flops,
                              max_params=max_params, budget_s=budget, batch_size=batch_size,
                              precision=precision))
    moves = " → ".join(result.lineage) or "none"
    click.echo(f"search {'finished' if result.stopped == 'steps' else 'stopped: budget spent'}"
               f" after {result.steps} step(s): best {result.best} ({moves}), validation "
               f"error {100 * result.val_error:.2f}%, test error {100 * result.test_error:.2f}%")


def _search(progress: SearchProgress, parent: str | None, space: str | None,
            dataset: str | None, data_dir: str | None, out: str | None,
            resume_dir: str | None, dev: Any, options: dict[str, Any]) -> Any:
    from click.core import ParameterSource

    from ..search.climb import resume, start
    from ..search.rundir import SearchConfig

    if resume_dir is not None:
        ctx = click.get_current_context()
        given = [f"--{p.name.replace('_', '-')}" if p.name != "parent" else "PARENT"
                 for p in ctx.command.params
                 if p.name not in ("resume_dir", "data_dir", "device", "quiet")
                 and ctx.get_parameter_source(p.name) not in (None, ParameterSource.DEFAULT)]
        if given:
            raise click.UsageError(f"--resume continues a search with its own settings; "
                                   f"{', '.join(given)} cannot be given with it")
        return resume(resume_dir, data_dir=data_dir, device=dev, hooks=progress.hooks())
    missing = [n for n, v in (("PARENT", parent), ("--space", space),
                              ("--dataset", dataset), ("-o/--output", out)) if v is None]
    if missing:
        raise click.UsageError(f"a new search needs {', '.join(missing)} (or --resume "
                               "RUN_DIR to continue one)")
    assert parent and space and dataset and out
    return start(parent, space, out, SearchConfig(dataset=dataset, **options),
                 data_dir=data_dir, device=dev, hooks=progress.hooks())


class SearchProgress:
    """The search's progress. On a terminal, a live table of the step's candidates (move,
    FLOPs, state, validation error per epoch so far, ETA); otherwise one line per event and,
    while a candidate trains, a line every few seconds with its ETA."""

    def __init__(self, console: Any, quiet: bool = False) -> None:
        self.console, self.quiet = console, quiet
        self.live_table = console.is_terminal and not quiet
        self.live: Any = None
        self.last = time.monotonic()
        self.began: dict[int, float] = {}
        self.rows: dict[int, dict[str, Any]] = {}
        self.step = 0
        self.total = 0

    def __enter__(self) -> SearchProgress:
        return self  # the live table starts with the search (after its inputs are checked)

    def _start_live(self) -> None:
        if self.live_table and self.live is None:
            from rich.live import Live

            self.live = Live(self._table(), console=self.console, refresh_per_second=2,
                             transient=False)
            self.live.__enter__()

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)

    def hooks(self) -> Any:
        from ..search.climb import SearchHooks

        return SearchHooks(on_event=self._event, on_train_step=self._step)

    def _say(self, text: str) -> None:
        if self.quiet:
            return
        if self.live is not None:
            self.live.console.print(text, soft_wrap=True, highlight=False)
        elif not self.live_table:
            self.console.print(text, soft_wrap=True, highlight=False)

    def _table(self) -> Any:
        from rich.table import Table

        table = Table(title=f"step {self.step}/{self.total}" if self.step else "search")
        for col in ("cand", "move", "FLOPs", "state", "val error", "ETA"):
            table.add_column(col)
        for i, r in sorted(self.rows.items()):
            errs = " ".join(f"{100 * e:.2f}%" for e in r.get("errors", []))
            table.add_row(str(i), r["move"], f"{r['flops'] / 1e6:.1f}M" if r.get("flops")
                          else "", r["state"], errs, r.get("eta", ""))
        return table

    def _update(self) -> None:
        if self.live is not None:
            self.live.update(self._table())

    def _event(self, kind: str, r: dict[str, Any]) -> None:
        if kind == "start":
            self._start_live()
            cfg = r["config"]
            self.total = cfg.steps
            done = f", {len(r['done'])} step(s) done before" if r["done"] else ""
            self._say(f"search: {cfg.steps} steps × {cfg.children} children × {cfg.epochs} "
                      f"epoch(s), validation split {r['record']['validation']['size']} "
                      f"images (seed {r['record']['validation']['seed']}){done}")
        elif kind == "step":
            self.step, self.rows, self.began = r["step"], {}, {}
            self._say(f"step {r['step']}/{self.total}: children of {r['current']}")
        elif kind == "draw":
            what = {"ok": "morphed, verified", "dropped": f"dropped ({r.get('reason')})",
                    "none": "no move left to draw"}[r["status"]]
            tried = [t for t in r["tries"] if "refused" in t or "over_cap" in t]
            skipped = "".join(f"; skipped {t['move']}: "
                              f"{t.get('over_cap') or t.get('refused')}" for t in tried)
            self.rows[r["index"]] = {"move": r["move"] or "-", "flops": r.get("flops"),
                                     "state": what}
            self._say(f"  child {r['index']}: {r['move'] or '-'} — {what}"
                      + (f", {r['flops'] / 1e6:.1f}M FLOPs" if r.get("flops") else "")
                      + skipped)
        elif kind == "train":
            self.began[r["index"]] = time.monotonic()
            row = self.rows.setdefault(r["index"], {"move": r["move"]})
            row.update(state="training", errors=[], epochs=r["epochs"])
            again = " (resumed)" if r["resumed"] else ""
            self._say(f"  training candidate {r['index']} ({r['move']}){again}")
        elif kind == "epoch":
            self.rows.setdefault(r["index"], {"move": "?", "state": ""}).setdefault(
                "errors", []).append(r["val_error"])
            self._say(f"    epoch {r['epoch']}: validation error {100 * r['val_error']:.2f}%")
        elif kind == "trained":
            row = self.rows.setdefault(r["index"], {"move": r["move"]})
            row.update(state="trained", errors=r["val_errors"], flops=r["flops"], eta="")
            self._say(f"  candidate {r['index']} ({r['move']}): validation error "
                      f"{100 * r['val_error']:.2f}%, {r['seconds']:.0f} s")
        elif kind == "selected":
            self.rows[r["best"]]["state"] = "best ◀"
            self._say(f"step {r['step']}: best is candidate {r['best']} ({r['move']}), "
                      f"validation error {100 * r['val_error']:.2f}%")
        self._update()

    def _step(self, step: int, index: int, epoch: int, batch: int, batches: int) -> None:
        from .report import PLAIN_PROGRESS_EVERY

        now = time.monotonic()
        t0 = self.began.get(index, now)
        epochs = max(self.rows.get(index, {}).get("epochs", 1), 1)
        done = (epoch + batch / max(batches, 1)) / epochs
        eta = f"{(now - t0) * (1 - done) / done:.0f} s" if done > 0 else ""
        row = self.rows.setdefault(index, {"move": "?"})
        row.update(state=f"epoch {epoch + 1}, step {batch}/{batches}", eta=eta)
        if self.live is not None:
            self._update()
            return
        if (self.quiet or now - self.last < PLAIN_PROGRESS_EVERY
                or os.environ.get("NETMORPH_PROGRESS") == "off"):
            return
        self.last = now
        self._say(f"    candidate {index}: epoch {epoch + 1}, step {batch}/{batches}"
                  + (f", ETA {eta}" if eta else ""))


@cli.command(name="search-report")
@click.argument("run_dir", metavar="RUN_DIR")
@click.option("--markdown", "md_out", default=None, metavar="FILE",
              help="Also write the report as Markdown (with the plot, if --plot).")
@click.option("--plot", "plot_out", default=None, metavar="FILE",
              help="Write the plot of best validation error against training compute "
                   "(needs matplotlib).")
@_JSON
@_FORCE
def search_report_cmd(run_dir: str, md_out: str | None, plot_out: str | None, as_json: bool,
                      force: bool) -> None:
    """What a search found: the lineage tree, every candidate, the best against compute.

    Reads RUN_DIR alone (a search in progress too). The final best's test error is the one
    the search measured once, at its end.

    \b
    Example:
      netmorph search-report run --markdown run/report.md --plot run/report.png
    """
    from pathlib import Path

    from ..io.outputs import check_outputs, write_text
    from ..network.flops import format_flops
    from ..search.report import lineage_tree, load_report, markdown, plot, rows

    outs = [p for p in (md_out, plot_out) if p]
    check_outputs(outs, force=force)
    rep = load_report(run_dir)
    if plot_out:
        plot(rep, plot_out, force=force)
        click.echo(f"wrote {plot_out}", err=True)
    if md_out:
        rel = os.path.relpath(plot_out, Path(md_out).parent) if plot_out else None
        write_text(md_out, markdown(rep, rel), force=force)
        click.echo(f"wrote {md_out}", err=True)
    if as_json:
        _emit_json(rep)
        return
    from rich.table import Table

    for line in lineage_tree(rep):
        click.echo(line)
    table = Table(title="candidates")
    for col in ("step", "cand", "move", "FLOPs", "params", "val error", "s", ""):
        table.add_column(col)
    for r in rows(rep):
        table.add_row(str(r["step"]), str(r["index"]), r["move"], format_flops(r["flops"]),
                      f"{r['params']:,}", f"{100 * r['val_error']:.2f}%",
                      f"{r['seconds']:.0f}", "best" if r["best"] else "")
    _console().print(table)
