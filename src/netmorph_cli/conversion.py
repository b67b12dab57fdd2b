"""A traced PyTorch model (``program.Program``) as a netmorph network.

Each ATen call becomes one node of the op table (``ops.py``) or an alias (``clone``,
in-eval ``dropout`` stays a node so training keeps it); anything else is refused with one
error naming the call, its module, the op and what is supported. Node names are the
model's own module paths: a layer that owns tensors is named by its state_dict prefix
(``features.3``, ``stem.0``), a parameter-free module call by its path (``features.2`` for
an ``nn.ReLU``), and a functional call by its module's path plus the op (``layer1.0.add``),
numbered when repeated (``layer1.0.relu_1``). A ResNet-like block's join marks its shortcut
input (``shortcut``: the one input made outside the block, else its ``shortcut``/
``downsample`` projection), so the paper's presets find blocks named ``layerL.I``. An
exported netmorph network (``export.py``) imports back node for node: its parameter-free
ops are ``OpModule``s at their node names, its joins' crops and constant factors fold back
into one add, its option-A shortcuts are recognized.

In-place calls (``relu_``, ``add_``) rebind the tensor they write: later readers see the
new node, as they saw the mutated tensor.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .errors import CheckpointError
from .network import FORMAT, Network, node
from .ops import OPS
from .program import Call, Program, SymInt, Value

SUPPORTED = ("conv2d (any stride, padding, dilation, groups), batch_norm (eval), relu, relu6/"
             "hardtanh, silu, gelu, hardswish, hardsigmoid, sigmoid, tanh, prelu, add, sub, "
             "mul, cat, zero padding, the crops of joins, max_pool2d, avg_pool2d, "
             "adaptive_avg_pool2d, mean over H and W, flatten/view/reshape to a vector, "
             "linear, dropout, clone")
_CONTAINERS = ("torch.nn.modules.container.",)
_SHORTCUT_PATHS = ("shortcut", "downsample")  # a ResNet block's projection, by its usual names


class ConversionError(CheckpointError):
    """A graph netmorph cannot express (exit code 2, like any bad input file)."""


def to_network(program: Program, *, arch: str, normalization: dict[str, list[float]],
               imported: dict[str, Any]) -> Network:
    """The netmorph network computing ``program``'s function (checked by
    ``Network.check``; its logits are compared with the original by the caller)."""
    return _Converter(program).network(arch, normalization, imported)


class _Converter:
    def __init__(self, program: Program) -> None:
        self.p = program
        shape = program.input_shape
        if len(shape) != 4 or any(d is None for d in shape[1:]):
            raise ConversionError(f"{self.where()}: the input is {self.dims(shape)}; netmorph "
                                  "imports models of one (N, C, H, W) image input with fixed "
                                  "C, H and W")
        self.input = [int(d) for d in shape[1:]]  # type: ignore[arg-type]
        # graph value → node name, or a slice of one that only a join may consume
        self.env: dict[str, str | _Sliced] = {program.input: "input"}
        self.origin: dict[str, str] = {}  # node → the module path of the call that made it
        self.op_paths = {c.module for c in program.calls if _is_op_module(c)}
        self.shapes: dict[str, tuple[int, ...]] = {"input": tuple(self.input)}
        self.nodes: list[dict[str, Any]] = []
        self.tensors: dict[str, torch.Tensor] = {}
        self.taken: set[str] = {"input"}

    # -- helpers --------------------------------------------------------------------------

    def where(self) -> str:
        return f"'{self.p.source}'"

    @staticmethod
    def dims(shape: tuple[Any, ...]) -> str:
        return "×".join("?" if d is None else str(d) for d in shape)

    def fail(self, call: Call, why: str) -> ConversionError:
        mod = f" in module '{call.module}' ({call.module_type.rsplit('.', 1)[-1]})" \
            if call.module else ""
        return ConversionError(f"{self.where()}: node '{call.name}'{mod}, {call.target}: {why}")

    def value(self, call: Call, arg: str) -> str:
        """The node that holds a tensor argument (refusing lifted tensors there)."""
        v = call.args.get(arg)
        if not isinstance(v, Value):
            raise self.fail(call, f"argument {arg!r} is {v!r}, not a tensor; netmorph needs "
                                  "both operands to be computed tensors")
        if v.name in self.p.values:
            raise self.fail(call, f"argument {arg!r} is the stored tensor "
                                  f"'{self.p.values[v.name]}'; netmorph's graphs compute on "
                                  "the input only (a learned scale or constant operand is "
                                  "not supported)")
        if v.name not in self.env:
            raise self.fail(call, f"argument {arg!r} ({v.name}) is not computed before it")
        got = self.env[v.name]
        if isinstance(got, _Sliced):
            if got.whole(self.shapes[got.node]):
                return got.node
            raise self.fail(call, f"argument {arg!r} is a slice of '{got.node}' "
                                  f"({got.describe()}); netmorph slices feature maps only as "
                                  "the centred crops of a join or an option-A shortcut")
        return got

    def sliced(self, call: Call, arg: str) -> _Sliced:
        """A tensor argument as a (possibly trivial) slice of a node."""
        v = call.args.get(arg)
        got = self.env.get(v.name) if isinstance(v, Value) else None
        if isinstance(got, _Sliced):
            return got
        return _Sliced.of(self.value(call, arg), self.shapes)

    def param(self, call: Call, arg: str, required: bool = True) -> tuple[str, torch.Tensor] | None:
        """(state_dict name, tensor) of a lifted tensor argument."""
        v = call.args.get(arg)
        if v is None and not required:
            return None
        if not isinstance(v, Value) or v.name not in self.p.values:
            raise self.fail(call, f"its {arg} is computed in the graph, not a stored "
                                  "parameter; netmorph imports layers whose weights are "
                                  "parameters")
        name = self.p.values[v.name]
        return name, self.p.tensors[name]

    def fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self.taken:
            name, k = f"{base}_{k}", k + 1
        self.taken.add(name)
        return name

    def op_name(self, call: Call, op: str) -> str:
        """The node name of a parameter-free call: its module's path when the call is that
        module's own (an nn.ReLU at features.2), else path + op."""
        leaf = (call.module_type.startswith("torch.nn.modules.")
                and not call.module_type.startswith(_CONTAINERS)) or _is_op_module(call)
        if call.module and leaf:
            return self.fresh(call.module)
        return self.fresh(f"{call.module}.{op}" if call.module else op)

    def emit(self, call: Call, name: str, op: str, inputs: list[str],
             tensors: dict[str, torch.Tensor] | None = None, **attrs: Any) -> str:
        n = node(name, op, inputs, **attrs)
        try:
            OPS[op].check(n)
            shape = OPS[op].output_shape(n, [self.shapes[i] for i in inputs])
        except (ValueError, KeyError, TypeError) as exc:
            raise self.fail(call, f"as a netmorph {op}: {exc}") from None
        self.nodes.append(n)
        self.shapes[name] = tuple(shape)
        for k, t in (tensors or {}).items():
            self.tensors[f"{name}.{k}"] = t
        return name

    def bind(self, call: Call, node_name: str | _Sliced, index: int = 0) -> None:
        if isinstance(node_name, str) and node_name in self.shapes:
            self.origin.setdefault(node_name, call.module)
        self.env[call.outputs[index]] = node_name
        if call.target.split(".")[1].endswith("_"):  # in place: the written tensor is this
            first = next(iter(call.args.values()))
            if isinstance(first, Value):
                self.env[first.name] = node_name

    def fold_joins(self, out: str) -> str:
        """Merge the chains a traced join leaves (``(a·c1 + b) + c``, constant factors as
        one-input adds) into one add per join; name it by the netmorph op module it came
        from; mark its identity input (``shortcut``): the one input made outside its
        block. Returns the (possibly renamed) output node."""
        uses = Counter(i for n in self.nodes for i in n["inputs"])
        byname = {n["name"]: n for n in self.nodes}
        removed: set[str] = set()

        def expand(n: dict[str, Any], i: str, c: float, ins: list[str], cs: list[float]) -> None:
            x = byname.get(i)
            same = x is not None and self.origin.get(i) == self.origin.get(n["name"])
            if (x is not None and x["op"] == "add" and uses[i] == 1 and i != out
                    and (len(x["inputs"]) == 1 or same)):
                removed.add(i)
                for j, cj in zip(x["inputs"], x["coeffs"], strict=True):
                    expand(n, j, c * cj, ins, cs)
            else:
                ins.append(i)
                cs.append(c)

        for n in reversed(self.nodes):  # outermost joins first: they absorb their chains
            if n["op"] != "add" or n["name"] in removed:
                continue
            ins: list[str] = []
            cs: list[float] = []
            for i, c in zip(n["inputs"], n["coeffs"], strict=True):
                expand(n, i, c, ins, cs)
            n["inputs"], n["coeffs"] = ins, cs
        self.nodes = [n for n in self.nodes if n["name"] not in removed]
        names = {n["name"] for n in self.nodes}
        rename: dict[str, str] = {}
        for n in self.nodes:
            path = self.origin.get(n["name"], "")
            if n["name"] != path and path in self.op_paths and path not in names:
                rename[n["name"]] = path
                names.add(path)
        ops = {rename.get(n["name"], n["name"]): n["op"] for n in self.nodes}
        for n in self.nodes:
            path = self.origin.get(n["name"], "")
            n["name"] = rename.get(n["name"], n["name"])
            n["inputs"] = [rename.get(i, i) for i in n["inputs"]]
            if n["op"] == "add":  # its block: the op module's parent, or the calling module
                block = path.rpartition(".")[0] if path in self.op_paths else path
                outside = [k for k, i in enumerate(n["inputs"])
                           if block and not i.startswith(block + ".")]
                if not outside:  # a projection: a shortcut/downsample Sequential, option A
                    outside = [k for k, i in enumerate(n["inputs"]) if block and (
                        any(i.startswith(f"{block}.{p}.") for p in _SHORTCUT_PATHS)
                        or (i == f"{block}.shortcut" and ops.get(i) == "shortcut_a"))]
                n["shortcut"] = outside[0] if len(outside) == 1 and len(n["inputs"]) > 1 \
                    else None
        for old, new in rename.items():
            self.shapes[new] = self.shapes[old]
            for k in [k for k in self.tensors if k.startswith(old + ".")]:
                self.tensors[new + k[len(old):]] = self.tensors.pop(k)
        return rename.get(out, out)

    # -- the walk -------------------------------------------------------------------------

    def network(self, arch: str, normalization: dict[str, list[float]],
                imported: dict[str, Any]) -> Network:
        if self.p.mutated:
            raise ConversionError(f"{self.where()}: the program updates "
                                  f"{self.p.mutated[0]!r} (it was exported in training mode); "
                                  "export the model after model.eval()")
        for call in self.p.calls:
            op = call.target.split(".")[1] if call.target.startswith("aten.") else call.target
            handler = _HANDLERS.get(op.rstrip("_") if op not in _HANDLERS else op)
            if op in _IGNORED:
                continue
            if handler is None:
                raise self.fail(call, f"netmorph cannot convert this op; it supports "
                                      f"{SUPPORTED}")
            handler(self, call)
        out = self.env.get(self.p.output)
        if isinstance(out, _Sliced):
            raise ConversionError(f"{self.where()}: the output is a slice of '{out.node}'")
        if out is not None:
            out = self.fold_joins(out)
        if out is None or out == "input":
            raise ConversionError(f"{self.where()}: the output is not computed from the input")
        shape = self.shapes[out]
        if len(shape) != 1:
            raise ConversionError(f"{self.where()}: the model returns a {self.dims(shape)} "
                                  "tensor per image; netmorph imports classifiers that "
                                  "return (N, classes) logits")
        used = {i for n in self.nodes for i in n["inputs"]} | {out}
        dead = [n["name"] for n in self.nodes if n["name"] not in used]
        if dead:
            raise ConversionError(f"{self.where()}: node '{dead[0]}' computes something the "
                                  "output does not use; netmorph imports graphs whose every "
                                  "node feeds the output")
        desc = {"format": FORMAT, "arch": arch, "input": self.input,
                "num_classes": shape[0], "nodes": self.nodes, "output": out}
        tensors = {k: _plain(v) for k, v in self.tensors.items()}
        meta = {"normalization": normalization, "imported": imported}
        return Network(desc, tensors, [], meta).check()


