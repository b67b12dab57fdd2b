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
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import NetworkError
from .limits import MAX_INPUT_ELEMENTS, MAX_INPUT_SIDE, MAX_KERNEL, MAX_MAP_SIDE, MAX_WIDTH

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

    Every field is checked for type and range (``limits.py`` caps widths, kernels and sizes)
    before anything is built, so a tampered description is refused here, naming the node and
    the field, instead of failing in torch. Raises ``NetworkError``. Run after every edit.
    """
    if not isinstance(desc, Mapping):
        raise NetworkError(f"network description must be an object, got {_kind(desc)}")
    if desc.get("format") != FORMAT:
        raise NetworkError(f"unsupported network description format {_short(desc.get('format'))} "
                           f"(this netmorph reads format {FORMAT})")
    for key in ("arch", "input", "num_classes", "nodes", "output"):
        if key not in desc:
            raise NetworkError(f"network description is missing {key!r}")
    if not isinstance(desc["arch"], str):
        raise NetworkError(f"'arch' must be a string, not {_short(desc['arch'])}")
    try:
        _count(desc, "num_classes")
    except ValueError as exc:
        raise NetworkError(f"network description: {exc}") from None
    nodes = desc["nodes"]
    if not isinstance(nodes, list) or not nodes:
        raise NetworkError(f"'nodes' must be a non-empty list of nodes, got {_kind(nodes)}")
    shapes: dict[str, tuple[int, ...]] = {"input": _input_shape(desc["input"])}
    for i, n in enumerate(nodes):
        if not isinstance(n, Mapping):
            raise NetworkError(f"node #{i + 1} must be an object, got {_kind(n)}")
        name = n.get("name")
        if not isinstance(name, str) or not name or name == "input":
            raise NetworkError(f"bad node name {_short(name)}")
        if name in shapes:
            raise NetworkError(f"duplicate node name {name!r}")
        op = n.get("op")
        if not isinstance(op, str) or op not in _ATTRS:
            raise NetworkError(f"node {name!r}: unknown op {_short(op)}")
        required, optional = _ATTRS[op]
        missing = [a for a in (*required, *optional) if a not in n]
        if missing:
            raise NetworkError(f"node {name!r} ({op}) is missing {', '.join(missing)}")
        ins = n.get("inputs")
        if not isinstance(ins, list) or not ins:
            raise NetworkError(f"node {name!r} has no inputs")
        for j in ins:
            if not isinstance(j, str) or j not in shapes:
                raise NetworkError(f"node {name!r}: input {_short(j)} is not an earlier node")
        try:
            _check_attrs(n)
            shape = _out_shape(n, [shapes[j] for j in ins])
            if len(shape) == 3 and max(shape[1:]) > MAX_MAP_SIDE:
                raise ValueError(f"output {shape[1]}×{shape[2]} is larger than netmorph's "
                                 f"limit of {MAX_MAP_SIDE} pixels a side")
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise NetworkError(f"node {name!r} ({op}): {exc}") from None
        shapes[name] = shape
    out = desc["output"]
    if not isinstance(out, str) or out == "input" or out not in shapes:
        raise NetworkError(f"output {_short(out)} is not a node")
    if shapes[out] != (desc["num_classes"],):
        raise NetworkError(f"output {out!r} has shape {shapes[out]}, "
                           f"expected ({desc['num_classes']},)")
    _check_module_paths(nodes)
    return shapes


def _kind(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "a number", float: "a number", type(None): "null"}.get(type(v), type(v).__name__)


def _input_shape(v: Any) -> tuple[int, int, int]:
    """The description's ``input``: [C, H, W], capped so no batch of it can exhaust memory."""
    if not (isinstance(v, list) and len(v) == 3 and all(type(i) is int and i >= 1 for i in v)):
        raise NetworkError(f"'input' must be [C, H, W] of positive integers, not {_short(v)}")
    c, h, w = v
    if c > MAX_WIDTH:
        raise NetworkError(f"'input' has {c} channels, more than netmorph's limit of "
                           f"{MAX_WIDTH}")
    if max(h, w) > MAX_INPUT_SIDE:
        raise NetworkError(f"'input' is {h}×{w} pixels, larger than netmorph's limit of "
                           f"{MAX_INPUT_SIDE} a side")
    if c * h * w > MAX_INPUT_ELEMENTS:
        raise NetworkError(f"'input' {c}×{h}×{w} has {c * h * w:,} values per image, more "
                           f"than netmorph's limit of {MAX_INPUT_ELEMENTS:,}")
    return c, h, w


