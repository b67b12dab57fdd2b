"""``morph_after``: a module where there is no layer (the identity at a node's output, the
paper's deepening), and the refusals of ``--at`` that point to it.

Every morph is checked twice, by ``verify`` and by running both networks here with
``GraphNet.forward(x, capture=…)``: the child's logits and the module's output against the
parent's logits and the node's output. Tolerances (relative = max |Δ| / max |reference|):
F64 = 1e-10 for float64 networks, F32 = 1e-5 for float32 ones (DESIGN.md's rules).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from netmorph_cli.errors import MorphError, NetworkError
from netmorph_cli.morph.morphs import (
    Preset,
    arch_name,
    morph_after,
    morph_at,
    morph_network,
    morph_preset,
)
from netmorph_cli.morph.verify import verify
from netmorph_cli.network import zoo
from netmorph_cli.network.description import FORMAT, Network, node
from netmorph_cli.network.history import MorphRecord, check_entry
from netmorph_cli.spec.parse import ModuleGraph, load_spec, spec_from_dict
from netmorph_cli.training.results import paper_name

F64, F32 = 1e-10, 1e-5
MODULES = Path(__file__).resolve().parents[2] / "examples" / "modules"

pytestmark = pytest.mark.usefixtures("one_thread")


def spec(name: str) -> ModuleGraph:
    return load_spec(MODULES / f"{name}.json")


@pytest.fixture(scope="module")
def parent64() -> Network:
    """ResNet-20 (option-A shortcuts) in float64 with BN layers far from the identity."""
    net = zoo.create("resnet20", 10, 0, "A").to(torch.float64)
    gen = torch.Generator().manual_seed(1)
    nodes = net.nodes
    for k, v in net.tensors.items():
        if k.endswith((".running_var", ".weight")) and nodes[k.rpartition(".")[0]]["op"] == "bn":
            net.tensors[k] = torch.rand(v.shape, generator=gen, dtype=v.dtype) + 0.5
        elif k.endswith((".running_mean", ".bias")) and v.is_floating_point():
            net.tensors[k] = torch.randn(v.shape, generator=gen, dtype=v.dtype) * 0.3
    return net.check()


@pytest.fixture(scope="module")
def x64() -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5),
                       dtype=torch.float64)


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return (a - ref).abs().max().item() / ref.abs().max().item()


def forward(net: Network, x: torch.Tensor, capture: str) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        y, maps = net.module()(x.to(net.dtype), capture=[capture])
    return y, maps[capture]


def assert_exact(parent: Network, child: Network, x: torch.Tensor, tol: float = F64) -> str:
    """The child computes the parent's logits and, at the recorded pair, the node's output;
    returns the module's output node."""
    entry = child.history[-1]
    ((a, b),) = entry["compare"]
    assert a == entry["after"] and b == entry["output"]
    y_p, m_p = forward(parent, x, a)
    y_c, m_c = forward(child, x, b)
    assert m_c.shape == m_p.shape and m_p.dim() == 4
    assert rel_err(y_c, y_p) <= tol and rel_err(m_c, m_p) <= tol
    report = verify(parent, child, dtype=child.dtype, samples=4)
    assert report.passed and report.max_rel_err <= tol
    assert all(s.max_rel_err <= tol for s in report.sites)
    if a != "input":  # (verify compares the pairs whose parent node is a node)
        assert (a, b) in [(s.parent_node, s.child_node) for s in report.sites]
    return b


@pytest.mark.parametrize("name", ["morph_1c1", "D"])
def test_after_a_relu_is_exact_and_recorded(parent64, x64, name):
    node_ = "layer1.0.relu1"
    child = morph_after(parent64, spec(name), node_, seed=1)
    out = assert_exact(parent64, child, x64)
    entry = child.history[-1]
    assert entry["op"] == "module" and entry["module"] == name and "at" not in entry
    assert entry["residual"] <= F64 and entry["spec"] == spec(name).to_spec()
    assert MorphRecord.from_json(entry).where == f"after {node_}"
    assert child.description["arch"] == f"resnet20+{name}@after:{node_}"
    # the parent is all there, tensors untouched; the new nodes are NODE_after.*
    new = [k for k in child.nodes if k not in parent64.nodes]
    assert all(k.startswith(f"{node_}_after.") for k in new) and out in new
    assert all(torch.equal(child.tensors[k], v) for k, v in parent64.tensors.items())
    # NODE feeds only the module's input pad, the module feeds NODE's old consumer
    readers = [k for k, n in child.nodes.items() if node_ in n["inputs"]]
    assert readers == [f"{node_}_after.input_pad"]
    assert child.nodes["layer1.0.conv2"]["inputs"] == [out]
    order = [n["name"] for n in child.description["nodes"]]
    assert order[order.index(node_) + 1] == f"{node_}_after.input_pad"
    for blob in spec(name).inner_blobs():  # BN then PReLU(a = 1) at every inner blob
        assert child.nodes[f"{node_}_after.{blob}_bn"]["op"] == "bn"
        w = child.tensors[f"{node_}_after.{blob}_act.weight"]
        assert torch.equal(w, torch.ones_like(w))


