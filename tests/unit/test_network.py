"""Network descriptions, the generic builder and the ResNet zoo.

References are written independently of netmorph: the hand-made description is computed
with plain tensor arithmetic (BN, PReLU, padding, crops, option-A shortcut, max pooling by
unfolding), and the zoo is compared with minimal copies of the usual PyTorch ResNet code
(He et al.'s CIFAR ResNet with option-B shortcuts, torchvision's BasicBlock ResNet).
Tolerances: float64 outputs agree to 1e-12 absolute; tensors loaded into modules are
bit-identical.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netmorph_cli.errors import NetworkError
from netmorph_cli.network import zoo
from netmorph_cli.network.description import (
    FORMAT,
    GraphNet,
    Network,
    expected_tensors,
    node,
    validate_description,
)
from netmorph_cli.network.flops import count_params

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------------------------
# a small description that uses every op


def small_description() -> dict:
    """input (3, 9, 9) → conv(bias) → BN → PReLU ─┬─ pad 1 → conv 3×5 (unpadded) ─┐
                                                  └────────── add(0.5, −1.5), crop ┴→ ReLU
    → [strided conv 3×3 + option-A shortcut] add(1, 2) → maxpool → GAP → linear(bias)."""
    return {"format": FORMAT, "arch": "small", "input": [3, 9, 9], "num_classes": 3,
            "output": "fc", "nodes": [
                node("c1", "conv", ["input"], **{"in": 3, "out": 4}, kernel=[3, 3],
                     padding=[1, 1], bias=True),
                node("b1", "bn", ["c1"], channels=4, eps=1e-3),
                node("p1", "prelu", ["b1"], channels=4),
                node("pd", "pad", ["p1"], pad=[1, 1]),
                node("c2", "conv", ["pd"], **{"in": 4, "out": 4}, kernel=[3, 5]),
                node("a1", "add", ["c2", "p1"], coeffs=[0.5, -1.5]),
                node("r1", "relu", ["a1"]),
                node("c3", "conv", ["r1"], **{"in": 4, "out": 8}, kernel=[3, 3],
                     stride=[2, 2], padding=[1, 1]),
                node("sa", "shortcut_a", ["r1"], **{"in": 4, "out": 8}, stride=2),
                node("a2", "add", ["c3", "sa"], coeffs=[1.0, 2.0], shortcut=1),
                node("mp", "maxpool", ["a2"], kernel=3, stride=2, padding=1),
                node("gp", "gap", ["mp"]),
                node("fc", "linear", ["gp"], **{"in": 8, "out": 3}),
            ]}


def random_tensors(desc: dict, seed: int = 0, dtype=torch.float64) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for k, shape in expected_tensors(desc).items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.zeros((), dtype=torch.long)
        elif k.endswith("running_var"):
            out[k] = (torch.rand(shape, generator=gen, dtype=torch.float64) + 0.5).to(dtype)
        else:
            out[k] = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    return out


def by_hand(t: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The small description computed without netmorph."""
    def bn(h, p, eps):
        shape = (1, -1, 1, 1)
        return ((h - t[f"{p}.running_mean"].view(shape))
                / torch.sqrt(t[f"{p}.running_var"].view(shape) + eps)
                * t[f"{p}.weight"].view(shape) + t[f"{p}.bias"].view(shape))

    h = F.conv2d(x, t["c1.weight"], t["c1.bias"], padding=1)
    h = bn(h, "b1", 1e-3)
    a = t["p1.weight"].view(1, -1, 1, 1)
    p1 = torch.where(h >= 0, h, a * h)
    padded = torch.zeros(x.shape[0], 4, 11, 11, dtype=x.dtype)
    padded[:, :, 1:10, 1:10] = p1
    c2 = F.conv2d(padded, t["c2.weight"])  # (N, 4, 9, 7)
    assert c2.shape[-2:] == (9, 7)
    a1 = 0.5 * c2 - 1.5 * p1[:, :, :, 1:8]  # centre crop 9×9 → 9×7
    r1 = torch.clamp(a1, min=0)
    c3 = F.conv2d(r1, t["c3.weight"], stride=2, padding=1)  # (N, 8, 5, 4)
    sub = r1[:, :, ::2, ::2]
    zeros = torch.zeros(x.shape[0], 2, *sub.shape[-2:], dtype=x.dtype)
    sa = torch.cat([zeros, sub, zeros], dim=1)
    a2 = c3 + 2.0 * sa
    # max pooling 3×3, stride 2, padding 1 by unfolding a −inf-padded map
    neg = torch.full((x.shape[0], 8, 7, 6), float("-inf"), dtype=x.dtype)
    neg[:, :, 1:6, 1:5] = a2
    windows = neg.unfold(2, 3, 2).unfold(3, 3, 2)  # (N, 8, 3, 2, 3, 3)
    mp = windows.amax(dim=(-1, -2))
    gp = mp.mean(dim=(2, 3))
    return gp @ t["fc.weight"].T + t["fc.bias"]


