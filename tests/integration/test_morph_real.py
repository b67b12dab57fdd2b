"""The real CIFAR-10 ResNet-20 (akamaster's, option-A shortcuts) morphed to 1c1 keeps its
logits on real CIFAR-10 test images, and its accuracy.

Tolerances: logits relative error (max |Δ| / max |parent logits|) ≤ 1e-5 for the float32
child run in float32 (all 1000 test images of cifar10-mini), ≤ 1e-10 for the float64 child
run in float64 (every 5th image: float64 convolutions are slow on CPU); top-1 predictions
identical; accuracy ≥ 0.85 for parent and child (published 91.73% on the full test set; the
standard error on 1000 images is about 0.9 points).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from netmorph_cli.io import checkpoint as ck
from netmorph_cli.io import importers
from netmorph_cli.morph.morphs import morph_network
from netmorph_cli.morph.verify import verify
from netmorph_cli.network.presets import Preset

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
WEIGHTS = SHARED / "weights" / "akamaster_resnet20-12fca82f.th"
DATA = SHARED / "data" / "cifar10-mini.npz"

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not (WEIGHTS.exists() and DATA.exists()),
                                reason="../shared weights or data are absent")]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)




@pytest.fixture(scope="module")
def images() -> tuple[torch.Tensor, torch.Tensor]:
    with np.load(DATA) as d:
        x, y = torch.from_numpy(d["x_test"]), torch.from_numpy(d["y_test"])
    assert x.shape == (1000, 32, 32, 3) and x.dtype == torch.uint8
    mean = torch.tensor(MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float64).view(1, 3, 1, 1)
    x = (x.permute(0, 3, 1, 2).to(torch.float64) / 255 - mean) / std  # NHWC → NCHW
    return x, y


@pytest.fixture(scope="module")
def parent():
    net = importers.import_state_dict(WEIGHTS)
    assert net.meta["normalization"] == {"mean": list(MEAN), "std": list(STD)}
    return net


def logits(net, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    module = net.module(dtype)
    with torch.inference_mode():  # in batches: 1000 float64 images at once thrash memory
        return torch.cat([module(b.to(dtype)) for b in x.split(100)])


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return (a - ref).abs().max().item() / ref.abs().max().item()


@pytest.mark.parametrize("dtype,tol,every", [(torch.float32, 1e-5, 1), (torch.float64, 1e-10, 5)])
def test_real_resnet20_morphs_to_1c1_with_unchanged_logits(parent, images, dtype, tol, every):
    x, y = images
    # float64 convolutions run at ~2 GMAC/s here: the float64 check uses every 5th image
    # (200, 20 per class); float32 uses all 1000 and checks the accuracy
    x, y = x[::every], y[::every]
    child, _ = morph_network(parent, Preset.parse("1c1"), dtype=dtype)
    assert child.dtype == dtype
    assert sum(n["op"] == "shortcut_a" for n in child.description["nodes"]) == 2
    y_parent = logits(parent, x, dtype)
    y_child = logits(child, x, dtype)
    assert rel_err(y_child, y_parent) <= tol
    assert torch.equal(y_child.argmax(1), y_parent.argmax(1))
    for out in (y_parent, y_child):
        assert (out.argmax(1) == y).double().mean().item() >= 0.85
    # verify on real images agrees, module by module
    report = verify(parent, child, dtype=dtype, inputs=x[:50], inputs_name="cifar10")
    assert report.passed and report.top1_agreement == 1.0
    assert len(report.sites) == 6 and all(s.max_rel_err <= tol for s in report.sites)


def test_real_child_survives_its_checkpoint(parent, images, tmp_path):
    x, _ = images
    child, _ = morph_network(parent, Preset.parse("1c1"), dtype=torch.float64)
    path = tmp_path / "morph20_1c1.safetensors"
    ck.save(child, path, protect=[WEIGHTS])
    back = ck.load(path)
    assert back.meta["normalization"] == parent.meta["normalization"]
    assert torch.equal(logits(back, x[:20], torch.float64),
                       logits(child, x[:20], torch.float64))
