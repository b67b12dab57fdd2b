"""Benchmark: Algorithm 2 on module (D) against a dense-Jacobian least-squares baseline.

Run with ``make bench`` or ``.venv/bin/python benchmarks/solver.py [--device cuda]
[--sizes 16,32,64] [--dtypes float32,float64]``.

Module (D) of the paper (examples/modules/D.json) with inner blobs a, b, c of width
⌈2.5·C⌉, morphing a random C→C 3×3 filter G. ``morph_filter`` (block Algorithm 2: sink and
source cuts as channel-decoupled dense solves, inner edges matrix-free) is timed to a
relative residual ≤ 1e-6 in float32 / ≤ 1e-10 in float64, side by side with the baseline
``algorithm2(..., dense_jacobian=True)``: the same blocks, graph, target and seed, but each
block solved with its full dense Jacobian (|G̃| × |block| entries, one least-squares
solve). The baseline runs only where that matrix fits: it is skipped with its size when
|G̃|·|block|·8 bytes exceeds --dense-limit-gb. Wall times come from one process on one
machine, so the ratio (baseline / ours) is the figure to compare across machines.

Targets (issue 3): ≥ 10× faster than dense at C = 16; C = 64 under 60 s on the 2-core CPU
machine; C = 128 under 10 s on one H100 (run with --device cuda).
"""

from __future__ import annotations

import os

# Before torch loads OpenMP: with the default (active) wait policy, MKL's threads spin
# while they wait, and on a shared 2-core machine any other busy process turns that into
# 3-200× slowdowns of LAPACK calls (svdvals of a 160×1440 matrix: 3.1 s instead of
# 0.02 s). Passive waiting costs little in these LAPACK-bound solves on an idle machine
# (it costs 15-45% in the many small ops of morph/verify: see README.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from machine import machine_line  # noqa: E402  (benchmarks/machine.py)

from netmorph_cli.solver import lsq  # noqa: E402
from netmorph_cli.solver.algebra import resize  # noqa: E402
from netmorph_cli.solver.feasibility import solve_blocks  # noqa: E402
from netmorph_cli.solver.rng import SeededRng  # noqa: E402
from netmorph_cli.solver.solve import module_widths, morph_filter, relative_residual  # noqa: E402
from netmorph_cli.solver.sweeps import algorithm2  # noqa: E402
from netmorph_cli.spec.graph import ModuleGraph  # noqa: E402
from netmorph_cli.spec.parse import load_spec  # noqa: E402

D_SPEC = Path(__file__).resolve().parents[1] / "examples" / "modules" / "D.json"
TOL = {"float32": 1e-6, "float64": 1e-10}
DTYPES = {"float32": torch.float32, "float64": torch.float64}
WIDEN = 2.5  # inner widths ⌈2.5·C⌉


def module_d(c: int) -> ModuleGraph:
    w = math.ceil(WIDEN * c)
    return dataclasses.replace(load_spec(D_SPEC), channels={"a": w, "b": w, "c": w})


def dense_bytes(graph: ModuleGraph, c: int) -> int:
    """Bytes of the largest dense block Jacobian, |G̃| · |block| · 8 (float64)."""
    widths = module_widths(graph, c, c)
    k = graph.effective_kernel()
    g_size = c * c * k[0] * k[1]
    block = max(sum(widths[e.dst] * widths[e.src] * e.kernel[0] * e.kernel[1]
                    for e in b.edges) for b in solve_blocks(graph))
    return g_size * block * 8


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0, out


