"""A traced PyTorch model (``program.Program``) as a netmorph network.

Each ATen call becomes one node of the op table (``ops.py``) or an alias (``clone``;
in-eval ``dropout`` stays a node so training keeps it), by its handler in ``aten.py``;
anything else is refused with one error naming the call, its module, the op and what is
supported. This module walks the program, names the nodes and folds the joins. Node names are the
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

from collections import Counter
from typing import Any

import torch

from ..network.description import FORMAT, Network, node
from ..network.ops import OPS
from .aten import HANDLERS, IGNORED, SUPPORTED, ConversionError, Moved, Sliced, is_op_module
from .program import Call, Program, Value

_CONTAINERS = ("torch.nn.modules.container.",)
_SHORTCUT_PATHS = ("shortcut", "downsample")  # a ResNet block's projection, by its usual names


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
        self.env: dict[str, str | Sliced | Moved] = {program.input: "input"}
        self.origin: dict[str, str] = {}  # node → the module path of the call that made it
        self.op_paths = {c.module for c in program.calls if is_op_module(c)}
        self.shapes: dict[str, tuple[int, ...]] = {"input": tuple(self.input)}
        self.nodes: list[dict[str, Any]] = []
        self.tensors: dict[str, torch.Tensor] = {}
        self.taken: set[str] = {"input"}
        self.owners: set[str] = set()  # nodes that own a layer (no node may lie inside one)

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
        return self.node_of(call, call.args.get(arg), f"argument {arg!r}")

    def node_of(self, call: Call, v: Any, what: str) -> str:
        """The node that holds the tensor ``v`` of ``call`` (``what`` names it in errors)."""
        if not isinstance(v, Value):
            raise self.fail(call, f"{what} is {v!r}, not a tensor; netmorph needs both "
                                  "operands to be computed tensors")
        if v.name in self.p.values:
            raise self.fail(call, f"{what} is the stored tensor '{self.p.values[v.name]}'; "
                                  "netmorph's graphs compute on the input only (a learned "
                                  "scale or constant operand is not supported)")
        if v.name not in self.env:
            raise self.fail(call, f"{what} ({v.name}) is not computed before it")
        got = self.env[v.name]
        if isinstance(got, Moved):
            raise self.fail(call, f"{what} is {got.by}, a reshape of '{got.node}' to "
                                  f"{tuple(got.index.shape)} per image, not (C, H, W) with "
                                  "every pixel in place; netmorph supports flattening to "
                                  "(N, features) and channel movements (shuffle, split, "
                                  "permute of channels) only")
        if isinstance(got, Sliced):
            if got.whole(self.shapes[got.node]):
                return got.node
            raise self.fail(call, f"{what} is a slice of '{got.node}' ({got.describe()}); "
                                  "netmorph slices feature maps only as the centred crops of "
                                  "a join or an option-A shortcut")
        return got

    def sliced(self, call: Call, arg: str) -> Sliced:
        """A tensor argument as a (possibly trivial) slice of a node."""
        v = call.args.get(arg)
        got = self.env.get(v.name) if isinstance(v, Value) else None
        if isinstance(got, Sliced):
            return got
        return Sliced.of(self.value(call, arg), self.shapes)

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
                and not call.module_type.startswith(_CONTAINERS)) or is_op_module(call)
        if call.module and leaf:
            return self.fresh(call.module)
        if call.module in self.owners:  # a custom layer calling F.conv2d on its own weight:
            return self.fresh(f"{call.module}_{op}")  # a name inside it would collide
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
        if OPS[op].layer is not None:
            self.owners.add(name)
        for k, t in (tensors or {}).items():
            self.tensors[f"{name}.{k}"] = t
        return name

    def bind(self, call: Call, node_name: str | Sliced, index: int = 0) -> None:
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
        mutated = list(self.p.mutated)
        for call in self.p.calls:  # torch 2.13 keeps BN's buffer updates as in-place calls
            first = next(iter(call.args.values()), None)
            in_place = call.target.split(".")[1].endswith("_") if "." in call.target else False
            if in_place and isinstance(first, Value) and first.name in self.p.values:
                mutated.append(self.p.values[first.name])
            elif call.target.startswith("aten.batch_norm") and call.args.get("training"):
                mutated.append(f"the running statistics of '{call.module or call.name}'")
        if mutated:
            what = mutated[0] if mutated[0].startswith("the ") else repr(mutated[0])
            raise ConversionError(f"{self.where()}: the program updates {what} (it was "
                                  "exported in training mode); export the model after "
                                  "model.eval()")
        for call in self.p.calls:
            op = call.target.split(".")[1] if call.target.startswith("aten.") else call.target
            handler = HANDLERS.get(op.rstrip("_") if op not in HANDLERS else op)
            if op in IGNORED:
                continue
            if handler is None:
                raise self.fail(call, f"netmorph cannot convert this op; it supports "
                                      f"{SUPPORTED}")
            try:
                handler(self, call)
            except (RuntimeError, IndexError, KeyError, ValueError, TypeError) as exc:
                if isinstance(exc, ConversionError):
                    raise
                raise self.fail(call, f"its arguments are not what netmorph reads "
                                      f"({type(exc).__name__}: {str(exc)[:160]})") from None
        out = self.env.get(self.p.output)
        if isinstance(out, Sliced | Moved):
            raise ConversionError(f"{self.where()}: the output is a slice or reshape of "
                                  f"'{out.node}'")
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


def _plain(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().cpu()
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()
    return t.contiguous().clone()

