"""Reproduce the paper's Table 1 protocol on CIFAR-10 with the netmorph CLI.

Steps (each skipped when its output exists; an interrupted training resumes):
  1. train a ResNet-20 parent for E1 epochs;
  2. morph it to 1c1, 1c1_half, 3c1 and 1c1_2branch (each verified) and train every child
     for E2 more epochs;
  3. control (a): the parent trained on for the same E2 extra epochs;
  4. control (b): every child architecture trained from scratch for E1 + E2 epochs;
  5. the report (Markdown, the paper's columns, baseline = control (a)) and the plot.

Scales: ``quick`` fits in about an hour on a 2-core CPU with the full CIFAR-10 (few epochs,
same protocol); ``full`` is the paper's schedule (164 + 164 epochs), for a CUDA GPU.

    python examples/reproduce/run.py --scale quick --data-dir DIR [--out examples/reproduce/results]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

SCALES = {"quick": {"e1": 3, "e2": 2}, "full": {"e1": 164, "e2": 164}}
PRESETS = ("1c1", "1c1_half", "3c1", "1c1_2branch")


def netmorph(*args: str) -> None:
    cmd = [sys.executable, "-m", "netmorph_cli", *args]
    print("+ netmorph " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True)


def train(src: Path, out: Path, epochs: int, args: argparse.Namespace, seed: int) -> None:
    if out.exists():
        print(f"= {out.name} exists, skipped")
        return
    extra = ["--resume"] if Path(f"{out}.state.pt").exists() else []
    netmorph("train", str(src), "--dataset", args.dataset, "--data-dir", args.data_dir,
             "--epochs", str(epochs), "--seed", str(seed), "-o", str(out), "--quiet", *extra,
             *(["--device", args.device] if args.device else []))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", choices=SCALES, default="quick")
    ap.add_argument("--data-dir", default=os.environ.get("NETMORPH_DATA", ""), required=False)
    ap.add_argument("--dataset", default="cifar10")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--work", default=None, help="checkpoints [default: OUT/../work-SCALE]")
    ap.add_argument("--device", default=None)
    ap.add_argument("--e1", type=int, default=None, help="override the scale's parent epochs")
    ap.add_argument("--e2", type=int, default=None, help="override the scale's extra epochs")
    args = ap.parse_args()
    if not args.data_dir:
        sys.exit(f"Error: pass --data-dir (or set NETMORPH_DATA) to where {args.dataset} "
                 f"lives")
    e1 = args.e1 or SCALES[args.scale]["e1"]
    e2 = args.e2 or SCALES[args.scale]["e2"]
    out = Path(args.out)
    work = Path(args.work or out.parent / f"work-{args.scale}")
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)

    init = work / "resnet20_init.safetensors"
    if not init.exists():
        netmorph("init", "resnet20", "--seed", "0", "-o", str(init))
    parent = work / "resnet20.safetensors"
    train(init, parent, e1, args, seed=0)

    runs = []
    cont = work / "resnet20_cont.safetensors"  # control (a)
    train(parent, cont, e2, args, seed=1)
    runs.append(cont)
    for preset in PRESETS:
        child = work / f"morph20_{preset}_init.safetensors"
        if not child.exists():
            netmorph("morph", str(parent), "--module", preset, "--seed", "0", "-o", str(child))
            netmorph("verify", str(parent), str(child), "--dtype", "float32", "--samples", "32")
        trained = work / f"morph20_{preset}.safetensors"
        train(child, trained, e2, args, seed=1)
        runs.append(trained)
    scratch_runs = []
    for preset in PRESETS:  # control (b)
        fresh = work / f"scratch20_{preset}_init.safetensors"
        if not fresh.exists():
            netmorph("init", str(work / f"morph20_{preset}_init.safetensors"), "--seed", "0",
                     "-o", str(fresh))
        scratch = work / f"scratch20_{preset}.safetensors"
        train(fresh, scratch, e1 + e2, args, seed=0)
        scratch_runs.append(scratch)

    names = [str(r) for r in runs + scratch_runs]
    table = subprocess.run([sys.executable, "-m", "netmorph_cli", "report", *names,
                            "--baseline", str(cont), "--markdown"],
                           check=True, capture_output=True, text=True).stdout
    title = f"{args.dataset}, {args.scale}: E1={e1}, E2={e2}"
    netmorph("plot", str(cont), *[str(r) for r in runs[1:]], "-o", str(out / "error.png"),
             "--force", "--title", f"{title}; morphed children vs control (a)")
    netmorph("plot", str(cont), *[str(r) for r in scratch_runs], "-o",
             str(out / "error-scratch.png"), "--force",
             "--title", f"{title}; control (b), from scratch")
    for r in [parent, *runs, *scratch_runs]:
        m = Path(f"{r}.metrics.jsonl")
        if m.exists():
            shutil.copy(m, out / m.name)
    info = {"scale": args.scale, "e1": e1, "e2": e2, "dataset": args.dataset,
            **timing(init, [parent, *runs, *scratch_runs]), **machine()}
    (out / "report.md").write_text(
        f"# Table 1 protocol, {args.scale} scale (E1 = {e1}, E2 = {e2} epochs)\n\n"
        f"Baseline for the improvement columns: control (a), the parent trained on for "
        f"{e2} more epochs (the first `resnet20` row, {e1 + e2} epochs in all). "
        f"`morph20_*` rows: the parent after {e1} epochs, morphed, trained {e2} more epochs. "
        f"`(scratch)` rows are control (b), each child architecture trained from scratch for "
        f"{e1 + e2} epochs.\n\n{table}\n")
    (out / "run.json").write_text(json.dumps(info, indent=2) + "\n")
    print(table)
    print(f"results in {out}; {info['wall_seconds'] / 60:.1f} min from the first step to the "
          f"last, {info['training_seconds'] / 60:.1f} min of it training")


def timing(first: Path, trained: list[Path]) -> dict[str, float]:
    """Wall time from the first output to the newest trained checkpoint (file times, so a
    resumed recipe counts its pauses too), and the training time the checkpoints record."""
    from netmorph_cli.io.checkpoint import load

    train_s = 0.0
    for path in trained:
        phases = [h for h in load(path).history if h.get("op") == "train"]
        train_s += float(phases[-1].get("seconds") or 0.0)  # this step's phase only
    newest = max(p.stat().st_mtime for p in trained)
    return {"wall_seconds": round(newest - first.stat().st_mtime),
            "training_seconds": round(train_s)}


def machine() -> dict[str, str | int | None]:
    import torch

    cpu = None
    try:
        cpu = next((line.split(":", 1)[1].strip() for line in
                    Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), None)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
            "cpu": cpu or platform.processor() or None, "gpu": gpu,
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "python": platform.python_version()}


if __name__ == "__main__":
    main()
