"""``conversion.to_network``: ATen calls → netmorph nodes, one op at a time, on tiny models.

Each supported op the zoo does not cover is converted from a small float64 model and the
network's logits are compared with the model's own forward on fresh inputs (≤ 1e-12
relative: the same float64 ops). Each unsupported construct is refused with a
``ConversionError`` naming the node and what netmorph supports. Node names follow the
model's module paths; residual joins mark their identity input so that the paper's presets
morph an imported ResNet-like network exactly.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.export import Dim

import zoo_models
from netmorph_cli.io import conversion, program
from netmorph_cli.io.conversion import ConversionError
from netmorph_cli.morph import morphs as morph
from netmorph_cli.morph import verify
from netmorph_cli.network.presets import Preset

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64
EXACT = 1e-12  # relative, ‖Δ‖∞ / ‖ref‖∞: the same float64 ops in the same order
C = 4  # channels after the stem
SIDE = 8  # input side


def seeded_randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, dtype=F64, generator=torch.Generator().manual_seed(seed))


class Net(nn.Module):
    """stem conv 3→C (3×3, padding 1, weights ×``gain``) → ``body(self, x)`` → ``head``:
    the mean over H and W and a linear layer, unless ``head`` is given."""

    def __init__(self, body, *, head=None, fc_in: int = C, gain: float = 1.0, **mods):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.stem = nn.Conv2d(3, C, 3, padding=1)
            for k, v in mods.items():
                setattr(self, k, v)
            self.fc = nn.Linear(fc_in, 5)
        with torch.no_grad():
            self.stem.weight.mul_(gain)
        self._body, self._head = body, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._body(self, self.stem(x))
        if self._head is not None:
            return self._head(self, x)
        return self.fc(x.mean((2, 3)))


def convert(model: nn.Module, *, batch: int = 2, dynamic: bool = False):
    """(network, float64 model) of ``model`` exported at a ``batch``×3×SIDE×SIDE input."""
    model = model.double().eval()
    x = seeded_randn(batch, 3, SIDE, SIDE)
    shapes = {"x": {0: Dim("batch", min=2, max=64)}} if dynamic else None
    ep = torch.export.export(model, (x,), dynamic_shapes=shapes)
    prog = program.from_exported(ep, "tiny")
    net = conversion.to_network(prog, arch="tiny", imported={},
                                normalization={"mean": [0.0] * 3, "std": [1.0] * 3})
    return net, model


def rel_err(net, model, batch: int = 3, seed: int = 1) -> float:
    x = seeded_randn(batch, 3, SIDE, SIDE, seed=seed)
    with torch.no_grad():
        ours, ref = net.module(F64)(x), model(x)
    assert ours.shape == ref.shape
    return ((ours - ref).abs().max() / ref.abs().max()).item()


def ops(net) -> list[str]:
    return [n["op"] for n in net.description["nodes"]]


def node(net, name: str) -> dict:
    return net.nodes[name]


def prelu(channels: int) -> nn.PReLU:
    m = nn.PReLU(channels)
    with torch.no_grad():
        m.weight.copy_(torch.linspace(-0.7, 0.9, channels))
    return m


def flat_head(self, x):
    return self.fc(x.view(x.size(0), -1))


# --------------------------------------------------------------------------------------------
# supported ops: the network computes the model

def _trained_gn(groups: int, channels: int) -> nn.GroupNorm:
    gn = nn.GroupNorm(groups, channels)
    with torch.no_grad():  # not the identity affine
        gn.weight.copy_(1 + 0.3 * seeded_randn(channels, seed=7))
        gn.bias.copy_(0.2 * seeded_randn(channels, seed=8))
    return gn


CASES = {  # name → (model factory, ops the network must contain)
    "sub": (lambda: Net(lambda s, x: x - F.relu(x)), ["add"]),
    "relu6 module": (lambda: Net(lambda s, x: s.act(x), act=nn.ReLU6(), gain=8.0),
                     ["hardtanh"]),
    "relu6 functional": (lambda: Net(lambda s, x: F.relu6(x), gain=8.0), ["hardtanh"]),
    "hardtanh": (lambda: Net(lambda s, x: F.hardtanh(x, -0.5, 0.7)), ["hardtanh"]),
    "hardsigmoid": (lambda: Net(lambda s, x: F.hardsigmoid(x), gain=4.0), ["hardsigmoid"]),
    "tanh": (lambda: Net(lambda s, x: torch.tanh(x)), ["tanh"]),
    "group_norm": (lambda: Net(lambda s, x: s.act(x), act=_trained_gn(2, C)), ["groupnorm"]),
    "group_norm without affine": (lambda: Net(lambda s, x: s.act(x), act=nn.GroupNorm(
        C, C, affine=False)), ["groupnorm"]),
    "leaky_relu module": (lambda: Net(lambda s, x: s.act(x), act=nn.LeakyReLU(0.2)),
                          ["leaky_relu"]),
    "leaky_relu functional in place": (lambda: Net(
        lambda s, x: F.leaky_relu(x.clone(), inplace=True)), ["leaky_relu"]),
    "prelu one slope": (lambda: Net(lambda s, x: s.act(x), act=prelu(1)), ["prelu"]),
    "prelu per channel": (lambda: Net(lambda s, x: s.act(x), act=prelu(C)), ["prelu"]),
    "conv padding same": (lambda: Net(lambda s, x: s.conv(x),
                                      conv=nn.Conv2d(C, C, 3, padding="same")), ["conv"]),
    "conv padding same dilated": (lambda: Net(lambda s, x: s.conv(x), conv=nn.Conv2d(
        C, C, 3, padding="same", dilation=2)), ["conv"]),
    "conv padding valid": (lambda: Net(lambda s, x: s.conv(x),
                                       conv=nn.Conv2d(C, C, 3, padding="valid")), ["conv"]),
    "dilated conv": (lambda: Net(lambda s, x: s.conv(x), conv=nn.Conv2d(
        C, C, 3, padding=2, dilation=2)), ["conv"]),
    "strided grouped conv": (lambda: Net(lambda s, x: s.conv(x), conv=nn.Conv2d(
        C, 2 * C, 3, stride=2, padding=1, groups=2), fc_in=2 * C), ["conv"]),
    "mean keepdim": (lambda: Net(lambda s, x: x, head=lambda s, x: s.fc(
        x.mean((2, 3), keepdim=True).flatten(1))), ["adaptive_avgpool", "flatten"]),
    "mean negative dims": (lambda: Net(lambda s, x: x, head=lambda s, x: s.fc(
        x.mean((-2, -1)))), ["gap"]),
    "view(size(0), -1)": (lambda: Net(lambda s, x: x, head=flat_head, fc_in=C * SIDE * SIDE),
                          ["flatten"]),
    "reshape": (lambda: Net(lambda s, x: x, head=lambda s, x: s.fc(
        x.reshape(x.shape[0], -1)), fc_in=C * SIDE * SIDE), ["flatten"]),
    "avg_pool2d count_include_pad=False": (lambda: Net(lambda s, x: F.avg_pool2d(
        x, 3, 2, 1, count_include_pad=False)), ["avgpool"]),
    "avg_pool2d count_include_pad=True": (lambda: Net(lambda s, x: F.avg_pool2d(
        x, 3, 2, 1)), ["avgpool"]),
    "max_pool2d with padding": (lambda: Net(lambda s, x: F.max_pool2d(x, 3, 2, 1)),
                                ["maxpool"]),
    "conv with bias, linear without": (lambda: Net(
        lambda s, x: s.conv(x), conv=nn.Conv2d(C, C, 1, bias=True),
        head=lambda s, x: s.fc2(x.mean((2, 3))), fc2=nn.Linear(C, 5, bias=False)),
        ["conv", "linear"]),
    "dropout": (lambda: Net(lambda s, x: s.drop(x), drop=nn.Dropout(0.3)), ["dropout"]),
    "functional dropout": (lambda: Net(lambda s, x: F.dropout(x, 0.2, training=s.training)),
                           ["dropout"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_op_converts_exactly(case):
    build, want = CASES[case]
    net, model = convert(build())
    for op in want:
        assert op in ops(net), ops(net)
    assert rel_err(net, model) <= EXACT


def test_relu6_clips_in_the_compared_range():
    """The ReLU6 comparison is meaningful: the stem's outputs exceed 6 on these inputs."""
    model = Net(lambda s, x: x, gain=8.0).double()
    with torch.no_grad():
        assert model.stem(seeded_randn(3, 3, SIDE, SIDE, seed=1)).max() > 6