def test_graphnet_matches_a_hand_computation_float64():
    desc = small_description()
    shapes = validate_description(desc)
    assert shapes["c2"] == (4, 9, 7) and shapes["a1"] == (4, 9, 7)
    assert shapes["a2"] == (8, 5, 4) and shapes["mp"] == (8, 3, 2) and shapes["fc"] == (3,)
    tensors = random_tensors(desc)
    net = Network(desc, tensors).check()
    x = torch.randn(5, 3, 9, 9, generator=torch.Generator().manual_seed(9),
                    dtype=torch.float64)
    with torch.no_grad():
        ours = net.module()(x)
        ref = by_hand(tensors, x)
    assert ours.dtype == torch.float64 and ours.shape == (5, 3)
    assert (ours - ref).abs().max().item() <= 1e-12
    # the PReLU slopes are random of both signs and the maps have negative values: the
    # comparison exercises the negative branch
    assert (tensors["p1.weight"] < 0).any() and (tensors["p1.weight"] > 0).any()


def test_graphnet_capture_returns_intermediate_maps():
    desc = small_description()
    tensors = random_tensors(desc, seed=3)
    module = Network(desc, tensors).module()
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    with torch.no_grad():
        y, maps = module(x, capture=["a1", "sa", "input"])
    assert set(maps) == {"a1", "sa", "input"}
    assert maps["a1"].shape == (2, 4, 9, 7) and maps["sa"].shape == (2, 8, 5, 4)
    assert maps["input"] is x
    assert torch.equal(y, module(x))


def test_state_dict_keys_are_the_description_tensor_names():
    desc = small_description()
    assert list(GraphNet(desc).state_dict()) == list(expected_tensors(desc))


# --------------------------------------------------------------------------------------------
# validation: every error names the node at fault


def _with(desc: dict, i: int, **changes) -> dict:
    d = copy.deepcopy(desc)
    d["nodes"][i].update(changes)
    return d


def _bad_cases() -> list[tuple[str, dict, tuple[str, ...]]]:
    d = small_description()
    dup = copy.deepcopy(d)
    dup["nodes"].insert(2, node("c1", "relu", ["b1"]))
    missing = copy.deepcopy(d)
    del missing["nodes"][0]["kernel"]
    later = copy.deepcopy(d)
    later["nodes"][1]["inputs"] = ["p1"]  # p1 comes after b1
    inside = copy.deepcopy(d)
    inside["nodes"].insert(1, node("c1.extra", "relu", ["c1"]))
    return [
        ("duplicate node", dup, ("duplicate", "'c1'")),
        ("unknown op", _with(d, 6, op="layer_norm"), ("'r1'", "unknown op", "'layer_norm'")),
        ("missing attribute", missing, ("'c1'", "missing", "kernel")),
        ("unknown input", _with(d, 6, inputs=["nowhere"]), ("'r1'", "'nowhere'",
                                                            "not an earlier node")),
        ("input not earlier", later, ("'b1'", "'p1'", "not an earlier node")),
        ("conv channels", _with(d, 4, **{"in": 5}), ("'c2'", "5 input channels", "gets 4")),
        ("bn channels", _with(d, 1, channels=6), ("'b1'", "expects 6 channels")),
        ("add channels", _with(d, 9, inputs=["c3", "r1"]), ("'a2'", "different channels")),
        ("add coefficients", _with(d, 5, coeffs=[1.0]), ("'a1'", "2 inputs but 1")),
        ("add cannot crop", _with(d, 4, kernel=[3, 4]), ("'a1'", "centre-cropped")),
        ("linear features", _with(d, 12, **{"in": 7}), ("'fc'", "expects (7,)")),
        ("output shape", _with(d, 12, out=4), ("'fc'", "(4,)", "expected (3,)")),
        ("output unknown", {**d, "output": "nope"}, ("'nope'", "not a node")),
        ("inside a layer", inside, ("'c1.extra'", "inside layer 'c1'")),
        ("two inputs to a conv", _with(d, 4, inputs=["pd", "pd"]), ("'c2'", "one input")),
        ("empty conv output", _with(d, 0, kernel=[13, 13]), ("'c1'", "empty")),
        ("int padding", _with(d, 0, padding=1), ("'c1'", "padding must be a list of two")),
        ("int kernel", _with(d, 0, kernel=3), ("'c1'", "kernel must be a list of two")),
        ("zero stride", _with(d, 0, stride=[0, 1]), ("'c1'", "stride", "≥ 1")),
        ("negative padding", _with(d, 0, padding=[-1, 1]), ("'c1'", "padding", "≥ 0")),
        ("format", {**d, "format": 99}, ("format 99",)),
        ("no nodes key", {k: v for k, v in d.items() if k != "nodes"}, ("'nodes'",)),
    ]