def test_after_the_input(parent64, x64):
    child = morph_after(parent64, spec("morph_1c1"), "input", seed=2)
    out = assert_exact(parent64, child, x64)
    assert child.description["nodes"][0]["name"] == "input_after.input_pad"
    assert child.nodes["conv1"]["inputs"] == [out]
    _, m = forward(child, x64, out)  # the module is the identity on the image itself
    assert rel_err(m, x64) <= F64


def test_after_the_last_map_before_the_pooling(parent64, x64):
    child = morph_after(parent64, spec("morph_1c1"), "layer3.2.relu2")
    out = assert_exact(parent64, child, x64)
    assert child.nodes["pool"]["inputs"] == [out]


def test_twice_after_the_same_node(parent64, x64):
    once = morph_after(parent64, spec("A"), "layer2.0.relu1", seed=1)
    twice = morph_after(once, spec("A"), "layer2.0.relu1", seed=2)
    out = assert_exact(once, twice, x64)
    assert out.startswith("layer2.0.relu1_after2.")
    # node → the second module → the first → layer2.0.conv2
    assert once.history[-1]["output"] in twice.nodes
    assert twice.nodes["layer2.0.relu1_after.input_pad"]["inputs"] == [out]
    report = verify(parent64, twice, samples=4)  # both morphs' pairs, from the root
    assert report.passed and len(report.sites) == 2
    assert all(s.max_rel_err <= F64 for s in report.sites)


def test_after_a_strided_conv_and_inside_a_module(parent64, x64):
    """What the refusal of --at on a strided conv suggests works; a module inserted after
    a node can be morphed further at its convs."""
    child = morph_after(parent64, spec("C"), "layer2.0.conv1", seed=3)
    assert_exact(parent64, child, x64)
    deeper = morph_at(child, spec("A"), "layer2.0.conv1_after.F1", seed=4)
    y_p, _ = forward(parent64, x64, "input")
    y_d, _ = forward(deeper, x64, "input")
    assert rel_err(y_d, y_p) <= F64


def test_a_preset_after_a_module_after_a_block_output(parent64, x64):
    once = morph_after(parent64, spec("morph_1c1"), "layer1.0.relu2")
    child = morph_preset(once, Preset.parse("1c1"))
    assert child.description["arch"] == "resnet20+morph_1c1@after:layer1.0.relu2+1c1"
    y_p, _ = forward(parent64, x64, "input")
    y_c, _ = forward(child, x64, "input")
    assert rel_err(y_c, y_p) <= F64


def test_no_bn_no_activation_and_float32(parent64, x64):
    child = morph_after(parent64, spec("B"), "layer1.1.relu2", bn=False, act="none")
    assert_exact(parent64, child, x64)
    assert not any(n["op"] in ("bn", "prelu") for k, n in child.nodes.items()
                   if k.startswith("layer1.1.relu2_after."))
    parent32 = parent64.to(torch.float32)
    child32, report = morph_network(parent32, spec("morph_1c1"), after="layer1.1.relu2")
    assert child32.dtype == torch.float32 and report is not None and report.passed
    assert_exact(parent32, child32, x64, tol=F32)


def test_arch_names_and_records():
    name = arch_name("resnet20", module="D", after="layer1.0.relu1")
    assert name == "resnet20+D@after:layer1.0.relu1"
    assert arch_name(name, preset="1c1") == "resnet20+D@after:layer1.0.relu1+1c1"
    assert arch_name("r", module="my mod", after="a b") == "r+my_mod@after:a_b"
    assert paper_name(name) == "morph20_D@after:layer1.0.relu1"
    # old module entries (no 'after') load and save byte for byte
    old = {"op": "module", "module": "A", "at": "layer1.1.conv1", "seed": 0,
           "compare": [["layer1.1.conv1", "layer1.1.conv1.F2"]]}
    rec = MorphRecord.from_json(old)
    assert rec.after is None and rec.where == "layer1.1.conv1"
    assert json.dumps(rec.to_json()) == json.dumps(old)
    new = {"op": "module", "module": "A", "after": "input", "compare": [["input", "o"]]}
    assert json.dumps(MorphRecord.from_json(new).to_json()) == json.dumps(new)
    with pytest.raises(NetworkError, match="'after' must be a string or null"):
        check_entry({"op": "module", "after": 3})


