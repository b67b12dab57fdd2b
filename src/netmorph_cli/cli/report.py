"""Rich renderables for the CLI's human-readable reports (built here, printed by cli.py)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from ..morph.verify import TrainModeReport, VerifyReport
from ..network.history import Record, TrainRecord, UnknownRecord, parse_history
from ..solver.solve import SolveResult
from ..spec.graph import Kernel
from ..spec.reduce import ReductionPlan


def kernel_text(k: Kernel | list[int]) -> str:
    return f"{k[0]}×{k[1]}"


def reduction_report(plan: ReductionPlan) -> Group:
    m = plan.module
    title = f"module {m.name!r}" if m.name else "module"
    head = Text.assemble(
        (f"{title}: ", "bold"), f"{len(m.blobs)} blobs, {len(m.edges)} edges — ",
        ("simple morphable" if plan.simple else "complex",
         "bold green" if plan.simple else "bold yellow"),
    )
    parts: list = [head]
    if plan.steps:
        start = "M0 (G: s→t)" if plan.simple else "the irreducible module"
        parts.append(Text(f"morphing sequence from {start}:", style="bold"))
        table = Table()
        for col in ("#", "type", "edge", "becomes", "kernels"):
            table.add_column(col)
        for i, st in enumerate(plan.steps, 1):
            a, b = st.into
            if st.type == "I":
                how = f"{a.name} ({a.src}→{st.blob}) then {b.name} ({st.blob}→{b.dst})"
                ks = f"{kernel_text(st.edge.kernel)} = {kernel_text(b.kernel)} ⊛ " \
                     f"{kernel_text(a.kernel)}"
            else:
                how = f"{a.name} + {b.name} ({a.src}→{a.dst})"
                ks = f"{kernel_text(st.edge.kernel)} = {kernel_text(a.kernel)} + " \
                     f"{kernel_text(b.kernel)}"
            table.add_row(str(i), st.type, f"{st.edge.name} ({st.edge.src}→{st.edge.dst})",
                          how, ks)
        parts.append(table)
    else:
        parts.append(Text("no atomic morph applies: the module is irreducible as it stands"
                          if not plan.simple else "the module is M0 itself"))
    if not plan.simple:
        rem = plan.remainder
        parts.append(Text(f"irreducible remainder: {len(rem.blobs)} blobs, "
                          f"{len(rem.edges)} edges (solved by Algorithm 2):", style="bold"))
        table = Table()
        for col in ("edge", "from", "to", "kernel"):
            table.add_column(col)
        for e in rem.edges:
            table.add_row(e.name, e.src, e.dst, kernel_text(e.kernel))
        parts.append(table)
    parts.append(Text.assemble(("paths s→t: ", "bold"), f"{m.path_count()}"))
    parts.append(Text.assemble(("effective kernel: ", "bold"),
                               kernel_text(m.effective_kernel())))
    parts.append(Text.assemble(("module equation:\n", "bold"), plan.equation()))
    return Group(*parts)


def solve_report(result: SolveResult, channels: int, kernel: int, dtype: str,
                 device: str) -> Group:
    sweeps = f"{result.sweeps} Algorithm 2 sweep{'s' if result.sweeps != 1 else ''}"
    head = Text.assemble(
        ("solve: ", "bold"),
        f"{channels}→{channels} {kernel}×{kernel} filter, {dtype} on {device}: relative "
        f"residual ", (f"{result.residual:.2e}", "bold green"),
        f" in {result.seconds:.2f} s ({sweeps})")
    parts: list = [head]
    if result.widths is not None and result.widths.rules:
        parts.append(Text.assemble(("widths: ", "bold"), result.widths.line()))
    table = Table()
    for col in ("edge", "shape", "method", "cond"):
        table.add_column(col)
    for name, f in result.filters.items():
        cond = result.conditioning[name]
        table.add_row(name, "×".join(map(str, f.shape)), result.methods[name],
                      f"{cond:.3g}" if cond != float("inf") else "rank-deficient")
    return Group(*parts, table)


def verify_report(r: VerifyReport) -> Group:
    verdict = ("PASSED", "bold green") if r.passed else ("FAILED", "bold red")
    head = Text.assemble(verdict, f" — {r.samples} {r.inputs} inputs in {r.dtype}: max abs "
                         f"error {r.max_abs_err:.3e}, max relative error {r.max_rel_err:.3e} "
                         f"(tolerance {r.tolerance:g}), top-1 agreement "
                         f"{100 * r.top1_agreement:.1f}%")
    parts: list = [head]
    if r.sites:
        table = Table()
        for col in ("parent node", "child node", "max abs err", "max rel err",
                    f"≤ {r.tolerance:g}"):
            table.add_column(col)
        for s in r.sites:
            table.add_row(s.parent_node, s.child_node, f"{s.max_abs_err:.3e}",
                          f"{s.max_rel_err:.3e}", "yes" if r.site_within(s) else "no")
        parts.append(table)
        outside = r.sites_outside()
        if outside and r.passed:
            parts.append(Text(
                f"note: {len(outside)} module output(s) differ by more than the tolerance "
                f"(relative to their own largest value) while the logits agree: the verdict "
                f"is the logits'. In {r.dtype} that is rounding the module amplifies (large "
                f"solved filters that cancel: see the cond column of `netmorph info`) or a "
                f"difference the layers after it damp; morph and verify with --dtype float64 "
                f"to see the morph's own error."))
    return Group(*parts)


def train_mode_report(r: TrainModeReport) -> Group:
    verdict = ("PASSED", "bold green") if r.passed else ("FAILED", "bold red")
    head = Text.assemble(verdict, f" — training mode (BN on batch statistics), {r.batches} "
                         f"batches of {r.batch_size} {r.inputs} training images in {r.dtype}")
    table = Table()
    for col in ("network", "loss", "accuracy"):
        table.add_column(col)
    table.add_row("parent", f"{r.parent_loss:.4f}", f"{100 * r.parent_accuracy:.1f}%")
    table.add_row("child", f"{r.child_loss:.4f}", f"{100 * r.child_accuracy:.1f}%")
    tail = Text(f"child loss limit {r.limit:.4f} (1.10 × parent + 0.01); child − parent per "
                f"batch: std {r.loss_diff_std:.4f}; max relative logit difference "
                f"{r.max_rel_err:.3e}")
    return Group(head, table, tail)


def _executed(s: dict[str, Any]) -> str:
    """The executed MACs where they exceed the paper's logical count (padded modules run
    their unpadded convs on larger maps); nothing where the two agree."""
    from ..network.flops import format_flops

    executed = s.get("executed_macs")
    if executed is None or executed == s["flops"]:
        return ""
    return (f"; executed {format_flops(executed)} MACs ({s['executed_vs_flops']:.2f}× "
            "logical: padded module inputs)")


def _origin(imported: dict[str, Any]) -> str:
    """Where an imported network came from: its file, factory and layout."""
    parts = []
    if imported.get("factory"):
        kwargs = imported.get("kwargs") or {}
        args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) if isinstance(
            kwargs, dict) else ""
        parts.append(f"{imported['factory']}({args})")
    if imported.get("file"):
        parts.append(("weights " if imported.get("factory") else "") + str(imported["file"]))
    what = " with ".join(parts) or "?"
    sha = imported.get("sha256")
    return f"{what} ({imported.get('layout', '?')}" + (f"; sha256 {str(sha)[:16]}…)" if sha
                                                       else ")")


def info_report(s: dict[str, Any]) -> Group:
    from ..network.flops import format_flops

    lines: list[Text | Table] = [
        Text.assemble(("arch: ", "bold"), str(s["arch"]),
                      f"  (input {'×'.join(map(str, s['input']))}, {s['num_classes']} classes, "
                      f"{s['dtype']})"),
        Text.assemble(("params: ", "bold"), f"{s['params']:,}  ", ("layers: ", "bold"),
                      f"{s['layers']} conv/linear"),
        Text.assemble(("FLOPs: ", "bold"), f"{format_flops(s['flops'])} ({s['flops']:,} MACs)"
                      + "".join(f", {s[f'flops_vs_{k}']:.2f}× {k} ({s[k].get('arch')})"
                                for k in ("parent", "root") if f"flops_vs_{k}" in s)
                      + _executed(s)),
    ]
    if "normalization" in s:
        n = s["normalization"]
        lines.append(Text.assemble(("normalization: ", "bold"), f"mean {n.get('mean')}, "
                                   f"std {n.get('std')}"))
    imported = s.get("imported")
    if isinstance(imported, dict):
        lines.append(Text.assemble(("imported: ", "bold"), _origin(imported)))
    if s["history"]:
        table = Table()
        for col in ("#", "step", "where", "seed", "residual / result"):
            table.add_column(col)
        entries = s["history"]
        shown = (list(enumerate(entries, 1)) if len(entries) <= 2 * HISTORY_ROWS else
                 [*enumerate(entries[:HISTORY_ROWS], 1),
                  *enumerate(entries[-HISTORY_ROWS:], len(entries) - HISTORY_ROWS + 1)])
        for k, (i, entry) in enumerate(shown):
            if k == HISTORY_ROWS and len(shown) < len(entries):
                table.add_row("…", f"{len(entries) - len(shown):,} more entries", "", "",
                              "(info --json lists every one)")
            table.add_row(str(i), *_history_row(parse_history([entry])[0]))
        lines.append(Text("morph history:", style="bold"))
        lines.append(table)
    else:
        lines.append(Text("morph history: none (not a morphed network)"))
    return Group(*lines)


HISTORY_ROWS = 25  # a longer history shows its first and last 25 entries
# seconds between progress lines when stdout is not a terminal (NETMORPH_PROGRESS=off: none,
# for output compared word for word, as tools/readme_check.py does); with a command's
# start-up, no silence over 10 s (make demo with CIFAR-10: 8.5 s at most)
PLAIN_PROGRESS_EVERY = 3.0


def heartbeat(echo: Callable[[str], None], what: str, unit: str
              ) -> Callable[[int, int], None]:
    """A long loop's heartbeat for ``progress(done, total)`` callbacks (BN calibration,
    eval, train's test pass): "WHAT: DONE of TOTAL UNIT, S s" to ``echo`` every
    ``PLAIN_PROGRESS_EVERY`` seconds of a loop (NETMORPH_PROGRESS=off: none). A ``done``
    below the last one starts a new loop (the next epoch's test pass); each loop is timed
    from its first call."""
    start = last = time.monotonic()
    prev = 0

    def show(done: int, total: int) -> None:
        nonlocal start, last, prev
        now = time.monotonic()
        if prev == 0 or done < prev:  # a loop's first call: time it from here
            start = last = now
        prev = done
        if now - last >= PLAIN_PROGRESS_EVERY and os.environ.get("NETMORPH_PROGRESS") != "off":
            last = now
            of = f" of {total}" if total else ""
            echo(f"{what}: {done}{of} {unit}, {now - start:.0f} s")
    return show


def calibration_progress(echo: Callable[[str], None]) -> Callable[[int, int], None]:
    return heartbeat(echo, "calibrating new BN layers", "batches")


class TrainProgress:
    """A rich progress bar for ``netmorph train`` (epoch, loss, lr, images/s, ETA)."""

    def __init__(self, console: Any, quiet: bool = False, header: str | None = None):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.console, self.quiet = console, quiet
        self.header = header  # said when training starts (after data and calibration)
        self.progress = Progress(
            TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.4g}  "
                       "{task.fields[ips]:,.0f} img/s"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=console, disable=quiet or not console.is_terminal, transient=True)
        self.task: Any = None
        self.last_line = time.monotonic()
        self.total_steps = 0
        self.epochs = 0

    def __enter__(self) -> TrainProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def hooks(self) -> Any:
        from ..training.train import TrainHooks

        return TrainHooks(on_step=self._step, on_epoch=self._epoch, on_start=self._start,
                          on_warning=self._warning, on_groups=self._groups,
                          on_calibrate=None if self.quiet else calibration_progress(self._line),
                          on_test=None if self.quiet else heartbeat(
                              self._line, "testing", "test images"))

    def _groups(self, line: str) -> None:  # said when training starts, as the header
        self.header = line

    def _line(self, text: str) -> None:
        self.console.print(text, soft_wrap=True)

    def _warning(self, message: str) -> None:  # on stderr, --quiet or not
        import click

        click.echo(f"Warning: {message}", err=True)

    def _start(self, start_epoch: int, epochs: int, steps: int) -> None:
        if self.header and not self.quiet:
            self.console.print(self.header, soft_wrap=True)
        self.epochs, self.total_steps = epochs, steps
        self.task = self.progress.add_task("train", total=(epochs - start_epoch) * steps,
                                           epoch=f"{start_epoch + 1}/{epochs}", loss=0.0,
                                           lr=0.0, ips=0.0)

    def _step(self, epoch: int, step: int, steps: int, loss: float, lr: float,
              ips: float) -> None:
        self.progress.update(self.task, completed=self._done(epoch, step), loss=loss, lr=lr,
                             ips=ips, epoch=f"{epoch + 1}/{self.epochs}")
        now = time.monotonic()
        if (not self.quiet and not self.console.is_terminal and step < steps
                and now - self.last_line >= PLAIN_PROGRESS_EVERY
                and os.environ.get("NETMORPH_PROGRESS") != "off"):
            # no bar when stdout is a file or a pipe: a line every few seconds instead
            self.last_line = now
            self.console.print(f"epoch {epoch + 1}/{self.epochs}: step {step}/{steps}, loss "
                               f"{loss:.4f}, lr {lr:.4g}, {ips:,.0f} img/s", soft_wrap=True)

    def _done(self, epoch: int, step: int) -> int:
        start = int(self.progress.tasks[0].total or 0)
        first_epoch = self.epochs - start // max(self.total_steps, 1)
        return (epoch - first_epoch) * self.total_steps + step

    def _epoch(self, stats: Any) -> None:
        if not self.quiet:
            self.console.print(
                f"epoch {stats.epoch}/{self.epochs}: train loss {stats.train_loss:.4f}, "
                f"train error {100 * stats.train_error:.2f}%, test error "
                f"{100 * stats.test_error:.2f}%, lr {stats.lr:.4g}, "
                f"{stats.images_per_s:,.0f} img/s, {stats.seconds:.1f} s")


def _history_row(h: Record) -> tuple[str, str, str, str]:
    """A history entry as the info table's step, where, seed and result columns."""
    if isinstance(h, TrainRecord):
        err = h.test_error
        return (f"train {h.epochs_run} epochs", str(h.dataset),
                str((h.config or {}).get("seed", "")),
                f"test error {100 * err:.2f}%" if err is not None else "")
    if isinstance(h, UnknownRecord):  # a step of a netmorph this one does not know
        d = h.data
        return (str(h.op or "unknown step"), str(d.get("at") or ""), str(d.get("seed", "")),
                "")
    where = h.where
    result = f"{h.residual:.2e}" if isinstance(h.residual, float) else ""
    if isinstance(h.condition, float) and h.condition > 0:
        result += f", cond {h.condition:.3g}"
    cal = h.calibration
    if cal is not None:
        result += f", BN calibrated on {cal.images} {cal.dataset} images"
    elif h.new_bn:
        result += f", {len(h.new_bn)} new BN uncalibrated"
    return h.name, str(where), str(h.seed) if "seed" in h.keys else "", result


def results_table(rows: list[dict[str, Any]]) -> Table:
    table = Table()
    longest = max((len(r["net"]) for r in rows), default=8)
    table.add_column("net arch", overflow="fold", min_width=min(longest, 24))
    table.add_column("phases", overflow="fold")  # names fold onto more lines, never cut
    for col in ("error", "abs.\nimprov.", "rel.\nimprov.", "FLOPs", "rel.\nFLOPs"):
        table.add_column(col, justify="right", no_wrap=True)
    for r in rows:
        table.add_row(
            r["net"], ", ".join(r["phases"]) or "-", f"{100 * r['error']:.2f}%",
            f"{100 * r['abs_improvement']:.2f}%" if "abs_improvement" in r else "-",
            f"{100 * r['rel_improvement']:.1f}%" if r.get("rel_improvement") is not None
            else "-",
            f"{r['flops'] / 1e6:.1f}M" if r["flops"] else "-",
            f"{r['rel_flops']:.2f}×" if r.get("rel_flops") else "-")
    return table
