"""The real akamaster ResNets through the traced importer (``--model``), as any user's CNN.

The original model code (``test_import_real.ResNet``: option-A LambdaLayer shortcuts,
functional ReLU, ``F.avg_pool2d`` over the whole map, ``view(size(0), -1)``) is traced with
torch.export and converted op by op; the result must be the network the state_dict importer
builds from the same file (netmorph's hand-written ResNet layout): the same logits in
float64 (≤ 1e-12 relative: the same ops on the same tensors), the same FLOPs, two option-A
shortcuts, and on real CIFAR-10 images the same predictions.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_import_real import FILES, SHARED, WEIGHTS, ResNet

from netmorph_cli.io import importers
from netmorph_cli.io.export import export_network
from netmorph_cli.morph.morphs import morph_network
from netmorph_cli.morph.verify import verify
from netmorph_cli.network import flops
from netmorph_cli.spec.parse import load_spec

pytestmark = [pytest.mark.skipif(not WEIGHTS.is_dir(), reason="../shared/weights is absent"),
              pytest.mark.usefixtures("one_thread")]


def akamaster(depth: int = 20) -> ResNet:
    """The factory ``--model test_import_traced_real:akamaster`` calls."""
    return ResNet((depth - 2) // 6)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture(scope="module")
def both():
    path = WEIGHTS / FILES[20]
    traced, err = importers.import_factory(path, "test_import_traced_real:akamaster",
                                           kwargs={"depth": 20})
    return traced, importers.import_state_dict(path), err


def test_the_traced_import_is_the_state_dict_import(both):
    traced, plain, err = both
    assert err == 0.0  # against the model itself, float32: the same ops, bit-exact
    d = traced.description
    assert sum(n["op"] == "shortcut_a" for n in d["nodes"]) == 2
    assert flops.count_flops(d) == flops.count_flops(plain.description)
    assert sorted(tuple(t.shape) for t in traced.tensors.values()) == \
        sorted(tuple(t.shape) for t in plain.tensors.values())
    assert {"conv1", "layer1.0.conv1", "layer2.0.conv1", "linear"} <= set(traced.nodes)
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0),
                    dtype=torch.float64)
    with torch.no_grad():
        assert _rel(traced.module(torch.float64)(x), plain.module(torch.float64)(x)) <= 1e-12


def test_same_predictions_on_real_cifar10(both):
    data = SHARED / "data" / "cifar10-mini.npz"
    if not data.exists():
        pytest.skip("../shared/data/cifar10-mini.npz is absent")
    traced, plain, _ = both
    with np.load(data) as d:
        x, y = torch.from_numpy(d["x_test"][::2]), torch.from_numpy(d["y_test"][::2])
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)  # akamaster's training
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = (x.permute(0, 3, 1, 2).float() / 255 - mean) / std
    with torch.no_grad():
        p1, p2 = traced.module()(x).argmax(1), plain.module()(x).argmax(1)
    assert torch.equal(p1, p2)
    assert (p1 == y).float().mean().item() >= 0.87  # published 91.73% on the full set


@pytest.mark.slow  # the same steps run by default on the zoo (tests/cli/test_import_traced.py)
def test_morph_export_and_import_back(both, tmp_path):
    traced, _, _ = both
    parent = traced.to(torch.float64)
    child, _ = morph_network(parent, load_spec("examples/modules/D.json"), at="layer1.0.conv2")
    assert verify(parent, child, samples=8).max_rel_err <= 1e-10
    export_network(child, tmp_path / "c.pt2")
    back, err = importers.import_program(tmp_path / "c.pt2")
    assert err == 0.0 and back.description == child.description
    assert all(torch.equal(back.tensors[k], t) for k, t in child.tensors.items())
