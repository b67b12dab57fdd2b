"""Import the real CIFAR-10 ResNets of ../shared/weights and compare with the original code.

The reference below is a minimal copy of the originating implementation (akamaster's
pytorch_resnet_cifar10, BSD 2-Clause, Yerlan Idelbayev 2018): option-A shortcuts as a
LambdaLayer, functional ReLU, average pooling over the whole map. It loads the original
(un-prefixed) state_dict with ``load_state_dict``, independently of netmorph's importer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netmorph_cli.io import checkpoint as ck
from netmorph_cli.io import importers

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
WEIGHTS = SHARED / "weights"
FILES = {20: "akamaster_resnet20-12fca82f.th", 32: "akamaster_resnet32-d509ac18.th",
         44: "akamaster_resnet44-014dd654.th", 56: "akamaster_resnet56-4bfd9763.th"}

pytestmark = pytest.mark.skipif(not WEIGHTS.is_dir(), reason="../shared/weights is absent")


class LambdaLayer(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class BasicBlock(nn.Module):
    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = LambdaLayer(lambda x: F.pad(
                x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4), "constant", 0))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.relu(out)


class ResNet(nn.Module):
    def __init__(self, num_blocks, num_classes=10):
        super().__init__()
        self.in_planes = 16
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_layer(16, num_blocks, 1)
        self.layer2 = self._make_layer(32, num_blocks, 2)
        self.layer3 = self._make_layer(64, num_blocks, 2)
        self.linear = nn.Linear(64, num_classes)

    def _make_layer(self, planes, n, stride):
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.avg_pool2d(out, out.size()[3])
        return self.linear(out.view(out.size(0), -1))


def reference(path: Path, depth: int) -> nn.Module:
    raw = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    sd = {k.removeprefix("module."): v for k, v in raw.items()}
    model = ResNet((depth - 2) // 6)
    result = model.load_state_dict(sd, strict=False)
    assert not result.unexpected_keys
    assert all(k.endswith("num_batches_tracked") for k in result.missing_keys)
    return model.double().eval()


@pytest.mark.parametrize("depth", sorted(FILES))
def test_imported_logits_match_the_original_code(depth):
    path = WEIGHTS / FILES[depth]
    net = importers.import_state_dict(path)
    desc = net.description
    assert desc["arch"] == f"resnet{depth}" and desc["num_classes"] == 10
    assert sum(n["op"] == "shortcut_a" for n in desc["nodes"]) == 2  # option A, two downsamplings
    assert not any("shortcut" in k for k in net.tensors)
    assert net.meta["imported"]["layout"] == "cifar-resnet"
    assert net.meta["imported"]["sha256"].startswith(FILES[depth].split("-")[1][:8])
    assert net.meta["normalization"]["mean"] == [0.485, 0.456, 0.406]
    assert importers.import_state_dict(path, arch=f"resnet{depth}").description == desc

    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(depth),
                    dtype=torch.float64)
    with torch.no_grad():
        ours = net.module(torch.float64)(x)
        theirs = reference(path, depth)(x)
    assert (ours - theirs).abs().max().item() <= 1e-10


def test_imported_checkpoint_round_trips_and_classifies_cifar10(tmp_path):
    net = importers.import_state_dict(WEIGHTS / FILES[20])
    out = tmp_path / "resnet20.safetensors"
    ck.save(net, out, protect=[WEIGHTS / FILES[20]])
    back = ck.load(out)
    for k, t in net.tensors.items():
        assert torch.equal(back.tensors[k], t) and back.tensors[k].dtype == t.dtype
    data = SHARED / "data" / "cifar10-mini.npz"
    if not data.exists():
        pytest.skip("../shared/data/cifar10-mini.npz is absent")
    with np.load(data) as d:
        # every other image: 500, still 50 a class (the file is sorted by class)
        x, y = torch.from_numpy(d["x_test"][::2]), torch.from_numpy(d["y_test"][::2])
    norm = back.meta["normalization"]
    mean = torch.tensor(norm["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(norm["std"]).view(1, 3, 1, 1)
    x = (x.permute(0, 3, 1, 2).float() / 255 - mean) / std
    with torch.no_grad():
        pred = back.module()(x).argmax(1)
    # published 91.73% on the full test set; on 500 images the std is about 1.2 points
    assert (pred == y).float().mean().item() >= 0.87
