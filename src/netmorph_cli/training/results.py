"""Runs as the paper reports them: error curves across phases, and Table 1–3 rows.

A run is a trained checkpoint. Its history holds every phase that led to it — training
phases with their per-epoch metrics, and the morphs in between — so the whole curve of a
multi-phase run (train ResNet-20, morph to 1c1, train again) comes from the final
checkpoint alone. A metrics JSONL file written by ``netmorph train`` is a run too (one
phase, no lineage).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..io.outputs import check_outputs, write_file
from ..network.flops import count_flops
from ..network.history import MorphRecord, TrainRecord, parse_history


@dataclass(frozen=True)
class Run:
    name: str  # as the paper names nets: resnet20, morph20_1c1
    path: str
    epochs: tuple[int, ...]  # cumulative epoch of each point
    test_error: tuple[float, ...]
    train_error: tuple[float, ...]
    morph_epochs: tuple[tuple[int, str], ...]  # (epoch, what) of morphs after training began
    phases: tuple[str, ...]  # intermediate architectures before the final one
    flops: int | None
    root_flops: int | None
    dataset: str | None = None  # of the last training phase (None: not recorded)

    @property
    def final_error(self) -> float:
        if not self.test_error:
            raise DataError(f"run {self.path} has no recorded epochs (train it first)")
        return self.test_error[-1]


def paper_name(arch: str) -> str:
    """``resnet20+1c1`` → ``morph20_1c1``; ``resnet20`` stays."""
    m = re.fullmatch(r"resnet(\d+)\+(.+)", arch)
    return f"morph{m[1]}_{m[2]}" if m else arch


def load_run(path: str | Path) -> Run:
    p = Path(path)
    if p.suffix == ".jsonl":
        return _from_metrics(p)
    from ..io.checkpoint import load

    net = load(p)
    epochs: list[int] = []
    test: list[float] = []
    train: list[float] = []
    morphs: list[tuple[int, str]] = []
    archs: list[str] = []
    dataset = None
    for h in parse_history(net.history):
        if isinstance(h, TrainRecord):
            dataset = h.dataset
            for m in h.metrics:
                epochs.append(len(epochs) + 1)
                test.append(m["test_error"])
                train.append(m["train_error"])
        elif isinstance(h, MorphRecord) and h.op in ("preset", "module"):
            what = h.preset or h.module or "module"
            if epochs:
                morphs.append((len(epochs), what))
            archs.append(what)
    root = net.meta.get("root") or {}
    name = paper_name(net.description.get("arch", p.stem))
    if (net.meta.get("created") or {}).get("like"):
        name += " (scratch)"  # a morphed architecture trained from a fresh init
    return Run(name, str(p), tuple(epochs),
               tuple(test), tuple(train), tuple(morphs), tuple(archs[:-1]),
               count_flops(net.description), root.get("flops"), dataset)


def _from_metrics(p: Path) -> Run:
    if not p.is_file():
        raise DataError(f"run {p} does not exist")
    epochs: list[int] = []
    test: list[float] = []
    train: list[float] = []
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read run {p}: {exc}") from None
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{p}:{i}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{p}:{i}: not an epoch record (a JSON object with 'epoch', "
                            f"'train_error' and 'test_error')")
        missing = [k for k in ("epoch", "train_error", "test_error") if k not in row]
        if missing:
            raise DataError(f"{p}:{i}: the epoch record has no {missing[0]!r}")
        epoch, te, tr = row["epoch"], row["test_error"], row["train_error"]
        if type(epoch) is not int or epoch < 1:
            raise DataError(f"{p}:{i}: epoch must be a positive integer, not {epoch!r}")
        if not all(type(v) in (int, float) and 0 <= v <= 1 for v in (te, tr)):
            raise DataError(f"{p}:{i}: train_error and test_error must be fractions in "
                            f"[0, 1], not {tr!r} and {te!r}")
        epochs.append(epoch)
        test.append(float(te))
        train.append(float(tr))
    name = p.name.removesuffix(".metrics.jsonl").removesuffix(".jsonl")
    return Run(name, str(p), tuple(epochs), tuple(test), tuple(train), (), (), None, None)


def table(runs: list[Run], baseline: Run | None = None) -> list[dict[str, Any]]:
    """Rows in the paper's columns. Improvements are over ``baseline`` (default: the first
    run); relative FLOPs are over the baseline's FLOPs, else the run's root architecture."""
    base = baseline or (runs[0] if runs else None)
    by_data: dict[str, list[str]] = {}
    for r in [*runs, *([base] if base is not None else [])]:
        if r.dataset:
            by_data.setdefault(r.dataset, []).append(Path(r.path).name)
    if len(by_data) > 1:  # errors on different test sets do not compare
        what = "; ".join(f"{d}: {', '.join(dict.fromkeys(names))}" for d, names in by_data.items())
        raise DataError(f"the runs were trained on different data sets ({what}); report "
                        f"them separately")
    rows = []
    for r in runs:
        err = r.final_error
        row: dict[str, Any] = {"net": r.name, "phases": list(r.phases), "error": err,
                               "flops": r.flops, "run": r.path, "epochs": len(r.epochs)}
        if base is not None and not _same_run(r, base):
            row["abs_improvement"] = base.final_error - err
            row["rel_improvement"] = (base.final_error - err) / base.final_error \
                if base.final_error else None
        ref = base.flops if base is not None and base.flops else r.root_flops
        row["rel_flops"] = r.flops / ref if r.flops and ref else None
        rows.append(row)
    return rows


def _same_run(a: Run, b: Run) -> bool:
    return Path(a.path).resolve() == Path(b.path).resolve()


def markdown(rows: list[dict[str, Any]]) -> str:
    """The table as Markdown, formatted like the paper's (error in %, FLOPs in millions)."""
    head = ("| Net Arch. | Intermediate Phases | Error | Abs. Perf. Improv. | "
            "Rel. Perf. Improv. | FLOP (million) | Rel. FLOP |")
    lines = [head, "|" + "---|" * 7]
    for r in rows:
        abs_i = f"{100 * r['abs_improvement']:.2f}%" if "abs_improvement" in r else "-"
        rel_i = (f"{100 * r['rel_improvement']:.1f}%" if r.get("rel_improvement") is not None
                 else "-")
        flops = f"{r['flops'] / 1e6:.1f}" if r["flops"] else "-"
        rel_f = f"{r['rel_flops']:.2f}x" if r.get("rel_flops") else "-"
        phases = ", ".join(r["phases"]) or "-"
        lines.append(f"| {r['net']} | {phases} | {100 * r['error']:.2f}% | {abs_i} | {rel_i} "
                     f"| {flops} | {rel_f} |")
    return "\n".join(lines)


