"""E1 and E2 of examples/grow/PLAN.md (issue 19, 5.).

E1: does a child grown with the chosen post-morph recipe end below its parent trained on for
the same budget?

  A  the real akamaster ResNet-20 trained on K epochs with the parent's recipe;
  B  the chosen child (1c1 or D at layer1.1.conv1, calibrated) trained K epochs with the
     child's recipe;
both from the decision in results/recipes.json (the recipe comparison must be finished: this
script refuses to choose anything itself), seeds 0 and 1, test error at every epoch and at
epoch 0 (before training). Every step is a `netmorph` command; a finished one is skipped
and an interrupted training resumes (`train --resume`), so the script continues after a kill.
Results: results/growth.json ("E1": A and B final errors per seed, every epoch's errors),
results/growth.md and results/growth_E1.png.

E2 (``--experiment E2``): compute saved, from scratch. One cosine schedule from lr 0.1 over
15 epochs, batch 128. A: a fresh ResNet-20 (seed s) trained 5 epochs (``--schedule-epochs
15``), then 10 more from its own epoch-5 state (``--schedule-start 5 --from-state``: its
momentum and its schedule go on). B: A's epoch-5 checkpoint morphed (calibrated) into the
chosen child and trained the same 10 epochs from the same state, its new parameters as the
chosen child recipe treats them. C: the child architecture from scratch (``netmorph init
CHILD``), 15 epochs. Test error at every epoch (epoch 0 included) against training compute,
3 × FLOPs × images seen. ``--control-only`` runs A alone (it needs no decision).

    python examples/grow/growth.py --weights akamaster_resnet20-12fca82f.th --data-dir DIR
    python examples/grow/growth.py --experiment E2 --weights ... --data-dir DIR --seeds 0
    python examples/grow/growth.py --lever new-lr-0.3 --weights ... --data-dir DIR  # E1 + L1
    python examples/grow/cause.py && python examples/grow/growth.py --report-only
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

CHILDREN = {"1c1": ["--module", "1c1"], "3c3": ["--module", "3c3"],
            "D": ["--module", str(HERE.parent / "modules" / "D.json"), "--at", "layer1.1.conv1"]}

# E1's next levers (PLAN.md, "E1 levers", registered before they ran): name → (child, train
# flags, description). Each trains the child from the same morph as B (its seed) against
# the same A.
LEVERS = {
    "new-lr-0.3": ("D", ["--recipe", "grow", "--new-lr-scale", "0.3"],
                   "grow with the new parameters at lr ×0.3 (ramped in over 200 steps)"),
    "3c3-grow": ("3c3", ["--recipe", "grow"], "preset 3c3 on every block, --recipe grow"),
}


def netmorph(*args: str, capture: bool = False) -> str:
    print("+ netmorph " + " ".join(args), flush=True)
    done = subprocess.run([sys.executable, "-m", "netmorph_cli", *args], check=True,
                          capture_output=capture, text=True)
    return done.stdout if capture else ""


NEW_FLAGS = {"new_lr_scale": "--new-lr-scale", "new_warmup": "--new-warmup",
             "new_weight_decay": "--new-weight-decay"}  # train's option of each arm field


def new_flags(opts: dict) -> list[str]:
    """An arm's new-parameter options as train's flags."""
    return [x for k, v in opts.items() for x in (NEW_FLAGS[k], str(v))]


def arm_flags(arm: str, state: Path | None) -> list[str]:
    lr, opts, carry = recipes.arm_options(arm)
    flags = ["--recipe", "continue", "--lr", str(lr), *new_flags(opts)]
    if carry:
        assert state is not None
        flags += ["--from-state", str(state)]
    return flags


def grow_flags(arm: str) -> list[str]:
    """B's training: ``--recipe grow``, which must be the decided arm (its peak lr and its
    new-parameter options; an arm that carries the parent's momentum is no recipe)."""
    from netmorph_cli.training.recipes import RECIPES

    lr, opts, carry = recipes.arm_options(arm)
    grow = RECIPES["grow"]
    mine = {k: v for k, v in grow.items() if k.startswith("new_")}
    if grow["lr"] != lr or grow["schedule"] != "cosine" or mine != opts or carry:
        sys.exit(f"Error: --recipe grow ({grow}) is not the decided child arm {arm!r} "
                 f"(lr {lr}, {opts}, carry {carry}): make the recipe the decision first")
    return ["--recipe", "grow"]


