"""Data-calibrated BN: the child keeps the parent's function in training mode too.

Every comparison runs the parent network itself (its own ``module()``, in training or eval
mode) or plain ``F.conv2d`` on the stored filters; nothing is compared against the
calibration's own formula.

Tolerances (relative = max |Δ| / max |reference|, float64):
- F64 = 1e-10: eval-mode logits of a calibrated child (DESIGN.md's float64 rule), and
  training-mode logits on the one batch the child was calibrated on (each new BN then sees
  exactly the statistics it was set from: the identity up to rounding);
- STATS = 1e-12: recorded statistics against the same statistics computed here;
- FAR = 1e-2: an uncalibrated child in training mode must be at least this far off, so the
  exactness tests above cannot pass by accident.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from netmorph_cli.errors import MorphError
from netmorph_cli.morph.calibrate import calibrate, uncalibrated_layers
from netmorph_cli.morph.morphs import morph_at, morph_preset
from netmorph_cli.network import zoo
from netmorph_cli.network.description import Network
from netmorph_cli.network.presets import Preset
from netmorph_cli.spec.parse import load_spec

F64, STATS, FAR = 1e-10, 1e-12, 1e-2

pytestmark = pytest.mark.usefixtures("one_thread")


def trained_like(seed: int = 0) -> Network:
    """A float64 ResNet-20 whose BN statistics and affine parameters are far from (0, 1),
    as a trained network's are."""
    net = zoo.create("resnet20", seed=seed).to(torch.float64)
    gen = torch.Generator().manual_seed(seed)
    for k, v in list(net.tensors.items()):
        if k.endswith("running_mean") or k.endswith(".bias") and "bn" in k:
            net.tensors[k] = torch.randn(v.shape, generator=gen, dtype=torch.float64) * 0.3
        elif k.endswith("running_var") or k.endswith(".weight") and "bn" in k:
            net.tensors[k] = torch.rand(v.shape, generator=gen, dtype=torch.float64) + 0.5
    return net


def images(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=gen, dtype=torch.float64) * 1.5 + 0.2


def rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a - ref).abs().max() / ref.abs().max())


def run(net: Network, x: torch.Tensor, train: bool) -> torch.Tensor:
    model = net.module(torch.float64).train(train)
    with torch.no_grad():
        return model(x)


@pytest.fixture(scope="module")
def parent() -> Network:
    return trained_like()


@pytest.fixture(scope="module")
def d_spec():
    from pathlib import Path

    return load_spec(Path(__file__).resolve().parents[2] / "examples" / "modules" / "D.json")


@pytest.mark.parametrize("preset", ["1c1", "3c3", "1c1_2branch"])
def test_calibrated_preset_is_exact_in_train_mode_on_its_batch_and_in_eval_mode(parent, preset):
    child = morph_preset(parent, Preset.parse(preset), seed=1)
    x = images(24, seed=2)
    cal = calibrate(child, [x], dataset="test")
    assert rel(run(cal, x, train=True), run(parent, x, train=True)) <= F64
    y = images(8, seed=3)  # eval mode: any input
    assert rel(run(cal, y, train=False), run(parent, y, train=False)) <= F64
    # the uncalibrated child is far off in training mode: the test above means something
    assert rel(run(child, x, train=True), run(parent, x, train=True)) > FAR


def test_calibrated_complex_module_chain_is_exact_in_train_mode(parent, d_spec):
    """Module D: blob c's BN sees the outputs of a's and b's BN, so the statistics must be
    gathered with the earlier new BN layers as the identity."""
    child = morph_at(parent, d_spec, "layer1.1.conv1", seed=0)
    assert child.history[-1]["new_bn"] == ["layer1.1.conv1.a_bn", "layer1.1.conv1.b_bn",
                                           "layer1.1.conv1.c_bn"]
    x = images(16, seed=4)
    cal = calibrate(child, [x], dataset="test")
    assert rel(run(cal, x, train=True), run(parent, x, train=True)) <= F64
    assert rel(run(cal, images(8, 5), train=False), run(parent, images(8, 5), train=False)) \
        <= F64
    assert rel(run(child, x, train=True), run(parent, x, train=True)) > FAR


