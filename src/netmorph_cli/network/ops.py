"""The op table: everything netmorph knows about each op of a network description, in one record.

A description node is ``{"name", "op", "inputs", <attributes>}`` (``network.py``). ``OPS`` maps
each op name to an ``Op`` record, and every other module reads the record instead of testing
op names: ``network.py`` validates, infers shapes, builds layers and runs the graph with it,
``flops.py`` counts MACs and parameters with it, ``zoo.init_tensors`` initializes with it.

Record fields (an ``Op``; all but ``name`` have defaults, so a simple op is a short entry):

- ``attrs``: ``Attr(name, check, default)`` in the order they are checked and reported;
  ``default=REQUIRED`` makes one required. ``check(node, attr)`` raises ``ValueError`` with a
  message naming the field (``validate_description`` prefixes ``node 'x' (op): ``). Checks
  run in order, so one may rely on the attributes before it (``groups`` ≤ ``in``).
- ``arity``: how many inputs (``None``: one or more). ``spatial``: inputs must be (C, H, W).
- ``out_shape(node, input_shapes) -> shape``: (C, H, W) or (F,); ``ValueError`` on a mismatch.
- ``params(node) -> {name: shape}``: the tensors the node owns (``<node>.<name>`` in the
  state_dict), in state_dict order; ``buffers``: which of them are not learnable.
- ``layer(node) -> nn.Module`` or ``None``: the PyTorch layer holding them (attached at the
  node's dotted name). ``forward(node, inputs, layer) -> Tensor``: how ``GraphNet`` runs it.
- ``logical_hw(node, (h, w)) -> (h, w) | None``: output size under the FLOP convention
  (``flops.py``: convs counted as if "same"-padded; ``None`` once the output is flat);
  ``macs(node, logical_out_hw) -> int``: multiply-accumulates, or ``macs=None`` where the
  paper's convention does not count the op (BN, activations, additions, padding, pooling).
- ``init(node, generator) -> {name: tensor}``: fresh tensors for ``params`` (``netmorph init``).

Adding an op is one more ``Op(...)`` in ``OPS`` (and its examples in tests/unit/test_ops.py).
The ops beyond the paper's ResNets (activations, ``mul``, ``concat``, pooling, ``flatten``,
``dropout``) are those ``conversion.py`` maps a traced PyTorch CNN onto.

Grouped/depthwise convs are ``conv`` with ``groups``: weight (out, in/groups, kh, kw), and
MACs are that weight's size times the output area, so they follow the groups.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..base.limits import MAX_KERNEL, MAX_MAP_SIDE, MAX_WIDTH
from .attrs import (
    Attr,
    Node,
    as_pair,
    boolean,
    choice,
    count,
    finite,
    integer,
    number,
    pair,
    probability,
    short,
)

Shape = tuple[int, ...]
HW = tuple[int, int]


def _channel_index(n: Node, attr: str) -> None:
    v = n[attr]
    if (not isinstance(v, list) or not v or len(v) > MAX_WIDTH
            or not all(type(i) is int and 0 <= i < MAX_WIDTH for i in v)):
        raise ValueError(f"{attr!r} must be a non-empty list of channel numbers, not "
                         f"{short(v)}")


def _channels_shape(n: Node, ins: list[Shape]) -> Shape:
    c = ins[0][0]
    if max(n["index"]) >= c:
        raise ValueError(f"picks channel {max(n['index'])} of a {c}-channel input")
    return (len(n["index"]), *ins[0][1:])


def _channels(n: Node, ins: list[torch.Tensor], layer: nn.Module | None) -> torch.Tensor:
    index = torch.tensor(n["index"], dtype=torch.long, device=ins[0].device)
    return ins[0].index_select(1, index)


def _groups(n: Node, attr: str) -> None:
    c_in, c_out = n["in"], n["out"]
    integer(1, c_in)(n, attr)
    if c_in % n[attr] or c_out % n[attr]:
        raise ValueError(f"channels {c_in}→{c_out} not divisible by groups {n[attr]}")


def _eps(n: Node, attr: str) -> None:
    if not (finite(n[attr]) and n[attr] >= 0):
        raise ValueError(f"{attr} must be a finite number ≥ 0, not {short(n[attr])}")


def _divides_channels(n: Node, attr: str) -> None:
    integer(1, n["channels"])(n, attr)
    if n["channels"] % n[attr]:
        raise ValueError(f"{n['channels']} channels are not divisible by {attr} {n[attr]}")


def _momentum(n: Node, attr: str) -> None:
    m = n[attr]
    if m is not None and not (finite(m) and 0 <= m <= 1):
        raise ValueError(f"{attr} must be null or a number from 0 to 1, not {short(m)}")


def _coeffs(n: Node, attr: str) -> None:
    v = n[attr]
    if not isinstance(v, list) or not all(finite(c) for c in v):
        raise ValueError(f"{attr} must be a list of finite numbers, not {short(v)}")


def _input_index(n: Node, attr: str) -> None:
    sc = n[attr]
    if sc is not None and (type(sc) is not int or not 0 <= sc < len(n["inputs"])):
        raise ValueError(f"{attr} must be null or the index of an input "
                         f"(0 to {len(n['inputs']) - 1}), not {short(sc)}")


def _pool_padding(n: Node, attr: str) -> None:
    integer(0, n["kernel"] // 2)(n, attr)  # torch: padding at most half the window


def _above_min(n: Node, attr: str) -> None:
    number(n, attr)
    if n[attr] < n["min"]:
        raise ValueError(f"{attr} {n[attr]} is below min {n['min']}")


# -- shapes -------------------------------------------------------------------------------------

def window(size: int, k: int, s: int, p: int, d: int = 1) -> int:
    """Output side of a sliding window (conv, pooling): torch's floor formula."""
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _same_shape(n: Node, ins: list[Shape]) -> Shape:
    return ins[0]