def chosen_child(results: list[dict], arm: str) -> str:
    """PLAN.md: the child whose mean last-50 loss gap to the control is smaller under the
    chosen recipe."""
    ctrl = {r["seed"]: r["loss_last"] for r in results
            if r["network"] == "control" and r["arm"] == "a"}
    gaps = {n: statistics.fmean(r["loss_last"] - ctrl[r["seed"]] for r in results
                                if r["network"] == n and r["arm"] == arm)
            for n in CHILDREN if any(r["network"] == n for r in results)}
    return min(gaps, key=gaps.__getitem__)


def errors(ckpt: Path, start: float) -> list[float]:
    lines = Path(f"{ckpt}.metrics.jsonl").read_text().splitlines()
    return [start] + [float(json.loads(line)["test_error"]) for line in lines]


class Runs:
    """The commands both experiments run, each skipped when its output exists; an
    interrupted training resumes (``train --resume``)."""

    def __init__(self, data_dir: str, work: Path) -> None:
        self.data_dir, self.work = data_dir, work
        self.errors: dict[Path, float] = {}  # a file evaluated once (A's parent, B's child)

    def evaluate(self, ckpt: Path) -> float:
        if ckpt not in self.errors:
            self.errors[ckpt] = json.loads(netmorph(
                "eval", str(ckpt), "--dataset", "cifar10", "--data-dir", self.data_dir,
                "--json", capture=True))["top1_error"]
        return self.errors[ckpt]

    def flops(self, ckpt: Path) -> int:
        return int(json.loads(netmorph("info", str(ckpt), "--json", capture=True))["flops"])

    def train(self, src: Path, dst: Path, epochs: int, flags: list[str], seed: int) -> None:
        if dst.exists():
            return
        resume = ["--resume"] if Path(f"{dst}.state.pt").exists() else []
        netmorph("train", str(src), "--dataset", "cifar10", "--data-dir", self.data_dir,
                 "--epochs", str(epochs), "--seed", str(seed), "--quiet", "-o", str(dst),
                 *flags, *resume)

    def morph(self, src: Path, dst: Path, child: str, seed: int) -> None:
        if not dst.exists():
            netmorph("morph", str(src), *CHILDREN[child], "--seed", str(seed), "--calibrate",
                     "cifar10", "--data-dir", self.data_dir, "-o", str(dst))


def decision(out: Path) -> tuple[str, str, str]:
    """(child arm, parent arm, child network) from results/recipes.json, or exit."""
    decided = json.loads((out / "recipes.json").read_text())
    child_arm, parent_arm = decided.get("child_recipe"), decided.get("parent_recipe")
    if not child_arm or not parent_arm:
        sys.exit("Error: the recipe comparison has not decided yet (results/recipes.json): "
                 "finish examples/grow/recipes.py first; E1 and E2's child use its decision, "
                 "not a choice")
    return child_arm, parent_arm, chosen_child(decided["results"], child_arm)