def test_statistics_are_the_average_batch_statistics_of_the_input(parent):
    """Over two batches, bn1 of a 1c1 branch holds the mean over batches of the per-channel
    batch mean and biased batch variance of conv1(block input), the block input taken from
    the parent in training mode."""
    child = morph_preset(parent, Preset.parse("1c1"), seed=0)
    xs = [images(12, seed=6), images(12, seed=7)]
    cal = calibrate(child, xs, dataset="test")
    w = child.tensors["layer2.1.morph1.conv1.weight"]  # 1×1
    means, variances = [], []
    model = parent.module(torch.float64).train()
    block_input = child.nodes["layer2.1.morph1.pad"]["inputs"][0]
    assert block_input == "layer2.0.relu2"
    for x in xs:
        with torch.no_grad():
            _, seen = model(x, capture=[block_input])
        u = F.conv2d(seen[block_input], w)
        means.append(u.mean(dim=(0, 2, 3)))
        variances.append(u.var(dim=(0, 2, 3), correction=0))
    mean, var = torch.stack(means).mean(0), torch.stack(variances).mean(0)
    t = {k: cal.tensors[f"layer2.1.morph1.bn1.{k}"] for k in
         ("running_mean", "running_var", "weight", "bias")}
    assert rel(t["running_mean"], mean) <= STATS and rel(t["bias"], mean) <= STATS
    assert rel(t["running_var"], var) <= STATS
    assert rel(t["weight"], torch.sqrt(var + 1e-5)) <= STATS


def test_history_records_the_calibration_and_inputs_are_untouched(parent):
    child = morph_preset(parent, Preset.parse("1c1_half"), seed=0)
    before = {k: v.clone() for k, v in child.tensors.items()}
    new = child.history[-1]["new_bn"]
    assert uncalibrated_layers(child) == new and len(new) == 2 * 3  # blocks 1 of 3 stages
    assert all(n.endswith((".bn1", ".bn2")) and ".morph1." in n for n in new)
    cal = calibrate(child, [images(10, 8), images(10, 9)], dataset="cifar10", seed=4)
    entry = cal.history[-1]
    assert entry["calibration"]["dataset"] == "cifar10"
    assert (entry["calibration"]["batches"], entry["calibration"]["batch_size"],
            entry["calibration"]["images"], entry["calibration"]["seed"]) == (2, 10, 20, 4)
    assert entry["calibration"]["layers"] == new
    assert uncalibrated_layers(cal) == []
    assert "calibration" not in child.history[-1]  # the input's history is not edited
    assert all(torch.equal(before[k], child.tensors[k]) for k in before)
    assert all(torch.equal(parent.tensors[k], cal.tensors[k]) for k in parent.tensors)
    changed = {k.rpartition(".")[0] for k in cal.tensors
               if not torch.equal(cal.tensors[k], child.tensors[k])}
    assert changed == set(new)


def test_every_morph_since_the_last_training_is_calibrated(parent):
    """1c1 then 3c3 without training: 3c3 adds no BN, but 1c1's new BN are still at (0, 1)
    and must be calibrated (each entry records its own layers); after a training entry the
    layers before it count as trained."""
    child = morph_preset(parent, Preset.parse("1c1"), seed=0)
    grown = morph_preset(child, Preset.parse("3c3"), seed=0)
    assert grown.history[-1]["new_bn"] == []  # kernels grown, no new layer
    first = child.history[-1]["new_bn"]
    assert first and uncalibrated_layers(grown) == first
    done = calibrate(grown, [images(8, 1)], dataset="test")
    assert done.history[-2]["calibration"]["layers"] == first
    assert "calibration" not in done.history[-1]  # 3c3 added no layer to calibrate
    assert uncalibrated_layers(done) == []
    for name in first:  # set from the data: no longer the uncalibrated (0, 1)
        assert not torch.equal(done.tensors[f"{name}.running_var"],
                               grown.tensors[f"{name}.running_var"])
    trained = Network(grown.description, grown.tensors, grown.history + [{"op": "train"}],
                      grown.meta)
    assert uncalibrated_layers(trained) == []
    with pytest.raises(MorphError, match="nothing to calibrate"):
        calibrate(done, [images(4, 1)], dataset="test")
    with pytest.raises(MorphError, match="nothing to calibrate"):
        calibrate(trained, [images(4, 1)], dataset="test")


def test_nothing_to_calibrate_is_an_error(parent, d_spec):
    no_bn = morph_at(parent, d_spec, "layer1.1.conv1", bn=False)
    with pytest.raises(MorphError, match="nothing to calibrate"):
        calibrate(no_bn, [images(4, 1)], dataset="test")
    with pytest.raises(MorphError, match="nothing to calibrate"):
        calibrate(parent, [images(4, 1)], dataset="test")


def test_no_batch_and_a_layer_that_is_not_bn_are_errors(parent):
    child = morph_preset(parent, Preset.parse("1c1"), seed=0)
    with pytest.raises(MorphError, match="0 batches"):
        calibrate(child, [], dataset="test")
    with pytest.raises(MorphError, match="not a BN layer"):
        calibrate(child, [images(4, 1)], dataset="test", layers=["layer1.1.conv1"])