def _conv_shape(n: Node, ins: list[Shape]) -> Shape:
    x = ins[0]
    if x[0] != n["in"]:
        raise ValueError(f"expects {n['in']} input channels, gets {x[0]}")
    k, s, p, d = (n[a] for a in ("kernel", "stride", "padding", "dilation"))
    hw = [window(x[i + 1], k[i], s[i], p[i], d[i]) for i in range(2)]
    if min(hw) < 1:
        raise ValueError(f"output would be empty for input {x}")
    return (n["out"], *hw)


def _channels_kept(n: Node, ins: list[Shape]) -> Shape:
    x = ins[0]
    if x[0] != n["channels"]:
        raise ValueError(f"expects {n['channels']} channels, gets {x[0]}")
    return x


def _add_shape(n: Node, ins: list[Shape]) -> Shape:
    """Same channels; spatial inputs are centre-cropped to the smallest (even margins)."""
    x = ins[0]
    if len(n["coeffs"]) != len(ins):
        raise ValueError(f"{len(ins)} inputs but {len(n['coeffs'])} coefficients")
    if len({s[0] for s in ins}) != 1 or len({len(s) for s in ins}) != 1:
        raise ValueError(f"inputs of different channels: {ins}")
    if len(x) == 1:
        return x
    h, w = min(s[1] for s in ins), min(s[2] for s in ins)
    if any((s[1] - h) % 2 or (s[2] - w) % 2 for s in ins):
        raise ValueError(f"inputs {ins} cannot be centre-cropped to a common size")
    return (x[0], h, w)


def _pad_shape(n: Node, ins: list[Shape]) -> Shape:
    x, p = ins[0], n["pad"]
    return (x[0], x[1] + 2 * p[0], x[2] + 2 * p[1])


def _shortcut_a_shape(n: Node, ins: list[Shape]) -> Shape:
    x = ins[0]
    if x[0] != n["in"] or (n["out"] - n["in"]) % 2 or n["out"] < n["in"]:
        raise ValueError(f"option-A shortcut {n['in']}→{n['out']} on input {x}")
    return (n["out"], *_shortcut_a_hw(n, (x[1], x[2])))


