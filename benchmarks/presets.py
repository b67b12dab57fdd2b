"""Benchmark: every preset on every CIFAR ResNet depth in float32, and ImageNet widths.

1. The grid: presets × depths 20/32/44/56/110 × seeds (default 0–9). Each child is morphed
   in float32 (as ``netmorph morph`` does) and checked against its parent in float32 on 16
   random inputs (tolerance 1e-5, the morph's own check); the worst condition number of the
   new factors (``solve.conditioning`` of every new conv weight) is reported per preset.
   Parents: the real akamaster weights for 20/32/44/56 when ``--weights-dir`` holds them
   (else a fresh init), a fresh ResNet-110.
2. ImageNet widths: ``netmorph morph resnet18/34.safetensors --module PRESET`` as a command
   (subprocess: interpreter, imports, the 4-image check at 224×224, the write), against
   ``netmorph info`` on the same file as the baseline. Target (issue 10): under 30 s each.

Run it from any checkout (it measures the netmorph it imports, so it also measures an older
commit with ``PYTHONPATH=OLD/src``):

    .venv/bin/python benchmarks/presets.py [--weights-dir ../shared/weights] [--seeds 10]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from machine import machine_line  # noqa: E402  (benchmarks/machine.py)

from netmorph_cli.io import checkpoint, importers
from netmorph_cli.morph.morphs import morph_network
from netmorph_cli.morph.verify import verify
from netmorph_cli.network import zoo
from netmorph_cli.network.presets import Preset
from netmorph_cli.solver.solve import conditioning

PRESETS = ["1c1", "1c1_half", "3c1", "3c3", "1c1_2branch", "3c1_2branch", "3c3_2branch_half"]
REAL = {20: "akamaster_resnet20-12fca82f.th", 32: "akamaster_resnet32-d509ac18.th",
        44: "akamaster_resnet44-014dd654.th", 56: "akamaster_resnet56-4bfd9763.th"}


def parent_of(depth: int, weights: Path | None):
    if weights is not None and depth in REAL and (weights / REAL[depth]).is_file():
        return importers.import_state_dict(weights / REAL[depth]), "akamaster"
    return zoo.create(f"resnet{depth}", seed=0), "fresh"


def worst_condition(parent, child) -> float:
    return max((conditioning(v) for k, v in child.tensors.items()
                if k.endswith(".weight") and ".morph" in k and k not in parent.tensors
                and v.dim() == 4), default=0.0)


def grid(args: argparse.Namespace) -> None:
    weights = Path(args.weights_dir) if args.weights_dir else None
    print("| depth | parent | preset | passed float32 | worst max rel. err | worst "
          "condition | seconds |")
    print("|---|---|---|---|---|---|---|")
    for depth in [int(d) for d in args.depths.split(",")]:
        parent, kind = parent_of(depth, weights)
        for preset in args.presets.split(","):
            t0 = time.perf_counter()
            passed, err, cond = 0, 0.0, 0.0
            for seed in range(args.seeds):
                child, _ = morph_network(parent, Preset.parse(preset), seed=seed,
                                         check=False)  # counted here, not raised
                r = verify(parent, child, dtype=torch.float32, samples=16, seed=seed)
                passed += r.passed
                err = max(err, r.max_rel_err)
                cond = max(cond, worst_condition(parent, child))
            print(f"| {depth} | {kind} | {preset} | {passed}/{args.seeds} | {err:.2e} | "
                  f"{cond:.3g} | {time.perf_counter() - t0:.1f} |", flush=True)


def imagenet(args: argparse.Namespace) -> None:
    exe = Path(sys.executable).with_name("netmorph")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "netmorph_cli"]
    print("\n| parent | preset | `netmorph morph` | `netmorph info` (baseline) | ratio |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ("resnet18", "resnet34"):
            p = Path(tmp) / f"{arch}.safetensors"
            checkpoint.save(zoo.create(arch, seed=0), p)
            t0 = time.perf_counter()
            subprocess.run([*cmd, "info", str(p)], check=True, stdout=subprocess.DEVNULL)
            t_info = time.perf_counter() - t0
            for preset in args.presets.split(","):
                t0 = time.perf_counter()
                subprocess.run([*cmd, "morph", str(p), "--module", preset, "-o",
                                str(Path(tmp) / "c.safetensors"), "--force"], check=True,
                               stdout=subprocess.DEVNULL, timeout=args.timeout)
                t = time.perf_counter() - t0
                print(f"| {arch} | {preset} | {t:.1f} s | {t_info:.1f} s | {t / t_info:.1f}× |",
                      flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights-dir", default=None)
    ap.add_argument("--depths", default="20,32,44,56,110")
    ap.add_argument("--presets", default=",".join(PRESETS))
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--no-grid", action="store_true")
    ap.add_argument("--no-imagenet", action="store_true")
    args = ap.parse_args()
    print(machine_line(), flush=True)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads; load average "
          f"{os.getloadavg()[0]:.1f}")
    if not args.no_grid:
        grid(args)
    if not args.no_imagenet:
        imagenet(args)


if __name__ == "__main__":
    main()