def _int(n: Mapping[str, Any], attr: str, lo: int, hi: int) -> int:
    """``n[attr]`` as an integer in [lo, hi] (ValueError naming the field otherwise)."""
    v = n[attr]
    if type(v) is not int or not lo <= v <= hi:
        raise ValueError(f"{attr} must be an integer from {lo} to {hi}, not {_short(v)}")
    return v


def _count(n: Mapping[str, Any], attr: str) -> int:
    """A width (channels, features, classes): 1 … ``MAX_WIDTH``."""
    return _int(n, attr, 1, MAX_WIDTH)


def _number(v: Any) -> bool:
    return type(v) in (int, float) and math.isfinite(v)


def _two_ints(n: Mapping[str, Any], attr: str, lo: int, hi: int = MAX_MAP_SIDE) -> list[int]:
    """A conv's kernel/stride/padding/dilation (or a pad's pad): [h, w], ints in [lo, hi]."""
    v = n[attr]
    if not (isinstance(v, list) and len(v) == 2
            and all(type(i) is int and i >= lo for i in v)):
        raise ValueError(f"{attr} must be a list of two integers ≥ {lo} (e.g. [{max(lo, 1)}, "
                         f"{max(lo, 1)}]), not {_short(v)}")
    if max(v) > hi:
        raise ValueError(f"{attr} {v} is larger than netmorph's limit of {hi}")
    return v


