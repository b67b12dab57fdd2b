"""Network morphs: the paper's presets, any layer into any module, and exactness everywhere.

Every comparison is computed outside ``verify``: both networks run through their own
``module()`` (and, for the morph branches, plain ``F.conv2d`` on the stored filters).

Tolerances (relative = max |Δ| / max |reference|):
- F64 = 1e-10: logits and module outputs of float64 children (DESIGN.md's float64 rule);
- F32 = 1e-5: logits of float32 children (DESIGN.md's float32 rule);
- BRANCH = 1e-12: one preset branch against 0.5 · (block input), and the module against
  the replaced conv at every pixel (float64; a handful of tiny products, observed ≲ 1e-15);
- NAIVE = 1e-3: the border error of the naive realization must exceed this (it is O(1)).
"""

from __future__ import annotations

import copy
import dataclasses
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netmorph_cli.errors import MorphError, SolverError, VerificationError
from netmorph_cli.io import checkpoint
from netmorph_cli.morph.morphs import (
    Preset,
    arch_name,
    identity_bn,
    morph_at,
    morph_network,
    morph_preset,
    prelu_all,
)
from netmorph_cli.network import zoo
from netmorph_cli.network.description import FORMAT, Network, node
from netmorph_cli.network.flops import count_flops
from netmorph_cli.solver.budget import SolveLimits
from netmorph_cli.solver.feasibility import width_advice
from netmorph_cli.solver.solve import ResourceLimitError, SolverTimeout, module_widths
from netmorph_cli.spec.parse import load_spec, spec_from_dict
from netmorph_cli.training.results import paper_name

F64, F32, BRANCH, NAIVE = 1e-10, 1e-5, 1e-12, 1e-3
MODULES = Path(__file__).resolve().parents[2] / "examples" / "modules"
PRESETS = ["1c1", "3c1", "3c3", "1c1_2branch", "1c1_half", "3c3_2branch_half"]


pytestmark = pytest.mark.usefixtures("one_thread")


def with_random_bn(net: Network, seed: int = 0) -> Network:
    """BN statistics and affine parameters far from the identity, so that a morph that
    mishandled BN could not pass by accident."""
    gen = torch.Generator().manual_seed(seed)
    nodes = net.nodes
    for k, v in list(net.tensors.items()):
        layer, _, p = k.rpartition(".")
        if nodes[layer]["op"] != "bn":
            continue
        if p == "running_mean":
            net.tensors[k] = torch.randn(v.shape, generator=gen) * 0.5
        elif p == "running_var":
            net.tensors[k] = torch.rand(v.shape, generator=gen) * 2 + 0.2
        elif p == "weight":
            net.tensors[k] = torch.rand(v.shape, generator=gen) * 1.5 + 0.25
        elif p == "bias":
            net.tensors[k] = torch.randn(v.shape, generator=gen) * 0.3
    return net.check()


@pytest.fixture(scope="module")
def parent() -> Network:
    return with_random_bn(zoo.create("resnet20", seed=11), seed=12)


@pytest.fixture(scope="module")
def parent64(parent) -> Network:
    return parent.to(torch.float64)


@pytest.fixture(scope="module")
def x64() -> torch.Tensor:
    return torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(5),
                       dtype=torch.float64)


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return (a - ref).abs().max().item() / ref.abs().max().item()


def run(net: Network, x: torch.Tensor, dtype: torch.dtype | None = None,
        capture: tuple[str, ...] = ()):
    module = net.module(dtype)
    dt = next(module.parameters()).dtype
    with torch.no_grad():
        if capture:
            return module(x.to(dt), capture=capture)
        return module(x.to(dt))


# --------------------------------------------------------------------------------------------
# presets