def _maxpool_shape(n: Node, ins: list[Shape]) -> Shape:
    x = ins[0]
    hw = _maxpool_hw(n, (x[1], x[2]))
    if min(hw) < 1:
        raise ValueError(f"output would be empty for input {x}")
    return (x[0], *hw)


def _broadcast_shape(n: Node, ins: list[Shape]) -> Shape:
    """Elementwise product with broadcasting (squeeze-excitation: (C, H, W) · (C, 1, 1));
    the result must be the shape of one input, so no input is silently expanded twice."""
    try:
        out = tuple(torch.broadcast_shapes(*ins))
    except RuntimeError:
        raise ValueError(f"inputs {ins} do not broadcast") from None
    if out not in ins:
        raise ValueError(f"inputs {ins} broadcast to {out}, the shape of neither")
    return out


def _concat_shape(n: Node, ins: list[Shape]) -> Shape:
    if len({s[1:] for s in ins}) != 1:
        raise ValueError(f"inputs of different sizes cannot be concatenated: {ins}")
    return (sum(s[0] for s in ins), *ins[0][1:])


def _avgpool_shape(n: Node, ins: list[Shape]) -> Shape:
    x = ins[0]
    hw = _maxpool_hw(n, (x[1], x[2]))  # the same window formula
    if min(hw) < 1:
        raise ValueError(f"output would be empty for input {x}")
    return (x[0], *hw)


def _adaptive_shape(n: Node, ins: list[Shape]) -> Shape:
    return (ins[0][0], *n["size"])


def _linear_shape(n: Node, ins: list[Shape]) -> Shape:
    if ins[0] != (n["in"],):
        raise ValueError(f"expects ({n['in']},) features, gets {ins[0]}")
    return (n["out"],)


# -- logical sizes and MACs (flops.py's convention) ------------------------------------------

def _keep_hw(n: Node, hw: HW) -> HW | None:
    return hw


def _flat(n: Node, hw: HW) -> HW | None:
    return None


def _conv_logical_hw(n: Node, hw: HW) -> HW | None:
    """As if "same"-padded: a module's unpadded conv counts at its input's size."""
    (h, w), (sh, sw) = hw, n["stride"]
    return (h - 1) // sh + 1, (w - 1) // sw + 1