def _is_op_module(call: Call) -> bool:
    """A call inside one of netmorph's own ``OpModule`` (an exported netmorph network)."""
    return call.module_type.endswith("netmorph_cli.network.OpModule")


@dataclass(frozen=True)
class _Sliced:
    """``node[:, :, h.start::h.step][..., w.start::w.step]`` cut to ``length`` values a side:
    a crop or a subsampling waiting for the join (or option-A shortcut) that consumes it."""

    node: str
    h: tuple[int, int, int]  # (start, length, step)
    w: tuple[int, int, int]

    @classmethod
    def of(cls, node: str, shapes: dict[str, tuple[int, ...]]) -> _Sliced:
        shape = shapes[node]
        if len(shape) != 3:
            return cls(node, (0, 0, 1), (0, 0, 1))
        return cls(node, (0, shape[1], 1), (0, shape[2], 1))

    def cut(self, axis: int, start: int | None, end: int | None, step: int) -> _Sliced:
        old = self.h if axis == 2 else self.w
        picked = range(*slice(start, end, step).indices(old[1]))
        new = (old[0] + picked.start * old[2], len(picked), old[2] * picked.step)
        return _Sliced(self.node, new, self.w) if axis == 2 else _Sliced(self.node, self.h, new)

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


def _plain(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().cpu()
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()
    return t.contiguous().clone()


def _pair(v: Any, default: int) -> list[int]:
    if v is None or v == []:
        return [default, default]
    v = list(v) if isinstance(v, (list, tuple)) else [v]
    return [int(v[0]), int(v[-1])]


# -- handlers: one per ATen op ------------------------------------------------------------------

def _conv(c: _Converter, call: Call) -> None:
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
        d = _pair(call.args.get("dilation"), 1)
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
                  stride=_pair(call.args.get("stride"), 1), padding=_pair(padding, 0),
                  dilation=_pair(call.args.get("dilation"), 1), groups=groups,
                  bias=bias is not None)
    c.bind(call, name)


