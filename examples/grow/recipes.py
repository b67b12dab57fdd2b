"""Which post-morph training recipe keeps a grown child in its parent's basin? (issue 19, 3.)

Protocol (fixed before the runs; examples/grow/PLAN.md):
  parent   the real akamaster ResNet-20 (8.27% test error);
  networks control (the parent trained on), 1c1 (preset, 6 blocks) and module D at
           layer1.1.conv1 (examples/modules/D.json), morphed with the arm's seed;
  data     CIFAR-10's 50,000 training images; the 10,000 test images are reported, never
           chosen on. (No validation split: the parent was trained on all 50,000 training
           images, and a held-out 5,000 of them measured 0.20% error for every arm alike);
  arms     one epoch (391 steps of 128) of ``netmorph_cli.train.train`` each, the same
           batches and augmentation for every arm of a seed (drawn from (seed, epoch, step)):
             a continue: cosine from lr 0.02 to 0 (today's --recipe continue)
             b a + new parameters at lr ×0.1          c a + new lr ramped from 0 over 200 steps
             d a + no weight decay on new parameters  e a + the parent's momentum carried
             f LEMON-style: cosine from lr 0.1        g NASH-style: cosine from lr 0.05
           the control runs a, f and g (the schedules), the children all seven; round 2 runs
           the combinations the decision rule names once round 1 is complete;
  measured mean train-mode loss over steps 1–50 and the last 50 (342–391), test error after
           the epoch; 2 seeds.
  e's state the akamaster file has no optimizer state, so the parent's momentum is made at the
           parent: 20 SGD steps at lr 0 (momentum 0.9, weight decay 1e-4) on 20 training
           batches of their own draw, BN statistics restored, written as a training state
           (``OUT.state.pt``) and carried with ``train(..., from_state=...)``.
  decide   the recipe for a child (--recipe grow) is the arm with the lowest mean train-mode
           loss over the last 50 steps, mean over both networks and both seeds (the training
           data is all the selection sees); within 1% of it, the lower loss over steps 1–50.
           The parent's recipe for E1 is the control arm chosen the same way. Round 2: the
           best schedule (a, f or g) with the best modifier (b, c, d or e) and with the best
           two together.

Every arm writes its result (JSON) when it ends and is skipped when that exists, so the
script continues after a kill (losing at most the arm in flight). Results: results/recipes.md
and recipes.json (every finished arm).

    python examples/grow/recipes.py --weights akamaster_resnet20-12fca82f.th --data-dir DIR
    python examples/grow/recipes.py ... --report-only     # tables from the finished arms
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from netmorph_cli.io import importers
from netmorph_cli.morph.morphs import morph_network
from netmorph_cli.network.presets import Preset
from netmorph_cli.spec.parse import load_spec
from netmorph_cli.training.data import Dataset, load_dataset
from netmorph_cli.training.evaluation import training_batches
from netmorph_cli.training.runfiles import save_state
from netmorph_cli.training.train import TrainHooks, recipe_config, train

HERE = Path(__file__).resolve().parent
D_SPEC = HERE.parent / "modules" / "D.json"
WINDOW = 50
# arm → (lr, new-parameter options, carry the parent's momentum)
SCHEDULES = {"a": 0.02, "f": 0.1, "g": 0.05}
MODIFIERS: dict[str, dict[str, Any]] = {
    "b": {"new_lr_scale": 0.1}, "c": {"new_warmup": 200}, "d": {"new_weight_decay": 0.0},
    "e": {"carry": True}}
NETWORKS = ("control", "1c1", "D")
# by priority (each arm runs for every seed before the next): the core hypothesis first
ORDER = ["control:a", "1c1:a", "1c1:b", "D:a", "D:b", "1c1:c", "1c1:e", "1c1:d", "D:c", "D:e",
         "D:d", "1c1:f", "1c1:g", "control:f", "control:g", "D:f", "D:g"]
DESCRIBE = {"a": "continue: cosine 0.02 → 0", "b": "a + new params lr ×0.1",
            "c": "a + new params lr ramp 0 → 1 over 200 steps",
            "d": "a + no weight decay on new params", "e": "a + parent's momentum carried",
            "f": "LEMON-style: cosine 0.1 → 0", "g": "NASH-style: cosine 0.05 → 0"}


def arm_options(arm: str) -> tuple[float, dict[str, Any], bool]:
    """An arm's peak lr, new-parameter options and whether it carries momentum: a name is a
    schedule letter (a, f, g) followed by modifier letters (b–e), e.g. "f+bd"."""
    sched, _, mods = arm.partition("+")
    if sched in MODIFIERS:  # round 1's b–e are modifiers of a
        sched, mods = "a", sched
    opts: dict[str, Any] = {}
    for m in mods:
        opts.update(MODIFIERS[m])
    carry = bool(opts.pop("carry", False))
    return SCHEDULES[sched], opts, carry


def momentum_state(parent, data: Dataset, seed: int, path: Path) -> None:
    """The parent's momentum at its own weights (20 steps at lr 0), as a training state."""
    if path.exists():
        return
    model = parent.module(torch.float32).train()
    kept = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9, weight_decay=1e-4)
    for x, y in training_batches(parent, "cifar10", batches=20, seed=seed, purpose="momentum",
                                 data=data):
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.load_state_dict(kept)  # the weights never moved; the BN statistics did
    cfg = recipe_config("continue", epochs=1)
    save_state(path, model, opt, cfg, None, None, 0, 0, [])


