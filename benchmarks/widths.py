"""Benchmark: every example module at real widths, square and not (issue 22, item 4).

Run with ``.venv/bin/python benchmarks/widths.py [--sizes 16,32,64,128,256,512]
[--modules A,B,C,D,inception,morph_1c1] [--commands 64,128] [--no-baseline] [--json OUT]``.

For each module spec of ``examples/modules`` and each layer C_in → C_out with
C = 16 … 512 and C_in/C_out ∈ {½, 1, 2} (C→C, C/2→C widening, C→C/2 narrowing), a random
3×3 filter G is morphed into the module with the widths the spec gives at that layer
(``widths.resolve``: D.json's ``"3x"`` of C_out, open widths from the feasibility bound,
fixed ones as they are) and timed:

- in process: ``solve.morph_filter`` (what ``morph --at`` runs: width choice, Algorithm 1's
  splits, Algorithm 2 on an irreducible rest), float64, its relative residual recomputed
  by composing the solved filters (``solve.relative_residual``: the module function);
- as a command (at the ``--commands`` sizes): ``netmorph morph NET --module SPEC --at conv``
  on a network of that one layer (input C_in×16×16 → conv → GAP → fc), wall time of the
  whole process (start-up, import, solve, the float32 check and the write);
- the baseline: Algorithm 2 on the whole module with each block's full dense Jacobian
  (``algorithm2(..., dense_jacobian=True)``, the same widths and seed), only where its
  largest block matrix fits under --dense-limit-gb; the ratio baseline / ours is the figure
  to compare across machines.

A morph that is refused (too narrow at fixed widths, over the memory limit, over
--max-seconds) is a row too, with its reason and time. Targets (2-core CPU, in process):
≤ 128 channels under 10 s, 256 under 30 s, 512 under 120 s.

On CUDA (``--device cuda``, from ``benchmarks/gpu_check.sh``) the in-process solves run on the
GPU; GPU target: every row at 256 and 512 channels under 30 s on one H100/H200.

``--cases`` runs the issue's own table instead, as commands: C.json and D.json at square
and widening convs of ResNet-20, ResNet-18 (``netmorph init``) and an imported VGG-11-BN at
the paper's widths (``examples/cnn.py --width 64``: features.4 is 64→128 at 16×16).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/solver.py

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from machine import machine_line  # noqa: E402  (benchmarks/machine.py)

from netmorph_cli.errors import NetmorphError  # noqa: E402
from netmorph_cli.io import checkpoint  # noqa: E402
from netmorph_cli.network.description import FORMAT, Network, node  # noqa: E402
from netmorph_cli.network.zoo import init_tensors  # noqa: E402
from netmorph_cli.solver.algebra import pad_to  # noqa: E402
from netmorph_cli.solver.budget import Budget, OutOfTime, running  # noqa: E402
from netmorph_cli.solver.feasibility import solve_blocks  # noqa: E402
from netmorph_cli.solver.rng import SeededRng  # noqa: E402
from netmorph_cli.solver.solve import morph_filter, relative_residual  # noqa: E402
from netmorph_cli.solver.sweeps import algorithm2  # noqa: E402
from netmorph_cli.solver.widths import resolve  # noqa: E402
from netmorph_cli.spec.graph import ModuleGraph  # noqa: E402
from netmorph_cli.spec.parse import load_spec  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODULES = ROOT / "examples" / "modules"
NETMORPH = Path(sys.executable).with_name("netmorph")
TARGET = {128: 10.0, 256: 30.0, 512: 120.0}  # seconds, in process, at ≤ this many channels


def target_for(c_in: int, c_out: int) -> float:
    c = max(c_in, c_out)
    return next(t for limit, t in sorted(TARGET.items()) if c <= limit)


def layers(sizes: list[int]) -> list[tuple[int, int]]:
    """(C_in, C_out): square, widening (C/2 → C) and narrowing (C → C/2) at every C."""
    out = []
    for c in sizes:
        out += [(c, c), (c // 2, c), (c, c // 2)] if c >= 16 else [(c, c)]
    return out


def dense_bytes(graph: ModuleGraph, widths: dict[str, int]) -> int:
    k = graph.effective_kernel()
    g_size = widths[graph.sink] * widths[graph.source] * k[0] * k[1]
    block = max(sum(widths[e.dst] * widths[e.src] * e.kernel[0] * e.kernel[1]
                    for e in b.edges) for b in solve_blocks(graph))
    return g_size * block * 8


def in_process(graph: ModuleGraph, g: torch.Tensor, max_seconds: float) -> dict[str, Any]:
    """``morph_filter`` on ``g``'s device (CUDA: synchronized before the clock stops)."""
    t0 = time.perf_counter()
    try:
        res = morph_filter(g, graph, seed=0, max_seconds=max_seconds)
        if g.device.type == "cuda":
            torch.cuda.synchronize(g.device)
    except NetmorphError as exc:
        return {"seconds": round(time.perf_counter() - t0, 2), "refused": type(exc).__name__,
                "why": str(exc)[:200]}
    seconds = time.perf_counter() - t0
    assert res.widths is not None
    return {"seconds": round(seconds, 4), "residual": relative_residual(graph, res.filters, g),
            "widths": res.widths.text(), "sweeps": res.sweeps,
            "methods": sorted(set(res.methods.values()))}


