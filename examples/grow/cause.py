"""What E1's child did with what the morph gave it (examples/grow/PLAN.md, section 2: "the
cause is measured (train loss gap against A over the epochs, the morph-added parameters'
movement)").

Reads E1's finished work (``examples/grow/work/``: the parent, A and B per seed, the child as
morphed) and measures, per seed:

- the train-mode loss of every epoch (the mean over the epoch's batches, as ``train``
  records it) of B against A, and both test errors;
- how far each group of parameters moved over the K epochs, as the relative norm
  ||θ_end − θ_start|| / ||θ_start|| of the group's tensors together: A's parameters (from
  the parent), B's parameters that the parent had (from the parent), B's parameters that the
  morph added (from the child as morphed; its solved filters, new BN layers, PReLU slopes),
  each also split into convolution weights and the rest.

    python examples/grow/cause.py            # after growth.py --experiment E1
    python examples/grow/cause.py --work DIR --out DIR

Writes results/E1-cause.json and prints a Markdown table (growth.md's "cause" section).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from netmorph_cli.io.checkpoint import load
from netmorph_cli.training.growth import new_parameter_names

HERE = Path(__file__).resolve().parent


def epochs(ckpt: Path) -> list[dict]:
    return [json.loads(line) for line in Path(f"{ckpt}.metrics.jsonl").read_text().splitlines()]


def moved(start: dict[str, torch.Tensor], end: dict[str, torch.Tensor],
          names: list[str]) -> float | None:
    """||end − start|| / ||start|| over ``names`` together (float64); None for no names."""
    if not names:
        return None
    d = sum(float((end[k].double() - start[k].double()).pow(2).sum()) for k in names)
    s = sum(float(start[k].double().pow(2).sum()) for k in names)
    return (d / s) ** 0.5 if s > 0 else float("inf")


def split(names: list[str], net) -> dict[str, list[str]]:
    """Convolution weights (4-d tensors) and the rest (BN, PReLU, biases, the classifier)."""
    conv = [k for k in names if net.tensors[k].dim() == 4]
    return {"conv": conv, "other": [k for k in names if k not in set(conv)]}


def measure(work: Path, seed: int, child: str, arm: str = "B") -> dict:
    """``arm``: E1's B, or a lever's name (growth.py's LEVERS), measured as B."""
    parent = load(work / "resnet20.safetensors")
    init = load(work / f"E1_{child}_s{seed}_init.safetensors")
    a, b = (load(work / f"E1_{r}_s{seed}.safetensors") for r in ("A", arm))
    params_a = [k for k, _ in parent.module().named_parameters()]
    model = init.module()
    new = list(new_parameter_names(init, model))
    old = [k for k, _ in model.named_parameters()
           if k not in set(new) and k in parent.tensors
           and parent.tensors[k].shape == init.tensors[k].shape]
    groups = {"A": (parent, a, params_a), "B old": (parent, b, old), "B new": (init, b, new)}
    movement = {}
    for g, (start, end, names) in groups.items():
        parts = split(names, start)
        movement[g] = {"all": moved(start.tensors, end.tensors, names),
                       **{p: moved(start.tensors, end.tensors, n) for p, n in parts.items()},
                       "parameters": sum(start.tensors[k].numel() for k in names)}
    ea, eb = (epochs(work / f"E1_{r}_s{seed}.safetensors") for r in ("A", arm))
    return {"seed": seed, "arm": arm, "movement": movement,
            "train_loss": {"A": [e["train_loss"] for e in ea], "B": [e["train_loss"] for e in eb]},
            "train_error": {"A": [e["train_error"] for e in ea],
                            "B": [e["train_error"] for e in eb]},
            "test_error": {"A": [e["test_error"] for e in ea], "B": [e["test_error"] for e in eb]}}


def table(res: list[dict]) -> str:
    k = min(len(s["train_loss"][r]) for s in res for r in "AB")
    show = sorted({1, 2, k // 2, k - 1, k} & set(range(1, k + 1)))
    rows = ["| epoch | train loss A | train loss B | B / A | train error A | train error B "
            "| test error A | test error B |", "|---|---|---|---|---|---|---|---|"]
    for e in show:
        mean = {q: {r: statistics.fmean(s[q][r][e - 1] for s in res) for r in "AB"}
                for q in ("train_loss", "train_error", "test_error")}
        loss, tr, te = mean["train_loss"], mean["train_error"], mean["test_error"]
        rows.append(f"| {e} | {loss['A']:.4f} | {loss['B']:.4f} | {loss['B'] / loss['A']:.3f} | "
                    f"{100 * tr['A']:.2f}% | {100 * tr['B']:.2f}% | "
                    f"{100 * te['A']:.2f}% | {100 * te['B']:.2f}% |")
    rows += ["", "| parameters | count | moved (all) | conv weights | the rest |",
             "|---|---|---|---|---|"]

    def f(x):
        return "–" if x is None else f"{x:.3f}"

    for g in res[0]["movement"]:
        m = [s["movement"][g] for s in res]
        mean = {p: (None if any(x[p] is None for x in m) else statistics.fmean(x[p] for x in m))
                for p in ("all", "conv", "other")}
        rows.append(f"| {g} | {m[0]['parameters']:,} | {f(mean['all'])} | {f(mean['conv'])} | "
                    f"{f(mean['other'])} |")
    return (f"Means over seeds {', '.join(str(s['seed']) for s in res)}; moved = "
            "‖θ_end − θ_start‖ / ‖θ_start‖ over the K epochs (B new: from the child as "
            "morphed).\n\n"
            + "\n".join(rows) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(HERE / "work"))
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args()
    out, work = Path(args.out), Path(args.work)
    e1 = json.loads((out / "growth.json").read_text())["E1"]
    res = {"B": [measure(work, s, e1["B"]["child"]) for s in e1["seeds"]]}
    for name, lever in e1.get("levers", {}).items():
        res[name] = [measure(work, s, lever["child"], name) for s in e1["seeds"]]
    (out / "E1-cause.json").write_text(json.dumps(res, indent=1) + "\n")
    print(tables(res))


def tables(res: dict[str, list[dict]]) -> str:
    """``table`` for B and for each lever (B there: the lever's run)."""
    return "\n".join((f"B = lever {arm}:\n\n" if arm != "B" else "") + table(r)
                     for arm, r in res.items())


if __name__ == "__main__":
    main()