# refusals -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name,match", [
    ("layer9.relu", r"^no node 'layer9.relu' in the network \(nodes with a \(C, H, W\) output: "
                    r"input, conv1, bn1, relu, layer1.0.conv1, layer1.0.bn1, …\)$"),
    ("pool", r"^node 'pool' outputs a vector of 64 features, not a \(C, H, W\) map, .* "
             r"\(the last one is 'layer3.2.relu2'\)$"),
    ("linear", r"^node 'linear' outputs a vector of 10 features"),
])
def test_refuses_nodes_without_a_map(parent64, name, match):
    before = json.dumps(parent64.description)
    with pytest.raises(MorphError, match=match):
        morph_after(parent64, spec("A"), name)
    assert json.dumps(parent64.description) == before


def test_refuses_bad_arguments(parent64):
    with pytest.raises(MorphError, match="unknown activation 'relu'"):
        morph_after(parent64, spec("A"), "relu", act="relu")
    dotted = spec_from_dict({"source": "s", "sink": "t", "edges": [
        {"name": "F.1", "from": "s", "to": "t", "kernel": 3}]})
    with pytest.raises(MorphError, match=r"contains '\.'"):
        morph_after(parent64, dotted, "relu")
    with pytest.raises(MorphError, match="^--at LAYER replaces a layer and --after NODE"):
        morph_network(parent64, spec("A"), at="layer1.0.conv1", after="relu")
    with pytest.raises(MorphError, match="^--after applies to spec files; preset '1c1'"):
        morph_network(parent64, Preset.parse("1c1"), after="relu")
    with pytest.raises(MorphError, match=r"needs --at LAYER .* or --after NODE"):
        morph_network(parent64, spec("A"))


def odd_convs() -> Network:
    """input (4, 8, 8) → grouped → depthwise → dilated → GAP → fc."""
    conv = {"in": 4, "out": 4, "kernel": [3, 3]}
    desc = {"format": FORMAT, "arch": "odd", "input": [4, 8, 8], "num_classes": 2,
            "output": "fc", "nodes": [
                node("grouped", "conv", ["input"], **conv, padding=[1, 1], groups=2),
                node("depthwise", "conv", ["grouped"], **conv, padding=[1, 1], groups=4),
                node("dilated", "conv", ["depthwise"], **conv, padding=[2, 2],
                     dilation=[2, 2]),
                node("g", "gap", ["dilated"]),
                node("fc", "linear", ["g"], **{"in": 4, "out": 2})]}
    return Network(desc, zoo.init_tensors(desc)).check()


@pytest.mark.parametrize("layer,match", [
    ("dilated", r"^'dilated' is a dilated conv \(dilation \[2, 2\]\): a dilated kernel would "
                r"need dilated module convs.*\(--after dilated\)$"),
])
def test_at_refusals_say_why_and_after_works_there(layer, match):
    net = odd_convs()
    with pytest.raises(MorphError, match=match):
        morph_at(net, spec("A"), layer)
    child = morph_after(net.to(torch.float64), spec("A"), layer)
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert_exact(net.to(torch.float64), child, x)


@pytest.mark.parametrize("layer,match", [
    ("layer2.0.conv1", r"^'layer2.0.conv1' is a strided conv \(stride \[2, 2\]\): a module's "
                       r"convs compose to one stride-1 filter, .*subsampled grid.*"
                       r"morph the stride-1 conv after it, or insert the module after it "
                       r"\(--after layer2.0.conv1\)$"),
    ("layer1.0.relu1", r"^layer 'layer1.0.relu1' is a relu, not a conv or an identity "
                       r"shortcut; to insert a module at its output, use --after "
                       r"layer1.0.relu1$"),
])
def test_at_refusals_in_a_resnet_point_to_after(parent64, layer, match):
    with pytest.raises(MorphError, match=match):
        morph_at(parent64, spec("A"), layer)
