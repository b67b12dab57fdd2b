"""The ATen ops netmorph converts: one handler per op, and the pieces they share.

``conversion.py`` walks a traced program and calls ``HANDLERS[op](converter, call)`` for
each ATen call (``aten.conv2d.default`` → ``"conv2d"``; an in-place ``relu_`` uses
``relu``'s). A handler reads the call's arguments by their schema names, emits netmorph
nodes through the converter (``value``/``sliced``/``param`` to read inputs, ``emit`` to add
a node, ``bind`` to name the call's output, ``fail`` for an error naming the call) and
refuses, saying why, what netmorph's ops cannot express. ``IGNORED`` are calls with no
effect on values (shape assertions torch.export records).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import CheckpointError
from .moves import (
    Moved,
    _batch_first,
    _index_select,
    _moved,
    _permute,
    _source,
    _split,
    _transpose,
)
from .program import Call, SymInt, Value

SUPPORTED = ("conv2d (any stride, padding, dilation, groups), batch_norm (eval), group_norm, "
             "relu, relu6/hardtanh, leaky_relu, silu, gelu, hardswish, hardsigmoid, sigmoid, "
             "tanh, prelu, add, sub, mul, cat, zero padding, the crops of joins, max_pool2d, "
             "avg_pool2d, adaptive_avg_pool2d, mean over H and W, flatten/view/reshape to a "
             "vector, channel movements (shuffle, split/chunk, view/transpose/permute that "
             "keep every pixel in place), linear, dropout, clone")


class ConversionError(CheckpointError):
    """A graph netmorph cannot express (exit code 2, like any bad input file)."""


Converter = Any  # conversion._Converter (defined after this module; see its methods)


def is_op_module(call: Call) -> bool:
    """A call inside one of netmorph's own ``OpModule`` (an exported netmorph network; files
    written before the stage layout name the class by its old module)."""
    return call.module_type.endswith(("netmorph_cli.network.description.OpModule",
                                      "netmorph_cli.network.OpModule"))


@dataclass(frozen=True)
class Sliced:
    """``node[:, :, h.start::h.step][..., w.start::w.step]`` cut to ``length`` values a side:
    a crop or a subsampling waiting for the join (or option-A shortcut) that consumes it."""

    node: str
    h: tuple[int, int, int]  # (start, length, step)
    w: tuple[int, int, int]

    @classmethod
    def of(cls, node: str, shapes: dict[str, tuple[int, ...]]) -> Sliced:
        shape = shapes[node]
        if len(shape) != 3:
            return cls(node, (0, 0, 1), (0, 0, 1))
        return cls(node, (0, shape[1], 1), (0, shape[2], 1))

    def cut(self, axis: int, start: int | None, end: int | None, step: int) -> Sliced:
        old = self.h if axis == 2 else self.w
        picked = range(*slice(start, end, step).indices(old[1]))
        new = (old[0] + picked.start * old[2], len(picked), old[2] * picked.step)
        return Sliced(self.node, new, self.w) if axis == 2 else Sliced(self.node, self.h, new)

    def whole(self, shape: tuple[int, ...]) -> bool:
        return len(shape) != 3 or (self.h, self.w) == ((0, shape[1], 1), (0, shape[2], 1))

    def centred(self, shape: tuple[int, ...], size: tuple[int, int]) -> bool:
        """Whether this is the centre crop of the node to ``size`` (even margins)."""
        return all(st == 1 and n == want and 2 * start == full - want
                   for (start, n, st), full, want in zip((self.h, self.w), shape[1:], size,
                                                         strict=True))

    def describe(self) -> str:
        return ", ".join(f"{ax} from {a} by {st} × {n}"
                         for ax, (a, n, st) in (("rows", self.h), ("columns", self.w)))


def pair(v: Any, default: int) -> list[int]:
    if v is None or v == []:
        return [default, default]
    v = list(v) if isinstance(v, (list, tuple)) else [v]
    return [int(v[0]), int(v[-1])]


# -- handlers: one per ATen op ------------------------------------------------------------------

def _conv(c: Converter, call: Call) -> None:
    if call.args.get("transposed"):
        raise c.fail(call, "a transposed conv is not supported")
    if any(call.args.get("output_padding") or []):
        raise c.fail(call, "output padding is not supported")
    x = c.value(call, "input")
    wname, w = c.param(call, "weight")  # type: ignore[misc]
    if w.dim() != 4:
        raise c.fail(call, f"a {w.dim() - 2}-d convolution; netmorph supports 2-d convs")
    bias = c.param(call, "bias", required=False)
    prefix = wname.removesuffix(".weight")
    if prefix in c.taken:
        raise c.fail(call, f"the layer '{prefix}' is applied twice (shared weights); every "
                           "layer of a netmorph network has its own tensors")
    c.taken.add(prefix)
    k = list(w.shape[2:])
    padding = call.args.get("padding")
    if isinstance(padding, str):  # aten.conv2d.padding: "same" / "valid"
        d = pair(call.args.get("dilation"), 1)
        if padding == "valid":
            padding = [0, 0]
        elif all((d[i] * (k[i] - 1)) % 2 == 0 for i in range(2)):
            padding = [d[i] * (k[i] - 1) // 2 for i in range(2)]
        else:
            raise c.fail(call, "padding='same' with an even kernel pads asymmetrically, "
                               "which netmorph's convs cannot express")
    groups = int(call.args.get("groups") or 1)
    tensors = {"weight": w}
    if bias is not None:
        tensors["bias"] = bias[1]
    name = c.emit(call, prefix, "conv", [x], tensors,
                  **{"in": w.shape[1] * groups, "out": w.shape[0]}, kernel=k,
                  stride=pair(call.args.get("stride"), 1), padding=pair(padding, 0),
                  dilation=pair(call.args.get("dilation"), 1), groups=groups,
                  bias=bias is not None)
    c.bind(call, name)


def _batch_norm(c: Converter, call: Call) -> None:
    if call.args.get("training"):
        raise c.fail(call, "batch norm in training mode (the program was exported in "
                           "training mode); export the model after model.eval()")
    x = c.value(call, "input")
    if len(c.shapes[x]) != 3:
        raise c.fail(call, "batch norm over a vector (BatchNorm1d); netmorph supports "
                           "BatchNorm2d over feature maps")
    mname, mean = c.param(call, "running_mean")  # type: ignore[misc]
    _, var = c.param(call, "running_var")  # type: ignore[misc]
    prefix = mname.removesuffix(".running_mean")
    if prefix in c.taken:
        raise c.fail(call, f"the layer '{prefix}' is applied twice (shared statistics)")
    c.taken.add(prefix)
    ch = mean.shape[0]
    weight = c.param(call, "weight", required=False)
    bias = c.param(call, "bias", required=False)
    count = c.p.tensors.get(f"{prefix}.num_batches_tracked")
    tensors = {"weight": weight[1] if weight else torch.ones(ch, dtype=mean.dtype),
               "bias": bias[1] if bias else torch.zeros(ch, dtype=mean.dtype),
               "running_mean": mean, "running_var": var,
               "num_batches_tracked": count.long() if count is not None
               else torch.zeros((), dtype=torch.long)}
    momentum = call.args.get("momentum")
    name = c.emit(call, prefix, "bn", [x], tensors, channels=ch,
                  eps=float(call.args.get("eps", 1e-5)),
                  momentum=None if momentum is None else float(momentum))
    c.bind(call, name)


def _group_norm(c: Converter, call: Call) -> None:
    x = c.value(call, "input")
    if len(c.shapes[x]) != 3:
        raise c.fail(call, "group norm over a vector; netmorph normalizes feature maps")
    ch = c.shapes[x][0]
    weight = c.param(call, "weight", required=False)
    bias = c.param(call, "bias", required=False)
    if weight is not None:
        prefix = weight[0].removesuffix(".weight")
        if prefix in c.taken:
            raise c.fail(call, f"the layer '{prefix}' is applied twice (shared weights)")
        c.taken.add(prefix)
    else:  # affine=False: γ = 1, β = 0, learnable from here on
        prefix = c.op_name(call, "groupnorm")
    w = weight[1] if weight else torch.ones(ch)
    tensors = {"weight": w, "bias": bias[1] if bias else torch.zeros(ch, dtype=w.dtype)}
    c.bind(call, c.emit(call, prefix, "groupnorm", [x], tensors, channels=ch,
                        groups=int(call.args.get("num_groups", 1)),
                        eps=float(call.args.get("eps", 1e-5))))


def _unary(op: str, **attrs_of: Callable[[Call], Any]) -> Callable[[Converter, Call], None]:
    def handle(c: Converter, call: Call) -> None:
        x = c.value(call, "self" if "self" in call.args else "input")
        attrs = {k: f(call) for k, f in attrs_of.items()}
        c.bind(call, c.emit(call, c.op_name(call, op), op, [x], **attrs))
    return handle


def _prelu(c: Converter, call: Call) -> None:
    x = c.value(call, "self")
    wname, w = c.param(call, "weight")  # type: ignore[misc]
    ch = c.shapes[x][0]
    if w.numel() not in (1, ch):
        raise c.fail(call, f"a PReLU with {w.numel()} slopes on {ch} channels")
    prefix = wname.removesuffix(".weight")
    if prefix in c.taken:
        raise c.fail(call, f"the layer '{prefix}' is applied twice (shared weights)")
    c.taken.add(prefix)
    # one shared slope becomes one per channel: the same function, more parameters
    c.bind(call, c.emit(call, prefix, "prelu", [x], {"weight": w.reshape(-1).expand(ch)},
                        channels=ch))


def _add(c: Converter, call: Call, sign: float = 1.0) -> None:
    """A join of two tensors (``fold_joins`` merges chains of them); inputs may be the
    centred crops a netmorph join makes of its larger inputs."""
    alpha = call.args.get("alpha", 1)
    if not isinstance(alpha, (int, float)):
        raise c.fail(call, f"alpha {alpha!r} is not a number")
    parts = [c.sliced(call, "self"), c.sliced(call, "other")]
    bases = [c.shapes[p.node] for p in parts]
    if all(len(b) == 3 for b in bases):
        size = (min(b[1] for b in bases), min(b[2] for b in bases))
        for p, b in zip(parts, bases, strict=True):
            if not (p.whole(b) and b[1:] == size) and not p.centred(b, size):
                raise c.fail(call, f"adds a slice of '{p.node}' ({p.describe()}) that is not "
                                   f"its centred crop to {size[0]}×{size[1]}")
    elif not all(p.whole(b) for p, b in zip(parts, bases, strict=True)):
        raise c.fail(call, "adds a slice of a vector")
    name = c.emit(call, c.op_name(call, "add"), "add", [p.node for p in parts],
                  coeffs=[1.0, sign * float(alpha)])
    c.bind(call, name)


def _mul(c: Converter, call: Call) -> None:
    other = call.args.get("other")
    if isinstance(other, (int, float)) and not isinstance(other, bool):
        # a constant factor: a one-input join (folded into the join that consumes it); it
        # commutes with a pending crop, which stays pending on the scaled node
        part = c.sliced(call, "self")
        name = c.emit(call, c.op_name(call, "mul"), "add", [part.node], coeffs=[float(other)])
        c.bind(call, name if part.whole(c.shapes[part.node]) else
               Sliced(name, part.h, part.w))
        return
    a, b = c.value(call, "self"), c.value(call, "other")
    c.bind(call, c.emit(call, c.op_name(call, "mul"), "mul", [a, b]))


def _slice(c: Converter, call: Call) -> None:
    part = c.sliced(call, "self")
    shape = c.shapes[part.node]
    dim = int(call.args.get("dim", 0)) % (len(shape) + 1)
    start, end = call.args.get("start"), call.args.get("end")
    step = int(call.args.get("step", 1))
    if dim in (2, 3) and len(shape) == 3:
        c.bind(call, part.cut(dim, start, end, step))
        return
    full = range(*slice(start, end, step).indices(shape[dim - 1])) if dim else None
    if dim == 0 and (start in (None, 0)) and step == 1 and (end is None or end >= 2**31):
        c.bind(call, part)  # the whole batch
    elif full is not None and (full.start, full.step, len(full)) == (0, 1, shape[dim - 1]):
        c.bind(call, part)  # all channels
    else:
        raise c.fail(call, f"a slice along dim {dim}; netmorph slices only the rows and "
                           "columns of feature maps (the crops of its joins)")


def _pad(c: Converter, call: Call) -> None:
    """Zero padding: symmetric in H and W (a module's input padding), or the channels of an
    option-A shortcut (subsampled by a slice with a step, zero channels on both sides)."""
    if call.args.get("mode", "constant") != "constant" or call.args.get("value") not in (
            None, 0, 0.0):
        raise c.fail(call, "padding that is not with zeros")
    pad = [int(v) for v in call.args.get("pad") or []]
    part = c.sliced(call, "self")
    shape = c.shapes[part.node]
    if len(pad) == 4 and pad[0] == pad[1] and pad[2] == pad[3] and min(pad) >= 0:
        x = c.value(call, "self")
        c.bind(call, c.emit(call, c.op_name(call, "pad"), "pad", [x], pad=[pad[2], pad[0]]))
        return
    if len(pad) == 6 and pad[:4] == [0, 0, 0, 0] and pad[4] == pad[5] >= 0 and len(shape) == 3:
        s = part.h[2]
        if part.h[0] == part.w[0] == 0 and part.w[2] == s and \
                (part.h[1], part.w[1]) == (-(-shape[1] // s), -(-shape[2] // s)):
            widths = {"in": shape[0], "out": shape[0] + 2 * pad[4]}
            c.bind(call, c.emit(call, c.op_name(call, "shortcut"), "shortcut_a", [part.node],
                                None, **widths, stride=s))
            return
    raise c.fail(call, f"padding {pad}; netmorph pads rows and columns symmetrically, or the "
                       "channels of a subsampled option-A shortcut")


def _cat(c: Converter, call: Call) -> None:
    ts = call.args.get("tensors") or []
    if not all(isinstance(t, Value) for t in ts):
        raise c.fail(call, "concatenates something that is not a computed tensor")
    ins = [c.node_of(call, t, f"tensor #{i + 1}") for i, t in enumerate(ts)]
    rank = len(c.shapes[ins[0]]) + 1
    dim = int(call.args.get("dim", 0))
    if dim % rank != 1:
        raise c.fail(call, f"concatenation along dim {dim}; netmorph concatenates channels "
                           "(dim 1)")
    c.bind(call, c.emit(call, c.op_name(call, "cat"), "concat", ins))


def _pool(op: str) -> Callable[[Converter, Call], None]:
    def handle(c: Converter, call: Call) -> None:
        x = c.value(call, "self")
        k = pair(call.args.get("kernel_size"), 1)
        s = pair(call.args.get("stride"), 0)
        s = k if s == [0, 0] else s
        p = pair(call.args.get("padding"), 0)
        d = pair(call.args.get("dilation"), 1)
        if len({*k}) != 1 or len({*s}) != 1 or len({*p}) != 1:
            raise c.fail(call, f"a non-square window (kernel {k}, stride {s}, padding {p}); "
                               "netmorph's pooling is square")
        if d != [1, 1] or call.args.get("ceil_mode") or call.args.get("divisor_override"):
            raise c.fail(call, "dilation, ceil_mode or divisor_override is not supported")
        attrs: dict[str, Any] = {"kernel": k[0], "stride": s[0], "padding": p[0]}
        if op == "avgpool":
            attrs["count_include_pad"] = bool(call.args.get("count_include_pad", True))
        c.bind(call, c.emit(call, c.op_name(call, op), op, [x], **attrs))
    return handle


def _adaptive(c: Converter, call: Call) -> None:
    x = c.value(call, "self")
    size = pair(call.args.get("output_size"), 1)
    c.bind(call, c.emit(call, c.op_name(call, "avgpool"), "adaptive_avgpool", [x],
                        size=size))


def _mean(c: Converter, call: Call) -> None:
    x = c.value(call, "self")
    dims = {int(d) % 4 for d in call.args.get("dim") or []}
    if len(c.shapes[x]) != 3 or dims != {2, 3} or call.args.get("dtype") is not None:
        raise c.fail(call, f"a mean over dims {sorted(dims)}; netmorph averages over H and W "
                           "of a feature map")
    if call.args.get("keepdim"):
        c.bind(call, c.emit(call, c.op_name(call, "mean"), "adaptive_avgpool", [x],
                            size=[1, 1]))
    else:
        c.bind(call, c.emit(call, c.op_name(call, "mean"), "gap", [x]))


def _view(c: Converter, call: Call) -> None:
    """view/reshape: a flatten to (N, features) as before; else a data movement."""
    v = call.args.get("self", call.args.get("input"))
    pending = isinstance(v, Value) and isinstance(c.env.get(v.name), Moved)
    size = list(call.args.get("size") or call.args.get("shape") or [])
    if not pending and len(size) == 2:
        _flatten(c, call)
        return
    m = _source(c, call)
    _moved(c, call, Moved(m.node, m.index.reshape(_batch_first(c, call, size,
                                                                m.index.numel()))))


def _lift_fresh_copy(c: Converter, call: Call) -> None:
    """A copy of a stored constant (torch.tensor(...) in a forward): the same constant."""
    v = call.args.get("self")
    if not isinstance(v, Value) or v.name not in c.p.values:
        raise c.fail(call, "a copy of something that is not a stored constant")
    c.p.values[call.outputs[0]] = c.p.values[v.name]


def _flatten(c: Converter, call: Call) -> None:
    x = c.value(call, "self" if "self" in call.args else "input")
    shape = c.shapes[x]
    target = call.target.split(".")[1]
    if target == "flatten":
        start, end = int(call.args.get("start_dim", 0)), int(call.args.get("end_dim", -1))
        ok = start == 1 and end in (-1, len(shape))
    else:  # view / reshape / _unsafe_view to (batch, features)
        size = call.args.get("size") or call.args.get("shape") or []
        ok = len(size) == 2 and (size[1] in (-1, math.prod(shape))) and (
            isinstance(size[0], SymInt) or size[0] in (-1, c.p.input_shape[0]))
        if ok and size[1] == -1 and not (isinstance(size[0], SymInt) or
                                          size[0] == c.p.input_shape[0]):
            ok = False
    if not ok:
        raise c.fail(call, f"a reshape of a {c.dims(shape)} tensor that is not a flatten to a "
                           "(N, features) vector; netmorph supports flattening only")
    if len(shape) == 1:
        c.bind(call, x)  # already a vector
        return
    c.bind(call, c.emit(call, c.op_name(call, "flatten"), "flatten", [x]))


def _linear(c: Converter, call: Call) -> None:
    x = c.value(call, "input")
    wname, w = c.param(call, "weight")  # type: ignore[misc]
    bias = c.param(call, "bias", required=False)
    if len(c.shapes[x]) != 1:
        raise c.fail(call, f"a linear layer on a {c.dims(c.shapes[x])} tensor per image; "
                           "netmorph's linear layers take (N, features) vectors (flatten first)")
    prefix = wname.removesuffix(".weight")
    if prefix in c.taken:
        raise c.fail(call, f"the layer '{prefix}' is applied twice (shared weights)")
    c.taken.add(prefix)
    tensors = {"weight": w} | ({"bias": bias[1]} if bias else {})
    c.bind(call, c.emit(call, prefix, "linear", [x], tensors,
                        **{"in": w.shape[1], "out": w.shape[0]}, bias=bias is not None))


def _dropout(c: Converter, call: Call) -> None:
    x = c.value(call, "input")
    p = float(call.args.get("p", 0.5))
    c.bind(call, c.emit(call, c.op_name(call, "dropout"), "dropout", [x], p=p))


def _alias(c: Converter, call: Call) -> None:
    v = call.args.get("self")
    if isinstance(v, Value) and v.name in c.p.values:  # a stored constant (detach_, clone)
        c.p.values[call.outputs[0]] = c.p.values[v.name]
        return
    got = c.env.get(v.name) if isinstance(v, Value) else None
    c.bind(call, got if isinstance(got, Moved) else c.value(call, "self"))


def _native_bn(c: Converter, call: Call) -> None:
    _batch_norm(c, Call(call.name, call.target, {**call.args, "training": False},
                        call.outputs[:1], call.module, call.module_type))


def _maxpool_with_indices(c: Converter, call: Call) -> None:
    _pool("maxpool")(c, Call(call.name, call.target, call.args, call.outputs[:1], call.module,
                             call.module_type))


HANDLERS: dict[str, Callable[[Converter, Call], None]] = {
    "conv2d": _conv, "convolution": _conv, "_convolution": _conv,
    "batch_norm": _batch_norm, "_native_batch_norm_legit_no_training": _native_bn,
    "group_norm": _group_norm,
    "relu": _unary("relu"),
    "hardtanh": _unary("hardtanh", min=lambda k: float(k.args.get("min_val", -1.0)),
                       max=lambda k: float(k.args.get("max_val", 1.0))),
    "relu6": _unary("hardtanh", min=lambda k: 0.0, max=lambda k: 6.0),
    "leaky_relu": _unary("leaky_relu",
                         slope=lambda k: float(k.args.get("negative_slope", 0.01))),
    "silu": _unary("silu"), "hardswish": _unary("hardswish"),
    "hardsigmoid": _unary("hardsigmoid"), "sigmoid": _unary("sigmoid"),
    "tanh": _unary("tanh"),
    "gelu": _unary("gelu", approximate=lambda k: k.args.get("approximate", "none")),
    "prelu": _prelu, "_prelu_kernel": _prelu,
    "add": _add, "sub": lambda c, k: _add(c, k, -1.0), "mul": _mul, "cat": _cat,
    "slice": _slice, "pad": _pad, "constant_pad_nd": _pad,
    "max_pool2d": _pool("maxpool"), "max_pool2d_with_indices": _maxpool_with_indices,
    "avg_pool2d": _pool("avgpool"), "adaptive_avg_pool2d": _adaptive,
    "_adaptive_avg_pool2d": _adaptive, "mean": _mean,
    "flatten": _flatten, "view": _view, "reshape": _view, "_unsafe_view": _view,
    "transpose": _transpose, "permute": _permute, "split": _split,
    "split_with_sizes": _split, "chunk": _split, "index_select": _index_select,
    "lift_fresh_copy": _lift_fresh_copy,
    "linear": _linear, "dropout": _dropout,
    "clone": _alias, "contiguous": _alias, "alias": _alias, "detach": _alias,
}
# calls with no effect on values: shape assertions torch.export records
IGNORED = {"_assert_tensor_metadata", "_assert_scalar", "sym_size", "sym_constrain_range",
            "sym_constrain_range_for_size", "_assert_async"}