def test_parent_is_not_trivial(parent, x64):
    # the logits are not dominated by one class and the BN layers are far from identity
    y = run(parent, x64, torch.float64)
    assert y.std().item() > 0.1
    assert (parent.tensors["layer2.1.bn2.running_var"] - 1).abs().max() > 0.1


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_child_equals_parent(parent, x64, preset):
    p = Preset.parse(preset)
    child, report = morph_network(parent, p, dtype=torch.float64, seed=3)
    assert report is not None and report.passed and report.samples == 4
    assert child.dtype == torch.float64
    y_parent = run(parent, x64, torch.float64)
    y_child, maps = run(child, x64, capture=("layer2.0.relu2", "layer2.1.add",
                                             *(f"layer2.1.morph{b}.bn2"
                                               for b in range(1, p.branches + 1))))
    assert rel_err(y_child, y_parent) <= F64

    # placement: every block but the first of each stage; only odd-indexed ones with _half
    nodes = child.nodes
    morphed = sorted({m[0] for k in nodes if (m := re.match(r"layer\d\.\d", k))
                      and ".morph1." in k})
    expected = [f"layer{s}.{i}" for s in (1, 2, 3) for i in (1, 2)
                if not p.half or i % 2 == 1]
    assert morphed == expected
    add = nodes["layer2.1.add"]
    if p.branches == 1:
        assert add["coeffs"] == [1.0, 0.5, 1.0] and add["shortcut"] == 1
    else:
        assert add["coeffs"] == [1.0, 1.0, 1.0] and add["shortcut"] is None
        assert "layer2.0.relu2" not in add["inputs"]  # the identity is gone entirely

    # one block by hand: each branch's convs (BN and PReLU are identities) give 0.5·input
    x_in = maps["layer2.0.relu2"]
    scale = x_in.abs().max().item()
    for b in range(1, p.branches + 1):
        w1, w2 = (child.tensors[f"layer2.1.morph{b}.conv{i}.weight"] for i in (1, 2))
        assert w1.shape == (32, 32, p.k1, p.k1) and w2.shape == (32, 32, p.k2, p.k2)
        m = (p.k1 - 1) // 2 + (p.k2 - 1) // 2
        h = F.conv2d(F.conv2d(F.pad(x_in, (m, m, m, m)), w1), w2)
        assert h.shape == x_in.shape
        assert (h - 0.5 * x_in).abs().max().item() <= BRANCH * scale
        assert (maps[f"layer2.1.morph{b}.bn2"] - 0.5 * x_in).abs().max().item() <= BRANCH * scale
        # new layers start at identity: PReLU a = 1, BN exact identity
        assert torch.equal(child.tensors[f"layer2.1.morph{b}.prelu.weight"],
                           torch.ones(32, dtype=torch.float64))
    # the morph's record: every morphed block is compared at its join
    entry = child.history[-1]
    assert entry["preset"] == preset and entry["seed"] == 3 and entry["residual"] <= 1e-12
    assert [a for a, _ in entry["compare"]] == [f"{blk}.add" for blk in expected]

    # the float32 child (the parent's dtype) is exact to float32 rounding
    child32, _ = morph_network(parent, p, seed=3)
    assert child32.dtype == torch.float32
    x32 = x64.float()
    assert rel_err(run(child32, x32), run(parent, x32)) <= F32


def test_preset_parsing():
    assert Preset.parse("3c1_2branch_half") == Preset(3, 1, 2, True)
    for bad in ("2c1", "1c", "c1", "1c1_half_2branch", "1x1", "1c1_triple"):
        with pytest.raises(MorphError, match="unknown preset"):
            Preset.parse(bad)


def test_new_bn_is_exactly_identity_and_paper_bn_is_not():
    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        x = (torch.randn(4, 32, 9, 9, generator=gen, dtype=torch.float64) * 10).to(dtype)
        for eps in (1e-5, 1e-3):
            exact = nn.BatchNorm2d(32, eps=eps).to(dtype).eval()
            exact.load_state_dict(identity_bn(32, eps))
            with torch.no_grad():
                assert torch.equal(exact(x), x), (dtype, eps)
            paper = nn.BatchNorm2d(32, eps=eps).to(dtype).eval()
            paper.load_state_dict(identity_bn(32, eps, exact=False))
            with torch.no_grad():
                y = paper(x)
            assert not torch.equal(y, x)
            # gamma = 1 scales by 1/sqrt(1 + eps) ≈ 1 − eps/2
            ratio = ((x - y).abs().max() / x.abs().max()).item()
            assert 0.8 * eps / 2 <= ratio <= 1.2 * eps / 2, (dtype, eps, ratio)


def test_paper_bn_child_is_close_but_not_exact(parent, x64):
    exact, _ = morph_network(parent, Preset.parse("1c1"), dtype=torch.float64)
    paper, report = morph_network(parent, Preset.parse("1c1"), dtype=torch.float64,
                                  exact_bn=False)
    assert report is None  # approximate by design: no check
    y = run(parent, x64, torch.float64)
    assert rel_err(run(exact, x64), y) <= F64
    err = rel_err(run(paper, x64), y)
    assert 1e-9 < err < 1e-3
    assert paper.history[-1]["exact_bn"] is False
    assert torch.equal(paper.tensors["layer1.1.morph1.bn1.weight"],
                       torch.ones(16, dtype=torch.float64))


