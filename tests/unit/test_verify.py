"""``verify``: parent-versus-child comparison, its verdicts, site errors and refusals.

Tolerances are the library defaults under test (1e-5 float32, 1e-10 float64); perturbations
are chosen orders of magnitude above them so that a pass or a fail is unambiguous.
"""

from __future__ import annotations

import math

import pytest
import torch

import zoo_models
from netmorph_cli.errors import VerificationError
from netmorph_cli.io.importers import import_factory
from netmorph_cli.morph.morphs import morph_network
from netmorph_cli.morph.verify import DEFAULT_TOL, compare_pairs, verify, verify_train_mode
from netmorph_cli.network import zoo
from netmorph_cli.network.description import Network
from netmorph_cli.network.presets import Preset
from netmorph_cli.spec.parse import load_spec

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def parent() -> Network:
    return zoo.create("resnet20", seed=21)


@pytest.fixture(scope="module")
def child(parent) -> Network:
    return morph_network(parent, Preset.parse("1c1"), dtype=torch.float64)[0]


def perturbed(net: Network, key: str, delta: float) -> Network:
    tensors = dict(net.tensors)
    tensors[key] = tensors[key] + delta
    return Network(net.description, tensors, net.history, net.meta).check()


def test_identical_networks_pass_with_zero_error(parent):
    for dtype in (torch.float32, torch.float64):
        r = verify(parent, parent, dtype=dtype, samples=8)
        assert r.passed and r.max_abs_err == 0.0 and r.max_rel_err == 0.0
        assert r.top1_agreement == 1.0 and r.samples == 8 and r.sites == ()
        assert r.dtype == str(dtype).removeprefix("torch.") and r.inputs == "random"


def test_morphed_child_passes_and_reports_every_module(parent, child):
    r = verify(parent, child, samples=8)
    assert r.passed and r.max_rel_err <= 1e-10 and r.top1_agreement == 1.0
    blocks = [f"layer{s}.{i}" for s in (1, 2, 3) for i in (1, 2)]
    assert [(s.parent_node, s.child_node) for s in r.sites] == \
        [(f"{b}.add", f"{b}.add") for b in blocks]
    assert all(s.max_rel_err <= 1e-10 for s in r.sites)
    assert compare_pairs(parent, child) == [(f"{b}.add", f"{b}.add") for b in blocks]


def test_perturbed_child_fails_and_the_site_errors_point_at_the_module(parent, child):
    bad = perturbed(child, "layer3.1.morph1.conv2.weight", 1e-3)
    r = verify(parent, bad, samples=8)
    assert not r.passed
    assert r.max_rel_err > 1e-6 and r.max_abs_err > 0
    errors = {s.child_node: s.max_rel_err for s in r.sites}
    assert errors["layer3.1.add"] > 1e-6
    # modules before the perturbation are untouched; the one after inherits the error
    for block in ("layer1.1", "layer1.2", "layer2.1", "layer2.2"):
        assert errors[f"{block}.add"] <= 1e-10, block
    assert errors["layer3.2.add"] > 1e-10
    js = r.to_json()
    assert js["passed"] is False and js["max_rel_err"] == r.max_rel_err
    assert [m["child"] for m in js["modules"]] == [s.child_node for s in r.sites]


def test_each_module_output_is_judged_against_the_tolerance_and_said(parent, child):
    """Per-module errors get the logits' tolerance as a readable per-site mark (JSON
    ``within_tolerance``, the table's "≤ tol" column), and a passing report whose module
    output is outside it says why that can be (the verdict stays the logits')."""
    import io

    from rich.console import Console

    from netmorph_cli.cli.report import verify_report
    from netmorph_cli.morph.verify import SiteError, VerifyReport

    bad = perturbed(child, "layer3.1.morph1.conv2.weight", 1e-3)
    r = verify(parent, bad, samples=8)
    marks = {m["child"]: m["within_tolerance"] for m in r.to_json()["modules"]}
    assert marks["layer1.1.add"] is True and marks["layer3.1.add"] is False
    assert [s.child_node for s in r.sites_outside()] == ["layer3.1.add", "layer3.2.add"]

    def shown(report: VerifyReport) -> str:
        buf = io.StringIO()
        Console(file=buf, width=200).print(verify_report(report))
        return buf.getvalue()

    sites = (SiteError("a", "a", 4e-9, 4.8e-4), SiteError("b", "b", 1e-9, 2e-7),
             SiteError("c", "c", math.nan, math.nan))
    ok = VerifyReport(True, 1e-7, 4.3e-7, 1.0, "float32", 8, 1e-5, "random", sites)
    assert [s.parent_node for s in ok.sites_outside()] == ["a", "c"]  # NaN is never within
    text = shown(ok)
    assert "≤ 1e-05" in text and "note: 2 module output(s) differ by more than the " \
        "tolerance" in text and "--dtype float64" in text
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in text.splitlines()
            if line.startswith("│") and "node" not in line]
    assert [(row[0], row[-1]) for row in rows] == [("a", "no"), ("b", "yes"), ("c", "no")]
    failed = VerifyReport(False, 1e-3, 2e-4, 1.0, "float32", 8, 1e-5, "random", sites)
    assert "note:" not in shown(failed)  # a failed check says FAILED, not a rounding story