def baseline(graph: ModuleGraph, g: torch.Tensor, limit_gb: float, max_seconds: float
             ) -> dict[str, Any]:
    """Algorithm 2 on the whole module, every block by its full dense Jacobian, stopped
    after ``max_seconds`` (then the row says "> max_seconds")."""
    fixed, choice = resolve(graph, g.shape[1], g.shape[0], whole=True)
    widths = {**choice.inner, fixed.source: g.shape[1], fixed.sink: g.shape[0]}
    need = dense_bytes(fixed, widths)
    if need > limit_gb * 2**30:
        return {"skipped": f"dense block matrix {need / 2**30:.1f} GiB > {limit_gb:g} GiB"}
    target = pad_to(g, fixed.effective_kernel())
    t0 = time.perf_counter()
    try:
        with running(Budget(max_seconds, None)):
            filters, _ = algorithm2(fixed, target, widths, SeededRng(0, g.dtype, g.device),
                                    tol=1e-10, max_sweeps=60, dense_jacobian=True)
    except OutOfTime:
        return {"over": max_seconds}
    except NetmorphError as exc:
        return {"seconds": round(time.perf_counter() - t0, 2), "failed": str(exc)[:120]}
    return {"seconds": round(time.perf_counter() - t0, 2),
            "residual": relative_residual(fixed, filters, g)}


def one_layer_net(c_in: int, c_out: int, path: Path) -> None:
    desc = {"format": FORMAT, "arch": f"layer{c_in}to{c_out}", "input": [c_in, 16, 16],
            "num_classes": 10, "output": "fc", "nodes": [
                node("conv", "conv", ["input"], **{"in": c_in, "out": c_out}, kernel=[3, 3],
                     padding=[1, 1]),
                node("gap", "gap", ["conv"]),
                node("fc", "linear", ["gap"], **{"in": c_out, "out": 10})]}
    gen = torch.Generator().manual_seed(0)
    tensors = {k: torch.randn(v.shape, generator=gen) / math.sqrt(max(v[0].numel(), 1))
               if v.is_floating_point() else v for k, v in init_tensors(desc).items()}
    checkpoint.save(Network(desc, tensors).check(), path)


def as_command(spec: Path, c_in: int, c_out: int, folder: Path, max_seconds: float
               ) -> dict[str, Any]:
    net = folder / f"net{c_in}_{c_out}.safetensors"
    if not net.exists():
        one_layer_net(c_in, c_out, net)
    out = folder / "child.safetensors"
    t0 = time.perf_counter()
    proc = subprocess.run([str(NETMORPH), "morph", str(net), "--module", str(spec), "--at",
                           "conv", "-o", str(out), "--force", "--max-seconds",
                           f"{max_seconds:g}"], capture_output=True, text=True,
                          env={**os.environ, "NETMORPH_PROGRESS": "off"})
    seconds = round(time.perf_counter() - t0, 2)
    if proc.returncode != 0:
        return {"seconds": seconds, "exit": proc.returncode,
                "why": proc.stderr.strip().splitlines()[-1][:160] if proc.stderr else ""}
    return {"seconds": seconds, "exit": 0}


CASES = [("resnet20", "layer1.0.conv1", "C"), ("resnet20", "layer3.0.conv2", "C"),
         ("resnet18", "layer1.0.conv1", "C"), ("resnet18", "layer2.0.conv2", "C"),
         ("vgg11", "features.4", "C"), ("vgg11", "features.4", "D"),
         ("resnet20", "layer3.0.conv2", "D"), ("resnet18", "layer1.0.conv1", "D")]


