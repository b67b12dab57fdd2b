"""Traced programs: a PyTorch model's graph as netmorph reads it, from a file or from a model.

A ``Program`` is the flat list of ATen calls of a ``torch.export`` graph (``Call``: target,
arguments by their schema names, outputs, the module path that made the call), its lifted
tensors under their state_dict names, and its one input and output. ``conversion.py``
turns it into a netmorph network. Two readers make one:

- ``read_pt2(path)``: a ``torch.export.save`` file, read **without** ``torch.export.load``.
  Loading a .pt2 with torch can run code: torch 2.13 unpickles weights and constants stored
  with ``use_pickle`` (tensor subclasses) with ``torch.load(weights_only=False)``, falls back
  to ``weights_only=False`` for older payloads, and turns the program's ``guards_code``
  strings into Python functions when the module is built. This reader opens the zip itself,
  parses the program's JSON (no ``eval``, no imports), reads raw tensors from their bytes
  and refuses any pickled member that ``torch.load(weights_only=True)`` does not read as a
  plain tensor. Nothing in the file is executed.
- ``trace(model, example)``: ``torch.export.export`` of an ``nn.Module`` in eval mode (the
  user's own code runs: that is what tracing is), read from the in-memory graph.
"""

from __future__ import annotations

import io
import json
import math
import pickle
import warnings
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from ..base.limits import MAX_JSON_DEPTH, MAX_SPEC_BYTES, JSONDepthError, check_memory, parse_json
from ..base.runtime import quiet_torch
from ..errors import CheckpointError


@dataclass(frozen=True)
class Value:
    """A tensor value of the graph, by name (a node's output, an input or a lifted tensor)."""

    name: str


@dataclass(frozen=True)
class SymInt:
    """A symbolic size (a dynamic dimension, e.g. the batch of ``x.view(x.size(0), -1)``)."""

    name: str


@dataclass(frozen=True)
class Call:
    """One ATen call: ``target`` like ``aten.conv2d.default``, ``args`` by schema name
    (``Value``, lists of them, numbers, strings, None), the names of its outputs, and the
    innermost module that made it (path ``features.3``, class name) — "" for the model."""

    name: str
    target: str
    args: dict[str, Any]
    outputs: tuple[str, ...]
    module: str = ""
    module_type: str = ""


@dataclass
class Program:
    """A traced model: its calls in order, its input (name, (N, C, H, W) with None where a
    dimension is dynamic) and output, and its lifted tensors (``values``: graph name →
    state_dict name; ``tensors``: state_dict name → tensor)."""

    calls: list[Call]
    input: str
    input_shape: tuple[int | None, ...]
    output: str
    values: dict[str, str]
    tensors: dict[str, torch.Tensor]
    source: str  # what the program came from, for messages
    mutated: list[str] = field(default_factory=list)  # buffers the program writes (training)
    card: dict[str, Any] = field(default_factory=dict)  # netmorph's extra/netmorph.json


# -- torch.export files ------------------------------------------------------------------------

# the serialized ScalarType codes (torch/_export/serde/schema.py) netmorph reads
_DTYPES = {4: torch.int32, 5: torch.int64, 6: torch.float16, 7: torch.float32,
           8: torch.float64, 12: torch.bool, 13: torch.bfloat16}
_MAX_MEMBER = 64 * 2**30  # a weight file larger than this is not a CNN's