@pytest.mark.parametrize("what,desc,needles", _bad_cases(), ids=[c[0] for c in _bad_cases()])
def test_validation_errors_name_the_culprit(what, desc, needles):
    with pytest.raises(NetworkError) as info:
        validate_description(desc)
    for needle in needles:
        assert needle in str(info.value), (what, str(info.value))
    with pytest.raises(NetworkError):
        GraphNet(desc)  # the builder validates too


def test_node_helper_refuses_unknown_ops():
    with pytest.raises(NetworkError, match="unknown op 'swish'"):
        node("x", "swish", ["input"])


# --------------------------------------------------------------------------------------------
# Network: tensors must match the description; dtype handling is exact


def test_check_lists_missing_unexpected_and_misshapen_tensors():
    desc = small_description()
    tensors = random_tensors(desc)
    Network(desc, dict(tensors)).check()
    missing = {k: v for k, v in tensors.items() if k != "c2.weight"}
    with pytest.raises(NetworkError, match=r"missing tensors: c2\.weight"):
        Network(desc, missing).check()
    extra = {**tensors, "c9.weight": torch.zeros(1)}
    with pytest.raises(NetworkError, match=r"unexpected tensors: c9\.weight"):
        Network(desc, extra).check()
    wrong = {**tensors, "fc.bias": torch.zeros(4, dtype=torch.float64)}
    with pytest.raises(NetworkError, match=r"'fc\.bias' has shape \(4,\).*needs \(3,\)"):
        Network(desc, wrong).check()


def test_float64_network_builds_without_rounding_through_float32():
    # regression: GraphNet used to be built in float32 and load_state_dict cast into it
    net = zoo.create("resnet20", seed=1).to(torch.float64)
    third = torch.full_like(net.tensors["conv1.weight"], 1.0 / 3.0)
    net.tensors["conv1.weight"] = third
    assert third[0, 0, 0, 0].item() != third.float()[0, 0, 0, 0].item()
    module = net.module()
    state = module.state_dict()
    assert state["conv1.weight"].dtype == torch.float64
    for k, v in net.tensors.items():
        assert state[k].dtype == v.dtype and torch.equal(state[k], v), k
    assert not module.training  # module() is in eval mode


def test_to_float64_and_back_is_exact_and_copies():
    net = zoo.create("resnet20", seed=2)
    wide = net.to(torch.float64)
    assert wide.dtype == torch.float64 and net.dtype == torch.float32
    for k, v in net.tensors.items():
        w = wide.tensors[k]
        if v.is_floating_point():
            assert w.dtype == torch.float64 and torch.equal(w.float(), v), k
        else:
            assert w.dtype == v.dtype and torch.equal(w, v), k
    wide.description["nodes"][0]["name"] = "changed"
    assert net.description["nodes"][0]["name"] == "conv1"  # a deep copy
    back = wide.to(torch.float32)
    assert all(torch.equal(back.tensors[k], v) for k, v in net.tensors.items())


