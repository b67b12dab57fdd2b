"""Benchmark: import, morph and export full-size CIFAR CNNs through ``torch.export``.

Run with ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/import_export.py [--models a,b]
[--repeat 3] [--budget 10]``.

For each model of ``tests/zoo_models.py`` at full size (3×32×32 inputs, 10 classes, float32):

1. baseline: ``torch.export.export(model, (x,))`` + ``torch.export.save`` (what a user pays
   to hand netmorph a program), timed in the same run;
2. ``importers.import_program(file)`` and its error against the model's own logits
   (``net.module()(x)`` vs ``model(x)`` on 8 fresh images, ‖Δ‖∞ / ‖ref‖∞);
3. ``morph_network(net, D, at=SITES[name]["at"])`` (its 4-image check included), D being
   ``examples/modules/D.json`` with inner blobs of ⌈2.5·C_in⌉ channels (its own 40 are too
   narrow for four of the five layers); the solver residual (``child.history[-1]["residual"]``) and
   ``verify(parent, child)`` in float32 on 16 images;
4. ``morph_network(child, morph_1c1, after=SITES[name]["after"])``;
5. ``export_network(child, file)`` (export + write + its own 8-image check), then
   ``import_program`` of that file, and whether the re-imported nodes equal the child's.

Import and export times are the median of ``--repeat`` runs when the first run times
``--repeat`` fits in ``--budget`` seconds, else one run (marked ¹). The headline is
import / torch.export: netmorph's import costs a fraction of the export the user already ran.
torch.export is warmed up on a tiny model first (its first call pays ~1.5 s of setup).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from machine import machine_line  # noqa: E402  (benchmarks/machine.py)

import zoo_models  # noqa: E402
from netmorph_cli.io import importers  # noqa: E402
from netmorph_cli.io.export import export_network  # noqa: E402
from netmorph_cli.morph.morphs import morph_network  # noqa: E402
from netmorph_cli.morph.verify import verify  # noqa: E402
from netmorph_cli.network import flops  # noqa: E402
from netmorph_cli.spec.parse import load_spec, spec_from_dict  # noqa: E402

# name, label, factory kwargs (full size)
MODELS: list[tuple[str, str, dict[str, Any]]] = [
    ("vgg11_bn", "VGG-11-BN (w 64)", {"width": 64}),
    ("mobilenetv2", "MobileNetV2 (w 32)", {"width": 32}),
    ("densenet", "DenseNet-BC-100 (k 12, 16/16/16)", {"growth": 12, "blocks": (16, 16, 16)}),
    ("se_resnet", "SE-ResNet-18 (w 64, 2/2/2/2)", {"width": 64, "blocks": (2, 2, 2, 2)}),
    ("resnext", "ResNeXt-29 (w 64, 8 groups, 3/3/3)",
     {"width": 64, "cardinality": 8, "blocks": (3, 3, 3)}),
]


def timed(fn: Callable[[], Any], repeat: int, budget: float) -> tuple[float, Any, int]:
    """(median seconds, last result, runs): ``repeat`` runs if the first × repeat fits in
    ``budget`` seconds, else the first alone."""
    times, out = [], None
    for i in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
        if i == 0 and times[0] * repeat > budget:
            break
    return statistics.median(times), out, len(times)


def wide_d(c_in: int) -> Any:
    """examples/modules/D.json with inner blobs a, b, c of ⌈2.5·C_in⌉ channels (as in
    benchmarks/solver.py): the solver refuses its own 40 as too narrow for most sites."""
    spec = json.loads((ROOT / "examples/modules/D.json").read_text())
    spec["channels"] = dict.fromkeys(spec["channels"], math.ceil(2.5 * c_in))
    return spec_from_dict(spec)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def torch_export(model: torch.nn.Module, x: torch.Tensor, path: Path) -> None:
    ep = torch.export.export(model, (x,))
    torch.export.save(ep, str(path))


def warm_up(tmp: Path) -> None:
    """First torch.export / import calls pay one-off setup; pay it outside the timings."""
    model = zoo_models.build("vgg11_bn", width=4)
    torch_export(model, zoo_models.example_input(2), tmp / "warm.pt2")
    importers.import_program(tmp / "warm.pt2")


def bench(name: str, kwargs: dict[str, Any], tmp: Path, args: argparse.Namespace
          ) -> dict[str, Any]:
    r: dict[str, Any] = {}
    model = zoo_models.build(name, **kwargs)
    x = zoo_models.example_input(2)
    src, out = tmp / f"{name}.pt2", tmp / f"{name}_child.pt2"
    r["t_export"], _, r["n_export"] = timed(lambda: torch_export(model, x, src),
                                            args.repeat, args.budget)
    r["t_import"], (net, r["import_check"]), r["n_import"] = timed(
        lambda: importers.import_program(src), args.repeat, args.budget)
    r["params"] = flops.count_params(net.description)
    r["torch_params"] = sum(p.numel() for p in model.parameters())
    r["macs"] = flops.count_flops(net.description)
    xc = zoo_models.example_input(8, seed=1)
    with torch.no_grad():
        r["import_err"] = rel(net.module()(xc), model(xc))
    site = zoo_models.SITES[name]
    conv = dict(model.named_modules())[site["at"]]
    r["c_in"], r["c_out"] = conv.in_channels, conv.out_channels
    r["inner"] = math.ceil(2.5 * r["c_in"])
    t = time.perf_counter()
    child, _ = morph_network(net, wide_d(r["c_in"]), at=site["at"])
    r["t_morph_d"] = time.perf_counter() - t
    r["residual"] = child.history[-1].get("residual")
    r["verify_d"] = verify(net, child, dtype=torch.float32, samples=16).max_rel_err
    t = time.perf_counter()
    child, _ = morph_network(child, load_spec(ROOT / "examples/modules/morph_1c1.json"),
                             after=site["after"])
    r["t_morph_1c1"] = time.perf_counter() - t
    r["verify_2"] = verify(net, child, dtype=torch.float32, samples=16).max_rel_err
    r["child_params"] = flops.count_params(child.description)
    r["t_nm_export"], rep, r["n_nm_export"] = timed(
        lambda: export_network(child, out, force=True), args.repeat, args.budget)
    r["export_err"] = rep.max_rel_err
    r["t_import_back"], (back, r["back_check"]), r["n_import_back"] = timed(
        lambda: importers.import_program(out), args.repeat, args.budget)
    r["same_nodes"] = back.description["nodes"] == child.description["nodes"]
    r["ratio"] = r["t_import"] / r["t_export"]
    return r


def fmt_t(t: float, n: int) -> str:
    return f"{t:.2f} s" + ("" if n > 1 else " ¹")


def table(rows: list[tuple[str, dict[str, Any]]]) -> str:
    head = ["model", "params", "MACs", "torch.export + save", "import_program",
            "**import / export**", "import err", "morph D `--at` (layer, inner w, residual)",
            "verify D", "morph 1c1 `--after`", "verify both", "export_network (err)", "import back",
            "nodes equal"]
    lines = ["| " + " | ".join(head) + " |",
             "| --- | " + " | ".join(["---:"] * (len(head) - 2)) + " | :---: |"]
    for label, r in rows:
        res = r["residual"]
        cells = [label, f"{r['params'] / 1e6:.2f}M", flops.format_flops(r["macs"]),
                 fmt_t(r["t_export"], r["n_export"]), fmt_t(r["t_import"], r["n_import"]),
                 f"**{r['ratio']:.2f}×**", f"{r['import_err']:.1e}",
                 f"{r['t_morph_d']:.2f} s ({r['c_in']}→{r['c_out']}, w {r['inner']}, "
                 + (f"{res:.1e})" if res is not None else "–)"), f"{r['verify_d']:.1e}",
                 f"{r['t_morph_1c1']:.2f} s", f"{r['verify_2']:.1e}",
                 f"{fmt_t(r['t_nm_export'], r['n_nm_export'])} ({r['export_err']:.1e})",
                 fmt_t(r["t_import_back"], r["n_import_back"]),
                 "yes" if r["same_nodes"] else "**no**"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(m[0] for m in MODELS))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--budget", type=float, default=10.0,
                    help="seconds: repeat a timing only if first run × repeat fits")
    args = ap.parse_args()
    print(machine_line(), flush=True)
    wanted = args.models.split(",")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')}, "
          f"load {os.getloadavg()[0]:.2f}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        warm_up(tmp)
        for name, label, kwargs in MODELS:
            if name not in wanted:
                continue
            t = time.perf_counter()
            r = bench(name, kwargs, tmp, args)
            print(f"{label}: {time.perf_counter() - t:.1f} s in all, torch params "
                  f"{r['torch_params']:,} / netmorph {r['params']:,}, child "
                  f"{r['child_params']:,}; import checks {r['import_check']:.1e} / "
                  f"{r['back_check']:.1e}; load {os.getloadavg()[0]:.2f}", flush=True)
            rows.append((label, r))
    print()
    print(table(rows))
    print("\n¹ one run (the first run × repeat exceeded the budget); else the median of "
          f"{args.repeat}.")


if __name__ == "__main__":
    main()
