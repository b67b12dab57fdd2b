"""Network description: a JSON-serializable DAG of ops, its validation, and one generic builder.

A description is ``{"format": 1, "arch", "input": [C, H, W], "num_classes", "nodes": [...],
"output"}``. Each node has a unique ``name``, an ``op``, ``inputs`` (earlier node names or
``"input"``) and the op's attributes. Parameter tensors are named ``<node>.<param>`` like
PyTorch's state_dict (``layer1.0.conv1.weight``), so any network — parent or morphed
child — is rebuilt from its description and tensors alone, with no code per architecture.

Ops: ``conv`` (in, out, kernel, stride, padding, dilation, groups, bias), ``bn`` (channels,
eps), ``relu``, ``prelu`` (channels), ``add`` (coeffs; centre-crops its inputs to the
smallest spatial size, which is how a module realized with one input padding joins paths of
different receptive fields), ``pad`` (pad: zero padding [ph, pw]), ``shortcut_a`` (in, out,
stride: subsample and zero-pad channels, He et al.'s option A), ``maxpool`` (kernel,
stride, padding), ``gap`` (global average pool to (N, C)), ``linear`` (in, out, bias).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import NetworkError

FORMAT = 1

# op → (required attributes, optional attributes with defaults)
_ATTRS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "conv": (("in", "out", "kernel"), {"stride": [1, 1], "padding": [0, 0],
                                       "dilation": [1, 1], "groups": 1, "bias": False}),
    "bn": (("channels",), {"eps": 1e-5, "momentum": 0.1}),
    "relu": ((), {}),
    "prelu": (("channels",), {}),
    "add": (("coeffs",), {"shortcut": None}),  # shortcut: index of the identity input
    "pad": (("pad",), {}),
    "shortcut_a": (("in", "out", "stride"), {}),
    "maxpool": (("kernel", "stride", "padding"), {}),
    "gap": ((), {}),
    "linear": (("in", "out"), {"bias": True}),
}
PARAM_OPS = {"conv", "bn", "prelu", "linear"}


def param_shapes(node: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """The tensors a node owns, by parameter name, with their shapes."""
    op = node["op"]
    if op == "conv":
        shapes = {"weight": (node["out"], node["in"] // node["groups"], *_pair(node["kernel"]))}
        if node["bias"]:
            shapes["bias"] = (node["out"],)
        return shapes
    if op == "bn":
        c = node["channels"]
        return {"weight": (c,), "bias": (c,), "running_mean": (c,), "running_var": (c,),
                "num_batches_tracked": ()}
    if op == "prelu":
        return {"weight": (node["channels"],)}
    if op == "linear":
        shapes = {"weight": (node["out"], node["in"])}
        if node["bias"]:
            shapes["bias"] = (node["out"],)
        return shapes
    return {}


def node(name: str, op: str, inputs: Iterable[str], **attrs: Any) -> dict[str, Any]:
    """A node with the op's defaults filled in (description builders use this)."""
    if op not in _ATTRS:
        raise NetworkError(f"unknown op {op!r}")
    _, optional = _ATTRS[op]
    return {"name": name, "op": op, "inputs": list(inputs), **copy.deepcopy(optional), **attrs}


def _pair(v: Any) -> list[int]:
    return [v, v] if isinstance(v, int) else list(v)


def as_pair(v: Any) -> tuple[int, int]:
    a, b = _pair(v)
    return a, b