def _batch_norm(c: _Converter, call: Call) -> None:
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


def _unary(op: str, **attrs_of: Callable[[Call], Any]) -> Callable[[_Converter, Call], None]:
    def handle(c: _Converter, call: Call) -> None:
        x = c.value(call, "self" if "self" in call.args else "input")
        attrs = {k: f(call) for k, f in attrs_of.items()}
        c.bind(call, c.emit(call, c.op_name(call, op), op, [x], **attrs))
    return handle


def _prelu(c: _Converter, call: Call) -> None:
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


def _add(c: _Converter, call: Call, sign: float = 1.0) -> None:
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


def _mul(c: _Converter, call: Call) -> None:
    other = call.args.get("other")
    if isinstance(other, (int, float)) and not isinstance(other, bool):
        # a constant factor: a one-input join (folded into the join that consumes it); it
        # commutes with a pending crop, which stays pending on the scaled node
        part = c.sliced(call, "self")
        name = c.emit(call, c.op_name(call, "mul"), "add", [part.node], coeffs=[float(other)])
        c.bind(call, name if part.whole(c.shapes[part.node]) else
               _Sliced(name, part.h, part.w))
        return
    a, b = c.value(call, "self"), c.value(call, "other")
    c.bind(call, c.emit(call, c.op_name(call, "mul"), "mul", [a, b]))