def make_network(name: str, parent, seed: int):
    if name == "control":
        return parent
    spec = Preset.parse("1c1") if name == "1c1" else load_spec(D_SPEC)
    at = None if name == "1c1" else "layer1.1.conv1"
    child, _ = morph_network(parent, spec, at=at, seed=seed)
    return child


def run_arm(key: str, seed: int, parent, data: Dataset, work: Path) -> dict:
    net_name, arm = key.split(":")
    lr, opts, carry = arm_options(arm)
    if net_name == "control" and (opts or carry):
        raise ValueError(f"the control has no new parameters: {key}")
    net = make_network(net_name, parent, seed)
    cfg = recipe_config("continue", epochs=1, lr=lr, seed=seed, precision="fp32", **opts)
    losses: list[float] = []
    state = work / f"parent_momentum_s{seed}.state.pt"
    if carry:
        momentum_state(parent, data, seed, state)
    out = work / f"{net_name}_{arm}_s{seed}.safetensors"
    t0 = time.time()
    trained, history = train(net, cfg, out, dataset=data, force=True,
                             hooks=TrainHooks(on_loss=lambda i, v: losses.append(v)),
                             from_state=state if carry else None)
    for f in (out, Path(f"{out}.state.pt")):
        f.unlink(missing_ok=True)
    return {"network": net_name, "arm": arm, "seed": seed, "lr": lr, "options": opts,
            "carry": carry, "steps": len(losses), "loss_first": statistics.fmean(losses[:WINDOW]),
            "loss_last": statistics.fmean(losses[-WINDOW:]),
            "test_error": history[-1].test_error,
            "train_loss": history[-1].train_loss, "seconds": round(time.time() - t0, 1),
            "losses": [round(v, 5) for v in losses]}


def load_results(work: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(work.glob("*.result.json"))]


