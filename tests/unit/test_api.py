"""The Python API (``import netmorph``) on plain nn.Modules: morph at a conv and after a node,
verify, save/load, optimizer-ready parameters, the model's mode kept, training-mode start.

Exactness is checked against the original module's own forward (float64, ≤ 1e-10 relative;
the conversion itself is bit-exact), never against netmorph's formulas.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import netmorph
from netmorph_cli.errors import MorphError, NetmorphError

pytestmark = pytest.mark.usefixtures("one_thread")

D = "examples/modules/D.json"
M1C1 = "examples/modules/morph_1c1.json"


class SENet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2))
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(8, 8, 1), nn.Sigmoid())
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = x * self.gate(x)
        return self.head(x.mean((2, 3)))


def _model(dtype=torch.float64) -> SENet:
    torch.manual_seed(0)
    m = SENet().to(dtype)
    m.train()
    with torch.no_grad():  # BN statistics that are not the identity
        m(torch.randn(16, 3, 16, 16, dtype=dtype))
    return m.eval()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def test_morph_at_a_conv_and_after_a_node_keeps_the_function():
    model = _model()
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    child = netmorph.morph(model, D, at="features.3", example_input=x)
    child = netmorph.morph(child, M1C1, after="features.2")
    probe = torch.randn(6, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        assert _rel(child(probe), model(probe)) <= 1e-10
    names = dict(child.named_modules())
    assert "features.3.F1" in names and "features.2_after.conv1" in names
    assert isinstance(names["features.0"], nn.Conv2d)  # the model's own paths
    report = netmorph.verify(model, child, example_input=x)
    assert report.passed and report.dtype == "float64" and report.max_rel_err <= 1e-10
    assert {(s.parent_node, s.child_node) for s in report.sites} == {
        ("features.3", "features.3.output"), ("features.2", "features.2_after.output")}
    assert child.netmorph_record[0]["arch"] == "SENet+D@features.3+morph_1c1@after:features.2"


def test_the_childs_parameters_train_and_its_mode_follows_the_model():
    model = _model(torch.float32).train()
    x = torch.randn(2, 3, 16, 16)
    child = netmorph.morph(model, M1C1, after="features.5", example_input=x)
    assert child.training and model.training  # tracing did not leave the model in eval mode
    before = {k: v.clone() for k, v in child.state_dict().items()}
    opt = torch.optim.SGD(child.parameters(), lr=0.1)
    loss = nn.functional.cross_entropy(child(torch.randn(8, 3, 16, 16)), torch.arange(8) % 5)
    loss.backward()
    opt.step()
    moved = [k for k, v in child.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("features.5_after.") for k in moved)  # the new module learns
    assert any(k.startswith("head.") for k in moved)
    eval_child = netmorph.morph(model.eval(), M1C1, after="features.5", example_input=x)
    assert not eval_child.training


def test_calibrate_starts_the_child_at_the_parents_training_mode_loss():
    model = _model(torch.float64)
    images = torch.randn(32, 3, 16, 16, dtype=torch.float64)
    plain = netmorph.morph(model, D, at="features.3", example_input=images)
    calibrated = netmorph.morph(model, D, at="features.3", example_input=images,
                                calibrate=[images])
    with torch.no_grad():
        ref = copy.deepcopy(model).train()(images)
        assert _rel(copy.deepcopy(calibrated).train()(images), ref) <= 1e-8
        assert _rel(copy.deepcopy(plain).train()(images), ref) > 1e-3  # uncalibrated BN


def test_save_and_load_round_trip(tmp_path):
    model = _model()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    child = netmorph.morph(model, M1C1, after="features.2", example_input=x)
    sha = netmorph.save(child, tmp_path / "c.safetensors")
    assert len(sha) == 64
    back = netmorph.load(tmp_path / "c.safetensors")
    assert torch.equal(back(x), child.eval()(x))
    assert back.netmorph_record[1] == child.netmorph_record[1]  # the history
    with pytest.raises(NetmorphError, match="exists"):
        netmorph.save(child, tmp_path / "c.safetensors")
    netmorph.save(model, tmp_path / "m.safetensors", example_input=x)  # a plain module
    assert torch.equal(netmorph.load(tmp_path / "m.safetensors")(x), model(x))


def test_bad_calls_say_what_is_wrong():
    model = _model()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    with pytest.raises(TypeError, match="example_input"):
        netmorph.morph(model, D, at="features.3")
    with pytest.raises(TypeError, match="module must be"):
        netmorph.morph(model, 3, at="features.3", example_input=x)
    with pytest.raises(NetmorphError, match="preset"):
        netmorph.morph(model, "9q9", example_input=x)
    with pytest.raises(MorphError, match="not a conv"):
        netmorph.morph(model, D, at="features.1", example_input=x)
    with pytest.raises(MorphError, match="no layer 'nope'|nope"):
        netmorph.morph(model, D, at="nope", example_input=x)
    with pytest.raises(MorphError):
        netmorph.morph(model, D, at="features.3", after="features.2", example_input=x)
    with pytest.raises(NetmorphError, match="cannot convert|layer_norm"):
        netmorph.morph(nn.Sequential(nn.Conv2d(3, 4, 3), nn.LayerNorm([4, 14, 14]),
                                     nn.Flatten(), nn.Linear(784, 2)).double(),
                       M1C1, after="0", example_input=x)


def test_sites_given_as_submodules_and_the_export(tmp_path):
    model = _model()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    child = netmorph.morph(model, M1C1, after=model.features[2], example_input=x)
    assert child.netmorph_record[1][-1]["after"] == "features.2"
    child = netmorph.morph(child, D, at=child.features[3])  # the child's own conv
    assert child.netmorph_record[1][-1]["at"] == "features.3"
    with pytest.raises(ValueError, match="not a submodule"):
        netmorph.morph(model, D, at=nn.Conv2d(8, 8, 3), example_input=x)
    report = netmorph.export(child, tmp_path / "c.pt2")
    assert report.max_rel_err <= 1e-10 and report.dtype == "float64"
    program = torch.export.load(tmp_path / "c.pt2").module()  # the file this test wrote
    with torch.no_grad():
        assert _rel(program(x), child.eval()(x)) <= 1e-10


def test_the_child_indexes_its_layers_like_the_model():
    model = _model()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    child = netmorph.morph(model, M1C1, after="features.2", example_input=x)
    assert isinstance(child.features[0], nn.Conv2d)
    assert torch.equal(child.features[0].weight, model.features[0].weight)
    assert child.features[4] is child.get_submodule("features.4")
    with pytest.raises(IndexError, match="no layer 9"):
        child.features[9]
