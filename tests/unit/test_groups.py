"""Issue 22, item 5: a module at a grouped or depthwise conv, the groups kept.

Every reference is PyTorch's own grouped conv (``F.conv2d(..., groups=g)``) on the site's
input, or the parent network run as it is, never the solver's formula. Tolerances: float64
networks 1e-10 relative (DESIGN.md), solver residuals 1e-12.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from netmorph_cli.errors import InfeasibleError
from netmorph_cli.morph.morphs import morph_at
from netmorph_cli.morph.verify import verify
from netmorph_cli.network import zoo
from netmorph_cli.network.description import FORMAT, Network, node
from netmorph_cli.solver.groups import block_conditioning, solve_groups
from netmorph_cli.spec.parse import load_spec

pytestmark = pytest.mark.usefixtures("one_thread")

MODULES = Path(__file__).resolve().parents[2] / "examples" / "modules"
F64, RESIDUAL = 1e-10, 1e-12


def grouped_net() -> Network:
    """input (4, 8, 8) → grouped conv 4→8 (2 groups, bias) → ReLU → depthwise 8→8 (8 groups)
    → GAP → fc; float64, every tensor random."""
    desc = {"format": FORMAT, "arch": "grouped", "input": [4, 8, 8], "num_classes": 3,
            "output": "fc", "nodes": [
                node("grouped", "conv", ["input"], **{"in": 4, "out": 8}, kernel=[3, 3],
                     padding=[1, 1], groups=2, bias=True),
                node("relu", "relu", ["grouped"]),
                node("depthwise", "conv", ["relu"], **{"in": 8, "out": 8}, kernel=[3, 3],
                     padding=[1, 1], groups=8),
                node("g", "gap", ["depthwise"]),
                node("fc", "linear", ["g"], **{"in": 8, "out": 3})]}
    gen = torch.Generator().manual_seed(7)
    tensors = {k: torch.randn(v.shape, generator=gen, dtype=torch.float64) if
               v.is_floating_point() else v for k, v in zoo.init_tensors(desc).items()}
    return Network(desc, tensors).check()


def x64(n: int = 3) -> torch.Tensor:
    return torch.randn(n, 4, 8, 8, generator=torch.Generator().manual_seed(1),
                       dtype=torch.float64)


def capture(net: Network, x: torch.Tensor, names: list[str]) -> tuple[torch.Tensor, dict]:
    with torch.no_grad():
        return net.module()(x, capture=names)


def rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a - ref).abs().max() / ref.abs().max())


@pytest.mark.parametrize("layer,groups", [("grouped", 2), ("depthwise", 8)])
@pytest.mark.parametrize("name", ["A", "C", "D"])
def test_a_module_at_a_grouped_conv_equals_the_grouped_conv(layer, groups, name):
    net = grouped_net()
    child = morph_at(net, load_spec(MODULES / f"{name}.json"), layer, seed=3)
    entry = child.history[-1]
    assert entry["residual"] <= RESIDUAL
    src = net.nodes[layer]["inputs"][0]
    x = x64()
    y_p, maps_p = capture(net, x, [src])
    y_c, maps_c = capture(child, x, [entry["output"]])
    w, b = net.tensors[f"{layer}.weight"], net.tensors.get(f"{layer}.bias")
    direct = F.conv2d(maps_p[src], w, b, padding=1, groups=groups)  # PyTorch's own
    assert rel(maps_c[entry["output"]], direct) <= F64
    assert rel(y_c, y_p) <= F64
    report = verify(net, child, samples=4)
    assert report.passed and report.sites[0].max_rel_err <= F64
    # the child is a grouped network: every module conv has the layer's groups, and each
    # blob is groups × one group's width
    convs = [n for k, n in child.nodes.items() if k.startswith(f"{layer}.") and
             n["op"] == "conv"]
    assert convs and all(n["groups"] == groups for n in convs)
    for blob, width in entry["widths"].items():
        bn = child.nodes.get(f"{layer}.{blob}_bn")
        assert bn is not None and bn["channels"] == groups * width
    assert "per group" in entry["widths_how"] and f"{groups} groups" in entry["widths_how"]


def test_solve_groups_assembles_each_groups_solve_and_reports_the_whole():
    gen = torch.Generator().manual_seed(4)
    g = torch.randn(6, 2, 3, 3, generator=gen, dtype=torch.float64)  # 3 groups of 2→2
    res = solve_groups(g, 3, load_spec(MODULES / "C.json"), seed=1)
    assert res.residual <= RESIDUAL  # the exactness itself: the network tests above
    spec = load_spec(MODULES / "C.json")
    for e in spec.edges:  # each edge: (3 groups × its dst width, its src width per group)
        assert res.filters[e.name].shape[:2] == (3 * 2, 2)
    assert res.widths is not None and res.widths.inner == {"a": 2, "b": 2, "c": 2}
    assert block_conditioning([torch.eye(2).reshape(2, 2, 1, 1),
                               2 * torch.eye(2).reshape(2, 2, 1, 1)]) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="do not split into 4 groups"):
        solve_groups(g, 4, load_spec(MODULES / "C.json"))




def test_fixed_widths_too_narrow_for_a_group_are_refused_per_group(tmp_path):
    """A spec's fixed widths are one group's: too narrow for a group is refused, the message
    says which group and that the widths (and the advice) are per group; nothing changes."""
    import json

    spec = json.loads((MODULES / "D.json").read_text())
    spec["channels"] = {"a": 1, "b": 1, "c": 1}
    (tmp_path / "D1.json").write_text(json.dumps(spec))
    net = grouped_net()
    before = {k: v.clone() for k, v in net.tensors.items()}
    with pytest.raises(InfeasibleError, match=r"^group 1 of 2 of a grouped conv \(each group a "
                                              r"2→4 layer; a spec's widths are per group\): "
                                              r"module 'D' is too narrow .* Widen inner blobs "
                                              r"'a', 'b', 'c' \(spec \"channels\": \{\"a\": "
                                              r"\d+"):
        morph_at(net, load_spec(tmp_path / "D1.json"), "grouped")
    assert all(torch.equal(before[k], v) for k, v in net.tensors.items())
