"""Network description: a JSON-serializable DAG of ops, its validation, and one generic builder.

A description is ``{"format": 1, "arch", "input": [C, H, W], "num_classes", "nodes": [...],
"output"}``. Each node has a unique ``name``, an ``op``, ``inputs`` (earlier node names or
``"input"``) and the op's attributes. Parameter tensors are named ``<node>.<param>`` like
PyTorch's state_dict (``layer1.0.conv1.weight``), so any network — parent or morphed
child — is rebuilt from its description and tensors alone, with no code per architecture.

The ops and everything known about each (attributes, shapes, layer, forward, FLOPs,
initialization) are records of the op table in ``ops.py``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..base.limits import MAX_INPUT_ELEMENTS, MAX_INPUT_SIDE, MAX_MAP_SIDE, MAX_WIDTH, check_memory
from ..errors import NetworkError
from .attrs import as_pair as as_pair  # re-exported: morph.py builds nodes with it
from .attrs import count, finite, short
from .history import parse_history
from .ops import OPS, param_shapes

FORMAT = 1


def node(name: str, op: str, inputs: Iterable[str], **attrs: Any) -> dict[str, Any]:
    """A node with the op's defaults filled in (description builders use this)."""
    if op not in OPS:
        raise NetworkError(f"unknown op {op!r}")
    return {"name": name, "op": op, "inputs": list(inputs), **OPS[op].defaults(), **attrs}