def is_pt2(path: str | Path) -> bool:
    """Whether ``path`` is a torch.export archive (a zip with an ``archive_format`` record;
    ``torch.save`` files are zips too, without one)."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(PurePosixPath(n).name == "archive_format" for n in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def read_pt2(path: str | Path) -> Program:
    """The program of a ``torch.export.save`` file, read without running anything in it
    (``CheckpointError`` naming the file on anything else)."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as z:
            return _Pt2(path, z).program()
    except zipfile.BadZipFile as exc:
        raise CheckpointError(f"'{path}' is not a torch.export program file (.pt2): {exc}"
                              ) from None
    except (zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
        # a damaged compressed record, an encrypted or unsupported-compression member
        raise CheckpointError(f"'{path}' is a damaged torch.export archive "
                              f"({type(exc).__name__}: {str(exc)[:200]})") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read '{path}': {exc.strerror or exc}") from None


class _Pt2:
    def __init__(self, path: Path, z: zipfile.ZipFile) -> None:
        self.path, self.z = path, z
        self.members = {i.filename: i for i in z.infolist()}
        formats = [n for n in self.members if PurePosixPath(n).name == "archive_format"]
        if len(formats) != 1:
            raise self.error("it is a zip file but not a torch.export archive "
                             "(no archive_format record)")
        self.root = formats[0][: -len("archive_format")]

    def error(self, why: str) -> CheckpointError:
        return CheckpointError(f"'{self.path}': {why}")

    def member(self, name: str) -> zipfile.ZipInfo:
        info = self.members.get(self.root + name)
        if info is None:
            raise self.error(f"the archive has no {name!r} record")
        return info

    def read_prefix(self, info: zipfile.ZipInfo, n: int) -> bytearray:
        """The first ``n`` bytes of a member, inflated 1 MiB at a time and no further."""
        out = bytearray()
        try:
            with self.z.open(info) as f:
                while len(out) < n:
                    chunk = f.read(min(n - len(out), 1 << 20))
                    if not chunk:
                        break
                    out += chunk
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
            raise self.error(f"record {info.filename!r} is damaged ({exc})") from None
        if len(out) < n:
            raise self.error(f"record {info.filename!r} holds {len(out)} bytes, fewer than "
                             f"the {n} its tensor needs")
        return out

    def read(self, name: str, cap: int = MAX_SPEC_BYTES) -> bytes:
        info = self.member(name)
        if info.file_size > cap:
            raise self.error(f"record {name!r} is {info.file_size:,} bytes, more than "
                             f"netmorph reads ({cap:,})")
        check_memory(info.file_size, f"reading record {name!r} of '{self.path}'")
        with self.z.open(info) as f:
            data = f.read(cap + 1)
        if len(data) > cap:
            raise self.error(f"record {name!r} is larger than netmorph reads ({cap:,} bytes)")
        return data

    def json(self, name: str) -> Any:
        try:
            return parse_json(self.read(name))
        except JSONDepthError:
            raise self.error(f"record {name!r} is nested more than {MAX_JSON_DEPTH} levels "
                             "deep") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise self.error(f"record {name!r} is not JSON ({exc})") from None

    def program(self) -> Program:
        fmt = self.read("archive_format", 64).decode(errors="replace").strip()
        if fmt != "pt2":
            raise self.error(f"archive format {fmt!r}, not a torch.export 'pt2' archive")
        models = sorted(n[len(self.root) + len("models/"):-len(".json")] for n in self.members
                        if n.startswith(self.root + "models/") and n.endswith(".json"))
        if len(models) != 1:
            raise self.error(f"the archive holds {len(models)} programs "
                             f"({', '.join(models) or 'none'}); netmorph imports one")
        name = models[0]
        ep = self.json(f"models/{name}.json")
        try:
            prog = _from_json(ep, self.tensors(name, "weights", "weights"),
                              self.tensors(name, "constants", "constants"), str(self.path))
        except (KeyError, TypeError, IndexError, AttributeError, ValueError) as exc:
            raise self.error(f"the program's graph is not in a form netmorph knows "
                             f"({type(exc).__name__}: {exc}); was it written by "
                             "torch.export.save?") from None
        if self.root + "extra/netmorph.json" in self.members:  # written by netmorph export
            card = self.json("extra/netmorph.json")
            prog.card = card if isinstance(card, dict) else {}
        return prog

    def tensors(self, model: str, kind: str, folder: str) -> dict[str, torch.Tensor]:
        config_name = f"data/{folder}/{model}_{kind}_config.json"
        if self.root + config_name not in self.members:
            if kind == "weights" and self.root + f"data/weights/{model}.pt" in self.members:
                raise self.error("it stores its weights in torch's legacy pickled format, "
                                 "which netmorph does not read (it can run code); save the "
                                 "program again with a recent torch.export.save")
            return {}
        config = self.json(config_name)
        out: dict[str, torch.Tensor] = {}
        for fqn, meta in (config.get("config") or {}).items():
            out[fqn] = self.tensor(f"data/{folder}/{meta['path_name']}", fqn, meta)
        return out

    def tensor(self, member: str, fqn: str, meta: Mapping[str, Any]) -> torch.Tensor:
        if meta.get("use_pickle"):
            return self.pickled(member, fqn)
        tm = meta["tensor_meta"]
        dtype = _DTYPES.get(tm["dtype"])
        if dtype is None:
            raise self.error(f"tensor {fqn!r} has a dtype netmorph does not read "
                             f"(serialized type {tm['dtype']})")
        sizes = [_int(s) for s in tm["sizes"]]
        strides = [_int(s) for s in tm["strides"]]
        offset = _int(tm["storage_offset"])
        info = self.member(member)
        item = torch.empty((), dtype=dtype).element_size()
        if info.file_size % item:
            raise self.error(f"tensor {fqn!r}: {info.file_size} bytes is not a whole number "
                             f"of {dtype} values")
        numel = info.file_size // item
        if any(n < 0 for n in sizes):
            raise self.error(f"tensor {fqn!r}: negative size in {sizes}")
        last = offset + sum((s - 1) * st for s, st in zip(sizes, strides, strict=True)) \
            if all(sizes) else offset - 1
        if offset < 0 or min(strides, default=0) < 0 or last >= numel:
            raise self.error(f"tensor {fqn!r}: sizes {sizes} and strides {strides} reach "
                             f"beyond its {numel} stored values")
        if math.prod(sizes) == 0:
            return torch.zeros(sizes, dtype=dtype)
        # only the values the tensor reaches are inflated, never the rest of the member
        need = (last + 1) * item
        check_memory(2 * need, f"reading tensor {fqn!r} of '{self.path}'")
        raw = self.read_prefix(info, need)
        flat = torch.frombuffer(raw, dtype=dtype)
        return torch.as_strided(flat, sizes, strides, offset).clone()

    def pickled(self, member: str, fqn: str) -> torch.Tensor:
        try:
            with warnings.catch_warnings():  # torch warns about the pickle protocol
                warnings.simplefilter("ignore")
                obj = torch.load(io.BytesIO(self.read(member, _MAX_MEMBER)),
                                 map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError,
                TypeError, KeyError) as exc:
            raise self.error(
                f"tensor {fqn!r} is a pickled object that torch.load(weights_only=True) "
                f"refuses ({str(exc).splitlines()[0][:120]}); loading it would run code "
                "from the file, which netmorph never does") from None
        if type(obj) is not torch.Tensor:
            raise self.error(f"tensor {fqn!r} is a pickled {type(obj).__name__}, not a plain "
                             "tensor; netmorph reads only plain tensors")
        return obj


def _int(v: Mapping[str, Any]) -> int:
    if "as_int" not in v:
        raise ValueError(f"a symbolic size {v} where a number is needed")
    return int(v["as_int"])


def _from_json(ep: Mapping[str, Any], weights: dict[str, torch.Tensor],
               constants: dict[str, torch.Tensor], source: str) -> Program:
    gm = ep["graph_module"]
    graph, sig = gm["graph"], gm["signature"]
    values: dict[str, str] = {}
    tensors = {**weights, **constants}
    user_inputs = []
    for spec in sig["input_specs"]:
        (kind, body), = spec.items()
        if kind == "user_input":
            arg = body["arg"]
            if "as_tensor" not in arg:
                raise _Unsupported(f"a non-tensor input ({next(iter(arg))})")
            user_inputs.append(arg["as_tensor"]["name"])
        elif kind in ("parameter", "buffer", "tensor_constant"):
            target = body.get(f"{kind}_name") or body.get("parameter_name")
            values[body["arg"]["name"]] = target
        else:
            raise _Unsupported(f"an input of kind {kind!r}")
    outputs, mutated = [], []
    for spec in sig["output_specs"]:
        (kind, body), = spec.items()
        if kind == "user_output":
            arg = body["arg"]
            outputs.append(arg["as_tensor"]["name"] if "as_tensor" in arg else None)
        elif kind == "buffer_mutation":
            mutated.append(body.get("buffer_name", "?"))
        else:
            raise _Unsupported(f"an output of kind {kind!r}")
    missing = sorted(set(values.values()) - set(tensors))
    if missing:
        raise _Unsupported(f"no stored tensor for {', '.join(missing[:4])}")
    if len(user_inputs) != 1:
        raise _Unsupported(f"{len(user_inputs)} inputs; netmorph imports models of one "
                           "image input")
    shapes = graph["tensor_values"]
    x = user_inputs[0]
    input_shape = tuple(s.get("as_int") for s in shapes[x]["sizes"])
    calls = []
    for n in graph["nodes"]:
        meta = n.get("metadata") or {}
        path, mtype = _module_of(meta.get("nn_module_stack", ""))
        outs = []
        for o in n["outputs"]:
            if "as_tensor" in o:
                outs.append(o["as_tensor"]["name"])
            elif "as_tensors" in o:
                outs += [t["name"] for t in o["as_tensors"]]
            else:
                outs.append("")
        target = n["target"].removeprefix("torch.ops.")
        calls.append(Call(n.get("name") or (outs[0] if outs else target), target,
                          {a["name"]: _arg(a["arg"]) for a in n["inputs"]}, tuple(outs),
                          path, mtype))
    if len(outputs) != 1 or outputs[0] is None:
        raise CheckpointError(f"'{source}': the program returns {len(outputs)} values; "
                              "netmorph imports classifiers that return one (N, classes) "
                              "tensor")
    return Program(calls, x, input_shape, outputs[0], values, tensors, source, mutated)


class _Unsupported(ValueError):
    pass


def _module_of(stack: str) -> tuple[str, str]:
    """(path, class) of the innermost module in a serialized ``nn_module_stack``
    ("key,path,class;key,path,class")."""
    if not stack:
        return "", ""
    parts = stack.split(";")[-1].split(",")
    return (parts[-2], parts[-1]) if len(parts) >= 3 else ("", "")


def _arg(a: Mapping[str, Any]) -> Any:
    (kind, v), = a.items()
    if kind == "as_tensor":
        return Value(v["name"])
    if kind == "as_tensors":
        return [Value(t["name"]) for t in v]
    if kind == "as_optional_tensors":
        return [Value(t["as_tensor"]["name"]) if "as_tensor" in t else None for t in v]
    if kind == "as_none":
        return None
    if kind in ("as_int", "as_ints", "as_float", "as_floats", "as_bool", "as_bools",
                "as_string", "as_strings"):
        return v
    if kind == "as_sym_int":
        return SymInt(v.get("as_name", "?")) if isinstance(v, dict) else SymInt("?")
    if kind == "as_sym_ints":
        return [SymInt(s.get("as_name", "?")) if "as_name" in s else s.get("as_int")
                for s in v]
    return _Opaque(kind)


@dataclass(frozen=True)
class _Opaque:
    """An argument of a kind netmorph does not read (a device, a dtype, …)."""

    kind: str


# -- tracing a module ------------------------------------------------------------------------

def trace(model: torch.nn.Module, example: torch.Tensor, source: str = "the model") -> Program:
    """``torch.export.export`` of ``model`` (in eval mode) on ``example``, as a Program."""
    model = model.eval()
    try:
        with quiet_torch():
            ep = torch.export.export(model, (example,), strict=False)
    except Exception as exc:  # torch raises many kinds; each becomes one line
        first = next((ln for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        hint = ("; the model's control flow depends on its input's values, and netmorph "
                "imports graphs that are the same for every input") \
            if "data-dependent" in str(exc) else ""
        raise CheckpointError(f"tracing {source} with a {'×'.join(map(str, example.shape))} "
                              f"input failed: {first[:300]}{hint}") from None
    return from_exported(ep, source)


def from_exported(ep: Any, source: str) -> Program:
    """A Program from an in-memory ``torch.export.ExportedProgram``."""
    from torch.export.graph_signature import InputKind, OutputKind

    sig = ep.graph_signature
    values: dict[str, str] = {}
    user_inputs = []
    for spec in sig.input_specs:
        if spec.kind == InputKind.USER_INPUT:
            user_inputs.append(spec.arg.name)
        elif spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
            values[spec.arg.name] = spec.target
        else:
            raise CheckpointError(f"{source}: an input of kind {spec.kind.name} is not "
                                  "supported")
    outputs = [s.arg.name for s in sig.output_specs if s.kind == OutputKind.USER_OUTPUT]
    mutated = [s.target for s in sig.output_specs if s.kind == OutputKind.BUFFER_MUTATION]
    if len(user_inputs) != 1:
        raise CheckpointError(f"{source}: {len(user_inputs)} inputs; netmorph imports models "
                              "of one image input")
    if len(outputs) != 1:
        raise CheckpointError(f"{source}: the model returns {len(outputs)} values; netmorph "
                              "imports classifiers that return one (N, classes) tensor")
    tensors = {k: v.detach().cpu() for k, v in {**ep.state_dict, **ep.constants}.items()
               if isinstance(v, torch.Tensor)}
    getitems: dict[str, tuple[str, int]] = {}
    nodes = list(ep.graph.nodes)
    for n in nodes:
        if n.op == "call_function" and getattr(n.target, "__name__", "") == "getitem":
            getitems[n.name] = (n.args[0].name, n.args[1])
    calls = []
    x = user_inputs[0]
    shape: tuple[int | None, ...] = ()
    for n in nodes:
        if n.op == "placeholder" and n.name == x:
            val = n.meta.get("val")
            shape = tuple(d if isinstance(d, int) else None for d in val.shape)
        if n.op != "call_function" or n.name in getitems:
            continue
        target = str(n.target)
        schema = getattr(n.target, "_schema", None)
        names = [a.name for a in schema.arguments] if schema is not None else \
            [f"arg{i}" for i in range(len(n.args))]
        args = {names[i]: _fx_arg(a) for i, a in enumerate(n.args)}
        args.update({k: _fx_arg(v) for k, v in n.kwargs.items()})
        outs: tuple[str, ...] = (n.name,)
        users = [(idx, g) for g, (src, idx) in getitems.items() if src == n.name]
        if users:
            width = max(i for i, _ in users) + 1
            slots = [""] * width
            for i, g in users:
                slots[i] = g
            outs = tuple(slots)
        stack = n.meta.get("nn_module_stack") or {}
        path, mtype = "", ""
        if stack:
            path, cls = list(stack.values())[-1]
            mtype = cls if isinstance(cls, str) else f"{cls.__module__}.{cls.__qualname__}"
        calls.append(Call(n.name, target, args, outs, path, mtype))
    return Program(calls, x, shape, outputs[0], values, tensors, source, mutated)


def _fx_arg(a: Any) -> Any:
    if isinstance(a, torch.fx.Node):
        val = a.meta.get("val")
        if isinstance(val, torch.SymInt):
            return SymInt(a.name)
        return Value(a.name)
    if isinstance(a, (list, tuple)):
        return [_fx_arg(v) for v in a]
    if isinstance(a, (int, float, bool, str)) or a is None:
        return a
    return _Opaque(type(a).__name__)


# -- running a program's own calls (the reference an import is checked against) -------------

def run(program: Program, x: torch.Tensor) -> torch.Tensor:
    """The program's output on ``x``, computed by calling its ATen ops as recorded (only
    ``torch.ops.aten`` ops; a symbolic size is the batch size). ``conversion.py`` accepts
    only graphs of known ops, so this runs nothing but those."""
    env: dict[str, Any] = {program.input: x}
    for k, name in program.values.items():
        env[k] = program.tensors[name].to(x.dtype) if program.tensors[name].is_floating_point() \
            else program.tensors[name]

    def resolve(a: Any) -> Any:
        if isinstance(a, Value):
            return env[a.name]
        if isinstance(a, SymInt):
            return x.shape[0]
        if isinstance(a, list):
            return [resolve(v) for v in a]
        return a

    for call in program.calls:
        ns, op, overload = call.target.split(".")
        if ns != "aten":
            raise CheckpointError(f"'{program.source}': cannot run {call.target}")
        if op.startswith("_assert") or op.startswith("sym_"):
            continue
        fn = getattr(getattr(torch.ops.aten, op), overload)
        out = fn(**{k: resolve(v) for k, v in call.args.items()})
        outs = out if isinstance(out, (tuple, list)) else (out,)
        for name, v in zip(call.outputs, outs, strict=False):
            if name:
                env[name] = v
    return env[program.output]
