"""A .pt2 exported with a static batch size (``torch.export.export(model, (x,))``, what most
users do) of a model whose head is ``out.view(out.size(0), -1)`` imports like a dynamic-batch
export: the import check runs the program at the batch it was exported at, and the network
netmorph builds takes any batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from netmorph_cli.io import importers
from netmorph_cli.morph import verify
from netmorph_cli.morph.morphs import morph_network
from netmorph_cli.spec.parse import load_spec

pytestmark = pytest.mark.usefixtures("one_thread")
MODULES = Path(__file__).resolve().parents[2] / "examples" / "modules"
EXACT = 1e-12  # float64: the same convolutions on the same numbers


class ViewHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pool(torch.relu(self.conv2(torch.relu(self.bn1(self.conv1(x))))))
        return self.fc(out.view(out.size(0), -1))


def model() -> nn.Module:
    torch.manual_seed(0)
    m = ViewHead().double().eval()
    with torch.no_grad():
        m.bn1.running_mean.uniform_(-0.5, 0.5)
        m.bn1.running_var.uniform_(0.5, 2.0)
    return m


@pytest.mark.parametrize("dynamic", [False, True], ids=["static batch", "dynamic batch"])
def test_view_head_imports_from_either_export(tmp_path, dynamic):
    m = model()
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    shapes = {"x": {0: torch.export.Dim("batch", min=1, max=1024)}} if dynamic else None
    path = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(m, (x,), dynamic_shapes=shapes), path)
    net, err = importers.import_program(path)
    assert err <= EXACT
    for batch in (1, 3, 5):  # the netmorph network takes any batch, the static one too
        xb = torch.randn(batch, 3, 8, 8, dtype=torch.float64)
        with torch.no_grad():
            ref, ours = m(xb), net.module()(xb)
        assert float((ours - ref).abs().max() / ref.abs().max()) <= EXACT
    # and it morphs and verifies like any other network
    child, _ = morph_network(net, load_spec(MODULES / "A.json"), at="conv2")
    report = verify.verify(net, child, dtype=torch.float64, samples=8)
    assert report.passed and report.max_rel_err <= 1e-10