def validate_description(desc: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Check a description; return every node's output shape (C, H, W) or (F,).

    Every field is checked for type and range (``limits.py`` caps widths, kernels and sizes)
    before anything is built, so a tampered description is refused here, naming the node and
    the field, instead of failing in torch. Raises ``NetworkError``. Run after every edit.
    """
    if not isinstance(desc, Mapping):
        raise NetworkError(f"network description must be an object, got {_kind(desc)}")
    if desc.get("format") != FORMAT:
        raise NetworkError(f"unsupported network description format {short(desc.get('format'))} "
                           f"(this netmorph reads format {FORMAT})")
    for key in ("arch", "input", "num_classes", "nodes", "output"):
        if key not in desc:
            raise NetworkError(f"network description is missing {key!r}")
    if not isinstance(desc["arch"], str):
        raise NetworkError(f"'arch' must be a string, not {short(desc['arch'])}")
    try:
        count(desc, "num_classes")
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
            raise NetworkError(f"bad node name {short(name)}")
        if name in shapes:
            raise NetworkError(f"duplicate node name {name!r}")
        op = n.get("op")
        if not isinstance(op, str) or op not in OPS:
            raise NetworkError(f"node {name!r}: unknown op {short(op)}")
        missing = OPS[op].missing(n)
        if missing:
            raise NetworkError(f"node {name!r} ({op}) is missing {', '.join(missing)}")
        ins = n.get("inputs")
        if not isinstance(ins, list) or not ins:
            raise NetworkError(f"node {name!r} has no inputs")
        for j in ins:
            if not isinstance(j, str) or j not in shapes:
                raise NetworkError(f"node {name!r}: input {short(j)} is not an earlier node")
        try:
            OPS[op].check(n)
            shape = OPS[op].output_shape(n, [shapes[j] for j in ins])
            if len(shape) == 3 and max(shape[1:]) > MAX_MAP_SIDE:
                raise ValueError(f"output {shape[1]}×{shape[2]} is larger than netmorph's "
                                 f"limit of {MAX_MAP_SIDE} pixels a side")
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise NetworkError(f"node {name!r} ({op}): {exc}") from None
        shapes[name] = shape
    out = desc["output"]
    if not isinstance(out, str) or out == "input" or out not in shapes:
        raise NetworkError(f"output {short(out)} is not a node")
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
        raise NetworkError(f"'input' must be [C, H, W] of positive integers, not {short(v)}")
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


def _check_module_paths(nodes: list[Mapping[str, Any]]) -> None:
    """A node with a layer (one that owns tensors) must not be a name prefix of another node
    (module paths and state_dict keys would collide)."""
    owners = {n["name"] for n in nodes if OPS[n["op"]].layer is not None}
    for n in nodes:
        parts = n["name"].split(".")
        for i in range(1, len(parts)):
            prefix = ".".join(parts[:i])
            if prefix in owners:
                raise NetworkError(f"node {n['name']!r} lies inside layer {prefix!r}")


class Container(nn.Module):
    """A path component of layer names (``features`` of ``features.3``): holds the layers
    under it and, like ``nn.Sequential``, indexes them (``net.features[3]``)."""

    def __getitem__(self, key: int | str) -> nn.Module:
        try:
            return self._modules[str(key)]  # type: ignore[return-value]
        except KeyError:
            raise IndexError(f"no layer {key!r} here (has {', '.join(self._modules)})") from None


class OpModule(nn.Module):
    """A parameter-free op as a module at its node's name: no tensors, so state_dicts are
    unchanged, but ``torch.export`` records the name with each call (``conversion.py``
    names the imported nodes by it, so an exported child imports back with its names)."""

    def __init__(self, n: Mapping[str, Any]) -> None:
        super().__init__()
        self.node = dict(n)

    def forward(self, *ins: torch.Tensor) -> torch.Tensor:
        return OPS[self.node["op"]].forward(self.node, list(ins), None)

    def extra_repr(self) -> str:
        return self.node["op"]


class GraphNet(nn.Module):
    """The nn.Module of a description. Layers sit at their dotted names (``layer1.0.conv1``),
    so ``state_dict()`` keys are the description's tensor names."""

    def __init__(self, desc: Mapping[str, Any]):
        super().__init__()
        validate_description(desc)
        self.nodes = [dict(n) for n in desc["nodes"]]
        self.output = desc["output"]
        # (description, history, meta) of the Network this module was built from (the
        # Python API morphs, verifies and saves modules by it); None for a bare description
        self.netmorph_record: tuple[dict[str, Any], list[Any], dict[str, Any]] | None = None
        self._layers: dict[str, nn.Module] = {}
        for n in self.nodes:
            make = OPS[n["op"]].layer
            if make is not None:
                layer = make(n)
                self._attach(n["name"], layer)
                self._layers[n["name"]] = layer
        for n in self.nodes:  # parameter-free ops too, where their name is free, so that a
            if n["name"] not in self._layers and self._free(n["name"]):  # traced graph
                op = OpModule(n)                                         # keeps names
                self._attach(n["name"], op)
                self._layers[n["name"]] = op

    def _free(self, name: str) -> bool:
        """Whether a module can sit at ``name``: no module or attribute there and no op
        module on the way (an op's name may be any string; a clash only loses the name)."""
        parent: nn.Module = self
        *path, last = name.split(".")
        for part in path:
            child = parent._modules.get(part)
            if child is None:
                return not hasattr(parent, part)
            if isinstance(child, OpModule):
                return False
            parent = child
        return last not in parent._modules and not hasattr(parent, last)

    def _attach(self, name: str, layer: nn.Module) -> None:
        parent: nn.Module = self
        *path, last = name.split(".")
        for part in path:
            child = parent._modules.get(part)
            if child is None:
                child = Container()
                parent.add_module(part, child)
            parent = child
        parent.add_module(last, layer)

    def forward(self, x: torch.Tensor, capture: Iterable[str] = ()
                ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        keep = set(capture)
        values: dict[str, torch.Tensor] = {"input": x}
        for n in self.nodes:
            ins = [values[i] for i in n["inputs"]]
            layer = self._layers.get(n["name"])
            values[n["name"]] = layer(*ins) if isinstance(layer, OpModule) else \
                OPS[n["op"]].forward(n, ins, layer)
        if keep:
            return values[self.output], {k: values[k] for k in keep}
        return values[self.output]


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
        net.netmorph_record = (copy.deepcopy(self.description), copy.deepcopy(self.history),
                               copy.deepcopy(self.meta))
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

def validate_history(history: Any) -> None:
    """The morph history: a list of objects whose known fields have the types ``info``,
    ``report``, ``verify``, ``calibrate`` and ``train`` read (``NetworkError`` naming the
    entry and the field): what ``history.parse_history`` needs to make its records."""
    parse_history(history)


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
                               f"'std', not {short(norm)}")
        for key in ("mean", "std"):
            v = norm.get(key)
            if key in norm and not (isinstance(v, list) and len(v) == channels
                                    and all(finite(x) for x in v)
                                    and (key == "mean" or all(x > 0 for x in v))):
                what = "positive finite numbers" if key == "std" else "finite numbers"
                raise NetworkError(f"metadata normalization {key!r} must be a list of "
                                   f"{channels} {what} (one per input channel), "
                                   f"not {short(v)}")
    for key in ("parent", "root"):
        ref = meta.get(key)
        if key not in meta:
            continue
        if not isinstance(ref, dict):
            raise NetworkError(f"metadata {key!r} must be an object, not {short(ref)}")
        flops = ref.get("flops")
        if flops is not None and not (finite(flops) and flops >= 0):
            raise NetworkError(f"metadata {key!r}: 'flops' must be a number ≥ 0, "
                               f"not {short(flops)}")
        for field_ in ("arch", "sha256"):
            if ref.get(field_) is not None and not isinstance(ref[field_], str):
                raise NetworkError(f"metadata {key!r}: {field_!r} must be a string, "
                                   f"not {short(ref[field_])}")
    for key in ("created", "imported"):
        if key in meta and not isinstance(meta[key], dict):
            raise NetworkError(f"metadata {key!r} must be an object, not {short(meta[key])}")


def forward_bytes(desc: Mapping[str, Any], batch: int, itemsize: int) -> int:
    """The memory a forward pass of ``batch`` inputs holds at its peak: ``GraphNet`` keeps
    every node's output until the pass ends, so the sum of all of them (input included)."""
    shapes = validate_description(desc)
    return batch * itemsize * sum(math.prod(s) for s in shapes.values())


def check_forward(desc: Mapping[str, Any], batch: int, dtype: torch.dtype, what: str, *,
                  factor: float = 1.0, extra: int = 0,
                  device: torch.device | str | None = None) -> None:
    """``ResourceLimitError`` before a pass that would not fit in the memory available:
    ``factor`` forward passes alive at once (2 to compare two networks, ~3 to train: the
    activations, their gradients and the optimizer's work) plus ``extra`` bytes."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    need = int(factor * forward_bytes(desc, batch, itemsize)) + extra
    shape = "×".join(map(str, desc["input"]))
    name = str(dtype).removeprefix("torch.")
    dev = torch.device(device) if device is not None else None
    check_memory(need, f"{what} ({batch} inputs of {shape} in {name})", device=dev)