def test_new_bn_in_a_child_is_bit_identical(parent, x64):
    for dtype in (torch.float32, torch.float64):
        child = morph_preset(parent.to(dtype), Preset.parse("3c3"))
        _, maps = run(child, x64, capture=("layer3.2.morph1.conv1", "layer3.2.morph1.bn1",
                                           "layer3.2.morph1.prelu", "layer3.2.morph1.conv2",
                                           "layer3.2.morph1.bn2"))
        assert torch.equal(maps["layer3.2.morph1.bn1"], maps["layer3.2.morph1.conv1"])
        assert torch.equal(maps["layer3.2.morph1.prelu"], maps["layer3.2.morph1.bn1"])
        assert torch.equal(maps["layer3.2.morph1.bn2"], maps["layer3.2.morph1.conv2"])
        assert (maps["layer3.2.morph1.bn1"] < 0).any()  # PReLU(a=1) also passes negatives


def test_prelu_all_is_bit_identical(parent, x64):
    for dtype in (torch.float32, torch.float64):
        net = parent.to(dtype)
        pr = prelu_all(net)
        assert not any(n["op"] == "relu" for n in pr.description["nodes"])
        assert pr.nodes["layer1.0.relu1"]["op"] == "prelu"
        assert torch.equal(pr.tensors["layer3.2.relu2.weight"], torch.zeros(64, dtype=dtype))
        assert torch.equal(run(pr, x64), run(net, x64))
    child, _ = morph_network(parent, Preset.parse("1c1"), prelu=True, dtype=torch.float64)
    assert [h["op"] for h in child.history] == ["prelu_all", "preset"]
    assert rel_err(run(child, x64), run(parent, x64, torch.float64)) <= F64
    with pytest.raises(MorphError, match="no ReLU"):
        prelu_all(prelu_all(parent))


@pytest.mark.parametrize("phases", [("1c1", "3c1", "3c3"), ("1c1_half", "1c1"),
                                    ("1c1", "1c1_2branch")])
def test_phases_stay_exact_and_cost_what_the_direct_preset_costs(parent64, x64, phases):
    y = run(parent64, x64)
    net = parent64
    for i, preset in enumerate(phases):
        before = net
        net = morph_preset(net, Preset.parse(preset), seed=i)
        assert rel_err(run(net, x64), y) <= F64, preset
        assert count_flops(net.description) == count_flops(
            morph_preset(parent64, Preset.parse(preset)).description), preset
        assert len(net.history) == i + 1
        if i and "layer1.1.morph1.conv1.weight" in before.tensors:
            # growing a kernel is zero padding: the old filter sits in the centre
            old = before.tensors["layer1.1.morph1.conv1.weight"]
            new = net.tensors["layer1.1.morph1.conv1.weight"]
            k, j = new.shape[-1], old.shape[-1]
            lo = (k - j) // 2
            assert torch.equal(new[..., lo:lo + j, lo:lo + j], old)
            assert new.abs().sum() == new[..., lo:lo + j, lo:lo + j].abs().sum()
    assert net.description["arch"] == f"resnet20+{phases[-1]}"


def test_presets_never_shrink(parent64):
    child = morph_preset(parent64, Preset.parse("3c3"))
    with pytest.raises(MorphError, match=r"already 3×3: presets only grow kernels"):
        morph_preset(child, Preset.parse("1c1"))
    with pytest.raises(MorphError, match=r"already 3×3"):
        morph_preset(child, Preset.parse("1c3"))


def test_presets_refuse_networks_without_blocks():
    net = small_net()
    with pytest.raises(MorphError, match="no residual block"):
        morph_preset(net, Preset.parse("1c1"))


# --------------------------------------------------------------------------------------------
# any layer into any module


def site_error(parent: Network, child: Network, x: torch.Tensor) -> tuple[float, float]:
    """(logits, module output) relative errors, from the child's recorded compare pair."""
    (a, b), = child.history[-1]["compare"]
    y_p, mp = run(parent, x, capture=(a,))
    y_c, mc = run(child, x, capture=(b,))
    assert mp[a].shape == mc[b].shape
    return rel_err(y_c, y_p), rel_err(mc[b], mp[a])


EXAMPLES = sorted(p.stem for p in MODULES.glob("*.json") if p.stem != "D_narrow")


