"""Relative gradients at the morph: ‖g‖/‖w‖ of each parameter group (the parent's
convolutions and the rest; the morph's new convolutions and the rest), train mode, summed
over the first BATCHES batches of 128 CIFAR-10 training images (no augmentation), for the
parent and for E1's child as morphed (examples/grow/PLAN.md, progress notes).

    python examples/grow/gradients.py --data-dir DIR [--work examples/grow/work] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import cause  # beside this script: its grouping of convolutions and the rest
import numpy as np
import torch

from netmorph_cli.io.checkpoint import load
from netmorph_cli.training.data import load_dataset, to_tensor
from netmorph_cli.training.growth import new_parameter_names

HERE = Path(__file__).resolve().parent


def relative_gradients(path: Path, x: torch.Tensor, y: torch.Tensor, batches: int,
                       batch: int = 128) -> dict[str, tuple[float, int]]:
    net = load(path)
    model = net.module().train()
    new = set(new_parameter_names(net, model))
    for i in range(batches):
        loss = torch.nn.functional.cross_entropy(model(x[i * batch:(i + 1) * batch]),
                                                 y[i * batch:(i + 1) * batch]) / batches
        loss.backward()
    params = dict(model.named_parameters())
    groups = {f"{age} {part}": [params[k] for k in names]
              for age, of_age in (("new", [k for k in params if k in new]),
                                  ("old", [k for k in params if k not in new]))
              for part, names in cause.split(of_age, net).items() if names}
    return {g: (sum(float(p.grad.double().pow(2).sum()) for p in ps) ** 0.5
                / sum(float(p.detach().double().pow(2).sum()) for p in ps) ** 0.5,
                sum(p.numel() for p in ps)) for g, ps in sorted(groups.items())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=os.environ.get("NETMORPH_DATA", ""))
    ap.add_argument("--work", default=str(HERE / "work"))
    ap.add_argument("--seed", type=int, default=0, help="which E1 child (its morph seed)")
    ap.add_argument("--batches", type=int, default=4)
    args = ap.parse_args()
    work = Path(args.work)
    parent = work / "resnet20.safetensors"
    norm = load(parent).meta["normalization"]
    ds = load_dataset("cifar10", args.data_dir)
    n = 128 * args.batches
    x = to_tensor(ds.x_train[:n], norm["mean"], norm["std"])
    y = torch.as_tensor(np.asarray(ds.y_train[:n])).long()
    print("| network | group | parameters | ‖g‖/‖w‖ |\n|---|---|---|---|")
    for path in (parent, work / f"E1_D_s{args.seed}_init.safetensors"):
        for g, (rel, count) in relative_gradients(path, x, y, args.batches).items():
            print(f"| {path.stem} | {g} | {count:,} | {rel:.3f} |")


if __name__ == "__main__":
    main()