def test_module_casts_on_request_only():
    net = zoo.create("resnet20", seed=3)
    assert next(net.module().parameters()).dtype == torch.float32
    m64 = net.module(torch.float64)
    assert next(m64.parameters()).dtype == torch.float64
    assert torch.equal(m64.state_dict()["linear.weight"].float(), net.tensors["linear.weight"])


# --------------------------------------------------------------------------------------------
# the zoo against the usual PyTorch model code


class RefCifarBlock(nn.Module):
    """He et al.'s CIFAR basic block with an option-B projection (1×1 conv + BN)."""

    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                          nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class RefCifarResNet(nn.Module):
    def __init__(self, depth, num_classes=10):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        c = 16
        for stage, width in enumerate((16, 32, 64), start=1):
            blocks = []
            for i in range(n):
                blocks.append(RefCifarBlock(c, width, 2 if stage > 1 and i == 0 else 1))
                c = width
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(out.mean(dim=(2, 3)))


class RefTvBlock(nn.Module):
    """torchvision's BasicBlock (models/resnet.py)."""

    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                            nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class RefTvResNet(nn.Module):
    def __init__(self, layers, num_classes=1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        c = 64
        for stage, (width, n) in enumerate(zip((64, 128, 256, 512), layers, strict=True), 1):
            blocks = []
            for i in range(n):
                blocks.append(RefTvBlock(c, width, 2 if stage > 1 and i == 0 else 1))
                c = width
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _randomize_bn(net: Network, seed: int = 0) -> Network:
    gen = torch.Generator().manual_seed(seed)
    for k, v in net.tensors.items():
        if k.endswith("running_mean") or k.endswith(".bias"):
            net.tensors[k] = torch.randn(v.shape, generator=gen).to(v.dtype) * 0.1
        elif k.endswith("running_var") or (k.endswith(".weight") and v.dim() == 1):
            net.tensors[k] = (torch.rand(v.shape, generator=gen) + 0.5).to(v.dtype)
    return net


def _same_state(ref: nn.Module, net: Network) -> None:
    ref_sd = ref.state_dict()
    assert list(ref_sd) == list(net.tensors)  # same names, same (state_dict) order
    for k, v in ref_sd.items():
        assert tuple(v.shape) == tuple(net.tensors[k].shape), k


# torchvision's published parameter counts; the CIFAR ones follow He et al.'s design
# (option A = 0.27M for ResNet-20; option B adds the two 1×1 projections with their BNs,
# 16·32 + 2·32 + 32·64 + 2·64 = 2752 parameters)
PARAMS = {("resnet20", "A"): 269_722, ("resnet20", "B"): 272_474,
          ("resnet32", "A"): 464_154, ("resnet44", "A"): 658_586,
          ("resnet56", "A"): 853_018, ("resnet56", "B"): 855_770,
          ("resnet110", "A"): 1_727_962, ("resnet110", "B"): 1_730_714,
          ("resnet18", "B"): 11_689_512, ("resnet34", "B"): 21_797_672}


@pytest.mark.parametrize("arch,shortcut", sorted(PARAMS))
def test_zoo_parameter_counts(arch, shortcut):
    desc = zoo.describe(arch, shortcut=shortcut)
    assert count_params(desc) == PARAMS[arch, shortcut]
    net = zoo.create(arch, shortcut=shortcut) if arch in ("resnet20", "resnet18") else None
    if net is not None:
        learnable = sum(p.numel() for p in net.module().parameters())
        assert learnable == PARAMS[arch, shortcut]


@pytest.mark.parametrize("depth", zoo.CIFAR_DEPTHS)
def test_cifar_zoo_matches_the_reference_layout(depth):
    desc = zoo.describe(f"resnet{depth}")
    shapes = validate_description(desc)
    n = (depth - 2) // 6
    assert desc["input"] == [3, 32, 32] and desc["output"] == "linear"
    assert shapes[f"layer3.{n - 1}.relu2"] == (64, 8, 8) and shapes["linear"] == (10,)
    convs = [x for x in desc["nodes"] if x["op"] == "conv"]
    assert len(convs) == depth - 1 + 2  # 6n + 1 3×3 convs and two projections
    net = _randomize_bn(Network(desc, zoo.init_tensors(desc, seed=depth)), seed=depth)
    ref = RefCifarResNet(depth)
    _same_state(ref, net)
    ref.load_state_dict(net.tensors, strict=True)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(depth),
                    dtype=torch.float64)
    with torch.no_grad():
        ours, theirs = net.module(torch.float64)(x), ref.double().eval()(x)
    assert ours.shape == (2, 10)
    assert (ours - theirs).abs().max().item() <= 1e-12 * max(1.0, theirs.abs().max().item())


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_cifar_resnet20_forward_equals_reference_code(shortcut):
    net = _randomize_bn(zoo.create("resnet20", num_classes=7, seed=4, shortcut=shortcut))
    keys = set(net.tensors)
    assert {"conv1.weight", "bn1.running_var", "layer1.0.conv1.weight", "layer3.2.bn2.bias",
            "linear.weight", "linear.bias"} <= keys
    proj = {"layer2.0.shortcut.0.weight", "layer2.0.shortcut.1.running_mean",
            "layer3.0.shortcut.0.weight"}
    if shortcut == "B":
        assert proj <= keys
    else:
        assert not proj & keys and not any("shortcut" in k for k in keys)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0),
                    dtype=torch.float64)
    with torch.no_grad():
        ours = net.module(torch.float64)(x)
    assert ours.shape == (3, 7)
    if shortcut == "B":
        ref = RefCifarResNet(20, 7)
        ref.load_state_dict(net.tensors, strict=True)
        with torch.no_grad():
            theirs = ref.double().eval()(x)
        assert (ours - theirs).abs().max().item() <= 1e-12
    else:
        nodes = net.nodes
        assert nodes["layer2.0.shortcut"]["op"] == "shortcut_a"
        assert nodes["layer2.0.shortcut"]["in"] == 16 and nodes["layer2.0.shortcut"]["out"] == 32