def off_centre_share(f: torch.Tensor) -> float:
    """‖f without its centre tap‖ / ‖f‖: 0 for a 1×1 filter padded to K×K."""
    off = f.clone()
    off[..., f.shape[-2] // 2, f.shape[-1] // 2] = 0
    return float(torch.linalg.vector_norm(off) / torch.linalg.vector_norm(f))


def run_ours(graph: ModuleGraph, g: torch.Tensor, seed: int, tol: float, device,
             repeat: int) -> tuple[float, float, int, float]:
    """Best wall time of ``repeat`` solves, the residual (recomputed), the sweeps and the
    smallest off-centre share over the solved filters (a degenerate solve shows 0)."""
    best, res = math.inf, None
    for _ in range(repeat):
        t, res = timed(lambda: morph_filter(g, graph, seed=seed, tol=tol), device)
        best = min(best, t)
    share = min(off_centre_share(f) for f in res.filters.values())
    return best, relative_residual(graph, res.filters, g), res.sweeps, share


def run_dense(graph: ModuleGraph, g: torch.Tensor, seed: int, tol: float, device
              ) -> tuple[float, float, int, float]:
    """One baseline run: wall time, residual, sweeps, and the part of the wall time spent
    materializing the Jacobians (the rest is the dense least-squares solves)."""
    widths = module_widths(graph, g.shape[1], g.shape[0])
    target = resize(g, graph.effective_kernel())
    rng = SeededRng(seed, g.dtype, g.device)  # the seed morph_filter gives Algorithm 2
    build = [0.0]
    plain = lsq.dense_matrix

    def counted(*a, **k):
        t, m = timed(lambda: plain(*a, **k), device)
        build[0] += t
        return m

    lsq.dense_matrix = counted  # what dense_lstsq calls; our cuts use their own import
    try:
        t, (filters, history) = timed(
            lambda: algorithm2(graph, target, widths, rng, tol=tol, max_sweeps=60,
                               dense_jacobian=True), device)
    finally:
        lsq.dense_matrix = plain
    return t, relative_residual(graph, filters, g), len(history), build[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    ap.add_argument("--sizes", default=None,
                    help="comma-separated C values (default 16,32,64; plus 128 on cuda)")
    ap.add_argument("--dtypes", default="float32,float64")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3,
                    help="best of N for our solver at C ≤ 32 (one run above)")
    ap.add_argument("--dense-limit-gb", type=float, default=6.0,
                    help="skip the baseline when its largest block matrix exceeds this")
    ap.add_argument("--no-baseline", action="store_true")
    args = ap.parse_args()
    print(machine_line(), flush=True)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("Error: --device cuda requested but no CUDA device is available")
    sizes = ([int(s) for s in args.sizes.split(",")] if args.sizes else
             [16, 32, 64] + ([128] if device.type == "cuda" else []))
    dtypes = args.dtypes.split(",")

    where = (torch.cuda.get_device_name(device) if device.type == "cuda" else
             f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    print(f"# module D, inner widths ⌈{WIDEN}·C⌉, 3×3 G; device {device} ({where}); "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}; "
          f"load average {os.getloadavg()[0]:.1f}")
    # warm-up: first-call costs (vmap tracing, kernels, allocator) stay out of the table
    morph_filter(SeededRng(1, torch.float64, "cpu").filter(4, 4, (3, 3)).to(device), module_d(4))

    rows = []
    for c in sizes:
        graph = module_d(c)
        for name in dtypes:
            dtype, tol = DTYPES[name], TOL[name]
            g = SeededRng(args.seed + 1_000_003, dtype, "cpu").filter(c, c, (3, 3)).to(device)
            repeat = args.repeat if c <= 32 else 1
            t_ours, r_ours, sw, share = run_ours(graph, g, args.seed, tol, device, repeat)
            ours = f"{t_ours:.3f} s ({r_ours:.1e}, {sw} sw)"
            gb = dense_bytes(graph, c) / 1e9
            if args.no_baseline:
                dense, ratio = "not run", "—"
            elif gb > args.dense_limit_gb:
                dense, ratio = f"skipped ({gb:.0f} GB)", "—"
            else:
                t_dense, r_dense, sw_d, t_build = run_dense(graph, g, args.seed, tol, device)
                dense = (f"{t_dense:.1f} s ({r_dense:.1e}, {sw_d} sw; Jacobian {t_build:.0f} s, "
                         f"{gb:.1f} GB; 1 run)")
                ratio = f"{t_dense / t_ours:.0f}×"
            ok = "yes" if r_ours <= tol else "NO"
            rows.append((str(c), str(math.ceil(WIDEN * c)), name, ours, ok, f"{share:.2f}",
                         dense, ratio))
            print(" | ".join(rows[-1]), flush=True)

    head = ("C", "inner", "dtype", "morph_filter (residual, sweeps)", "≤ tol",
            "min off-centre share", "dense-Jacobian baseline", "baseline / ours")
    print()
    print("| " + " | ".join(head) + " |")
    print("| " + " | ".join("---:" for _ in head) + " |")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