def test_a_change_below_float32_precision_passes_in_float32_only(parent):
    # a float32 child carries float32-rounded filters: exact to 1e-5 in float32, but far
    # from the 1e-10 that float64 demands
    child32, _ = morph_network(parent, Preset.parse("3c3"))
    r32 = verify(parent, child32, dtype=torch.float32, samples=8)
    assert r32.passed and r32.tolerance == DEFAULT_TOL[torch.float32] == 1e-5
    r64 = verify(parent, child32, dtype=torch.float64, samples=8)
    assert r64.tolerance == DEFAULT_TOL[torch.float64] == 1e-10
    assert not r64.passed and 1e-10 < r64.max_rel_err < 1e-5
    # an explicit tolerance overrides the default
    assert verify(parent, child32, dtype=torch.float64, samples=8, tol=1e-5).passed


def test_paper_bn_child_fails_in_float64(parent):
    paper, _ = morph_network(parent, Preset.parse("1c1"), dtype=torch.float64, exact_bn=False)
    r = verify(parent, paper, samples=8)
    assert not r.passed and r.max_rel_err > 1e-9


@pytest.mark.parametrize("where", ["linear.bias", "layer2.1.morph1.conv1.weight"])
def test_nan_in_the_child_fails(parent, child, where):
    tensors = dict(child.tensors)
    t = tensors[where].clone()
    t.view(-1)[0] = float("nan")
    tensors[where] = t
    bad = Network(child.description, tensors, child.history, child.meta)
    r = verify(parent, bad, samples=4)
    assert not r.passed
    assert math.isnan(r.max_abs_err) and math.isnan(r.max_rel_err)


def test_inf_in_the_child_fails(parent, child):
    bad = perturbed(child, "linear.bias", float("inf"))
    r = verify(parent, bad, samples=4)
    assert not r.passed and r.max_abs_err == math.inf


def test_not_a_pair_is_an_error(parent):
    with pytest.raises(VerificationError, match=r"not a parent/child pair: 10 vs 100 classes"):
        verify(parent, zoo.create("resnet20", num_classes=100))
    other = zoo.create("resnet18", num_classes=10)
    with pytest.raises(VerificationError, match=r"inputs differ \(\[3, 32, 32\] vs "
                                                r"\[3, 224, 224\]\)"):
        verify(parent, other)


def test_mismatched_module_outputs_are_an_error(parent, child):
    history = [dict(h) for h in child.history]
    history[-1]["compare"] = [["layer1.1.add", "layer2.1.add"]]
    bad = Network(child.description, child.tensors, history, child.meta)
    with pytest.raises(VerificationError, match=r"module output 'layer2.1.add' has shape"):
        verify(parent, bad, samples=2)


def test_given_inputs_and_batches(parent, child):
    x = torch.rand(10, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    r = verify(parent, child, inputs=x, inputs_name="cifar10", batch_size=3)
    assert r.passed and r.samples == 10 and r.inputs == "cifar10"
    # the same inputs in one batch give the same figures
    one = verify(parent, child, inputs=x, inputs_name="cifar10", batch_size=10)
    assert one.max_abs_err == pytest.approx(r.max_abs_err, rel=0, abs=1e-14)
    # seeds pick the random inputs deterministically
    a, b = (verify(parent, child, samples=4, seed=s) for s in (0, 0))
    assert a == b


def test_differing_top1_is_counted(parent):
    flipped = perturbed(parent, "linear.bias", 0.0)
    bias = flipped.tensors["linear.bias"].clone()
    bias[3] += 100.0  # class 3 wins every input
    flipped.tensors["linear.bias"] = bias
    r = verify(parent, flipped, samples=16)
    p_top = parent.module(torch.float64)(
        torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(0),
                    dtype=torch.float64)).argmax(1)
    assert r.top1_agreement == pytest.approx((p_top == 3).float().mean().item())
    assert not r.passed


def test_train_mode_check_gives_dropout_the_same_masks_in_both():
    """An imported VGG (dropout before its classifier) and a child calibrated on the very
    batch it is checked on: in training mode the two compute the same logits (float64,
    ≤ 1e-8) only if both drop the same units; with independent masks they differ by O(1)."""
    model = zoo_models.build("vgg11_bn", width=4).double()
    parent, _ = import_factory(None, "zoo_models:vgg11_bn", kwargs={"width": 4})
    parent = parent.to(torch.float64)
    assert any(n["op"] == "dropout" for n in parent.description["nodes"])
    x = torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(3),
                    dtype=torch.float64)
    y = torch.arange(32) % 10
    child, _ = morph_network(parent, load_spec("examples/modules/morph_1c1.json"),
                             after="features.2", calibrate=("batch", [x]))
    report = verify_train_mode(parent, child, [(x, y)], dtype=torch.float64)
    assert report.max_rel_err <= 1e-8 and report.passed
    ours_net = parent.module().train()  # built first: building draws initial weights
    with torch.no_grad():  # the reference: the model's own training-mode run, same draws
        torch.manual_seed(0)
        ref = model.train()(x)
        torch.manual_seed(0)
        ours = ours_net(x)
    assert ((ours - ref).abs().max() / ref.abs().max()).item() <= 1e-12