@pytest.mark.parametrize("name", EXAMPLES)
def test_every_example_module_at_a_conv_and_at_a_shortcut(parent64, x64, name):
    spec = load_spec(MODULES / f"{name}.json")
    # D's inner widths are 3x the layer's output channels: 192-wide blobs at a 64-channel
    # site (seconds); its identity shortcut site is in stage 1 to stay quick
    shortcut = "layer1.2.shortcut" if name == "D" else "layer3.2.shortcut"
    for at in ("layer1.1.conv2", shortcut):
        child = morph_at(parent64, spec, at, seed=1)
        logits, module = site_error(parent64, child, x64[:3])
        assert logits <= F64 and module <= F64, (name, at, logits, module)
        entry = child.history[-1]
        assert entry["at"] == at and entry["residual"] <= F64
        # every inner blob got BN then PReLU(a = 1)
        for blob in spec.inner_blobs():
            assert child.nodes[f"{at}.{blob}_bn"]["op"] == "bn"
            w = child.tensors[f"{at}.{blob}_act.weight"]
            assert torch.equal(w, torch.ones_like(w))
    conv_child = morph_at(parent64, spec, "layer1.1.conv2", seed=1)
    assert "layer1.1.conv2.weight" not in conv_child.tensors
    assert "layer1.1.conv2" not in conv_child.nodes


def test_module_d_with_the_advised_widths_at_layer2_1_conv1(parent64, x64):
    narrow = load_spec(MODULES / "D_narrow.json")
    advice = width_advice(narrow, module_widths(narrow, 32, 32), narrow.effective_kernel())
    assert advice is not None
    _, widths = advice
    assert set(widths) == {"a", "b", "c"} and min(widths.values()) > 32
    spec = dataclasses.replace(load_spec(MODULES / "D.json"), channels=widths)
    child = morph_at(parent64, spec, "layer2.1.conv1", seed=0)
    logits, module = site_error(parent64, child, x64[:3])
    assert logits <= F64 and module <= F64
    assert child.history[-1]["residual"] <= F64
    assert child.tensors["layer2.1.conv1.F1.weight"].shape == (widths["a"], 32, 3, 3)
    # the float32 child is this one rounded (morph_at solves in float64 and casts)
    child32 = child.to(torch.float32)
    x32 = x64[:3].float()
    assert rel_err(run(child32, x32), run(parent64.to(torch.float32), x32)) <= F32


def test_module_too_narrow_says_what_to_widen():
    spec = load_spec(MODULES / "D_narrow.json")
    with pytest.raises(SolverError) as info:
        morph_at(small_net(torch.float64), spec, "c3")
    msg = str(info.value)
    assert "Widen inner blob" in msg and '"channels": {' in msg and "D_narrow" in msg


def test_no_bn_and_no_activation(parent64, x64):
    spec = load_spec(MODULES / "C.json")
    child = morph_at(parent64, spec, "layer2.2.conv2", bn=False, act="none")
    assert not any(k.startswith("layer2.2.conv2.") and n["op"] in ("bn", "prelu")
                   for k, n in child.nodes.items())
    logits, module = site_error(parent64, child, x64[:2])
    assert logits <= F64 and module <= F64
    with pytest.raises(MorphError, match="unknown activation 'relu'"):
        morph_at(parent64, spec, "layer2.2.conv2", act="relu")


def test_conv_bias_is_kept():
    net = small_net(torch.float64)
    x = torch.randn(3, 4, 8, 8, dtype=torch.float64)
    child = morph_at(net, load_spec(MODULES / "B.json"), "c1")
    biases = [k for k in child.tensors if k.startswith("c1.") and k.endswith(".bias")
              and child.nodes[k.removesuffix(".bias")]["op"] == "conv"]
    assert biases == ["c1.F2.bias"]  # exactly one edge into the sink carries it
    assert torch.equal(child.tensors["c1.F2.bias"], net.tensors["c1.bias"])
    assert rel_err(run(child, x), run(net, x)) <= F64


def test_morphing_a_morphed_child(parent64, x64):
    once = morph_preset(parent64, Preset.parse("1c1"))
    twice = morph_at(once, load_spec(MODULES / "A.json"), "layer3.1.morph1.conv1")
    assert rel_err(run(twice, x64[:2]), run(parent64, x64[:2])) <= F64
    assert [h["op"] for h in twice.history] == ["preset", "module"]
    assert twice.description["arch"] == "resnet20+1c1+A@layer3.1.morph1.conv1"