def _slice(c: _Converter, call: Call) -> None:
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


def _pad(c: _Converter, call: Call) -> None:
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


def _cat(c: _Converter, call: Call) -> None:
    ts = call.args.get("tensors") or []
    if not all(isinstance(t, Value) for t in ts):
        raise c.fail(call, "concatenates something that is not a computed tensor")
    ins = [c.value(Call(call.name, call.target, {"t": t}, call.outputs, call.module,
                        call.module_type), "t") for t in ts]
    rank = len(c.shapes[ins[0]]) + 1
    dim = int(call.args.get("dim", 0))
    if dim % rank != 1:
        raise c.fail(call, f"concatenation along dim {dim}; netmorph concatenates channels "
                           "(dim 1)")
    c.bind(call, c.emit(call, c.op_name(call, "cat"), "concat", ins))


def _pool(op: str) -> Callable[[_Converter, Call], None]:
    def handle(c: _Converter, call: Call) -> None:
        x = c.value(call, "self")
        k = _pair(call.args.get("kernel_size"), 1)
        s = _pair(call.args.get("stride"), 0)
        s = k if s == [0, 0] else s
        p = _pair(call.args.get("padding"), 0)
        d = _pair(call.args.get("dilation"), 1)
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


def _adaptive(c: _Converter, call: Call) -> None:
    x = c.value(call, "self")
    size = _pair(call.args.get("output_size"), 1)
    c.bind(call, c.emit(call, c.op_name(call, "avgpool"), "adaptive_avgpool", [x],
                        size=size))