def test_prelu_slopes_become_per_channel():
    net, model = convert(Net(lambda s, x: s.act(x), act=prelu(1)))
    w = net.tensors["act.weight"]
    assert w.shape == (C,) and torch.equal(w, model.act.weight.detach().expand(C))
    assert node(net, "act")["channels"] == C
    net, model = convert(Net(lambda s, x: s.act(x), act=prelu(C)))
    assert torch.equal(net.tensors["act.weight"], model.act.weight.detach())


def test_conv_attributes():
    net, _ = convert(Net(lambda s, x: s.conv(x), conv=nn.Conv2d(C, C, 3, padding="same",
                                                               dilation=2)))
    n = node(net, "conv")
    assert (n["padding"], n["dilation"], n["kernel"]) == ([2, 2], [2, 2], [3, 3])
    net, _ = convert(Net(lambda s, x: s.conv(x), conv=nn.Conv2d(C, C, 3, padding="valid")))
    assert node(net, "conv")["padding"] == [0, 0]
    net, _ = convert(CASES["conv with bias, linear without"][0]())
    assert node(net, "conv")["bias"] is True and node(net, "fc2")["bias"] is False
    assert "fc2.bias" not in net.tensors and "conv.bias" in net.tensors


def test_avgpool_keeps_count_include_pad():
    net, _ = convert(CASES["avg_pool2d count_include_pad=False"][0]())
    pool = next(n for n in net.description["nodes"] if n["op"] == "avgpool")
    assert (pool["kernel"], pool["stride"], pool["padding"]) == (3, 2, 1)
    assert pool["count_include_pad"] is False