def e1(args: argparse.Namespace, out: Path, runs: Runs) -> dict:
    child_arm, parent_arm, child_name = decision(out)
    if not args.weights or not Path(args.weights).is_file():
        sys.exit(f"Error: E1 needs --weights (the akamaster ResNet-20), not {args.weights}")
    work = runs.work
    parent = work / "resnet20.safetensors"
    if not parent.exists():
        netmorph("import", args.weights, "-o", str(parent))
    curves: dict[str, list[list[float]]] = {"A": [], "B": []}
    seeds = [int(s) for s in args.seeds.split(",")]
    for seed in seeds:
        state = work / f"parent_momentum_s{seed}.state.pt"
        if ("e" in child_arm or "e" in parent_arm) and not state.exists():
            from netmorph_cli.io import importers
            from netmorph_cli.training.data import load_dataset

            recipes.momentum_state(importers.import_state_dict(args.weights),
                                   load_dataset("cifar10", args.data_dir), seed, state)
        a = work / f"E1_A_s{seed}.safetensors"
        runs.train(parent, a, args.epochs, arm_flags(parent_arm, state), seed)
        child = work / f"E1_{child_name}_s{seed}_init.safetensors"
        runs.morph(parent, child, child_name, seed)
        b = work / f"E1_B_s{seed}.safetensors"
        runs.train(child, b, args.epochs, grow_flags(child_arm), seed)
        curves["A"].append(errors(a, runs.evaluate(parent)))
        curves["B"].append(errors(b, runs.evaluate(child)))
    levers = {}
    for name in args.lever:
        lever_child, flags, describe = LEVERS[name]
        runs_l = []
        for seed in seeds:
            child = work / f"E1_{lever_child}_s{seed}_init.safetensors"
            runs.morph(parent, child, lever_child, seed)
            ckpt = work / f"E1_{name}_s{seed}.safetensors"
            runs.train(child, ckpt, args.epochs, flags, seed)
            runs_l.append(errors(ckpt, runs.evaluate(child)))
        levers[name] = {"errors": [c[-1] for c in runs_l], "curves": runs_l,
                        "child": lever_child, "recipe": describe, "flags": flags}
    return {"A": {"errors": [c[-1] for c in curves["A"]], "curves": curves["A"],
                  "recipe": parent_arm},
            "B": {"errors": [c[-1] for c in curves["B"]], "curves": curves["B"],
                  "recipe": child_arm, "child": child_name},
            "levers": levers, "epochs": args.epochs, "seeds": seeds,
            "recipe": recipes.DESCRIBE.get(child_arm, child_arm)}


E2_LR = 0.1  # PLAN.md: one cosine from the paper recipe's peak; 15 epochs, morph at 5
IMAGES = 50_000  # CIFAR-10 training images an epoch sees


def new_parameter_flags(arm: str) -> list[str]:
    """The chosen child recipe's treatment of new parameters, without its schedule (E2 keeps
    its one cosine; the parent's momentum is carried for A and B alike)."""
    _, opts, _ = recipes.arm_options(arm)
    return new_flags(opts)


def e2(args: argparse.Namespace, out: Path, runs: Runs) -> dict:
    work = runs.work
    E2_EPOCHS, E2_SPLIT = args.e2_epochs, args.e2_split  # noqa: N806 (PLAN's constants)
    sched = ["--recipe", "continue", "--lr", str(E2_LR), "--schedule-epochs", str(E2_EPOCHS)]
    rest = [*sched, "--schedule-start", str(E2_SPLIT)]
    result: dict = {"epochs": E2_EPOCHS, "split": E2_SPLIT, "lr": E2_LR, "runs": {}}
    for seed in [int(s) for s in args.seeds.split(",")]:
        init = work / f"E2_init_s{seed}.safetensors"
        if not init.exists():
            netmorph("init", "resnet20", "--seed", str(seed), "-o", str(init))
        a5, a = work / f"E2_A5_s{seed}.safetensors", work / f"E2_A_s{seed}.safetensors"
        runs.train(init, a5, E2_SPLIT, sched, seed)
        state = ["--from-state", f"{a5}.state.pt"]
        runs.train(a5, a, E2_EPOCHS - E2_SPLIT, [*rest, *state], seed)
        f_a = runs.flops(init)
        e0 = runs.evaluate(init)
        a_curve = errors(a5, e0) + errors(a, 0.0)[1:]
        runs_s = {"A": {"errors": a_curve,
                        "compute": [3 * f_a * IMAGES * e for e in range(E2_EPOCHS + 1)]}}
        if not args.control_only:
            child_arm, _, child_name = decision(out)
            bm = work / f"E2_{child_name}_s{seed}_morphed.safetensors"
            runs.morph(a5, bm, child_name, seed)
            b = work / f"E2_B_s{seed}.safetensors"
            runs.train(bm, b, E2_EPOCHS - E2_SPLIT,
                       [*rest, *state, *new_parameter_flags(child_arm)], seed)
            shape = work / f"E2_{child_name}_s{seed}_shape.safetensors"
            runs.morph(init, shape, child_name, seed)
            c0 = work / f"E2_C_s{seed}_init.safetensors"
            if not c0.exists():
                netmorph("init", str(shape), "--seed", str(seed), "-o", str(c0))
            c = work / f"E2_C_s{seed}.safetensors"
            runs.train(c0, c, E2_EPOCHS, sched, seed)
            f_c = runs.flops(c0)
            runs_s["B"] = {"errors": errors(a5, e0) + errors(b, 0.0)[1:],
                           "compute": [3 * IMAGES * (f_a * min(e, E2_SPLIT)
                                                     + f_c * max(e - E2_SPLIT, 0))
                                       for e in range(E2_EPOCHS + 1)]}
            runs_s["C"] = {"errors": errors(c, runs.evaluate(c0)),
                           "compute": [3 * f_c * IMAGES * e for e in range(E2_EPOCHS + 1)]}
            result["child"], result["recipe"] = child_name, child_arm
        result["runs"][f"s{seed}"] = runs_s
    plot_e2(result, out / "growth_E2.png")
    return result


