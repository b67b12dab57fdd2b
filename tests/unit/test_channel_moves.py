"""Channel movements (issue 23): a ShuffleNet-style block (chunk, cat, channel shuffle by
view/transpose/view) and other pure data movements import as ``channels`` nodes the morph
carries through unchanged, so a module goes at any conv of such a model; a reshape that
moves values between pixels is one clear refusal. Compared in float64 against the model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from netmorph_cli.errors import CheckpointError
from netmorph_cli.io import export, importers
from netmorph_cli.morph import verify
from netmorph_cli.morph.morphs import morph_network
from netmorph_cli.spec.parse import load_spec

pytestmark = pytest.mark.usefixtures("one_thread")
MODULES = Path(__file__).resolve().parents[2] / "examples" / "modules"
EXACT = 1e-12  # float64, the same arithmetic: a movement changes no value


def shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.size()
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).contiguous().view(b, -1, h, w)


class Unit(nn.Module):
    """ShuffleNetV2's basic unit: split the channels, transform one half, cat, shuffle."""

    def __init__(self, c: int) -> None:
        super().__init__()
        h = c // 2
        self.conv1, self.bn1 = nn.Conv2d(h, h, 1, bias=False), nn.BatchNorm2d(h)
        self.conv2, self.bn2 = nn.Conv2d(h, h, 3, padding=1, groups=h, bias=False), \
            nn.BatchNorm2d(h)
        self.conv3, self.bn3 = nn.Conv2d(h, h, 1, bias=False), nn.BatchNorm2d(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        b = torch.relu(self.bn1(self.conv1(b)))
        b = torch.relu(self.bn3(self.conv3(self.bn2(self.conv2(b)))))
        return shuffle(torch.cat([a, b], 1), 2)


class ShuffleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.unit1, self.unit2 = Unit(8), Unit(8)
        self.head = nn.Conv2d(8, 12, 3, padding=1)
        self.fc = nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.unit2(self.unit1(torch.relu(self.bn(self.stem(x)))))
        x = torch.relu(self.head(x))
        x = x.permute(0, 2, 3, 1).permute(0, 3, 1, 2)  # a round trip: no node at all
        left, right = torch.split(x, [5, 7], dim=1)
        return self.fc(torch.cat([right, left], 1).mean((2, 3)))


def model() -> nn.Module:
    torch.manual_seed(0)
    m = ShuffleNet().double()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
    return m.eval()


@pytest.fixture(scope="module", params=[False, True], ids=["static batch", "dynamic batch"])
def imported(request, tmp_path_factory):
    m = model()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    shapes = {"x": {0: torch.export.Dim("batch", min=1, max=1024)}} if request.param else None
    path = tmp_path_factory.mktemp("shuffle") / "shufflenet.pt2"
    torch.export.save(torch.export.export(m, (x,), dynamic_shapes=shapes), path)
    net, err = importers.import_program(path)
    return m, net, err


def test_the_shuffle_model_imports_exactly(imported):
    m, net, err = imported
    assert err <= EXACT
    ops = [(n["name"], n["op"]) for n in net.description["nodes"]]
    moves = [n for n in net.description["nodes"] if n["op"] == "channels"]
    # per unit: two chunk halves and the shuffle; the head's split halves; no permute node
    assert len(moves) == 2 * 3 + 2, ops
    shuffled = [n for n in moves if n["name"].startswith("unit1") and len(n["index"]) == 8]
    assert shuffled[0]["index"] == [0, 4, 1, 5, 2, 6, 3, 7]  # groups 2 of 4 channels
    x = torch.randn(5, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        ref, ours = m(x), net.module()(x)
    assert float((ours - ref).abs().max() / ref.abs().max()) <= EXACT


@pytest.mark.parametrize("at", ["head", "unit1.conv1", "stem"])
def test_a_module_goes_at_a_conv_outside_the_shuffle(imported, at):
    _, net, _ = imported
    child, _ = morph_network(net, load_spec(MODULES / "A.json"), at=at)
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        report = verify.verify(net, child, dtype=dtype, samples=8)
        assert report.passed and report.max_rel_err <= tol, (dtype, report.max_rel_err)


def test_channels_nodes_export_and_import_back(imported, tmp_path):
    _, net, _ = imported
    child, _ = morph_network(net, load_spec(MODULES / "A.json"), at="head")
    path = tmp_path / "child.pt2"
    export.export_network(child, path)
    back, err = importers.import_program(path)
    assert err <= 1e-10
    assert back.description["nodes"] == child.description["nodes"]


class PixelMixer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.size(0)
        y = self.conv(x).view(b, 4, 2, 32).transpose(2, 3).reshape(b, 4, 8, 8)  # pixels move
        return self.fc(torch.relu(y).mean((2, 3)).repeat(1, 4))


def test_a_reshape_that_moves_pixels_is_refused_clearly(tmp_path):
    path = tmp_path / "mixer.pt2"
    m = PixelMixer().eval()
    torch.export.save(torch.export.export(m, (torch.randn(2, 3, 8, 8),)), path)
    with pytest.raises(CheckpointError, match="not .C, H, W. with every pixel in place"):
        importers.import_program(path)