def choose(results: list[dict], networks: tuple[str, ...],
           with_round2: bool = True) -> tuple[str | None, list[tuple]]:
    """The decision rule: lowest mean last-50 loss over ``networks`` × seeds, only arms that
    every (network, seed) finished; within 1% of it, the lower mean loss of steps 1–50."""
    seeds = sorted({r["seed"] for r in results})
    by: dict[str, list[dict]] = {}
    for r in results:
        if r["network"] in networks:
            by.setdefault(r["arm"], []).append(r)
    full = {a: rs for a, rs in by.items() if len(rs) == len(networks) * len(seeds)}
    wanted = {"a", "f", "g"} if networks == ("control",) else set(SCHEDULES) | set(MODIFIERS)
    wanted |= {a for a in by if "+" in a}  # round 2, once started, is part of the decision
    if with_round2 and networks != ("control",) and wanted <= set(full):  # round 2 is due
        wanted |= set(round2(results))
    ranked = sorted((statistics.fmean(r["loss_last"] for r in rs),
                     statistics.fmean(r["loss_first"] for r in rs), a) for a, rs in full.items())
    if not ranked or not wanted <= set(full) or len(seeds) < 2:
        return None, ranked  # not decided before every arm has run for both seeds
    best = ranked[0][0]
    near = [t for t in ranked if t[0] <= best * 1.01]
    return min(near, key=lambda t: t[1])[2], ranked


def round2(results: list[dict]) -> list[str]:
    """Round 2's child arms: the best schedule with the best modifier, and with the best two."""
    children = ("1c1", "D")
    _, ranked = choose(results, children, with_round2=False)
    done = {a for *_, a in ranked}
    if not set(SCHEDULES) | set(MODIFIERS) <= done:
        return []
    sched = next(a for *_, a in ranked if a in SCHEDULES)
    mods = [a for *_, a in ranked if a in MODIFIERS][:2]
    both = f"{sched}+{''.join(sorted(mods))}"
    # a + one modifier is round 1's arm of that modifier: not run twice
    return [both] if sched == "a" else [f"{sched}+{mods[0]}", both]


def _vs(pairs: list[tuple[dict, dict]], k: str, scale: float = 1.0,
        fmt: str = "{:+.3f}") -> str:
    """The mean difference from the control of the same seed."""
    if not pairs:
        return "–"
    return fmt.format(statistics.fmean(scale * (r[k] - c[k]) for r, c in pairs))


def _describe(arm: str) -> str:
    if arm in DESCRIBE:
        return DESCRIBE[arm]
    sched, _, mods = arm.partition("+")
    return " + ".join([DESCRIBE[sched].split(":")[0]] + [DESCRIBE[m][4:] for m in mods])