@pytest.mark.parametrize("preset", ["1c1", "3c1", "1c1_2branch", "3c3_half"])
def test_a_preset_refuses_branches_whose_conv_a_module_replaced(parent64, preset):
    """A preset grows its branches' plain convs; once a module replaced one (here
    layer1.1.morph1.conv1), the refusal names that layer and what to do instead of failing
    on a duplicate node name."""
    once = morph_preset(parent64, Preset.parse("1c1"))
    twice = morph_at(once, load_spec(MODULES / "A.json"), "layer1.1.morph1.conv1")
    with pytest.raises(MorphError) as info:
        morph_preset(twice, Preset.parse(preset))
    msg = str(info.value)
    assert msg.startswith(f"preset {preset!r} cannot grow 'layer1.1.morph1.conv1': a module "
                          "morph replaced that conv")
    assert "Apply presets before module morphs" in msg and "--at LAYER" in msg


def test_a_preset_after_a_module_at_a_block_conv_is_exact_and_named(parent64, x64):
    """Modules at block convs (not at a preset branch) do not stop a preset; the arch name
    records both, in order."""
    once = morph_at(parent64, load_spec(MODULES / "A.json"), "layer1.2.conv1", seed=1)
    assert once.description["arch"] == "resnet20+A@layer1.2.conv1"
    twice = morph_preset(once, Preset.parse("1c1"))
    assert twice.description["arch"] == "resnet20+A@layer1.2.conv1+1c1"
    assert rel_err(run(twice, x64[:2]), run(parent64, x64[:2])) <= F64
    thrice = morph_preset(twice, Preset.parse("3c1"))  # a grown preset keeps its place
    assert thrice.description["arch"] == "resnet20+A@layer1.2.conv1+3c1"


def test_arch_names_record_module_morphs():
    assert arch_name("resnet20", preset="1c1") == "resnet20+1c1"
    assert arch_name("resnet20+1c1", preset="3c3") == "resnet20+3c3"
    assert arch_name("resnet20+1c1", module="D", at="layer1.0.conv1") == \
        "resnet20+1c1+D@layer1.0.conv1"
    assert arch_name("resnet20+1c1+D@layer1.0.conv1", preset="3c1") == \
        "resnet20+3c1+D@layer1.0.conv1"
    # an unnamed spec, a name with the separator in it, and an older "+module" record
    assert arch_name("resnet20", module="", at="layer1.0.shortcut") == \
        "resnet20+module@layer1.0.shortcut"
    assert arch_name("resnet20", module="my mod+2", at="c1") == "resnet20+my_mod_2@c1"
    assert arch_name("resnet20+module", module="D", at="c1") == "resnet20+module+D@c1"
    # what reads them: the results table's paper name
    assert paper_name("resnet20+1c1+D@layer1.0.conv1") == "morph20_1c1+D@layer1.0.conv1"
    assert paper_name("resnet20+1c1") == "morph20_1c1"


def test_morph_at_checks_memory_before_solving_and_leaves_the_parent(parent64):
    huge = dataclasses.replace(load_spec(MODULES / "D.json"),
                               channels={"a": 60_000, "b": 60_000, "c": 60_000})
    before = copy.deepcopy(parent64.description)
    with pytest.raises(ResourceLimitError, match=r"needs about .* TiB of memory"):
        morph_at(parent64, huge, "layer1.1.conv1")
    with pytest.raises(ResourceLimitError, match=r"above the limit of 64 KiB"):
        morph_at(parent64, load_spec(MODULES / "A.json"), "layer1.1.conv1",
                 limits=SolveLimits(max_memory=64 * 2**10))
    assert parent64.description == before


def test_morph_at_passes_the_time_limit_and_progress(parent64, monkeypatch):
    from netmorph_cli.solver import budget

    with pytest.raises(SolverTimeout, match="time limit of 0.001 s"):
        morph_at(parent64, load_spec(MODULES / "D.json"), "layer1.1.conv1",
                 limits=SolveLimits(max_seconds=1e-3))
    monkeypatch.setattr(budget, "PROGRESS_EVERY", 0.0)
    seen = []
    morph_network(parent64, load_spec(MODULES / "D.json"), at="layer1.1.conv1",
                  progress=seen.append, limits=SolveLimits(max_sweeps=60, max_seconds=600))
    assert seen and seen[-1].max_seconds == 600