@pytest.mark.parametrize("arch", ["resnet18", "resnet34"])
def test_imagenet_zoo_matches_torchvision_layout(arch):
    desc = zoo.describe(arch)
    shapes = validate_description(desc)
    assert desc["input"] == [3, 224, 224] and desc["output"] == "fc"
    assert shapes["maxpool"] == (64, 56, 56) and shapes["layer4.1.relu2"] == (512, 7, 7)
    assert shapes["fc"] == (1000,)
    net = _randomize_bn(Network(desc, zoo.init_tensors(desc, seed=3)), seed=3)
    ref = RefTvResNet(zoo.IMAGENET_DEPTHS[int(arch[6:])])
    _same_state(ref, net)
    ref.load_state_dict(net.tensors, strict=True)
    # the layers do not depend on the input size: a 64×64 image keeps this test fast
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours, theirs = net.module()(x), ref.eval()(x)
    assert ours.shape == (1, 1000)
    assert (ours - theirs).abs().max().item() <= 1e-4 * theirs.abs().max().item()
    keys = expected_tensors(desc)
    assert "layer2.0.downsample.0.weight" in keys and "fc.weight" in keys
    assert not any("shortcut" in k or "linear" in k for k in keys)


def test_resnet18_forward_equals_torchvision_code():
    net = _randomize_bn(zoo.create("resnet18", num_classes=5, seed=5))
    ref = RefTvResNet((2, 2, 2, 2), 5)
    ref.load_state_dict(net.tensors, strict=True)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = net.module()(x)
        theirs = ref.eval()(x)
    assert ours.shape == (1, 5)
    assert (ours - theirs).abs().max().item() <= 1e-4 * theirs.abs().max().item()


def test_zoo_refusals_and_seeds():
    with pytest.raises(NetworkError, match="unknown architecture 'resnet50'"):
        zoo.describe("resnet50")
    with pytest.raises(NetworkError, match="shortcut must be A or B"):
        zoo.describe("resnet20", shortcut="C")
    a, b, c = (zoo.create("resnet20", seed=s) for s in (0, 0, 1))
    assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
    assert not torch.equal(a.tensors["conv1.weight"], c.tensors["conv1.weight"])
    assert zoo.create("resnet20", num_classes=100).description["num_classes"] == 100