def report(results: list[dict], out: Path, meta: dict) -> None:
    seeds = sorted({r["seed"] for r in results})
    rows = ["| network | arm | recipe | seeds | loss 1–50 | vs control | loss last 50 | "
            "vs control | test error | vs control |", "|" + "---|" * 10]
    cells: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        cells.setdefault((r["network"], r["arm"]), []).append(r)
    ctrl = {r["seed"]: r for r in results if r["network"] == "control" and r["arm"] == "a"}
    for (net, arm), rs in sorted(cells.items(), key=lambda kv: (NETWORKS.index(kv[0][0]),
                                                                  len(kv[0][1]), kv[0][1])):
        pairs = [] if (net, arm) == ("control", "a") else [
            (r, ctrl[r["seed"]]) for r in rs if r["seed"] in ctrl]

        def mean(k: str, rs: list[dict] = rs) -> float:
            return statistics.fmean(r[k] for r in rs)

        rows.append(f"| {net} | {arm} | {_describe(arm)} | {len(rs)} | "
                    f"{mean('loss_first'):.4f} | {_vs(pairs, 'loss_first')} | "
                    f"{mean('loss_last'):.4f} | {_vs(pairs, 'loss_last')} | "
                    f"{100 * mean('test_error'):.2f}% | "
                    f"{_vs(pairs, 'test_error', 100, '{:+.2f}')} |")
    child, ranked = choose(results, ("1c1", "D"))
    parent, pranked = choose(results, ("control",))
    decision = [
        f"- child recipe (lowest mean loss over the last 50 steps, 1c1 and D × {len(seeds)} "
        f"seeds, arms every run finished): **{child or 'not decided yet'}**"
        + (f" ({_describe(child)})" if child else ""),
        "  - ranking: " + ", ".join(f"{a} {v:.4f}" for v, _, a in ranked),
        f"- parent recipe (control arms): **{parent or 'not decided yet'}**",
        "  - ranking: " + ", ".join(f"{a} {v:.4f}" for v, _, a in pranked)]
    text = (f"# Post-morph training recipes, side by side (issue 19)\n\n"
            f"Real akamaster ResNet-20; one epoch (391 steps of 128 images) per arm on the "
            f"50,000 CIFAR-10 training images, the same batches for every arm of a seed; test "
            f"error on the 10,000 test images (reported, never chosen on). Losses are the mean "
            f"train-mode loss of steps 1–50 and of the last 50 steps; 'vs control' is the "
            f"difference from the control (parent, arm a) of the same seed. Seeds: "
            f"{', '.join(map(str, seeds))}.\n\n"
            + "\n".join(rows) + "\n\n## Decision (rule in examples/grow/PLAN.md)\n\n"
            + "\n".join(decision) + "\n\n"
            f"Regenerate: `python examples/grow/recipes.py --weights "
            f"akamaster_resnet20-12fca82f.th --data-dir DIR` (continues unfinished arms; "
            f"`--report-only` only writes the tables).\n\nMachine: {json.dumps(meta)}\n")
    (out / "recipes.md").write_text(text)
    slim = [{k: v for k, v in r.items() if k != "losses"} for r in results]
    (out / "recipes.json").write_text(json.dumps(
        {"results": slim, "child_recipe": child, "parent_recipe": parent, "meta": meta,
         "losses": {f"{r['network']}:{r['arm']}:s{r['seed']}": r["losses"] for r in results}},
        indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", required=True, help="akamaster resnet20-12fca82f.th")
    ap.add_argument("--data-dir", default=os.environ.get("NETMORPH_DATA", ""))
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--work", default=None, help="per-arm results [default: OUT/recipes]")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--max-arms", type=int, default=None, help="stop after this many arms")
    ap.add_argument("--smoke", type=int, default=None, metavar="N",
                    help="a quick check of the script: N training images, 512 test images")
    args = ap.parse_args()
    out = Path(args.out)
    work = Path(args.work or out / "recipes")
    work.mkdir(parents=True, exist_ok=True)
    meta = {"cpu": platform.processor() or platform.machine(),
            "capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "precision": "fp32"}
    if not args.report_only:
        if not Path(args.weights).is_file():
            sys.exit(f"Error: no file {args.weights} (the akamaster ResNet-20 weights)")
        full = load_dataset("cifar10", args.data_dir)
        data = full
        if args.smoke:
            data = Dataset(full.name, full.num_classes, full.x_train[:args.smoke],
                           full.y_train[:args.smoke], full.x_test[:512], full.y_test[:512],
                           full.source + " (smoke)")
        parent = importers.import_state_dict(args.weights)
        ran = 0
        seeds = [int(s) for s in args.seeds.split(",")]
        for round_ in (1, 2):
            keys = ORDER if round_ == 1 else [
                f"{n}:{a}" for a in round2(load_results(work)) for n in ("1c1", "D")]
            for key in keys:
                for seed in seeds:
                    path = work / f"{key.replace(':', '_')}_s{seed}.result.json"
                    if path.exists():
                        continue
                    if args.max_arms is not None and ran >= args.max_arms:
                        break
                    print(f"+ {key} seed {seed}", flush=True)
                    result = run_arm(key, seed, parent, data, work)
                    result["machine"] = meta  # arms may run on several sessions' CPUs
                    path.write_text(json.dumps(result) + "\n")
                    ran += 1
                    print(f"= {key} s{seed}: loss {result['loss_first']:.4f} / "
                          f"{result['loss_last']:.4f}, "
                          f"test {100 * result['test_error']:.2f}%, {result['seconds']} s",
                          flush=True)
                    report(load_results(work), out, meta)
    report(load_results(work), out, meta)
    print((out / "recipes.md").read_text())


if __name__ == "__main__":
    main()