def validate_description(desc: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Check a description; return every node's output shape (C, H, W) or (F,).

    Raises ``NetworkError`` naming the node at fault. Run after every edit.
    """
    if not isinstance(desc, Mapping):
        raise NetworkError("network description must be an object")
    if desc.get("format") != FORMAT:
        raise NetworkError(f"unsupported network description format {desc.get('format')!r} "
                           f"(this netmorph reads format {FORMAT})")
    for key in ("input", "num_classes", "nodes", "output"):
        if key not in desc:
            raise NetworkError(f"network description is missing {key!r}")
    shapes: dict[str, tuple[int, ...]] = {"input": tuple(desc["input"])}
    for n in desc["nodes"]:
        name = n.get("name")
        if not isinstance(name, str) or not name or name == "input":
            raise NetworkError(f"bad node name {name!r}")
        if name in shapes:
            raise NetworkError(f"duplicate node name {name!r}")
        op = n.get("op")
        if op not in _ATTRS:
            raise NetworkError(f"node {name!r}: unknown op {op!r}")
        required, optional = _ATTRS[op]
        missing = [a for a in (*required, *optional) if a not in n]
        if missing:
            raise NetworkError(f"node {name!r} ({op}) is missing {', '.join(missing)}")
        ins = n.get("inputs")
        if not isinstance(ins, list) or not ins:
            raise NetworkError(f"node {name!r} has no inputs")
        for i in ins:
            if i not in shapes:
                raise NetworkError(f"node {name!r}: input {i!r} is not an earlier node")
        try:
            shapes[name] = _out_shape(n, [shapes[i] for i in ins])
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise NetworkError(f"node {name!r} ({op}): {exc}") from None
    if desc["output"] not in shapes:
        raise NetworkError(f"output {desc['output']!r} is not a node")
    if shapes[desc["output"]] != (desc["num_classes"],):
        raise NetworkError(f"output {desc['output']!r} has shape {shapes[desc['output']]}, "
                           f"expected ({desc['num_classes']},)")
    _check_module_paths(desc["nodes"])
    return shapes


def _two_ints(n: Mapping[str, Any], attr: str, lo: int) -> list[int]:
    """A conv's kernel/stride/padding/dilation (or a pad's pad): [h, w], ints ≥ ``lo``."""
    v = n[attr]
    if not (isinstance(v, list) and len(v) == 2
            and all(type(i) is int and i >= lo for i in v)):
        raise ValueError(f"{attr} must be a list of two integers ≥ {lo} (e.g. [{max(lo, 1)}, "
                         f"{max(lo, 1)}]), not {v!r}")
    return v


def _out_shape(n: Mapping[str, Any], ins: list[tuple[int, ...]]) -> tuple[int, ...]:
    op, x = n["op"], ins[0]
    if op != "add" and len(ins) != 1:
        raise ValueError(f"takes one input, got {len(ins)}")
    if op in ("conv", "bn", "relu", "prelu", "pad", "shortcut_a", "maxpool", "gap") \
            and len(x) != 3:
        raise ValueError(f"needs a (C, H, W) input, got {x}")
    if op == "conv":
        if x[0] != n["in"]:
            raise ValueError(f"expects {n['in']} input channels, gets {x[0]}")
        if n["in"] % n["groups"] or n["out"] % n["groups"]:
            raise ValueError("channels not divisible by groups")
        k, s, p, d = (_two_ints(n, a, lo) for a, lo in
                      (("kernel", 1), ("stride", 1), ("padding", 0), ("dilation", 1)))
        hw = [(x[i + 1] + 2 * p[i] - d[i] * (k[i] - 1) - 1) // s[i] + 1 for i in range(2)]
        if min(hw) < 1:
            raise ValueError(f"output would be empty for input {x}")
        return (n["out"], *hw)
    if op in ("bn", "prelu"):
        if x[0] != n["channels"]:
            raise ValueError(f"expects {n['channels']} channels, gets {x[0]}")
        return x
    if op == "relu":
        return x
    if op == "add":
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
    if op == "pad":
        p = _two_ints(n, "pad", 0)
        return (x[0], x[1] + 2 * p[0], x[2] + 2 * p[1])
    if op == "shortcut_a":
        if x[0] != n["in"] or (n["out"] - n["in"]) % 2 or n["out"] < n["in"]:
            raise ValueError(f"option-A shortcut {n['in']}→{n['out']} on input {x}")
        s = n["stride"]
        return (n["out"], -(-x[1] // s), -(-x[2] // s))
    if op == "maxpool":
        k, s, p = n["kernel"], n["stride"], n["padding"]
        return (x[0], (x[1] + 2 * p - k) // s + 1, (x[2] + 2 * p - k) // s + 1)
    if op == "gap":
        return (x[0],)
    if op == "linear":
        if x != (n["in"],):
            raise ValueError(f"expects ({n['in']},) features, gets {x}")
        return (n["out"],)
    raise ValueError(f"unknown op {op}")  # pragma: no cover


def _check_module_paths(nodes: list[Mapping[str, Any]]) -> None:
    """A node that owns tensors must not be a name prefix of another node (state_dict keys
    would collide)."""
    owners = {n["name"] for n in nodes if n["op"] in PARAM_OPS}
    for n in nodes:
        parts = n["name"].split(".")
        for i in range(1, len(parts)):
            prefix = ".".join(parts[:i])
            if prefix in owners:
                raise NetworkError(f"node {n['name']!r} lies inside layer {prefix!r}")


def _make_layer(n: Mapping[str, Any]) -> nn.Module:
    op = n["op"]
    if op == "conv":
        return nn.Conv2d(n["in"], n["out"], as_pair(n["kernel"]), stride=as_pair(n["stride"]),
                         padding=as_pair(n["padding"]), dilation=as_pair(n["dilation"]),
                         groups=n["groups"], bias=n["bias"])
    if op == "bn":
        return nn.BatchNorm2d(n["channels"], eps=n["eps"], momentum=n["momentum"])
    if op == "prelu":
        return nn.PReLU(n["channels"])
    if op == "linear":
        return nn.Linear(n["in"], n["out"], bias=n["bias"])
    raise AssertionError(op)


def _centre_crop(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    dh, dw = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
    if dh == dw == 0:
        return x
    return x[..., dh:dh + h, dw:dw + w]


class GraphNet(nn.Module):
    """The nn.Module of a description. Layers sit at their dotted names (``layer1.0.conv1``),
    so ``state_dict()`` keys are the description's tensor names."""

    def __init__(self, desc: Mapping[str, Any]):
        super().__init__()
        validate_description(desc)
        self.nodes = [dict(n) for n in desc["nodes"]]
        self.output = desc["output"]
        self._layers: dict[str, nn.Module] = {}
        for n in self.nodes:
            if n["op"] in PARAM_OPS:
                layer = _make_layer(n)
                self._attach(n["name"], layer)
                self._layers[n["name"]] = layer

    def _attach(self, name: str, layer: nn.Module) -> None:
        parent: nn.Module = self
        *path, last = name.split(".")
        for part in path:
            child = parent._modules.get(part)
            if child is None:
                child = nn.Module()
                parent.add_module(part, child)
            parent = child
        parent.add_module(last, layer)

    def forward(self, x: torch.Tensor, capture: Iterable[str] = ()
                ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        keep = set(capture)
        values: dict[str, torch.Tensor] = {"input": x}
        for n in self.nodes:
            ins = [values[i] for i in n["inputs"]]
            values[n["name"]] = self._run(n, ins)
        if keep:
            return values[self.output], {k: values[k] for k in keep}
        return values[self.output]

    def _run(self, n: dict[str, Any], ins: list[torch.Tensor]) -> torch.Tensor:
        op, x = n["op"], ins[0]
        if op in PARAM_OPS:
            return self._layers[n["name"]](x)
        if op == "relu":
            return F.relu(x)
        if op == "add":
            if x.dim() == 4:
                h, w = min(t.shape[-2] for t in ins), min(t.shape[-1] for t in ins)
                ins = [_centre_crop(t, h, w) for t in ins]
            out = None
            for c, t in zip(n["coeffs"], ins, strict=True):
                if c == 0:
                    continue
                term = t if c == 1 else t * c
                out = term if out is None else out + term
            return out if out is not None else torch.zeros_like(ins[0])
        if op == "pad":
            ph, pw = _pair(n["pad"])
            return F.pad(x, (pw, pw, ph, ph))
        if op == "shortcut_a":
            s, extra = n["stride"], (n["out"] - n["in"]) // 2
            return F.pad(x[:, :, ::s, ::s], (0, 0, 0, 0, extra, extra))
        if op == "maxpool":
            return F.max_pool2d(x, n["kernel"], n["stride"], n["padding"])
        if op == "gap":
            return x.mean(dim=(2, 3))
        raise AssertionError(op)  # pragma: no cover


@dataclass
class Network:
    """A description, its tensors, and what netmorph knows of its history."""

    description: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    history: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)  # normalization, parent_sha256, …

    def check(self) -> Network:
        """Validate the description and that tensors match it exactly (names and shapes)."""
        validate_description(self.description)
        expected = expected_tensors(self.description)
        missing = sorted(set(expected) - set(self.tensors))
        extra = sorted(set(self.tensors) - set(expected))
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing tensors: {', '.join(missing[:8])}"
                             + (" …" if len(missing) > 8 else ""))
            if extra:
                parts.append(f"unexpected tensors: {', '.join(extra[:8])}"
                             + (" …" if len(extra) > 8 else ""))
            raise NetworkError("tensors do not match the description (" + "; ".join(parts) + ")")
        for k, shape in expected.items():
            if tuple(self.tensors[k].shape) != shape:
                raise NetworkError(f"tensor {k!r} has shape {tuple(self.tensors[k].shape)}, "
                                   f"the description needs {shape}")
        return self

    def module(self, dtype: torch.dtype | None = None,
               device: torch.device | str = "cpu") -> GraphNet:
        """The nn.Module with these tensors loaded (bit-exact), in eval mode."""
        net = GraphNet(self.description).to(self.dtype)  # load_state_dict casts into it
        net.load_state_dict(self.tensors, strict=True)
        if dtype is not None:
            net = net.to(dtype)
        return net.to(device).eval()

    def to(self, dtype: torch.dtype) -> Network:
        """A copy whose floating-point tensors are cast to ``dtype`` (exact when widening)."""
        tensors = {k: v.to(dtype) if v.is_floating_point() else v
                   for k, v in self.tensors.items()}
        return Network(copy.deepcopy(self.description), tensors, copy.deepcopy(self.history),
                       copy.deepcopy(self.meta))

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the network's floating-point tensors."""
        for v in self.tensors.values():
            if v.is_floating_point():
                return v.dtype
        return torch.float32

    @property
    def nodes(self) -> dict[str, dict[str, Any]]:
        return {n["name"]: n for n in self.description["nodes"]}


def expected_tensors(desc: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    out = {}
    for n in desc["nodes"]:
        for p, shape in param_shapes(n).items():
            out[f"{n['name']}.{p}"] = tuple(shape)
    return out


def state_of(module: nn.Module) -> dict[str, torch.Tensor]:
    """Detached copies of a module's tensors (what a Network stores)."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}