def _mean(c: _Converter, call: Call) -> None:
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


def _flatten(c: _Converter, call: Call) -> None:
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


def _linear(c: _Converter, call: Call) -> None:
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


def _dropout(c: _Converter, call: Call) -> None:
    x = c.value(call, "input")
    p = float(call.args.get("p", 0.5))
    c.bind(call, c.emit(call, c.op_name(call, "dropout"), "dropout", [x], p=p))


def _alias(c: _Converter, call: Call) -> None:
    c.bind(call, c.value(call, "self"))


def _native_bn(c: _Converter, call: Call) -> None:
    _batch_norm(c, Call(call.name, call.target, {**call.args, "training": False},
                        call.outputs[:1], call.module, call.module_type))


def _maxpool_with_indices(c: _Converter, call: Call) -> None:
    _pool("maxpool")(c, Call(call.name, call.target, call.args, call.outputs[:1], call.module,
                             call.module_type))


_HANDLERS: dict[str, Callable[[_Converter, Call], None]] = {
    "conv2d": _conv, "convolution": _conv, "_convolution": _conv,
    "batch_norm": _batch_norm, "_native_batch_norm_legit_no_training": _native_bn,
    "relu": _unary("relu"),
    "hardtanh": _unary("hardtanh", min=lambda k: float(k.args.get("min_val", -1.0)),
                       max=lambda k: float(k.args.get("max_val", 1.0))),
    "relu6": _unary("hardtanh", min=lambda k: 0.0, max=lambda k: 6.0),
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
    "flatten": _flatten, "view": _flatten, "reshape": _flatten, "_unsafe_view": _flatten,
    "linear": _linear, "dropout": _dropout,
    "clone": _alias, "contiguous": _alias, "alias": _alias, "detach": _alias,
}
# calls with no effect on values: shape assertions torch.export records
_IGNORED = {"_assert_tensor_metadata", "_assert_scalar", "sym_size", "sym_constrain_range",
            "sym_constrain_range_for_size", "_assert_async"}