def cases(folder: Path, max_seconds: float) -> None:
    """The issue's table: ``netmorph morph NET --module SPEC --at LAYER`` as commands."""
    nets = {}
    for arch in ("resnet20", "resnet18"):
        nets[arch] = folder / f"{arch}.safetensors"
        subprocess.run([str(NETMORPH), "init", arch, "-o", str(nets[arch])], check=True,
                       capture_output=True)
    nets["vgg11"] = folder / "vgg11.safetensors"
    subprocess.run([sys.executable, str(ROOT / "examples" / "cnn.py"), str(folder / "v.pt2"),
                    "--width", "64"], check=True, capture_output=True)
    subprocess.run([str(NETMORPH), "import", str(folder / "v.pt2"), "-o", str(nets["vgg11"])],
                   check=True, capture_output=True)
    print("| network | layer | module | result | widths | as a command |\n"
          "|---|---|---|---|---|---|")
    for arch, layer, module in CASES:
        t0 = time.perf_counter()
        proc = subprocess.run([str(NETMORPH), "morph", str(nets[arch]), "--module",
                               str(MODULES / f"{module}.json"), "--at", layer, "-o",
                               str(folder / "child.safetensors"), "--force", "--max-seconds",
                               f"{max_seconds:g}"], capture_output=True, text=True,
                              env={**os.environ, "NETMORPH_PROGRESS": "off"})
        seconds = time.perf_counter() - t0
        lines = proc.stdout.splitlines()
        if proc.returncode == 0:
            residual = lines[0].split("solver residual ")[1].split(",")[0]
            widths = next((ln.split(" (")[0][len("widths: "):] for ln in lines
                           if ln.startswith("widths: ")), "–")
            result = f"ok, residual {residual}"
        else:
            widths, result = "–", f"exit {proc.returncode}: {proc.stderr.strip()[:120]}"
        print(f"| {arch} | {layer} | {module}.json | {result} | {widths} | {seconds:.1f} s |",
              flush=True)


def fmt(row: dict[str, Any]) -> str:
    ours, base, cmd = row["in_process"], row.get("baseline"), row.get("command")
    if "refused" in ours:
        what = f"refused ({ours['refused']}) in {ours['seconds']} s"
        res = ours["why"].split(":")[0][:60]
    else:
        what = f"{ours['seconds']:.3g} s"
        res = f"{ours['residual']:.1e}"
    target = row["target"]
    met = "–" if "refused" in ours else ("yes" if ours["seconds"] <= target else "**no**")
    cmd_text = "–" if cmd is None else (f"{cmd['seconds']:.1f} s" if cmd["exit"] == 0
                                        else f"exit {cmd['exit']} ({cmd['seconds']:.1f} s)")
    if base is None:
        base_text = "–"
    elif "skipped" in base:
        base_text = base["skipped"]
    elif "failed" in base:
        base_text = f"failed in {base['seconds']} s"
    elif "over" in base:
        ratio = base["over"] / max(ours["seconds"], 1e-3)
        base_text = f"> {base['over']:g} s (> {ratio:,.0f}×)"
    else:
        ratio = base["seconds"] / max(ours["seconds"], 1e-3)
        base_text = f"{base['seconds']:.2f} s ({ratio:,.0f}×)"
    return (f"| {row['module']} | {row['c_in']}→{row['c_out']} | {ours.get('widths', '–')} | "
            f"{what} | {cmd_text} | {res} | {base_text} | {target:g} s | {met} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="16,32,64,128,256,512")
    ap.add_argument("--modules", default="A,B,C,D,inception,morph_1c1")
    ap.add_argument("--commands", default="16,128,512",
                    help="sizes C at which each layer is also morphed as a command")
    ap.add_argument("--max-seconds", type=float, default=300.0,
                    help="per morph (a refusal row beyond it)")
    ap.add_argument("--dense-limit-gb", type=float, default=4.0)
    ap.add_argument("--baseline-seconds", type=float, default=30.0,
                    help="stop the dense baseline after this long")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--json", default=None, help="also write every row here")
    ap.add_argument("--cases", action="store_true", help="the issue's table, as commands")
    ap.add_argument("--device", default="cpu",
                    help="where the in-process solves run (cuda: pair with --no-baseline "
                         "--commands '')")
    args = ap.parse_args()
    print(machine_line(), flush=True)
    if args.cases:
        with tempfile.TemporaryDirectory() as tmp:
            cases(Path(tmp), args.max_seconds)
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    commands = {int(s) for s in args.commands.split(",") if s}
    print("| module | layer | widths | in process | as a command | residual | dense baseline "
          "(× ours) | target | met |\n|---|---|---|---|---|---|---|---|---|", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.modules.split(","):
            spec_path = MODULES / f"{name}.json"
            graph = load_spec(spec_path)
            for c_in, c_out in layers(sizes):
                gen = torch.Generator().manual_seed(c_in + c_out)
                g = torch.randn(c_out, c_in, 3, 3, generator=gen,
                                dtype=torch.float64).to(args.device)
                row: dict[str, Any] = {"module": name, "c_in": c_in, "c_out": c_out,
                                       "target": target_for(c_in, c_out),
                                       "in_process": in_process(graph, g, args.max_seconds)}
                if not args.no_baseline and "refused" not in row["in_process"]:
                    row["baseline"] = baseline(graph, g, args.dense_limit_gb,
                                               args.baseline_seconds)
                if max(c_in, c_out) in commands:
                    row["command"] = as_command(spec_path, c_in, c_out, Path(tmp),
                                                args.max_seconds)
                rows.append(row)
                print(fmt(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine_line(), "rows": rows},
                                              indent=1) + "\n")


if __name__ == "__main__":
    main()
