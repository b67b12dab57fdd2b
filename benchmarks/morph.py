"""Benchmark: morph + write a ResNet-110 → 1c1, and verify a ResNet-110 pair in float64.

Run with ``make bench`` or ``.venv/bin/python benchmarks/morph.py [--repeat 3]
[--threads N] [--samples 64]``.

1. ``netmorph morph resnet110.safetensors --module 1c1 -o child.safetensors`` in process:
   load the parent checkpoint, ``morph_network(…, Preset.parse("1c1"), check=False)`` (51
   blocks: 0.5·I split, 1×1 TYPE-I decompositions; the check is left to the subprocess
   figure), ``checkpoint.save``. Baseline in the same run: load + save of the
   parent alone (the I/O the command cannot avoid). Also the real command in a subprocess
   (interpreter start, imports, the CLI's 4-image float32 check before writing), against
   ``netmorph info`` on the same file as the subprocess baseline.
2. ``verify(parent, child, dtype=float64)`` on 64 random images, the child morphed with
   ``--dtype float64`` (so that the 1e-10 float64 tolerance applies). Baseline:
   one float64 forward of the parent on the same 64 images (verify runs parent and child,
   about 2.1× that work, plus the per-module captures).

Figures are best of ``--repeat`` runs (subprocesses: best of 2). Targets (issue 4): morph +
write under 3 s; verify under 20 s, on the 2-core CPU machine. The ratios against the
baselines are the figures to compare across machines.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from machine import machine_line  # noqa: E402  (benchmarks/machine.py)

from netmorph_cli.io import checkpoint
from netmorph_cli.morph.morphs import morph_network
from netmorph_cli.morph.verify import verify
from netmorph_cli.network import zoo
from netmorph_cli.network.presets import Preset

NETMORPH = Path(sys.executable).with_name("netmorph")


def best(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    t_best, out = math.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        t_best = min(t_best, time.perf_counter() - t0)
    return t_best, out


def run_cli(*args: str) -> None:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(torch.get_num_threads())  # the same threads as in process
    subprocess.run([str(NETMORPH), *args], check=True, stdout=subprocess.DEVNULL, env=env)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3, help="best of N (default 3)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--samples", type=int, default=64, help="verify: images (default 64)")
    ap.add_argument("--no-subprocess", action="store_true",
                    help="skip the `netmorph morph` subprocess timing")
    args = ap.parse_args()
    print(machine_line(), flush=True)
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"# ResNet-110 (CIFAR, option B) → 1c1; {platform.processor() or platform.machine()}"
          f", {os.cpu_count()} CPUs; torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads; load average {os.getloadavg()[0]:.1f}")
    rows: list[tuple[str, str, str, str]] = []

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        parent_path, child_path = d / "resnet110.safetensors", d / "morph110_1c1.safetensors"
        checkpoint.save(zoo.create("resnet110", seed=0), parent_path)  # not timed
        # warm-up: first-call costs (kernels, allocator) stay out of the figures
        morph_network(zoo.create("resnet20"), Preset.parse("1c1"))

        # 1. morph + write, in process
        def load_save() -> None:
            checkpoint.save(checkpoint.load(parent_path), d / "copy.safetensors", force=True)

        def load_morph_save():
            net = checkpoint.load(parent_path)
            child, _ = morph_network(net, Preset.parse("1c1"), check=False,
                                     parent_sha256=checkpoint.file_sha256(parent_path))
            checkpoint.save(child, child_path, force=True, protect=[parent_path])
            return child

        t_io, _ = best(load_save, args.repeat)
        t_morph, child = best(load_morph_save, args.repeat)
        residual = child.history[-1]["residual"]  # type: ignore[union-attr]
        rows.append(("morph + write (in process)", f"{t_morph:.2f} s",
                     f"load + save parent {t_io:.2f} s", f"{t_morph / t_io:.1f}×"))
        print(f"morph: {len(child.history[-1]['blocks'])} blocks, worst residual "  # type: ignore
              f"{residual:.1e}", flush=True)

        # 1b. the real command, interpreter start and imports included
        if not args.no_subprocess:
            t_cli, _ = best(lambda: run_cli("morph", str(parent_path), "--module", "1c1",
                                            "-o", str(child_path), "--force"), 2)
            t_info, _ = best(lambda: run_cli("info", str(parent_path)), 2)
            rows.append(("`netmorph morph` (subprocess)", f"{t_cli:.2f} s",
                         f"`netmorph info` {t_info:.2f} s", f"{t_cli / t_info:.1f}×"))

        # 2. verify the pair in float64 (a float64 child: the 1e-10 tolerance applies)
        parent = checkpoint.load(parent_path)
        child, _ = morph_network(parent, Preset.parse("1c1"), dtype=torch.float64)  # not timed
        x = torch.randn(args.samples, 3, 32, 32, generator=torch.Generator().manual_seed(0),
                        dtype=torch.float64)
        module = parent.module(torch.float64)

        def forward() -> None:
            with torch.inference_mode():
                module(x)

        t_fwd, _ = best(forward, args.repeat)
        t_verify, report = best(lambda: verify(parent, child, dtype=torch.float64, inputs=x),
                                args.repeat)
        print(f"verify: passed {report.passed}, max relative error "  # type: ignore
              f"{report.max_rel_err:.1e}, {len(report.sites)} module sites", flush=True)  # type: ignore
        rows.append((f"verify float64, {args.samples} images", f"{t_verify:.2f} s",
                     f"one parent forward {t_fwd:.2f} s", f"{t_verify / t_fwd:.1f}×"))

    head = ("step", "time", "baseline (same run)", "ratio")
    print()
    print("| " + " | ".join(head) + " |")
    print("| --- | ---: | ---: | ---: |")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