def figure(runs: list[Run], *, train: bool = False, title: str | None = None) -> Any:
    """The Fig. 5 figure: test (and optionally train) error in % against epoch, one colour
    per run, a dotted line between the epochs around each morph. Needs matplotlib."""
    for r in runs:
        r.final_error  # noqa: B018 (refuses a run with no recorded epochs: nothing to draw)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise DataError("netmorph plot needs matplotlib: pip install 'netmorph[plot]' "
                        "(or pip install matplotlib)") from None
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    marks: dict[int, list[tuple[str, Any]]] = {}  # epoch → (what, colour) of each morph
    for r in runs:
        marker = "o" if len(r.epochs) <= 20 else None  # a 1-epoch run is a point, not a line
        (line,) = ax.plot(r.epochs, [100 * e for e in r.test_error], label=f"{r.name} (test)",
                          marker=marker, markersize=4)
        if train:
            ax.plot(r.epochs, [100 * e for e in r.train_error], linestyle="--", marker=marker,
                    markersize=3, color=line.get_color(), alpha=0.6, label=f"{r.name} (train)")
        for epoch, what in r.morph_epochs:
            marks.setdefault(epoch, []).append((what, line.get_color()))
    for epoch, here in marks.items():  # one line per epoch: runs morphed together share it
        whats = list(dict.fromkeys(w for w, _ in here))
        colour = here[0][1] if len(here) == 1 else "0.4"
        ax.axvline(epoch + 0.5, color=colour, linestyle=":", alpha=0.7)
        ax.annotate(f"morph {', '.join(whats)}", (epoch + 0.5, 1),
                    xycoords=("data", "axes fraction"), rotation=90, va="top", ha="right",
                    fontsize=7, color=colour)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("error (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def plot(runs: list[Run], out: str | Path, *, train: bool = False,
         title: str | None = None, force: bool = False,
         inputs: Iterable[str | Path] = ()) -> Path:
    """Write :func:`figure` to ``out`` in the format its suffix names (PNG without one),
    under the write policy (``outputs.py``): atomic, and an existing ``out`` only with
    ``force``, never one of ``inputs``."""
    out = Path(out)
    check_outputs([out], inputs=inputs, force=force)
    return write_figure(figure(runs, train=train, title=title), out, force=force,
                        inputs=inputs)


def write_figure(fig: Any, out: str | Path, *, force: bool = False,
                 inputs: Iterable[str | Path] = ()) -> Path:
    """Write a matplotlib figure to ``out`` in the format its suffix names (PNG without
    one), atomically under the write policy, and close it."""
    out = Path(out)
    import matplotlib.pyplot as plt

    try:
        write_file(out, lambda f: fig.savefig(f, format=out.suffix[1:].lower() or "png"),
                   force=force, inputs=inputs)
    except ValueError as exc:  # an image format matplotlib does not know
        raise DataError(f"cannot write {out}: {exc}") from None
    finally:
        plt.close(fig)
    return out