def plot_e1(result: dict, path: Path) -> None:
    """Test error against epoch, epoch 0 (before training) included: A, B and each lever,
    one line per seed (seeds share a colour, dashed after the first)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    parent_recipe = recipes.DESCRIBE.get(result["A"]["recipe"], result["A"]["recipe"])
    arms = {"A": f"A: parent, {parent_recipe.split(':')[0]}",
            "B": f"B: {result['B']['child']}, --recipe grow",
            **{n: f"{n}: {lv['child']}" for n, lv in result.get("levers", {}).items()}}
    for i, (k, label) in enumerate(arms.items()):
        run = result[k] if k in ("A", "B") else result["levers"][k]
        for j, (seed, curve) in enumerate(zip(result["seeds"], run["curves"], strict=True)):
            ax.plot(range(len(curve)), [100 * e for e in curve], marker="o", ms=3,
                    color=f"C{i}", ls="-" if j == 0 else "--", label=f"{label} (seed {seed})")
    ax.set_xlabel("epoch (0: before training)")
    ax.set_ylabel("CIFAR-10 test error (%)")
    ax.set_title(f"E1: akamaster ResNet-20 trained on, {result['epochs']} epochs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_e2(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    names = {"A": "A: ResNet-20", "B": f"B: ResNet-20 → {result.get('child', 'child')} at "
             f"epoch {result['split']}", "C": f"C: {result.get('child', 'child')} from scratch"}
    for seed, runs_s in result["runs"].items():
        for k, r in runs_s.items():
            ax.plot([c / 1e15 for c in r["compute"]], [100 * e for e in r["errors"]],
                    marker="o", ms=3, label=f"{names[k]} ({seed})")
    ax.set_xlabel("training compute (PFLOP: 3 × FLOPs × images)")
    ax.set_ylabel("CIFAR-10 test error (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"E2: from scratch, one cosine from lr {result['lr']:g} over "
                 f"{result['epochs']} epochs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def e1_reading(g: dict, cause_b: list[dict]) -> str:
    """The measured cause in words, every figure from the results (so it stays true when
    regenerated)."""
    start = statistics.fmean(c[0] for c in g["A"]["curves"])
    first = statistics.fmean(c[1] for c in g["A"]["curves"])
    end = {r: statistics.fmean(g[r]["errors"]) for r in "AB"}
    ratios = [b / a for s in cause_b for a, b in zip(s["train_loss"]["A"], s["train_loss"]["B"],
                                                      strict=True)]
    moved = {k: statistics.fmean(s["movement"][k]["all"] for s in cause_b)
             for k in ("A", "B new")}
    return (f"Measured: the parent starts at {100 * start:.2f}% and, trained on, is at "
            f"{100 * first:.2f}% after the first epoch (the restart at the recipe's peak lr) and "
            f"{100 * end['A']:.2f}% at the end: at this budget the parent trained on "
            + ("does not improve on itself" if end["A"] >= start else
               f"improves on itself by {100 * (start - end['A']):.2f} points")
            + f". B's train-mode loss is {min(ratios):.3f}–{max(ratios):.3f} × A's "
            f"at every epoch of every seed, and the parameters the morph added moved "
            f"{moved['B new']:.3f} of their norm over the {g['epochs']} epochs against "
            f"{moved['A']:.3f} for A's"
            + (": under this recipe the child is the parent with the replaced layer's function "
               "nearly held at its solved value, and its added capacity is not used"
               if moved["B new"] < moved["A"] / 4 else "")
            + f" (B ends at {100 * end['B']:.2f}%).\n")


def report(out: Path, growth: dict) -> str:
    parts = []
    if "E1" in growth:
        g, k = growth["E1"], growth["E1"]["epochs"]
        final = {r: g[r]["errors"] for r in "AB"}
        mean = {r: statistics.fmean(v) for r, v in final.items()}
        sd = {r: statistics.stdev(v) if len(v) > 1 else 0.0 for r, v in final.items()}
        wins = mean["A"] - mean["B"] > max(sd.values())
        parts.append(
            f"# E1: grown child vs parent trained on ({k} epochs)\n\n"
            f"| run | recipe | final test error, each seed | mean ± sd |\n|---|---|---|---|\n"
            f"| A parent | {g['A']['recipe']} | "
            f"{', '.join(f'{100 * e:.2f}%' for e in final['A'])} | "
            f"{100 * mean['A']:.2f}% ± {100 * sd['A']:.2f} |\n"
            f"| B {g['B']['child']} | {g['B']['recipe']} | "
            f"{', '.join(f'{100 * e:.2f}%' for e in final['B'])} "
            f"| {100 * mean['B']:.2f}% ± {100 * sd['B']:.2f} |\n\n"
            f"Decision rule (PLAN.md): B wins if its mean is below A's by more than the larger "
            f"standard deviation: **{'B wins' if wins else 'B does not win'}** "
            f"({100 * (mean['B'] - mean['A']):+.2f} points).\n")
        for name, lever in g.get("levers", {}).items():
            e = lever["errors"]
            m, d = statistics.fmean(e), statistics.stdev(e) if len(e) > 1 else 0.0
            won = mean["A"] - m > max(sd["A"], d)
            parts.append(
                f"Next lever **{name}** ({lever['child']}, {lever['recipe']}; PLAN.md, "
                f"\"E1 levers\"): {', '.join(f'{100 * x:.2f}%' for x in e)}, "
                f"{100 * m:.2f}% ± {100 * d:.2f}: "
                f"**{'wins' if won else 'does not win'}** against A "
                f"({100 * (m - mean['A']):+.2f} points).\n")
        parts.append("![E1](growth_E1.png)\n")
        measured = out / "E1-cause.json"  # examples/grow/cause.py, after E1
        if measured.exists():
            import cause

            res = json.loads(measured.read_text())
            parts.append("## E1: what the child did with its new parameters (cause.py)\n\n"
                         + cause.table(res["B"]) + "\n" + e1_reading(g, res["B"]) + "\n"
                         + cause.tables({k: v for k, v in res.items() if k != "B"}))
    if "E2" in growth:
        g = growth["E2"]
        at = sorted({0, g["split"], min(10, g["epochs"]), g["epochs"]})
        rows = [f"| seed | run | test error at epochs {', '.join(map(str, at))} | final | "
                f"compute (PFLOP) |", "|---|---|---|---|---|"]
        verdicts = []
        for seed, runs_s in g["runs"].items():
            for k, r in runs_s.items():
                e = r["errors"]
                rows.append(f"| {seed} | {k} | "
                            f"{', '.join(f'{100 * e[i]:.2f}%' for i in at)} | "
                            f"{100 * e[-1]:.2f}% | {r['compute'][-1] / 1e15:.2f} |")
            if "C" in runs_s:
                b, c, a = runs_s["B"], runs_s["C"], runs_s["A"]
                reach = next((b["compute"][i] for i, e in enumerate(b["errors"])
                              if e <= c["errors"][-1]), None)
                share = None if reach is None else reach / c["compute"][-1]
                verdicts.append(
                    f"- {seed}: B reaches C's final error "
                    + (f"at {100 * share:.0f}% of C's compute" if share is not None
                       else "never") + f"; B ends {100 * (b['errors'][-1] - a['errors'][-1]):+.2f}"
                    f" points against A. Goal (≤ 70%, and below A): **"
                    + ("met" if share is not None and share <= 0.7
                       and b["errors"][-1] < a["errors"][-1] else "not met") + "**")
        parts.append(f"# E2: compute saved, from scratch ({g['epochs']} epochs, morph at "
                     f"epoch {g['split']})\n\n" + "\n".join(rows) + "\n\n"
                     + ("\n".join(verdicts) + "\n\n" if verdicts else
                        "B and C wait for the recipe decision.\n\n")
                     + "![E2](growth_E2.png)\n")
    if "E1" in growth:
        levers = "".join(f" --lever {n}" for n in growth["E1"].get("levers", {}))
        parts.append(f"Regenerate (from a clone at a fixed commit; finished trainings are "
                     f"skipped, an interrupted one resumes): `python examples/grow/growth.py "
                     f"--experiment E1 --weights akamaster_resnet20-12fca82f.th --data-dir DIR "
                     f"--epochs {growth['E1']['epochs']}{levers}`, then `python "
                     f"examples/grow/cause.py` and `python examples/grow/growth.py "
                     f"--report-only`. Machine: CPU capability "
                     f"{growth['E1'].get('machine', '?')}, float32.\n")
    return "\n".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiment", choices=("E1", "E2"), default="E1")
    ap.add_argument("--weights", default=None, help="E1: the akamaster ResNet-20 weights")
    ap.add_argument("--data-dir", default=os.environ.get("NETMORPH_DATA", ""))
    ap.add_argument("--epochs", type=int, default=10, help="E1's K")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--control-only", action="store_true", help="E2: run A alone")
    ap.add_argument("--lever", action="append", default=[], choices=sorted(LEVERS),
                    help="E1: also train this registered lever (PLAN.md), repeatable")
    ap.add_argument("--e2-epochs", type=int, default=15, help="E2's schedule (PLAN: 15)")
    ap.add_argument("--e2-split", type=int, default=5, help="E2's morph epoch (PLAN: 5)")
    ap.add_argument("--report-only", action="store_true",
                    help="only write growth.md from growth.json (and E1-cause.json)")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--work", default=str(HERE / "work"))
    args = ap.parse_args()
    out, work = Path(args.out), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    runs = Runs(args.data_dir, work)
    path = out / "growth.json"
    growth = json.loads(path.read_text()) if path.exists() else {}
    if args.report_only:
        if "E1" in growth:
            plot_e1(growth["E1"], out / "growth_E1.png")
        if "E2" in growth:
            plot_e2(growth["E2"], out / "growth_E2.png")
        (out / "growth.md").write_text(report(out, growth))
        print((out / "growth.md").read_text())
        return
    # levers already measured stay in the results (their runs are skipped, being finished)
    args.lever = list(dict.fromkeys([*growth.get("E1", {}).get("levers", {}), *args.lever]))
    result = e1(args, out, runs) if args.experiment == "E1" else e2(args, out, runs)
    result["machine"] = torch.backends.cpu.get_cpu_capability()
    if args.experiment == "E1":
        plot_e1(result, out / "growth_E1.png")
    growth[args.experiment] = result
    path.write_text(json.dumps(growth, indent=1) + "\n")
    (out / "growth.md").write_text(report(out, growth))
    print((out / "growth.md").read_text())


if __name__ == "__main__":
    main()
