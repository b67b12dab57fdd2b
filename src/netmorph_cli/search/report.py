"""What a search found (issue 21), read from its run directory alone: the lineage tree (each
step's candidates under the best they came from, the selected one marked), a table of every
candidate, and the curve of the best validation error against cumulative training compute
(FLOPs per image × 3 for forward and backward × images seen), from the start network's error
at zero compute. The final best's test error is the one measured once, at the end."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..io.outputs import check_outputs
from ..network.flops import format_flops
from ..training.results import write_figure
from .climb import candidates, draws
from .rundir import RunDir


def load_report(run_dir: str | Path) -> dict[str, Any]:
    """Everything the report shows, as one JSON-able dict."""
    rd = RunDir(Path(run_dir))
    cfg, record = rd.config()
    cands = candidates(rd)
    steps: list[dict[str, Any]] = []
    for step in range(1, cfg.steps + 1):
        if not rd.step(step).is_dir():
            break
        drawn = draws(rd, step)
        sel = rd.read(rd.selection(step)) if rd.selection(step).is_file() else None
        steps.append({"step": step, "draws": drawn, "selection": sel,
                      "candidates": [c for c in cands if c["step"] == step]})
    curve = [(0, record["start_val_error"])]
    compute = 0
    for s in steps:
        compute += sum(c["compute"] for c in s["candidates"])
        if s["selection"]:
            curve.append((compute, s["selection"]["val_error"]))
    result = rd.read(rd.result_file) if rd.result_file.is_file() else None
    return {"run_dir": str(rd.root), "config": record["config"], "parent": record["parent"],
            "validation": record["validation"], "data": record["data"],
            "start": {"val_error": record["start_val_error"], "flops": record["start_flops"],
                      "params": record["start_params"]},
            "steps": steps, "curve": curve, "result": result}


def _parent(ref: dict[str, Any]) -> str:
    if ref.get("file") is None:
        return f"a {ref.get('arch') or 'network'} given in memory"
    return f"{ref['file']} (sha256 {ref['sha256'][:12]}…)"


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.2f}%"


def lineage_tree(rep: dict[str, Any]) -> list[str]:
    """The lineage as text lines: each step's candidates, its best marked ◀."""
    start = rep["start"]
    lines = [f"{rep['parent'].get('arch') or 'parent'} (start: {format_flops(start['flops'])}"
             f" FLOPs, validation error {_pct(start['val_error'])})"]
    for s in rep["steps"]:
        sel = s["selection"]
        lines.append(f"step {s['step']}" + ("" if sel else " (in progress)"))
        rows = [(c["move"], c["val_error"], c["flops"], sel is not None and
                 c["index"] == sel["best"]) for c in s["candidates"]]
        rows += [(d["move"] or "no move left", None, None, False) for d in s["draws"]
                 if d["status"] != "ok"]
        for k, (move, err, flops, best) in enumerate(rows):
            branch = "└─" if k == len(rows) - 1 else "├─"
            what = move if move != "parent" else "parent (the current best, trained on)"
            size = f", {format_flops(flops)} FLOPs" if flops else ""
            dropped = next((f" — {d['status']}: {d.get('reason', '')}".rstrip(": ")
                            for d in s["draws"] if d["status"] != "ok" and d["move"] == move),
                           "")
            lines.append(f"  {branch} {what}: {_pct(err)}{size}{dropped}"
                         + ("  ◀ best" if best else ""))
    res = rep["result"]
    if res:
        lines.append(f"final best: {res['best']} ({' → '.join(res['lineage']) or 'start'}), "
                     f"validation {_pct(res['val_error'])}, test {_pct(res['test_error'])} "
                     f"({res['test_images']} test images, measured once)")
    return lines


def rows(rep: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per trained candidate."""
    out = []
    for s in rep["steps"]:
        for c in s["candidates"]:
            out.append({"step": s["step"], "index": c["index"], "move": c["move"],
                        "recipe": c["recipe"], "flops": c["flops"], "params": c["params"],
                        "val_error": c["val_error"], "seconds": c["seconds"],
                        "best": bool(s["selection"] and s["selection"]["best"] == c["index"])})
    return out


def markdown(rep: dict[str, Any], plot_name: str | None = None) -> str:
    cfg = rep["config"]
    head = (f"# Search: {rep['run_dir']}\n\n"
            f"From {_parent(rep['parent'])} on "
            f"{rep['data']['name']}: {cfg['steps']} steps × {cfg['children']} children, "
            f"{cfg['epochs']} epoch(s) each (children `--recipe {cfg['recipe']}`, the current "
            f"best `--recipe {cfg['parent_recipe']}`), seed {cfg['seed']}; selection on a "
            f"validation split of {rep['validation']['size']} training images (seed "
            f"{rep['validation']['seed']}, sha256 {rep['validation']['sha256'][:12]}…).\n")
    table = ["| step | candidate | move | FLOPs | params | validation error | seconds | |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows(rep):
        table.append(f"| {r['step']} | {r['index']} | {r['move']} | {format_flops(r['flops'])}"
                     f" | {r['params']:,} | {_pct(r['val_error'])} | {r['seconds']:.0f} | "
                     f"{'best' if r['best'] else ''} |")
    parts = [head, "## Lineage\n", "```", *lineage_tree(rep), "```\n", "## Candidates\n",
             *table, ""]
    if plot_name:
        parts.append(f"![best validation error against training compute]({plot_name})\n")
    return "\n".join(parts)


def figure(rep: dict[str, Any]) -> Any:
    """Best validation error (%) against cumulative training compute, every candidate as a
    point at the compute spent when it finished. Needs matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise DataError("the search plot needs matplotlib: pip install 'netmorph[plot]'") \
            from None
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    xs, ys = zip(*rep["curve"], strict=True)
    ax.step([x / 1e12 for x in xs], [100 * y for y in ys], where="post", marker="o",
            label="best (validation)")
    spent = 0
    for s in rep["steps"]:
        for c in s["candidates"]:
            spent += c["compute"]
            ax.scatter(spent / 1e12, 100 * c["val_error"], s=12, color="0.5", zorder=3)
    res = rep["result"]
    if res:
        ax.scatter(res["compute"] / 1e12, 100 * res["test_error"], marker="*", s=90,
                   color="C3", zorder=4, label="final best (test, measured once)")
    ax.set_xlabel("cumulative training compute (TFLOPs: 3 × FLOPs per image × images)")
    ax.set_ylabel("error (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot(rep: dict[str, Any], out: str | Path, *, force: bool = False,
         inputs: Iterable[str | Path] = ()) -> Path:
    """Write :func:`figure` to ``out`` (atomic; an existing file only with ``force``)."""
    check_outputs([out], inputs=inputs, force=force)
    return write_figure(figure(rep), out, force=force, inputs=inputs)
