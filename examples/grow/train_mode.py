"""Training-mode preservation of every preset and module D, calibrated or not.

For each parent (real akamaster ResNet-20 and ResNet-56 weights) and each morph, the child
is made as it is (new BN on mean 0, var 1) and with calibration (``morph --calibrate``:
32 batches of 128 training images), then run against its parent in training mode on
8 other batches of 128 training images (``verify --mode train``) and in eval mode on
random inputs (float32). A second table shows how the number of calibration batches
changes the result (1c1 on ResNet-20). Writes results/train_mode.md and .json.

    python examples/grow/train_mode.py --weights-dir DIR --data-dir DIR
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from netmorph_cli.io import importers
from netmorph_cli.morph import calibrate, verify
from netmorph_cli.morph import morphs as morph
from netmorph_cli.spec.parse import load_spec
from netmorph_cli.training import train
from netmorph_cli.training.data import load_dataset

HERE = Path(__file__).resolve().parent
WEIGHTS = {20: "akamaster_resnet20-12fca82f.th", 56: "akamaster_resnet56-4bfd9763.th"}
PRESETS = ["1c1", "1c1_half", "3c1", "3c3", "1c1_2branch", "3c3_2branch_half"]
D_SPEC = str(HERE.parent / "modules" / "D.json")
D_AT = "layer1.1.conv1"


def measure(parent, child, vb) -> dict:
    tm = verify.verify_train_mode(parent, child, vb)
    ev = verify.verify(parent, child, dtype=torch.float32, samples=16)
    return {"child_loss": tm.child_loss, "parent_loss": tm.parent_loss,
            "child_accuracy": tm.child_accuracy, "parent_accuracy": tm.parent_accuracy,
            "ratio": tm.child_loss / tm.parent_loss, "max_rel_err": tm.max_rel_err,
            "loss_diff_std": tm.loss_diff_std, "passed": tm.passed,
            "eval_max_rel_err": ev.max_rel_err, "eval_passed": ev.passed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights-dir", required=True)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--depths", default="20,56")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args()
    ds = load_dataset("cifar10", args.data_dir)
    rows, sweep = [], []
    t0 = time.time()
    for depth in [int(d) for d in args.depths.split(",")]:
        parent = importers.import_state_dict(Path(args.weights_dir) / WEIGHTS[depth])
        vb = train.training_batches(parent, "cifar10", batches=8, purpose="verify", data=ds)
        cb = [x for x, _ in train.training_batches(parent, "cifar10", batches=32,
                                                   purpose="calibrate", data=ds)]
        for name in [*PRESETS, "D"]:
            where = {"at": D_AT} if name == "D" else {}
            module = load_spec(D_SPEC) if name == "D" else morph.Preset.parse(name)
            child, _ = morph.morph_network(parent, module, seed=0, **where)
            cal = calibrate.calibrate(child, cb, dataset="cifar10")
            for how, net in (("as is", child), ("calibrated", cal)):
                r = {"depth": depth, "morph": f"D at {D_AT}" if name == "D" else name,
                     "bn": how, **measure(parent, net, vb)}
                rows.append(r)
                print(json.dumps(r), flush=True)
            if depth == 20 and name == "1c1":
                for n in (1, 4, 16, 32, 128):
                    more = [x for x, _ in train.training_batches(
                        parent, "cifar10", batches=n, purpose="calibrate", data=ds)]
                    s = {"batches": n, **measure(parent, calibrate.calibrate(
                        child, more, dataset="cifar10"), vb)}
                    sweep.append(s)
                    print(json.dumps(s), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_mode.json").write_text(json.dumps({"rows": rows, "calibration_batches": sweep,
                                                     "seconds": round(time.time() - t0)},
                                                    indent=2) + "\n")
    lines = ["| parent | morph | new BN | train-mode loss child / parent (ratio) | "
             "accuracy child / parent | max rel. logit diff (train mode) | "
             "eval max rel. err (float32) | verify --mode train |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| resnet{r['depth']} | {r['morph']} | {r['bn']} | {r['child_loss']:.3f} "
                     f"/ {r['parent_loss']:.3f} ({r['ratio']:.2f}×) | "
                     f"{100 * r['child_accuracy']:.1f}% / {100 * r['parent_accuracy']:.1f}% | "
                     f"{r['max_rel_err']:.2e} | {r['eval_max_rel_err']:.1e} | "
                     f"{'passed' if r['passed'] else 'FAILED'} |")
    lines += ["", "Calibration batches (of 128 images), 1c1 on ResNet-20:", "",
              "| batches | train-mode loss child / parent (ratio) | max rel. logit diff | "
              "std of per-batch loss difference |", "|---|---|---|---|"]
    for s in sweep:
        lines.append(f"| {s['batches']} | {s['child_loss']:.4f} / {s['parent_loss']:.4f} "
                     f"({s['ratio']:.3f}×) | {s['max_rel_err']:.2e} | {s['loss_diff_std']:.4f} |")
    (out / "train_mode.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