@pytest.mark.parametrize("dynamic", [False, True])
def test_view_flatten_with_static_and_dynamic_batch(dynamic):
    net, model = convert(Net(lambda s, x: x, head=flat_head, fc_in=C * SIDE * SIDE),
                         batch=4, dynamic=dynamic)
    assert "flatten" in ops(net)
    for batch in (1, 3, 7):  # any batch, whatever the export's
        assert rel_err(net, model, batch=batch) <= EXACT


def test_dropout_is_a_node_that_training_keeps():
    net, _ = convert(CASES["dropout"][0]())
    assert node(net, "drop") == {"name": "drop", "op": "dropout", "inputs": ["stem"], "p": 0.3}


# --------------------------------------------------------------------------------------------
# refusals

class BN1d(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, C, 3, padding=1)
        self.bn = nn.BatchNorm1d(C)
        self.fc = nn.Linear(C, 5)

    def forward(self, x):
        return self.fc(self.bn(self.stem(x).mean((2, 3))))


REFUSED = {  # name → (model factory, what the message says)
    "non-square pool": (lambda: Net(lambda s, x: F.max_pool2d(x, (2, 3))),
                        ["aten.max_pool2d", "a non-square window", "netmorph's pooling is square"]),
    "non-square stride": (lambda: Net(lambda s, x: F.avg_pool2d(x, 2, (1, 2))),
                          ["a non-square window"]),
    "ceil_mode": (lambda: Net(lambda s, x: F.max_pool2d(x, 3, 2, ceil_mode=True)),
                  ["ceil_mode"]),
    "concat along dim 2": (lambda: Net(lambda s, x: torch.cat([x, F.relu(x)], 2)),
                           ["aten.cat", "concatenation along dim 2", "(dim 1)"]),
    "learned scale": (lambda: Net(lambda s, x: x * s.gamma,
                                  gamma=nn.Parameter(torch.ones(1, C, 1, 1))),
                      ["aten.mul", "the stored tensor 'gamma'",
                       "a learned scale or constant operand is not supported"]),
    "BatchNorm1d": (BN1d, ["in module 'bn' (BatchNorm1d)", "BatchNorm1d"]),
    "computed conv weight": (lambda: Net(lambda s, x: F.conv2d(x, s.conv.weight * 2, padding=1),
                                         conv=nn.Conv2d(C, C, 3, bias=False)),
                             ["'conv.weight'"]),
    "transposed conv": (lambda: Net(lambda s, x: s.up(x), up=nn.ConvTranspose2d(C, C, 2, 2)),
                        ["in module 'up' (ConvTranspose2d)", "conv_transpose2d"]),
    "even kernel padding same": (lambda: Net(lambda s, x: s.conv(x),
                                             conv=nn.Conv2d(C, C, 4, padding="same")),
                                 ["padding='same' with an even kernel"]),
    "reshape that is no flatten": (lambda: Net(lambda s, x: x, head=lambda s, x: s.fc(
        x.view(x.size(0), C, -1).mean(2))),
        ["aten.view", "netmorph supports flattening to (N, features) and channel movements"]),
    "mean over channels": (lambda: Net(lambda s, x: x, head=lambda s, x: s.fc(
        x.mean(1).flatten(1)), fc_in=SIDE * SIDE), ["a mean over dims [1]"]),
    "unsupported op": (lambda: Net(lambda s, x: F.softplus(x)),
                       ["aten.softplus", "netmorph cannot convert this op; it supports conv2d"]),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused(case):
    build, needles = REFUSED[case]
    with pytest.raises(ConversionError) as info:
        convert(build())
    msg = str(info.value)
    assert msg.startswith("'tiny': node '"), msg
    for needle in needles:
        assert needle in msg, msg


def test_transposed_convolution_target_is_refused_by_its_flag():
    """``aten.convolution`` with transposed=True (what other exports produce) is refused by
    the conv handler itself, not converted as a forward conv."""
    model = Net(lambda s, x: s.up(x), up=nn.ConvTranspose2d(C, C, 3, padding=1)).double()
    prog = program.from_exported(torch.export.export(model, (seeded_randn(2, 3, SIDE, SIDE),)),
                                 "tiny")
    calls = []
    for c in prog.calls:
        if c.target.startswith("aten.conv_transpose2d"):
            w, bias = c.args["weight"], c.args.get("bias")
            c = program.Call(c.name, "aten.convolution.default", {
                "input": c.args["input"], "weight": w, "bias": bias, "stride": [1, 1],
                "padding": [1, 1], "dilation": [1, 1], "transposed": True,
                "output_padding": [0, 0], "groups": 1}, c.outputs, c.module, c.module_type)
        calls.append(c)
    prog.calls = calls
    with pytest.raises(ConversionError, match="a transposed conv is not supported"):
        conversion.to_network(prog, arch="tiny", imported={},
                              normalization={"mean": [0.0] * 3, "std": [1.0] * 3})


# --------------------------------------------------------------------------------------------
# node names: module paths; joins

@pytest.fixture(scope="module")
def zoo_nets(one_thread):
    """Imported float64 zoo networks (with their models), traced once."""
    nets = {}
    for name, kwargs in (("vgg11_bn", {}), ("resnext", {}), ("se_resnet", {"blocks": [1, 2, 1]}),
                         ("mobilenetv2", {})):
        model = zoo_models.build(name, **kwargs).double().eval()
        prog = program.trace(model, zoo_models.example_input(2, dtype=F64))
        nets[name] = conversion.to_network(prog, arch=name, imported={},
                                           normalization={"mean": [0.0] * 3,
                                                          "std": [1.0] * 3}), model
    return nets


def test_layers_and_leaf_modules_keep_their_module_paths(zoo_nets):
    net, model = zoo_nets["vgg11_bn"]
    names = [n["name"] for n in net.description["nodes"]]
    kinds = {n["name"]: n["op"] for n in net.description["nodes"]}
    # features.0 conv, .1 bn, .2 ReLU(inplace), .3 MaxPool2d; classifier.0 Dropout, .1 Linear
    assert (kinds["features.0"], kinds["features.1"], kinds["features.2"],
            kinds["features.3"]) == ("conv", "bn", "relu", "maxpool")
    assert (kinds["classifier.0"], kinds["classifier.1"]) == ("dropout", "linear")
    modules = {k for k, m in model.named_modules() if k and not list(m.children())}
    assert {n for n in names if n != "flatten"} == modules  # every leaf module, once
    assert net.tensors["features.0.weight"].shape == model.features[0].weight.shape


def test_repeated_module_calls_are_numbered(zoo_nets):
    net, _ = zoo_nets["resnext"]
    relus = [n["name"] for n in net.description["nodes"] if n["name"].startswith("layer2.1.relu")]
    assert relus == ["layer2.1.relu", "layer2.1.relu_1", "layer2.1.relu_2"]
    # the add's result feeds the third call: relu(out + identity)
    assert node(net, "layer2.1.relu_2")["inputs"] == ["layer2.1.add"]


def test_identity_join_marks_its_shortcut(zoo_nets):
    net, _ = zoo_nets["resnext"]
    add = node(net, "layer2.1.add")
    # out += identity: the identity is layer2.0's output (its last relu call)
    assert add["inputs"] == ["layer2.1.bn3", "layer2.0.relu_2"]
    assert add["shortcut"] == 1 and add["coeffs"] == [1.0, 1.0]
    net, _ = zoo_nets["se_resnet"]
    add = node(net, "layer1.0.add")
    assert add["inputs"] == ["layer1.0.se.mul", "stem.2"] and add["shortcut"] == 1
    assert node(net, "layer2.1.add")["inputs"][node(net, "layer2.1.add")["shortcut"]] == \
        "layer2.0.relu_1"
    # x + conv(x) in an inverted residual: the identity is the first operand, the output of
    # the previous block's projection BN
    net, _ = zoo_nets["mobilenetv2"]
    add = node(net, "features.3.add")
    assert add["inputs"] == ["features.2.conv.3", "features.3.conv.3"] and add["shortcut"] == 0


@pytest.mark.parametrize("model,block", [("resnext", "layer2.0"), ("resnext", "layer1.0"),
                                         ("se_resnet", "layer2.0")])
def test_projection_join_has_no_identity(zoo_nets, model, block):
    """A block whose shortcut is a projection (downsample) has no identity input: its join
    never marks the residual branch, and a preset does not treat it as an identity."""
    net, _ = zoo_nets[model]
    add = node(net, f"{block}.add")
    assert all(i.startswith(f"{block}.") for i in add["inputs"])
    sc = add.get("shortcut")
    assert sc is None or add["inputs"][sc].startswith(f"{block}.downsample."), add
    with pytest.raises(morph.MorphError, match="projection|no identity"):
        morph._identity(net.description, block)


@pytest.mark.parametrize("model", ["resnext", "se_resnet"])
def test_preset_1c1_morphs_an_imported_resnet_like_network(zoo_nets, model):
    net, original = zoo_nets[model]
    child, report = morph.morph_network(net, Preset.parse("1c1"))
    assert report is not None and report.passed
    assert child.history[-1]["blocks"] == ["layer2.1"]
    assert any(n.startswith("layer2.1.morph1") for n in child.nodes)
    r = verify.verify(net, child, dtype=F64, samples=16, seed=3)
    assert r.passed and r.max_rel_err <= 1e-10
    assert all(s.max_rel_err <= 1e-10 for s in r.sites)
    # and the child still computes the original PyTorch model
    x = seeded_randn(4, 3, 32, 32, seed=4)
    with torch.no_grad():
        ref = original(x)
        err = ((child.module(F64)(x) - ref).abs().max() / ref.abs().max()).item()
    assert err <= 1e-10


class _OwnWeight(nn.Module):
    """A custom layer that calls F.conv2d on its own parameter (named by its path)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(seeded_randn(C, 3, 3, 3, seed=5) * 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(F.conv2d(x, self.weight, padding=1))


class _WithOwnWeight(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = _OwnWeight()
        self.fc = nn.Linear(C, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(self.block(x), 1).flatten(1))


def test_a_functional_call_inside_a_custom_layer_is_named_beside_it():
    """The conv is `block` (its weight's prefix); the ReLU its module calls cannot be
    `block.relu` (inside a layer), so it is `block_relu`."""
    net, model = convert(_WithOwnWeight())
    assert [n["name"] for n in net.description["nodes"]][:2] == ["block", "block_relu"]
    assert rel_err(net, model) <= 1e-12
