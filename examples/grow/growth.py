"""E1 of examples/grow/PLAN.md: does a child grown with the chosen post-morph recipe end below
its parent trained on for the same budget? (issue 19, 5.)

  A  the real akamaster ResNet-20 trained on K epochs with the parent's recipe;
  B  the chosen child (1c1 or D at layer1.1.conv1, calibrated) trained K epochs with the
     child's recipe;
both from the decision in results/recipes.json (the recipe comparison must be finished: this
script refuses to choose anything itself), seeds 0 and 1, test error at every epoch and at
epoch 0 (before training). Every step is a `netmorph` command; a finished one is skipped
and an interrupted training resumes (`train --resume`), so the script continues after a kill.
Results: results/growth.json ("E1": A and B final errors per seed, every epoch's errors),
results/growth.md and results/growth_E1.png.

    python examples/grow/growth.py --weights akamaster_resnet20-12fca82f.th --data-dir DIR
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import recipes  # noqa: E402  (the arms' options and the parent-momentum state)

CHILDREN = {"1c1": ["--module", "1c1"],
            "D": ["--module", str(HERE.parent / "modules" / "D.json"), "--at", "layer1.1.conv1"]}


def netmorph(*args: str, capture: bool = False) -> str:
    print("+ netmorph " + " ".join(args), flush=True)
    done = subprocess.run([sys.executable, "-m", "netmorph_cli", *args], check=True,
                          capture_output=capture, text=True)
    return done.stdout if capture else ""


def arm_flags(arm: str, state: Path | None) -> list[str]:
    lr, opts, carry = recipes.arm_options(arm)
    flags = ["--recipe", "continue", "--lr", str(lr)]
    names = {"new_lr_scale": "--new-lr-scale", "new_warmup": "--new-warmup",
             "new_weight_decay": "--new-weight-decay"}
    for k, v in opts.items():
        flags += [names[k], str(v)]
    if carry:
        assert state is not None
        flags += ["--from-state", str(state)]
    return flags


def chosen_child(results: list[dict], arm: str) -> str:
    """PLAN.md: the child whose mean last-50 loss gap to the control is smaller under the
    chosen recipe."""
    ctrl = {r["seed"]: r["loss_last"] for r in results
            if r["network"] == "control" and r["arm"] == "a"}
    gaps = {n: statistics.fmean(r["loss_last"] - ctrl[r["seed"]] for r in results
                                if r["network"] == n and r["arm"] == arm)
            for n in CHILDREN}
    return min(gaps, key=gaps.__getitem__)


def errors(ckpt: Path, start: float) -> list[float]:
    lines = Path(f"{ckpt}.metrics.jsonl").read_text().splitlines()
    return [start] + [float(json.loads(line)["test_error"]) for line in lines]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--data-dir", default=os.environ.get("NETMORPH_DATA", ""))
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--work", default=str(HERE / "work"))
    args = ap.parse_args()
    out, work = Path(args.out), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    decided = json.loads((out / "recipes.json").read_text())
    child_arm, parent_arm = decided.get("child_recipe"), decided.get("parent_recipe")
    if not child_arm or not parent_arm:
        sys.exit("Error: the recipe comparison has not decided yet (results/recipes.json): "
                 "finish examples/grow/recipes.py first; E1 uses its decision, not a choice")
    results = decided["results"]
    child_name = chosen_child(results, child_arm)
    parent = work / "resnet20.safetensors"
    if not parent.exists():
        netmorph("import", args.weights, "-o", str(parent))

    def evaluate(ckpt: Path) -> float:
        return json.loads(netmorph("eval", str(ckpt), "--dataset", "cifar10", "--data-dir",
                                   args.data_dir, "--json", capture=True))["top1_error"]

    def train(src: Path, dst: Path, flags: list[str], seed: int) -> None:
        if dst.exists():
            return
        resume = ["--resume"] if Path(f"{dst}.state.pt").exists() else []
        netmorph("train", str(src), "--dataset", "cifar10", "--data-dir", args.data_dir,
                 "--epochs", str(args.epochs), "--seed", str(seed), "--quiet", "-o", str(dst),
                 *flags, *resume)

    runs: dict[str, list[list[float]]] = {"A": [], "B": []}
    for seed in [int(s) for s in args.seeds.split(",")]:
        state = work / f"parent_momentum_s{seed}.state.pt"
        if "e" in child_arm or "e" in parent_arm:
            from netmorph_cli import importers
            from netmorph_cli.data import load_dataset

            recipes.momentum_state(importers.import_state_dict(args.weights),
                                   load_dataset("cifar10", args.data_dir), seed, state)
        a = work / f"E1_A_s{seed}.safetensors"
        train(parent, a, arm_flags(parent_arm, state), seed)
        child = work / f"E1_{child_name}_s{seed}_init.safetensors"
        if not child.exists():
            netmorph("morph", str(parent), *CHILDREN[child_name], "--seed", str(seed),
                     "--calibrate", "cifar10", "--data-dir", args.data_dir, "-o", str(child))
        b = work / f"E1_B_s{seed}.safetensors"
        train(child, b, arm_flags(child_arm, state), seed)
        runs["A"].append(errors(a, evaluate(parent)))
        runs["B"].append(errors(b, evaluate(child)))
    final = {k: [e[-1] for e in v] for k, v in runs.items()}
    e1 = {"A": {"errors": final["A"], "curves": runs["A"], "recipe": parent_arm},
          "B": {"errors": final["B"], "curves": runs["B"], "recipe": child_arm,
                "child": child_name},
          "epochs": args.epochs, "recipe": recipes.DESCRIBE.get(child_arm, child_arm),
          "machine": torch.backends.cpu.get_cpu_capability()}
    path = out / "growth.json"
    growth = json.loads(path.read_text()) if path.exists() else {}
    growth["E1"] = e1
    path.write_text(json.dumps(growth, indent=1) + "\n")
    netmorph("plot", *[str(work / f"E1_{k}_s{s}.safetensors") for k in "AB"
                       for s in args.seeds.split(",")], "-o", str(out / "growth_E1.png"),
             "--force", "--title", f"E1: akamaster ResNet-20, {args.epochs} epochs")
    mean = {k: statistics.fmean(v) for k, v in final.items()}
    sd = {k: statistics.stdev(v) if len(v) > 1 else 0.0 for k, v in final.items()}
    wins = mean["A"] - mean["B"] > max(sd.values())
    (out / "growth.md").write_text(
        f"# E1: grown child vs parent trained on ({args.epochs} epochs)\n\n"
        f"| run | recipe | final test error, each seed | mean ± sd |\n|---|---|---|---|\n"
        f"| A parent | {parent_arm} | {', '.join(f'{100 * e:.2f}%' for e in final['A'])} | "
        f"{100 * mean['A']:.2f}% ± {100 * sd['A']:.2f} |\n"
        f"| B {child_name} | {child_arm} | {', '.join(f'{100 * e:.2f}%' for e in final['B'])} "
        f"| {100 * mean['B']:.2f}% ± {100 * sd['B']:.2f} |\n\n"
        f"Decision rule (PLAN.md): B wins if its mean is below A's by more than the larger "
        f"standard deviation: **{'B wins' if wins else 'B does not win'}** "
        f"({100 * (mean['B'] - mean['A']):+.2f} points).\n\n![E1](growth_E1.png)\n")
    print((out / "growth.md").read_text())


if __name__ == "__main__":
    main()