def _check_attrs(n: Mapping[str, Any]) -> None:
    """Types and ranges of a node's attributes (shapes are ``_out_shape``'s job)."""
    op = n["op"]
    if op == "conv":
        c_in, c_out = _count(n, "in"), _count(n, "out")
        _two_ints(n, "kernel", 1, MAX_KERNEL)
        for attr, lo in (("stride", 1), ("padding", 0), ("dilation", 1)):
            _two_ints(n, attr, lo)
        _int(n, "groups", 1, c_in)
        if c_in % n["groups"] or c_out % n["groups"]:
            raise ValueError(f"channels {c_in}→{c_out} not divisible by groups {n['groups']}")
    elif op == "bn":
        _count(n, "channels")
        if not (_number(n["eps"]) and n["eps"] >= 0):
            raise ValueError(f"eps must be a finite number ≥ 0, not {_short(n['eps'])}")
        m = n["momentum"]
        if m is not None and not (_number(m) and 0 <= m <= 1):
            raise ValueError(f"momentum must be null or a number from 0 to 1, not {_short(m)}")
    elif op == "prelu":
        _count(n, "channels")
    elif op == "add":
        coeffs = n["coeffs"]
        if not isinstance(coeffs, list) or not all(_number(c) for c in coeffs):
            raise ValueError(f"coeffs must be a list of finite numbers, not {_short(coeffs)}")
        sc = n["shortcut"]
        if sc is not None and (type(sc) is not int or not 0 <= sc < len(n["inputs"])):
            raise ValueError(f"shortcut must be null or the index of an input "
                             f"(0 to {len(n['inputs']) - 1}), not {_short(sc)}")
    elif op == "pad":
        _two_ints(n, "pad", 0)
    elif op == "shortcut_a":
        _count(n, "in")
        _count(n, "out")
        _int(n, "stride", 1, MAX_MAP_SIDE)
    elif op == "maxpool":
        k = _int(n, "kernel", 1, MAX_KERNEL)
        _int(n, "stride", 1, MAX_MAP_SIDE)
        _int(n, "padding", 0, k // 2)  # torch: padding at most half the window
    elif op == "linear":
        _count(n, "in")
        _count(n, "out")
    if op in ("conv", "linear") and type(n["bias"]) is not bool:
        raise ValueError(f"bias must be true or false, not {_short(n['bias'])}")


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
        k, s, p, d = (n[a] for a in ("kernel", "stride", "padding", "dilation"))
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
        p = n["pad"]
        return (x[0], x[1] + 2 * p[0], x[2] + 2 * p[1])
    if op == "shortcut_a":
        if x[0] != n["in"] or (n["out"] - n["in"]) % 2 or n["out"] < n["in"]:
            raise ValueError(f"option-A shortcut {n['in']}→{n['out']} on input {x}")
        s = n["stride"]
        return (n["out"], -(-x[1] // s), -(-x[2] // s))
    if op == "maxpool":
        k, s, p = n["kernel"], n["stride"], n["padding"]
        hw = [(x[i] + 2 * p - k) // s + 1 for i in (1, 2)]
        if min(hw) < 1:
            raise ValueError(f"output would be empty for input {x}")
        return (x[0], *hw)
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
        """Validate the description, the history and metadata, and that tensors match the
        description exactly (names and shapes)."""
        validate_description(self.description)
        validate_history(self.history)
        validate_meta(self.meta, self.description["input"][0])
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


# -- history and metadata: what readers of a checkpoint rely on -----------------------------

def _strings(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(s, str) for s in v)


def _pairs(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(p, list) and len(p) == 2 and _strings(p)
                                       for p in v)


def _epochs(v: Any) -> bool:
    return isinstance(v, list) and all(
        isinstance(m, dict) and all(type(m.get(k)) in (int, float)
                                    for k in ("test_error", "train_error")) for m in v)


def _num(v: Any) -> bool:
    return type(v) in (int, float)


# history-entry field → (check, what it must be); other fields are kept unchecked
_ENTRY_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    **dict.fromkeys(("op", "preset", "module", "act", "output"),
                    (lambda v: isinstance(v, str), "a string")),
    **dict.fromkeys(("at", "dataset"), (lambda v: v is None or isinstance(v, str),
                                        "a string or null")),
    **dict.fromkeys(("sweeps", "replaced", "epochs_run", "world_size"),
                    (lambda v: type(v) is int, "an integer")),
    "seed": (lambda v: v is None or type(v) is int, "an integer or null"),
    **dict.fromkeys(("residual", "condition", "test_error", "seconds"),
                    (lambda v: v is None or _num(v), "a number or null")),
    **dict.fromkeys(("exact_bn", "bn"), (lambda v: type(v) is bool, "true or false")),
    **dict.fromkeys(("blocks", "new_bn"), (_strings, "a list of strings")),
    "compare": (_pairs, "a list of [parent node, child node] pairs"),
    "metrics": (_epochs, "a list of epoch records with numeric 'test_error' and "
                         "'train_error'"),
    **dict.fromkeys(("config", "spec", "methods"), (lambda v: isinstance(v, dict),
                                                   "an object")),
    "calibration": (lambda v: isinstance(v, dict) and isinstance(v.get("dataset"), str)
                    and type(v.get("images")) is int and _strings(v.get("layers")),
                    "an object with 'dataset' (a string), 'images' (an integer) and "
                    "'layers' (a list of strings)"),
}


def validate_history(history: Any) -> None:
    """The morph history: a list of objects whose known fields have the types ``info``,
    ``report``, ``verify``, ``calibrate`` and ``train`` read (``NetworkError`` naming the
    entry and the field)."""
    if not isinstance(history, list):
        raise NetworkError(f"the history must be a list of entries, got {_kind(history)}")
    for i, entry in enumerate(history, 1):
        if not isinstance(entry, dict):
            raise NetworkError(f"history entry #{i} must be an object, got {_kind(entry)}")
        for key, (ok, what) in _ENTRY_FIELDS.items():
            if key in entry and not ok(entry[key]):
                raise NetworkError(f"history entry #{i}: {key!r} must be {what}, "
                                   f"not {_short(entry[key])}")


def validate_meta(meta: Any, channels: int) -> None:
    """Known metadata: ``normalization`` ({mean, std}: one finite number per input channel,
    std > 0), lineage records ``parent``/``root`` ({arch, flops, sha256}) and the
    ``created``/``imported`` records (objects)."""
    if not isinstance(meta, dict):
        raise NetworkError(f"the metadata must be an object, got {_kind(meta)}")
    if "normalization" in meta:
        norm = meta["normalization"]
        if not isinstance(norm, dict):
            raise NetworkError(f"metadata 'normalization' must be an object with 'mean' and "
                               f"'std', not {_short(norm)}")
        for key in ("mean", "std"):
            v = norm.get(key)
            if key in norm and not (isinstance(v, list) and len(v) == channels
                                    and all(_number(x) for x in v)
                                    and (key == "mean" or all(x > 0 for x in v))):
                what = "positive finite numbers" if key == "std" else "finite numbers"
                raise NetworkError(f"metadata normalization {key!r} must be a list of "
                                   f"{channels} {what} (one per input channel), "
                                   f"not {_short(v)}")
    for key in ("parent", "root"):
        ref = meta.get(key)
        if key not in meta:
            continue
        if not isinstance(ref, dict):
            raise NetworkError(f"metadata {key!r} must be an object, not {_short(ref)}")
        flops = ref.get("flops")
        if flops is not None and not (_number(flops) and flops >= 0):
            raise NetworkError(f"metadata {key!r}: 'flops' must be a number ≥ 0, "
                               f"not {_short(flops)}")
        for field_ in ("arch", "sha256"):
            if ref.get(field_) is not None and not isinstance(ref[field_], str):
                raise NetworkError(f"metadata {key!r}: {field_!r} must be a string, "
                                   f"not {_short(ref[field_])}")
    for key in ("created", "imported"):
        if key in meta and not isinstance(meta[key], dict):
            raise NetworkError(f"metadata {key!r} must be an object, not {_short(meta[key])}")


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "…"
