"""examples/grow/cause.py, the measurement of what E1's child did with its new parameters:
on a work dir of known checkpoints, the movement of each group equals the relative norm
computed here from the perturbations that made them, and the groups are the parent's
parameters, the child's old ones and exactly those the morph added."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
import torch

from netmorph_cli.io.checkpoint import save
from netmorph_cli.morph import morphs as morph
from netmorph_cli.network import zoo
from netmorph_cli.spec.parse import load_spec

GROW = Path(__file__).resolve().parents[2] / "examples" / "grow"
sys.path.insert(0, str(GROW))
import cause  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def metrics(path: Path, losses: list[float]) -> None:
    Path(f"{path}.metrics.jsonl").write_text("".join(
        json.dumps({"epoch": i + 1, "train_loss": v, "train_error": v / 3, "test_error": v / 2})
        + "\n" for i, v in enumerate(losses)))


def test_movement_and_losses_are_the_perturbations(tmp_path):
    parent = zoo.create("resnet20", seed=0)
    child = morph.morph_network(parent, load_spec(GROW.parent / "modules" / "D.json"),
                                at="layer1.1.conv1")[0]
    new = [k for k in child.tensors if k not in parent.tensors]
    conv_new = next(k for k in new if child.tensors[k].dim() == 4)
    a, b = copy.deepcopy(parent), copy.deepcopy(child)
    a.tensors["linear.weight"] = a.tensors["linear.weight"] + 0.5  # A: one non-conv tensor moved
    b.tensors["conv1.weight"] = 2 * b.tensors["conv1.weight"]  # B: one old conv doubled
    b.tensors[conv_new] = torch.zeros_like(b.tensors[conv_new])  # one new conv zeroed
    for net, name in ((parent, "resnet20"), (child, "E1_D_s0_init"), (a, "E1_A_s0"),
                      (b, "E1_B_s0")):
        save(net, tmp_path / f"{name}.safetensors")
    metrics(tmp_path / "E1_A_s0.safetensors", [0.2, 0.1])
    metrics(tmp_path / "E1_B_s0.safetensors", [0.3, 0.05])

    res = cause.measure(tmp_path, 0, "D")
    m = res["movement"]
    names = [k for k, _ in parent.module().named_parameters()]
    total = sum(float(parent.tensors[k].double().pow(2).sum()) for k in names)
    fc = parent.tensors["linear.weight"].numel() * 0.25
    # float32 weights: w + 0.5 − w is 0.5 to float32 rounding (~6e-8 relative)
    assert m["A"]["all"] == pytest.approx((fc / total) ** 0.5, rel=1e-6)
    assert m["A"]["conv"] == 0.0 and m["A"]["other"] > 0
    # B's old parameters: the parent's, less the replaced conv; conv1 doubled moved by itself
    old = [k for k in names if k != "layer1.1.conv1.weight"]
    assert m["B old"]["parameters"] == sum(parent.tensors[k].numel() for k in old)
    c1 = float(parent.tensors["conv1.weight"].double().pow(2).sum())
    assert m["B old"]["all"] == pytest.approx(
        (c1 / sum(float(parent.tensors[k].double().pow(2).sum()) for k in old)) ** 0.5,
        rel=1e-9)
    assert m["B old"]["other"] == 0.0
    # B's new parameters: what the morph added (the history's record), one conv zeroed
    new_params = [k for k, _ in child.module().named_parameters() if k in set(new)]
    assert m["B new"]["parameters"] == sum(child.tensors[k].numel() for k in new_params)
    convs = [k for k in new_params if child.tensors[k].dim() == 4]
    z = float(child.tensors[conv_new].double().pow(2).sum())
    assert m["B new"]["conv"] == pytest.approx(
        (z / sum(float(child.tensors[k].double().pow(2).sum()) for k in convs)) ** 0.5,
        rel=1e-9)
    assert m["B new"]["other"] == 0.0
    assert res["train_loss"] == {"A": [0.2, 0.1], "B": [0.3, 0.05]}
    text = cause.table([res])
    assert "| 2 | 0.1000 | 0.0500 | 0.500 |" in text
    assert f"| B new | {m['B new']['parameters']:,} |" in text
    both = cause.tables({"B": [res], "new-lr-0.3": [res]})
    assert both.startswith(text) and "B = lever new-lr-0.3:" in both
