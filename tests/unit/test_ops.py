"""The op table (``ops.OPS``): every record is complete, and what it claims agrees with running it.

Each op has examples below (a test fails if an op has none). For each, independently of the
record's own formulas: the output shape is the shape of the tensor its forward returns, the
parameter shapes are the state_dict of the PyTorch layer it builds, its fresh tensors load
into that layer, and conv/linear MACs are counted by hand from the real output
(C_out · C_in/groups · kh · kw · H_out · W_out; in · out), so the paper's convention is
checked, groups included. Shapes are exact; no tolerances are involved.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
import torch

from netmorph_cli.errors import NetworkError
from netmorph_cli.network import flops
from netmorph_cli.network.description import FORMAT, GraphNet, node, validate_description
from netmorph_cli.network.ops import OPS, Attr, Op

pytestmark = pytest.mark.usefixtures("one_thread")

# op → [(attributes, input shapes)]; conv examples are "same"-padded except the last, which
# is a module conv (unpadded; the FLOP convention counts it at its input's size)
EXAMPLES: dict[str, list[tuple[dict, list[tuple[int, ...]]]]] = {
    "conv": [({"in": 4, "out": 6, "kernel": [3, 3], "padding": [1, 1]}, [(4, 7, 9)]),
             ({"in": 4, "out": 6, "kernel": [3, 1], "padding": [1, 0], "stride": [2, 2],
               "groups": 2, "bias": True}, [(4, 8, 7)]),
             ({"in": 4, "out": 4, "kernel": [5, 5], "padding": [2, 2], "groups": 4},
              [(4, 6, 6)]),  # depthwise
             ({"in": 3, "out": 5, "kernel": [3, 5]}, [(3, 9, 9)])],
    "bn": [({"channels": 4}, [(4, 5, 6)])],
    "relu": [({}, [(3, 4, 4)])],
    "prelu": [({"channels": 3}, [(3, 4, 5)])],
    "add": [({"coeffs": [0.5, 2.0, 1.0]}, [(3, 6, 6), (3, 8, 10), (3, 6, 6)]),
            ({"coeffs": [1.0, 1.0], "shortcut": 1}, [(5,), (5,)])],
    "pad": [({"pad": [1, 2]}, [(3, 4, 4)])],
    "shortcut_a": [({"in": 4, "out": 8, "stride": 2}, [(4, 7, 7)])],
    "maxpool": [({"kernel": 3, "stride": 2, "padding": 1}, [(3, 9, 8)])],
    "gap": [({}, [(3, 5, 5)])],
    "linear": [({"in": 5, "out": 3}, [(5,)]), ({"in": 5, "out": 3, "bias": False}, [(5,)])],
    # the ops a traced PyTorch CNN is converted to (conversion.py)
    "hardtanh": [({"min": 0.0, "max": 6.0}, [(3, 4, 4)]), ({}, [(7,)])],
    "groupnorm": [({"channels": 6, "groups": 3}, [(6, 4, 5)]),
                  ({"channels": 4, "groups": 4, "eps": 1e-3}, [(4, 3, 3)])],
    "leaky_relu": [({"slope": 0.2}, [(3, 4, 4)]), ({}, [(6,)])],
    "silu": [({}, [(3, 4, 4)])],
    "gelu": [({}, [(3, 4, 4)]), ({"approximate": "tanh"}, [(6,)])],
    "hardswish": [({}, [(3, 4, 4)])],
    "hardsigmoid": [({}, [(3, 1, 1)])],
    "sigmoid": [({}, [(3, 1, 1)])],
    "tanh": [({}, [(5,)])],
    "dropout": [({"p": 0.2}, [(3, 4, 4)]), ({}, [(9,)])],
    "mul": [({}, [(3, 5, 6), (3, 1, 1)]), ({}, [(3, 1, 1), (3, 5, 6)]), ({}, [(4,), (4,)])],
    "concat": [({}, [(3, 5, 6), (2, 5, 6), (1, 5, 6)])],
    "channels": [({"index": [0, 2, 1, 3]}, [(4, 3, 5)]), ({"index": [3, 4]}, [(6, 2, 2)])],
    "avgpool": [({"kernel": 2, "stride": 2, "padding": 0}, [(3, 9, 8)]),
                ({"kernel": 3, "stride": 1, "padding": 1, "count_include_pad": False},
                 [(2, 5, 5)])],
    "adaptive_avgpool": [({"size": [1, 1]}, [(3, 5, 7)]), ({"size": [2, 3]}, [(3, 6, 6)])],
    "flatten": [({}, [(3, 2, 2)])],
}
COUNTED = {"conv", "linear"}  # the paper counts conv and linear MACs, nothing else
CASES = [(op, i) for op, cases in EXAMPLES.items() for i in range(len(cases))]


def test_every_op_has_examples_and_every_field():
    assert set(EXAMPLES) == set(OPS)
    fields = {f.name for f in dataclasses.fields(Op)}
    assert fields == {"name", "attrs", "arity", "spatial", "out_shape", "params", "buffers",
                      "layer", "forward", "logical_hw", "macs", "init"}
    for name, op in OPS.items():
        assert op.name == name
        assert all(isinstance(a, Attr) and callable(a.check) for a in op.attrs)
        assert len({a.name for a in op.attrs}) == len(op.attrs)
        assert not {a.name for a in op.attrs} & {"name", "op", "inputs"}
        assert op.arity is None or op.arity >= 1
        for f in ("out_shape", "params", "forward", "logical_hw", "init"):
            assert callable(getattr(op, f)), (name, f)
        assert op.layer is None or callable(op.layer)
        assert (op.macs is not None) == (name in COUNTED), name
        with pytest.raises(dataclasses.FrozenInstanceError):
            op.name = "x"  # type: ignore[misc]


def _example(op_name: str, i: int):
    attrs, shapes = EXAMPLES[op_name][i]
    n = node("x", op_name, [f"in{j}" for j in range(len(shapes))], **attrs)
    op = OPS[op_name]
    layer = op.layer(n).double() if op.layer is not None else None
    gen = torch.Generator().manual_seed(i)
    xs = [torch.randn(2, *s, generator=gen, dtype=torch.float64) for s in shapes]
    return n, op, layer, shapes, xs


@pytest.mark.parametrize(("op_name", "i"), CASES)
def test_shapes_and_tensors_agree_with_running_the_op(op_name, i):
    n, op, layer, shapes, xs = _example(op_name, i)
    op.check(n)  # the example is valid
    out = op.output_shape(n, shapes)
    y = op.forward(n, xs, layer)
    assert tuple(y.shape) == (2, *out)
    params = op.params(n)
    if layer is None:
        assert params == {}
    else:  # same names, order and shapes as the PyTorch layer's state_dict
        assert [(k, tuple(v.shape)) for k, v in layer.state_dict().items()] == \
            list(params.items())
    assert op.buffers <= set(params)
    fresh = op.init(n, torch.Generator().manual_seed(0))
    assert [(k, tuple(v.shape)) for k, v in fresh.items()] == list(params.items())
    if layer is not None:
        assert {k: v.dtype for k, v in fresh.items()} == \
            {k: v.dtype if k == "num_batches_tracked" else torch.float32
             for k, v in layer.state_dict().items()}
        layer.float().load_state_dict(fresh, strict=True)
    learnable = sum(p.numel() for p in layer.parameters()) if layer is not None else 0
    assert learnable == sum(torch.Size(s).numel() for k, s in params.items()
                            if k not in op.buffers)


@pytest.mark.parametrize(("op_name", "i"), CASES)
def test_logical_size_and_macs_by_hand(op_name, i):
    n, op, layer, shapes, xs = _example(op_name, i)
    y = op.forward(n, xs, layer)
    spatial = [s[1:] for s in shapes if len(s) == 3]  # flops.py passes the largest input
    x_hw = (max(h for h, _ in spatial), max(w for _, w in spatial)) if spatial else None
    hw = op.logical_hw(n, x_hw) if x_hw is not None else None
    if y.dim() == 2:
        assert hw is None
    elif op_name in ("pad", "add") or (op_name == "conv" and n["padding"] == [0, 0]):
        # a module's joins see equal logical sizes (their real inputs are centre-cropped)
        assert hw == x_hw  # the same-size convention: a module's pads and convs keep sizes
    else:
        assert hw == tuple(y.shape[2:])
    if op.macs is None:
        return
    if op_name == "conv":
        c_out, c_in, g = n["out"], n["in"], n["groups"]
        kh, kw = n["kernel"]
        if n["padding"] == [0, 0]:  # counted at the input's size
            assert (y.shape[2], y.shape[3]) == (x_hw[0] - kh + 1, x_hw[1] - kw + 1)
            h, w = x_hw
        else:
            h, w = y.shape[2:]
        assert op.macs(n, hw) == c_out * (c_in // g) * kh * kw * h * w
    else:
        assert op.macs(n, hw) == n["in"] * n["out"]


def test_validation_messages_name_the_field():
    n = node("x", "conv", ["input"], **{"in": 4, "out": 6}, kernel=[3, 3], groups=4)
    with pytest.raises(ValueError, match="channels 4→6 not divisible by groups 4"):
        OPS["conv"].check(n)
    n = node("p", "maxpool", ["input"], kernel=3, stride=2, padding=2)
    with pytest.raises(ValueError, match="padding must be an integer from 0 to 1, not 2"):
        OPS["maxpool"].check(n)
    with pytest.raises(ValueError, match="takes one input, got 2"):
        OPS["relu"].output_shape(node("r", "relu", ["a", "b"]), [(3, 4, 4), (3, 4, 4)])
    with pytest.raises(ValueError, match=r"needs a \(C, H, W\) input, got \(3,\)"):
        OPS["gap"].output_shape(node("g", "gap", ["a"]), [(3,)])


# -- adding an op is one entry ------------------------------------------------------------------

def _net(middle: list[dict], features: int) -> dict:
    return {"format": FORMAT, "arch": "tiny", "input": [3, 8, 8], "num_classes": 4,
            "nodes": [node("conv", "conv", ["input"], **{"in": 3, "out": 6},
                           kernel=[3, 3], padding=[1, 1]),
                      *middle,
                      node("pool", "gap", [middle[-1]["name"]]),
                      node("fc", "linear", ["pool"], **{"in": features, "out": 4})],
            "output": "fc"}


def _concat_shape(n, ins):
    if len({s[1:] for s in ins}) != 1:
        raise ValueError(f"inputs of different sizes: {ins}")
    return (sum(s[0] for s in ins), *ins[0][1:])


NEW_OPS: dict[str, Op] = {
    "silu": Op("silu", forward=lambda n, ins, _: torch.nn.functional.silu(ins[0])),
    "concat": Op("concat", arity=None, out_shape=_concat_shape,
                 forward=lambda n, ins, _: torch.cat(ins, dim=1)),
}


@pytest.mark.parametrize(("build", "features"), [
    (lambda: [node("act", "silu", ["conv"])], 6),
    (lambda: [node("act", "silu", ["conv"]), node("cat", "concat", ["conv", "act", "conv"])],
     18),
], ids=["silu", "concat"])
def test_a_new_op_is_one_entry(monkeypatch, build: Callable[[], list[dict]], features: int):
    for name, op in NEW_OPS.items():
        monkeypatch.setitem(OPS, name, op)
    desc = _net(build(), features)
    shapes = validate_description(desc)
    assert shapes["pool"] == (features,)
    assert GraphNet(desc)(torch.randn(2, 3, 8, 8)).shape == (2, 4)
    # FLOPs: conv 3→6 3×3 at 8×8, plus fc; the new ops cost nothing in the paper's convention
    assert flops.count_flops(desc) == 6 * 3 * 9 * 64 + features * 4
    bad = _net([node("act", "silu", ["conv"]), node("cat", "concat", ["conv", "pool0"])], 12)
    bad["nodes"].insert(1, node("pool0", "gap", ["conv"]))
    with pytest.raises(NetworkError, match=r"node 'cat' \(concat\): needs a \(C, H, W\) input"):
        validate_description(bad)