def test_solve_limits_travel_whole_and_refuse_nonsense(parent64, monkeypatch):
    """One record from the API to the solver: every field of the limits morph_network is
    given reaches ``morph_filter``; bad limits are refused when the record is made."""
    from netmorph_cli.morph import insertion

    seen = []
    real = insertion.morph_filter

    def spy(*args, **kwargs):
        seen.append({k: kwargs[k] for k in ("tol", "max_sweeps", "method", "max_seconds",
                                            "max_memory")})
        return real(*args, **kwargs)

    monkeypatch.setattr(insertion, "morph_filter", spy)
    limits = SolveLimits(max_seconds=300, max_sweeps=7, max_memory=2**30, tol=1e-9,
                         method="reduce")
    morph_network(parent64, load_spec(MODULES / "C.json"), at="layer1.1.conv1", limits=limits)
    assert seen == [{"tol": 1e-9, "max_sweeps": 7, "method": "reduce", "max_seconds": 300,
                     "max_memory": 2**30}]
    for bad, match in [({"method": "magic"}, "unknown method 'magic'"),
                       ({"max_sweeps": 0}, "max_sweeps must be ≥ 1"),
                       ({"tol": float("nan")}, "tol must be a finite number > 0"),
                       ({"max_seconds": 0.0}, "max_seconds must be > 0")]:
        with pytest.raises(ValueError, match=match):
            SolveLimits(**bad)


# refusals -----------------------------------------------------------------------------------


def small_net(dtype: torch.dtype = torch.float32) -> Network:
    """input (4, 8, 8) → conv 3×3 (bias) → grouped conv → dilated conv → unpadded conv →
    conv padded by 2 → conv → GAP → fc."""
    desc = {"format": FORMAT, "arch": "small", "input": [4, 8, 8], "num_classes": 2,
            "output": "fc", "nodes": [
                node("c1", "conv", ["input"], **{"in": 4, "out": 4}, kernel=[3, 3],
                     padding=[1, 1], bias=True),
                node("grouped", "conv", ["c1"], **{"in": 4, "out": 4}, kernel=[3, 3],
                     padding=[1, 1], groups=2),
                node("dilated", "conv", ["grouped"], **{"in": 4, "out": 4}, kernel=[3, 3],
                     padding=[2, 2], dilation=[2, 2]),
                node("valid", "conv", ["dilated"], **{"in": 4, "out": 4}, kernel=[3, 3]),
                node("wide", "conv", ["valid"], **{"in": 4, "out": 4}, kernel=[3, 3],
                     padding=[2, 2]),
                node("c3", "conv", ["wide"], **{"in": 4, "out": 4}, kernel=[3, 3],
                     padding=[1, 1]),
                node("g", "gap", ["c3"]),
                node("fc", "linear", ["g"], **{"in": 4, "out": 2})]}
    gen = torch.Generator().manual_seed(0)
    tensors = {k: torch.randn(v.shape, generator=gen, dtype=torch.float64).to(dtype)
               for k, v in zoo.init_tensors(desc).items()}
    return Network(desc, tensors).check()