def _shortcut_a_hw(n: Node, hw: HW) -> HW:
    s = n["stride"]
    return -(-hw[0] // s), -(-hw[1] // s)  # ceil


def _maxpool_hw(n: Node, hw: HW) -> HW:
    k, s, p = n["kernel"], n["stride"], n["padding"]
    return window(hw[0], k, s, p), window(hw[1], k, s, p)


def _conv_macs(n: Node, hw: HW | None) -> int:
    assert hw is not None
    return math.prod(_conv_params(n)["weight"]) * hw[0] * hw[1]  # groups: in/groups per filter


# -- tensors: shapes, layers, initialization --------------------------------------------------

def _no_params(n: Node) -> dict[str, Shape]:
    return {}


def _weight_bias(n: Node, weight: Shape) -> dict[str, Shape]:
    return {"weight": weight, "bias": (n["out"],)} if n["bias"] else {"weight": weight}


def _conv_params(n: Node) -> dict[str, Shape]:  # weight (C_out, C_in/groups, kh, kw)
    return _weight_bias(n, (n["out"], n["in"] // n["groups"], *as_pair(n["kernel"])))


def _bn_params(n: Node) -> dict[str, Shape]:
    c = n["channels"]
    return {"weight": (c,), "bias": (c,), "running_mean": (c,), "running_var": (c,),
            "num_batches_tracked": ()}


def _linear_params(n: Node) -> dict[str, Shape]:
    return _weight_bias(n, (n["out"], n["in"]))


def _no_tensors(n: Node, gen: torch.Generator) -> dict[str, torch.Tensor]:
    return {}


def _init_conv(n: Node, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """He et al.'s fan-out normal init; bias 0."""
    out = {}
    for p, shape in _conv_params(n).items():
        if p == "weight":
            fan_out = shape[0] * shape[2] * shape[3]
            out[p] = torch.randn(shape, generator=gen) * math.sqrt(2.0 / fan_out)
        else:
            out[p] = torch.zeros(shape)
    return out


def _init_bn(n: Node, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """gamma 1, beta 0, running statistics of a fresh BatchNorm2d."""
    c = n["channels"]
    return {"weight": torch.full((c,), 1.0), "bias": torch.zeros((c,)),
            "running_mean": torch.zeros((c,)), "running_var": torch.full((c,), 1.0),
            "num_batches_tracked": torch.zeros((), dtype=torch.long)}


def _init_linear(n: Node, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """PyTorch's default: uniform in ±1/sqrt(in), weight then bias."""
    bound = 1.0 / math.sqrt(n["in"])
    return {p: (torch.rand(shape, generator=gen) * 2 - 1) * bound
            for p, shape in _linear_params(n).items()}


def _dropout_layer(n: Node) -> nn.Module:
    return nn.Dropout(n["p"])  # identity in eval mode; drops in training mode, as the original


def _conv_layer(n: Node) -> nn.Module:
    return nn.Conv2d(n["in"], n["out"], as_pair(n["kernel"]), stride=as_pair(n["stride"]),
                     padding=as_pair(n["padding"]), dilation=as_pair(n["dilation"]),
                     groups=n["groups"], bias=n["bias"])


# -- forward --------------------------------------------------------------------------------------

Forward = Callable[[Node, list[torch.Tensor], nn.Module | None], torch.Tensor]


def _call_layer(n: Node, ins: list[torch.Tensor], layer: nn.Module | None) -> torch.Tensor:
    assert layer is not None
    return layer(ins[0])


def _centre_crop(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    dh, dw = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
    if dh == dw == 0:
        return x
    return x[..., dh:dh + h, dw:dw + w]


def _add(n: Node, ins: list[torch.Tensor], layer: nn.Module | None) -> torch.Tensor:
    """Σ coeff·input over centre-crops to the smallest input (how a module realized with one
    input padding joins paths of different receptive fields); 0 and 1 cost nothing."""
    if ins[0].dim() == 4:
        h, w = min(t.shape[-2] for t in ins), min(t.shape[-1] for t in ins)
        ins = [_centre_crop(t, h, w) for t in ins]
    out = None
    for c, t in zip(n["coeffs"], ins, strict=True):
        if c == 0:
            continue
        term = t if c == 1 else t * c
        out = term if out is None else out + term
    return out if out is not None else torch.zeros_like(ins[0])


def _pad(n: Node, ins: list[torch.Tensor], layer: nn.Module | None) -> torch.Tensor:
    ph, pw = as_pair(n["pad"])
    return F.pad(ins[0], (pw, pw, ph, ph))


def _shortcut_a(n: Node, ins: list[torch.Tensor], layer: nn.Module | None) -> torch.Tensor:
    """He et al.'s option A: subsample by the stride, zero-pad channels on both sides."""
    s, extra = n["stride"], (n["out"] - n["in"]) // 2
    return F.pad(ins[0][:, :, ::s, ::s], (0, 0, 0, 0, extra, extra))


# -- the record and the table ---------------------------------------------------------------------

@dataclass(frozen=True)
class Op:
    """Everything netmorph knows about one op (see the module docstring for each field)."""

    name: str
    attrs: tuple[Attr, ...] = ()
    arity: int | None = 1
    spatial: bool = True
    out_shape: Callable[[Node, list[Shape]], Shape] = _same_shape
    params: Callable[[Node], dict[str, Shape]] = _no_params
    buffers: frozenset[str] = frozenset()
    layer: Callable[[Node], nn.Module] | None = None
    forward: Forward = _call_layer
    logical_hw: Callable[[Node, HW], HW | None] = _keep_hw
    macs: Callable[[Node, HW | None], int] | None = None
    init: Callable[[Node, torch.Generator], dict[str, torch.Tensor]] = _no_tensors

    def defaults(self) -> dict[str, Any]:
        """Fresh copies of the optional attributes' defaults, in attribute order."""
        return {a.name: copy.deepcopy(a.default) for a in self.attrs if not a.required}

    def missing(self, n: Node) -> list[str]:
        return [a.name for a in self.attrs if a.name not in n]

    def check(self, n: Node) -> None:
        """Types and ranges of the node's attributes, in order (``ValueError``)."""
        for a in self.attrs:
            a.check(n, a.name)

    def output_shape(self, n: Node, ins: list[Shape]) -> Shape:
        """The node's output shape from its inputs' shapes (``ValueError`` on a mismatch)."""
        if self.arity is not None and len(ins) != self.arity:
            raise ValueError(f"takes {'one input' if self.arity == 1 else f'{self.arity} inputs'}"
                             f", got {len(ins)}")
        if self.spatial:
            for x in ins:
                if len(x) != 3:
                    raise ValueError(f"needs a (C, H, W) input, got {x}")
        return self.out_shape(n, ins)


_CONV_IN_OUT = (Attr("in", count), Attr("out", count))
_BN_BUFFERS = frozenset({"running_mean", "running_var", "num_batches_tracked"})

OPS: dict[str, Op] = {op.name: op for op in (
    Op("conv", attrs=(*_CONV_IN_OUT, Attr("kernel", pair(1, MAX_KERNEL)),
                      Attr("stride", pair(1), [1, 1]), Attr("padding", pair(0), [0, 0]),
                      Attr("dilation", pair(1), [1, 1]), Attr("groups", _groups, 1),
                      Attr("bias", boolean, False)),
       out_shape=_conv_shape, params=_conv_params, layer=_conv_layer,
       logical_hw=_conv_logical_hw, macs=_conv_macs, init=_init_conv),
    Op("bn", attrs=(Attr("channels", count), Attr("eps", _eps, 1e-5),
                    Attr("momentum", _momentum, 0.1)),
       out_shape=_channels_kept, params=_bn_params, buffers=_BN_BUFFERS,
       layer=lambda n: nn.BatchNorm2d(n["channels"], eps=n["eps"], momentum=n["momentum"]),
       init=_init_bn),
    Op("groupnorm", attrs=(Attr("channels", count), Attr("groups", _divides_channels),
                           Attr("eps", _eps, 1e-5)),
       out_shape=_channels_kept,
       params=lambda n: {"weight": (n["channels"],), "bias": (n["channels"],)},
       layer=lambda n: nn.GroupNorm(n["groups"], n["channels"], eps=n["eps"]),
       init=lambda n, gen: {"weight": torch.ones(n["channels"]),
                            "bias": torch.zeros(n["channels"])}),  # torch's default
    Op("relu", spatial=False, forward=lambda n, ins, _: F.relu(ins[0])),
    Op("hardtanh", attrs=(Attr("min", number, -1.0), Attr("max", _above_min, 1.0)),
       spatial=False, forward=lambda n, ins, _: F.hardtanh(ins[0], n["min"], n["max"])),
    Op("leaky_relu", attrs=(Attr("slope", number, 0.01),), spatial=False,
       forward=lambda n, ins, _: F.leaky_relu(ins[0], n["slope"])),
    Op("silu", spatial=False, forward=lambda n, ins, _: F.silu(ins[0])),
    Op("gelu", attrs=(Attr("approximate", choice("none", "tanh"), "none"),), spatial=False,
       forward=lambda n, ins, _: F.gelu(ins[0], approximate=n["approximate"])),
    Op("hardswish", spatial=False, forward=lambda n, ins, _: F.hardswish(ins[0])),
    Op("hardsigmoid", spatial=False, forward=lambda n, ins, _: F.hardsigmoid(ins[0])),
    Op("sigmoid", spatial=False, forward=lambda n, ins, _: torch.sigmoid(ins[0])),
    Op("tanh", spatial=False, forward=lambda n, ins, _: torch.tanh(ins[0])),
    Op("dropout", attrs=(Attr("p", probability, 0.5),), spatial=False, layer=_dropout_layer),
    Op("mul", arity=2, spatial=False, out_shape=_broadcast_shape,
       forward=lambda n, ins, _: ins[0] * ins[1]),
    Op("concat", arity=None, out_shape=_concat_shape,
       forward=lambda n, ins, _: torch.cat(ins, dim=1)),
    # channels index[k] of the input as channel k: a channel shuffle, split or chunk, or any
    # other pure channel movement (view/transpose/permute that keeps each pixel in place)
    Op("channels", attrs=(Attr("index", _channel_index),), out_shape=_channels_shape,
       forward=_channels),
    Op("prelu", attrs=(Attr("channels", count),), out_shape=_channels_kept,
       params=lambda n: {"weight": (n["channels"],)}, layer=lambda n: nn.PReLU(n["channels"]),
       init=lambda n, gen: {"weight": torch.full((n["channels"],), 0.25)}),  # torch's default
    # shortcut: index of the identity input (null: none)
    Op("add", attrs=(Attr("coeffs", _coeffs), Attr("shortcut", _input_index, None)),
       arity=None, spatial=False, out_shape=_add_shape, forward=_add),
    Op("pad", attrs=(Attr("pad", pair(0)),), out_shape=_pad_shape, forward=_pad),
    Op("shortcut_a", attrs=(*_CONV_IN_OUT, Attr("stride", integer(1, MAX_MAP_SIDE))),
       out_shape=_shortcut_a_shape, forward=_shortcut_a, logical_hw=_shortcut_a_hw),
    Op("maxpool", attrs=(Attr("kernel", integer(1, MAX_KERNEL)),
                         Attr("stride", integer(1, MAX_MAP_SIDE)),
                         Attr("padding", _pool_padding)),
       out_shape=_maxpool_shape, logical_hw=_maxpool_hw,
       forward=lambda n, ins, _: F.max_pool2d(ins[0], n["kernel"], n["stride"], n["padding"])),
    Op("avgpool", attrs=(Attr("kernel", integer(1, MAX_KERNEL)),
                         Attr("stride", integer(1, MAX_MAP_SIDE)),
                         Attr("padding", _pool_padding),
                         Attr("count_include_pad", boolean, True)),
       out_shape=_avgpool_shape, logical_hw=_maxpool_hw,
       forward=lambda n, ins, _: F.avg_pool2d(ins[0], n["kernel"], n["stride"], n["padding"],
                                              count_include_pad=n["count_include_pad"])),
    Op("adaptive_avgpool", attrs=(Attr("size", pair(1)),), out_shape=_adaptive_shape,
       logical_hw=lambda n, hw: (n["size"][0], n["size"][1]),
       forward=lambda n, ins, _: F.adaptive_avg_pool2d(ins[0], n["size"])),
    Op("flatten", out_shape=lambda n, ins: (math.prod(ins[0]),), logical_hw=_flat,
       forward=lambda n, ins, _: ins[0].flatten(1)),  # (N, C, H, W) → (N, C·H·W)
    Op("gap", out_shape=lambda n, ins: (ins[0][0],), logical_hw=_flat,
       forward=lambda n, ins, _: ins[0].mean(dim=(2, 3))),  # (N, C, H, W) → (N, C)
    Op("linear", attrs=(*_CONV_IN_OUT, Attr("bias", boolean, True)), spatial=False,
       out_shape=_linear_shape, params=_linear_params,
       layer=lambda n: nn.Linear(n["in"], n["out"], bias=n["bias"]),
       logical_hw=_flat, macs=lambda n, hw: n["in"] * n["out"], init=_init_linear),
)}


def param_shapes(n: Node) -> dict[str, Shape]:
    """The tensors a node owns, by parameter name, with their shapes."""
    return OPS[n["op"]].params(n)
