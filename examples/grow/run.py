"""Does a grown network beat its parent? Calibrated morphs of a real trained ResNet-20.

Protocol (fixed before the run, not tuned toward a result):
  parent   the real akamaster ResNet-20 (``netmorph import``), 8.27% test error;
  children 1c1, 1c1_half, 3c3 (presets) and module D at layer1.1.conv1, each morphed with
           ``--calibrate cifar10`` (new BN layers set from training data), checked in eval
           mode (float32, random inputs) and in training mode (``verify --mode train``);
  control  the parent trained for the same epochs with the same recipe;
  training ``train --recipe continue`` (cosine from lr 0.02 to 0), E epochs, --precision
           (default auto: float32 on a CPU);
  seeds    every run for each seed (the morph's filters and the training's order/augment).

Each step is skipped when its output exists and an interrupted training resumes, so the
script can be run again after a kill. Results (metrics, verify JSON, report.md, error.png,
run.json) go to --out.

    python examples/grow/run.py --weights resnet20-12fca82f.th --data-dir DIR [--epochs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODULES = HERE.parent / "modules"
# name → morph arguments
CHILDREN = {
    "1c1": ["--module", "1c1"],
    "1c1_half": ["--module", "1c1_half"],
    "3c3": ["--module", "3c3"],
    "D": ["--module", str(MODULES / "D.json"), "--at", "layer1.1.conv1"],
}


def netmorph(*args: str, capture: bool = False) -> str:
    print("+ netmorph " + " ".join(args), flush=True)
    done = subprocess.run([sys.executable, "-m", "netmorph_cli", *args], check=True,
                          capture_output=capture, text=True)
    return done.stdout if capture else ""


def train(src: Path, out: Path, args: argparse.Namespace, seed: int) -> None:
    if out.exists():
        print(f"= {out.name} exists, skipped", flush=True)
        return
    extra = ["--resume"] if Path(f"{out}.state.pt").exists() else []
    netmorph("train", str(src), "--dataset", args.dataset, "--data-dir", args.data_dir,
             "--recipe", "continue", "--epochs", str(args.epochs), "--seed", str(seed),
             "--precision", args.precision, "-o", str(out), "--quiet", *extra,
             *(["--device", args.device] if args.device else []))


def verify_json(parent: Path, child: Path, args: argparse.Namespace, out: Path,
                *mode: str) -> dict:
    if not out.exists():
        cmd = ["verify", str(parent), str(child), "--json", *mode]
        print("+ netmorph " + " ".join(cmd), flush=True)
        done = subprocess.run([sys.executable, "-m", "netmorph_cli", *cmd],
                              capture_output=True, text=True)
        if done.returncode not in (0, 1):
            sys.exit(f"Error: verify failed: {done.stderr.strip()}")
        out.write_text(done.stdout)
    return json.loads(out.read_text())


def final_error(ckpt: Path) -> float:
    lines = Path(f"{ckpt}.metrics.jsonl").read_text().splitlines()
    return float(json.loads(lines[-1])["test_error"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", required=True, help="akamaster resnet20-12fca82f.th")
    ap.add_argument("--data-dir", default=os.environ.get("NETMORPH_DATA", ""))
    ap.add_argument("--dataset", default="cifar10")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--precision", default="auto",
                    help="auto: float32 on a CPU (bf16 is ~10× slower on CPUs without "
                         "AVX-512 BF16), bf16 autocast on CUDA")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--work", default=None, help="checkpoints [default: OUT/../work]")
    ap.add_argument("--device", default=None)
    ap.add_argument("--report-only", action="store_true",
                    help="train nothing: report the runs that have finished")
    args = ap.parse_args()
    if not args.data_dir:
        sys.exit(f"Error: pass --data-dir (or set NETMORPH_DATA) to where {args.dataset} lives")
    if not Path(args.weights).is_file():
        sys.exit(f"Error: no file {args.weights} (the akamaster ResNet-20 weights)")
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    work = Path(args.work or out.parent / "work")
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    parent = work / "resnet20.safetensors"
    if not parent.exists():
        netmorph("import", args.weights, "-o", str(parent))
    parent_eval = json.loads(netmorph("eval", str(parent), "--dataset", args.dataset,
                                      "--data-dir", args.data_dir, "--json", capture=True))
    runs: dict[str, list[Path]] = {"control": [], **{c: [] for c in CHILDREN}}
    checks: dict[str, list[dict]] = {c: [] for c in CHILDREN}
    for seed in seeds:  # every run of seed 0 first: a cut-short run still has one full seed
        control = work / f"control_s{seed}.safetensors"
        if not args.report_only:
            train(parent, control, args, seed)
        if control.exists():
            runs["control"].append(control)
        for name, how in CHILDREN.items():
            child = work / f"{name}_s{seed}_init.safetensors"
            trained = work / f"{name}_s{seed}.safetensors"
            if args.report_only and not trained.exists():
                continue
            if not child.exists():
                netmorph("morph", str(parent), *how, "--seed", str(seed), "--calibrate",
                         args.dataset, "--data-dir", args.data_dir, "-o", str(child))
            ev = verify_json(parent, child, args, work / f"{name}_s{seed}.verify-eval.json",
                             "--dtype", "float32")
            tm = verify_json(parent, child, args, work / f"{name}_s{seed}.verify-train.json",
                             "--mode", "train", "--dataset", args.dataset, "--data-dir",
                             args.data_dir)
            checks[name].append({"seed": seed, "eval_max_rel_err": ev["max_rel_err"],
                                 **tm["train_mode"], "passed": tm["passed"]})
            train(child, trained, args, seed)
            runs[name].append(trained)
    runs = {k: v for k, v in runs.items() if v}

    every = [str(p) for ps in runs.values() for p in ps]
    table = netmorph("report", *every, "--baseline", str(runs["control"][0]), "--markdown",
                     capture=True)
    netmorph("plot", *[str(ps[0]) for ps in runs.values()], "-o", str(out / "error.png"),
             "--force", "--title", f"{args.dataset}: akamaster ResNet-20 + {args.epochs} epochs "
             f"(--recipe continue), seed {seeds[0]}")
    for p in every:
        shutil.copy(f"{p}.metrics.jsonl", out / f"{Path(p).name}.metrics.jsonl")
    (out / "checks.json").write_text(json.dumps(checks, indent=2) + "\n")
    summary = summarize(runs, parent_eval["top1_error"])
    info = {"epochs": args.epochs, "seeds": seeds, "dataset": args.dataset,
            "precision": args.precision, "recipe": "continue (cosine from lr 0.02 to 0)",
            "parent_test_error": parent_eval["top1_error"],
            "wall_s_this_invocation": round(time.time() - t_start, 1),
            "train_s": round(sum(train_seconds(Path(p)) for p in every), 1),
            "summary": summary, **machine()}
    (out / "run.json").write_text(json.dumps(info, indent=2) + "\n")
    (out / "report.md").write_text(
        f"# Grown ResNet-20 vs its parent trained on ({args.dataset}, {args.epochs} epochs, "
        f"--recipe continue, {args.precision}, seeds {args.seeds})\n\n"
        f"Parent: the real akamaster ResNet-20, test error "
        f"{100 * parent_eval['top1_error']:.2f}% before any training here.\n\n"
        f"{summary_markdown(summary, checks)}\n\n## Every run (`netmorph report --markdown`, "
        f"baseline = control seed {seeds[0]})\n\n{table}\n")
    print((out / "report.md").read_text())


def train_seconds(ckpt: Path) -> float:
    return sum(float(json.loads(line)["seconds"])
               for line in Path(f"{ckpt}.metrics.jsonl").read_text().splitlines())


def summarize(runs: dict[str, list[Path]], parent_error: float) -> dict[str, dict]:
    out = {}
    for name, paths in runs.items():
        errs = [final_error(p) for p in paths]
        out[name] = {"errors": errs, "mean": statistics.fmean(errs),
                     "std": statistics.stdev(errs) if len(errs) > 1 else 0.0}
    return out


def summary_markdown(summary: dict[str, dict], checks: dict[str, list[dict]]) -> str:
    ctrl = summary["control"]["mean"]
    rows = ["| network | test error, mean ± std | each seed | vs control | train-mode loss "
            "child / parent at the morph |", "|---|---|---|---|---|"]
    for name, s in summary.items():
        each = ", ".join(f"{100 * e:.2f}%" for e in s["errors"])
        diff = "-" if name == "control" else f"{100 * (s['mean'] - ctrl):+.2f} points"
        tm = "-" if name == "control" else ", ".join(
            f"{c['child_loss']:.3f} / {c['parent_loss']:.3f}" for c in checks[name])
        rows.append(f"| {name} | {100 * s['mean']:.2f}% ± {100 * s['std']:.2f} | {each} | "
                    f"{diff} | {tm} |")
    return "\n".join(rows)


def machine() -> dict:
    import torch

    return {"machine": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version()}


if __name__ == "__main__":
    main()