@pytest.mark.parametrize("layer", ["valid", "wide"])
@pytest.mark.parametrize("name", ["A", "C"])
def test_convs_with_any_zero_padding_morph_exactly(layer, name):
    """A conv padded by p (0: 'valid', 2: wider than 'same') becomes a module whose one
    input padding is p plus the module's margin beyond the kernel; outputs equal the
    parent's at every pixel, sizes included."""
    net = small_net(torch.float64)
    spec = load_spec(MODULES / f"{name}.json")
    x = torch.randn(3, 4, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    child = morph_at(net, spec, layer, seed=2)
    margin = (spec.effective_kernel()[0] - 3) // 2  # A: 3×3 (none), C: 7×7 (2)
    assert child.nodes[f"{layer}.input_pad"]["pad"] == [net.nodes[layer]["padding"][0] + margin] * 2
    logits, module = site_error(net, child, x)
    assert logits <= F64 and module <= F64, (logits, module)


def test_a_3c1_childs_unpadded_inner_conv_morphs_again(parent64, x64):
    once = morph_preset(parent64, Preset.parse("3c1"))
    inner = once.nodes["layer3.1.morph1.conv1"]
    assert inner["kernel"] == [3, 3] and inner["padding"] == [0, 0]
    twice = morph_at(once, load_spec(MODULES / "C.json"), "layer3.1.morph1.conv1", seed=1)
    assert rel_err(run(twice, x64[:2]), run(parent64, x64[:2])) <= F64


def test_even_kernels_are_refused():
    """A module's filter is centred in its odd effective kernel: an even kernel is a
    MorphError, not a crash."""
    desc = {"format": FORMAT, "arch": "even", "input": [2, 6, 6], "num_classes": 2,
            "output": "fc", "nodes": [
                node("e", "conv", ["input"], **{"in": 2, "out": 2}, kernel=[2, 2]),
                node("g", "gap", ["e"]),
                node("fc", "linear", ["g"], **{"in": 2, "out": 2})]}
    net = Network(desc, zoo.init_tensors(desc)).check()
    with pytest.raises(MorphError, match=r"'e' has an even 2×2 kernel"):
        morph_at(net, load_spec(MODULES / "A.json"), "e")


def test_refuses_dilated_convs():  # grouped ones morph: tests/unit/test_groups.py
    with pytest.raises(MorphError, match=r"'dilated' is a dilated conv \(dilation \[2, 2\]\)"):
        morph_at(small_net(), load_spec(MODULES / "A.json"), "dilated")


@pytest.mark.parametrize("shortcut,layer,match", [
    ("B", "layer2.0.conv1", r"'layer2.0.conv1' is a strided conv \(stride \[2, 2\]\)"),
    ("B", "layer2.0.shortcut", r"not an identity shortcut: it has a projection "
                               r"\(layer2.0.shortcut.0, layer2.0.shortcut.1\)"),
    ("B", "layer2.0.shortcut.0", r"strided conv"),
    ("A", "layer2.0.shortcut", r"'layer2.0.shortcut' is not an identity shortcut: it has a "
                               r"strided option-A shortcut"),
    ("B", "layer1.0.relu1", r"'layer1.0.relu1' is a relu, not a conv or an identity shortcut"),
    ("B", "layer1.0.bn1", r"is a bn, not a conv"),
    ("B", "layer9.0.conv1", r"no layer 'layer9.0.conv1' in the network "
                            r"\(convs: conv1, layer1.0.conv1, layer1.0.conv2, .*…\)"),
])
def test_refusals_in_a_resnet(shortcut, layer, match):
    net = zoo.create("resnet20", shortcut=shortcut)
    with pytest.raises(MorphError, match=match):
        morph_at(net, load_spec(MODULES / "A.json"), layer)


def test_refuses_an_already_morphed_shortcut(parent64):
    child = morph_at(parent64, load_spec(MODULES / "resnet.json"), "layer1.1.shortcut")
    with pytest.raises(MorphError, match="no identity edge left"):
        morph_at(child, load_spec(MODULES / "A.json"), "layer1.1.shortcut")
    two = morph_preset(parent64, Preset.parse("1c1_2branch"))
    with pytest.raises(MorphError, match="not an identity shortcut"):
        morph_at(two, load_spec(MODULES / "A.json"), "layer1.1.shortcut")


@pytest.mark.parametrize("edges", [
    [{"name": "F.1", "from": "s", "to": "a", "kernel": 3},
     {"name": "F2", "from": "a", "to": "t", "kernel": 3}],
    [{"name": "F1", "from": "s", "to": "a.b", "kernel": 3},
     {"name": "F2", "from": "a.b", "to": "t", "kernel": 3}],
])
def test_refuses_spec_names_with_dots(parent64, edges):
    spec = spec_from_dict({"source": "s", "sink": "t", "edges": edges})
    with pytest.raises(MorphError, match=r"contains '\.'"):
        morph_at(parent64, spec, "layer1.1.conv1")


def test_morph_network_argument_errors(parent):
    with pytest.raises(MorphError, match="needs --at"):
        morph_network(parent, load_spec(MODULES / "A.json"))
    with pytest.raises(MorphError, match="--at applies to spec files; preset '1c1' places"):
        morph_network(parent, Preset.parse("1c1"), at="layer1.1.conv1")
    with pytest.raises(MorphError, match="unknown preset 'bogus'"):
        Preset.parse("bogus")


def test_morph_network_takes_objects_and_refuses_a_child_that_fails_its_check(parent,
                                                                              monkeypatch):
    with pytest.raises(TypeError, match=r"Preset.parse\(name\)"):
        morph_network(parent, "1c1")  # type: ignore[arg-type]  # names are the CLI's job
    from netmorph_cli.morph import morphs as morph

    real = morph.morph_preset

    def broken(*args, **kwargs):  # a morph whose child is off by 1% in one branch
        child = real(*args, **kwargs)
        key = "layer3.2.morph1.conv2.weight"
        child.tensors[key] = child.tensors[key] * 1.01
        return child

    monkeypatch.setattr(morph, "morph_preset", broken)
    with pytest.raises(VerificationError, match="does not reproduce the parent") as info:
        morph_network(parent, Preset.parse("1c1"))
    assert info.value.exit_code == 1  # a failed check, not bad input
    child, report = morph_network(parent, Preset.parse("1c1"), check=False)
    assert report is None and child.history[-1]["preset"] == "1c1"


# --------------------------------------------------------------------------------------------
# exact at the borders


def naive_module_output(x: torch.Tensor, f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
    """Two 3×3 convs in series, each with its own "same" zero padding (what a per-layer
    realization does): the intermediate map is zero outside the image."""
    return F.conv2d(F.conv2d(x, f1, padding=1), f2, padding=1)


def test_naive_realization_breaks_at_the_border_netmorph_does_not(parent64, x64):
    # s --F1 3×3--> a --F2 3×3--> t with a 48-wide inner blob: eq. 3 holds (48·9 ≥ 16·25),
    # so both filters are genuinely spatial (F1 random, F2 by deconvolution). (At the
    # default width 16 the solver embeds G in F1 and makes F2 a centred 1×1 embedding, for
    # which per-layer padding happens to be harmless.)
    spec = dataclasses.replace(load_spec(MODULES / "A.json"), channels={"a": 48})
    layer = "layer1.1.conv2"
    child = morph_at(parent64, spec, layer, seed=2)
    out = child.history[-1]["output"]
    f1 = child.tensors[f"{layer}.F1.weight"]
    f2 = child.tensors[f"{layer}.F2.weight"]
    assert f1.shape == (48, 16, 3, 3) and f2.shape == (16, 48, 3, 3)
    for f in (f1, f2):  # off-centre taps are far from zero in both filters
        off = f.clone()
        off[..., 1, 1] = 0
        assert off.abs().max().item() > 1e-2

    x = x64[:2]
    _, p = run(parent64, x, capture=(layer, "layer1.1.relu1"))
    _, c = run(child, x, capture=(out,))
    want = p[layer]  # the parent's conv, "same"-padded, (N, 16, 32, 32)
    assert c[out].shape == want.shape
    scale = want.abs().max().item()
    # netmorph (one input padding of the module's margin, unpadded convs): every pixel
    assert (c[out] - want).abs().max().item() <= BRANCH * scale

    # naive: exact inside, wrong at the border
    err = (naive_module_output(p["layer1.1.relu1"], f1, f2) - want).abs()
    interior = err[..., 1:-1, 1:-1]  # pixels whose 5×5 field needs no zero-padded F1 output
    assert interior.max().item() <= BRANCH * scale
    for edge in (err[..., 0, :], err[..., -1, :], err[..., :, 0], err[..., :, -1]):
        assert edge.max().item() > NAIVE * scale


# --------------------------------------------------------------------------------------------
# a child is rebuilt from its checkpoint alone


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_child_is_rebuilt_from_its_checkpoint(parent, x64, tmp_path, suffix):
    child, _ = morph_network(parent, Preset.parse("3c3_2branch_half"), prelu=True)
    child = morph_at(child, load_spec(MODULES / "C.json"), "layer3.1.conv2")
    path = tmp_path / f"child{suffix}"
    checkpoint.save(child, path)
    back = checkpoint.load(path)
    assert back.description == child.description and back.history == child.history
    x = x64[:2].float()
    assert torch.equal(run(back, x), run(child, x))
    assert rel_err(run(back, x64[:2], torch.float64),
                   run(parent, x64[:2], torch.float64)) <= F32
    assert back.meta["parent"]["arch"] == "resnet20"


def test_morph_network_returns_what_the_cli_renders(parent64):
    """A ``MorphResult``: the record is the child's last history entry, the FLOPs are the
    descriptions' (counted independently here), the check is the quick check, every phase
    is timed, and it unpacks as the (network, check) pair of before."""
    from netmorph_cli.morph.morphs import MorphResult
    from netmorph_cli.network.flops import count_flops

    r = morph_network(parent64, load_spec(MODULES / "C.json"), at="layer2.1.conv1", seed=4)
    assert isinstance(r, MorphResult)
    assert r.record.to_json() == r.network.history[-1]
    assert r.flops_before == count_flops(parent64.description) < r.flops_after == \
        count_flops(r.network.description)
    assert r.parent_arch == parent64.description["arch"]
    assert r.check is not None and r.check.passed
    assert set(r.seconds) == {"morph", "calibrate", "check"} and r.seconds["morph"] > 0
    child, check = r
    assert child is r.network and check is r.check and r[0] is child and r[1] is check
