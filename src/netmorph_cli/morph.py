"""Network-level morphs: the paper's ResNet presets and any layer into any module.

Every morph edits a copy of the parent's description, inserts the solved filters, checks
the result (``Network.check()``) and appends a history entry with its seed, residual and
the node pairs (parent, child) whose outputs must agree, which ``verify`` compares.

Exactness at image borders: a module replaces a conv with kernel K and zero padding p by
one zero padding at its input, p plus the module's margin beyond K, unpadded convs inside,
and joins that centre-crop every path to the common size. Each path then computes its
composed filter over the same padded input, so the module equals the layer at every pixel
(per-layer padding would not; see ``naive_module_output`` in the tests).
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass
from typing import Any

import torch

from .algebra import compose, pad_to
from .budget import ProgressFn
from .errors import MorphError
from .graph import ModuleGraph
from .limits import MAX_KERNEL
from .network import Network, as_pair, node, validate_description
from .rng import SeededRng
from .solve import conditioning, morph_filter
from .splits import decompose_type1


@dataclass(frozen=True)
class PaperPreset:
    """A preset the paper trains (Tables 1–3): a registry record."""

    name: str
    what: str  # what it does to each morphed block
    networks: tuple[str, ...]  # the paper's networks made with it


# a preset is KcJ plus any of these suffixes, in this order (odd K, J ≤ MAX_KERNEL)
PRESET_SUFFIXES = {"_2branch": "both 0.5·I halves of the shortcut are morphed, not one",
                   "_half": "only the odd-indexed blocks of each stage are morphed"}
PRESET_RE = re.compile(r"^(\d+)c(\d+)" + "".join(f"({s})?" for s in PRESET_SUFFIXES) + "$")
# the registry of the paper's presets, listed by --module's help and by errors
PRESETS: dict[str, PaperPreset] = {p.name: p for p in (
    PaperPreset("1c1", "one 0.5·I half of the identity shortcut becomes 1×1 conv → BN → "
                "PReLU → 1×1 conv → BN", ("morph20_1c1", "morph56_1c1", "morph110_1c1",
                                          "morph18_1c1")),
    PaperPreset("3c1", "as 1c1 with a 3×3 first conv", ("morph20_3c1",)),
    PaperPreset("3c3", "as 1c1 with both convs 3×3", ("morph20_3c3",)),
    PaperPreset("1c1_half", "1c1 in the odd-indexed blocks of each stage only",
                ("morph56_1c1_half", "morph110_1c1_half")),
    PaperPreset("1c1_2branch", "1c1 on both halves of the identity shortcut",
                ("morph20_1c1_2branch",)),
)}


@dataclass(frozen=True)
class Preset:
    k1: int  # kernel of the first new conv
    k2: int  # kernel of the second
    branches: int  # 1, or 2 with _2branch
    half: bool  # only odd-indexed blocks

    @classmethod
    def parse(cls, name: str) -> Preset:
        m = PRESET_RE.match(name)
        if m and any(len(k) > 4 or int(k) > MAX_KERNEL for k in (m[1], m[2])):
            shown = name if len(name) <= 40 else name[:37] + "…"
            raise MorphError(f"preset {shown!r}: kernel sizes are at most {MAX_KERNEL} "
                             "(netmorph's limit), e.g. 1c1, 3c3, 7c7")
        if not m or int(m[1]) % 2 == 0 or int(m[2]) % 2 == 0 or int(m[1]) < 1 or int(m[2]) < 1:
            grammar = "KcJ" + "".join(f"[{s}]" for s in PRESET_SUFFIXES)
            raise MorphError(f"unknown preset {name!r}: use {grammar} with odd K and J, e.g. "
                             f"{', '.join(PRESETS)}")
        # groups 3, 4: the suffixes in PRESET_SUFFIXES' order
        return cls(int(m[1]), int(m[2]), 2 if m[3] else 1, bool(m[4]))


# -- small description helpers --------------------------------------------------------------

def _index(desc: dict[str, Any]) -> dict[str, int]:
    return {n["name"]: i for i, n in enumerate(desc["nodes"])}


def identity_bn(channels: int, eps: float, exact: bool = True) -> dict[str, torch.Tensor]:
    """BN tensors that are the identity in eval mode: mean 0, var 1, gamma = sqrt(1 + eps)
    (exact), or the paper's gamma = 1 (off by a factor 1/sqrt(1 + eps) ≈ 1 − eps/2)."""
    gamma = math.sqrt(1.0 + eps) if exact else 1.0
    return {"weight": torch.full((channels,), gamma, dtype=torch.float64),
            "bias": torch.zeros(channels, dtype=torch.float64),
            "running_mean": torch.zeros(channels, dtype=torch.float64),
            "running_var": torch.ones(channels, dtype=torch.float64),
            "num_batches_tracked": torch.zeros((), dtype=torch.long)}


def _put(tensors: dict[str, torch.Tensor], name: str, values: dict[str, torch.Tensor],
         dtype: torch.dtype) -> None:
    for k, v in values.items():
        tensors[f"{name}.{k}"] = v if v.dtype == torch.long else v.to(dtype).contiguous()


def _finish(net: Network, desc: dict[str, Any], tensors: dict[str, torch.Tensor],
            entry: dict[str, Any]) -> Network:
    validate_description(desc)
    old = net.nodes
    # BN layers this morph added: identity in eval mode on (mean 0, var 1) until
    # ``calibrate`` sets them from data for training mode
    entry["new_bn"] = [n["name"] for n in desc["nodes"]
                       if n["op"] == "bn" and n["name"] not in old]
    child = Network(desc, tensors, [*net.history, entry], dict(net.meta))
    return child.check()


# -- presets ---------------------------------------------------------------------------

def resnet_blocks(desc: dict[str, Any]) -> list[tuple[int, int]]:
    """(stage, index) of every residual block, from its ``layerL.I.add`` join."""
    blocks = []
    for n in desc["nodes"]:
        m = re.fullmatch(r"layer(\d+)\.(\d+)\.add", n["name"])
        if m and n["op"] == "add":
            blocks.append((int(m[1]), int(m[2])))
    return blocks


def morph_preset(net: Network, preset: str, *, seed: int = 0, exact_bn: bool = True
                 ) -> Network:
    """The paper's KcJ morphs over a ResNet: in every block but the first of each stage
    (odd-indexed blocks only with ``_half``), split the identity shortcut into 0.5·I + 0.5·I
    and turn one half (both with ``_2branch``) into conv K×K → BN → PReLU → conv J×J → BN.
    Blocks already morphed grow their kernels by zero padding (1c1 → 3c1 → 3c3) or gain the
    second branch; nothing is ever shrunk."""
    p = Preset.parse(preset)
    desc = copy.deepcopy(net.description)
    tensors = dict(net.tensors)
    dtype = net.dtype
    blocks = [(s, i) for s, i in resnet_blocks(desc) if i >= 1 and (not p.half or i % 2 == 1)]
    if not blocks:
        raise MorphError("no residual block to morph: the network has no layerL.I.add joins "
                         "beyond the first block of each stage")
    _refuse_module_branches(desc, blocks, p, preset)
    rng = SeededRng(seed, torch.float64, "cpu")
    worst, cond = 0.0, 0.0
    compare = []
    for stage, i in blocks:
        prefix = f"layer{stage}.{i}."
        res, c = _morph_block(desc, tensors, prefix, p, rng, dtype, exact_bn)
        worst, cond = max(worst, res), max(cond, c)
        compare.append([f"{prefix}add", f"{prefix}add"])
    entry = {"op": "preset", "preset": preset, "seed": seed, "residual": worst,
             "condition": cond, "blocks": [f"layer{s}.{i}" for s, i in blocks],
             "compare": compare, "exact_bn": exact_bn}
    desc["arch"] = arch_name(desc["arch"], preset=preset)
    return _finish(net, desc, tensors, entry)


def arch_name(arch: str, *, preset: str | None = None, module: str | None = None,
              at: str | None = None) -> str:
    """The architecture name after a morph: ``resnet20`` → ``resnet20+1c1``; a later preset
    replaces the earlier one where it stands (1c1 → 3c1 grows the same branches), a module
    morph appends ``NAME@LAYER``: ``resnet20+1c1+D@layer1.0.conv1``. Parts recorded by
    older versions (``+module``) are kept as they are."""
    base, *parts = arch.split("+")
    if preset is not None:
        i = next((k for k, part in enumerate(parts) if PRESET_RE.match(part)), None)
        if i is None:
            parts.append(preset)
        else:
            parts[i] = preset
    if module is not None:
        token = _ARCH_UNSAFE.sub("_", module) or "module"
        parts.append(f"{token}@{_ARCH_UNSAFE.sub('_', at)}" if at else token)
    return "+".join([base, *parts])


_ARCH_UNSAFE = re.compile(r"[+\s]+")  # '+' separates the parts of an arch name


def _branches(desc: dict[str, Any], prefix: str) -> list[int]:
    """Branch numbers (1, 2) of a block's preset branches, found by their input pad."""
    idx = _index(desc)
    return [b for b in (1, 2) if f"{prefix}morph{b}.pad" in idx]


def _refuse_module_branches(desc: dict[str, Any], blocks: list[tuple[int, int]], p: Preset,
                            preset: str) -> None:
    """A preset grows the plain K×K convs of the branches it made; where a module morph
    replaced one of them (its nodes are then ``…morphB.convN.*``), say so up front."""
    nodes = {n["name"]: n for n in desc["nodes"]}
    stuck = []
    for stage, i in blocks:
        prefix = f"layer{stage}.{i}."
        for b in _branches(desc, prefix)[:p.branches]:
            stuck += [f"{prefix}morph{b}.{c}" for c in ("conv1", "conv2")
                      if nodes.get(f"{prefix}morph{b}.{c}", {}).get("op") != "conv"]
    if stuck:
        which = ", ".join(repr(c) for c in stuck[:4]) + (", …" if len(stuck) > 4 else "")
        raise MorphError(
            f"preset {preset!r} cannot grow {which}: a module morph replaced "
            f"{'that conv' if len(stuck) == 1 else 'those convs'} of the preset branch "
            f"(nodes '{stuck[0]}.*'), and presets only grow the plain K×K convs of their "
            "branches. Apply presets before module morphs, or morph that layer further with "
            "--module SPEC.json --at LAYER")


def _morph_block(desc: dict[str, Any], tensors: dict[str, torch.Tensor], prefix: str,
                 p: Preset, rng: SeededRng, dtype: torch.dtype, exact_bn: bool
                 ) -> tuple[float, float]:
    """Morph one block; returns the worst relative residual of its splits and the worst
    condition number of its new factors (``solve.conditioning``; 0 when nothing is new)."""
    idx = _index(desc)
    add = desc["nodes"][idx[f"{prefix}add"]]
    existing = _branches(desc, prefix)
    for b in existing[:p.branches]:
        _grow_branch(desc, tensors, f"{prefix}morph{b}.", p.k1, p.k2)
    new = [b for b in range(1, p.branches + 1) if b not in existing]
    if not new:
        return 0.0, 0.0
    sc = add.get("shortcut")
    if sc is None:
        raise MorphError(f"block {prefix[:-1]!r} has no identity shortcut left to morph")
    x = add["inputs"][sc]
    src = desc["nodes"][idx[x]] if x in idx else None
    if src is not None and src["op"] in ("conv", "bn", "shortcut_a"):
        raise MorphError(f"block {prefix[:-1]!r} has a projection shortcut, not an identity")
    c = add["coeffs"][sc]
    keep_identity = p.branches == 1
    share = c / 2 if keep_identity else c / len(new)
    width = desc["nodes"][idx[f"{prefix}bn2"]]["channels"]
    worst, cond = 0.0, 0.0
    pos = idx[f"{prefix}add"]
    for b in new:
        g = share * torch.eye(width, dtype=torch.float64).reshape(width, width, 1, 1)
        f1, f2, _ = decompose_type1(g, (p.k1, p.k1), (p.k2, p.k2), width, rng, tol=1e-12)
        kk = p.k1 + p.k2 - 1
        err = float(torch.linalg.vector_norm(compose(f2, f1) - pad_to(g, (kk, kk))))
        worst = max(worst, err / float(torch.linalg.vector_norm(g)))
        cond = max(cond, conditioning(f1), conditioning(f2))
        bp = f"{prefix}morph{b}."
        margin = (p.k1 - 1) // 2 + (p.k2 - 1) // 2
        nodes = [
            node(f"{bp}pad", "pad", [x], pad=[margin, margin]),
            node(f"{bp}conv1", "conv", [f"{bp}pad"], **{"in": width, "out": width},
                 kernel=[p.k1, p.k1]),
            node(f"{bp}bn1", "bn", [f"{bp}conv1"], channels=width),
            node(f"{bp}prelu", "prelu", [f"{bp}bn1"], channels=width),
            node(f"{bp}conv2", "conv", [f"{bp}prelu"], **{"in": width, "out": width},
                 kernel=[p.k2, p.k2]),
            node(f"{bp}bn2", "bn", [f"{bp}conv2"], channels=width),
        ]
        desc["nodes"][pos:pos] = nodes
        pos += len(nodes)
        _put(tensors, f"{bp}conv1", {"weight": f1}, dtype)
        _put(tensors, f"{bp}conv2", {"weight": f2}, dtype)
        eps = nodes[2]["eps"]
        _put(tensors, f"{bp}bn1", identity_bn(width, eps, exact_bn), dtype)
        _put(tensors, f"{bp}bn2", identity_bn(width, eps, exact_bn), dtype)
        _put(tensors, f"{bp}prelu", {"weight": torch.ones(width)}, dtype)
        add["inputs"].append(f"{bp}bn2")
        add["coeffs"].append(1.0)
    if keep_identity:
        add["coeffs"][sc] = c / 2
    else:
        del add["inputs"][sc], add["coeffs"][sc]
        add["shortcut"] = None
    return worst, cond


def _grow_branch(desc: dict[str, Any], tensors: dict[str, torch.Tensor], bp: str, k1: int,
                 k2: int) -> None:
    """Grow a branch's kernels to k1/k2 by zero padding and widen its input padding: exact."""
    idx = _index(desc)
    for conv, k in (("conv1", k1), ("conv2", k2)):
        n = desc["nodes"][idx[f"{bp}{conv}"]]
        old = n["kernel"][0]
        if k < old:
            raise MorphError(f"{bp}{conv} is already {old}×{old}: presets only grow kernels "
                             f"(asked for {k}×{k})")
        n["kernel"] = [k, k]
        key = f"{bp}{conv}.weight"
        tensors[key] = pad_to(tensors[key], (k, k)).contiguous()
    margin = (k1 - 1) // 2 + (k2 - 1) // 2
    desc["nodes"][idx[f"{bp}pad"]]["pad"] = [margin, margin]


# -- ReLU → PReLU ------------------------------------------------------------------------

def prelu_all(net: Network) -> Network:
    """Replace every ReLU by a PReLU with slope 0, which computes the same function."""
    desc = copy.deepcopy(net.description)
    shapes = validate_description(desc)
    tensors = dict(net.tensors)
    dtype = net.dtype
    replaced = []
    for i, n in enumerate(desc["nodes"]):
        if n["op"] == "relu":
            c = shapes[n["inputs"][0]][0]
            desc["nodes"][i] = node(n["name"], "prelu", n["inputs"], channels=c)
            _put(tensors, n["name"], {"weight": torch.zeros(c)}, dtype)
            replaced.append(n["name"])
    if not replaced:
        raise MorphError("the network has no ReLU to replace")
    entry = {"op": "prelu_all", "replaced": len(replaced), "residual": 0.0,
             "compare": [[desc["output"], desc["output"]]]}
    return _finish(net, desc, tensors, entry)


# -- any layer into any module ---------------------------------------------------------

@dataclass(frozen=True)
class _Site:
    """What a morph replaces: a conv node, or the identity input of a block's join."""

    layer: str
    source: str  # node feeding the layer
    weight: torch.Tensor  # G: (C_out, C_in, k, k)
    bias: torch.Tensor | None
    conv_index: int | None  # position of the conv node (None for a shortcut)
    add_name: str | None  # the join whose identity input is replaced
    padding: tuple[int, int] = (0, 0)  # the layer's zero padding (a shortcut has none)


def _site(net: Network, layer: str) -> _Site:
    nodes = net.nodes
    if layer in nodes and nodes[layer]["op"] == "conv":
        n = nodes[layer]
        k, s, p, d = (as_pair(n[a]) for a in ("kernel", "stride", "padding", "dilation"))
        if s != (1, 1):
            raise MorphError(f"{layer!r} is a strided conv (stride {list(s)}); only stride-1 "
                             "convs can be morphed in this version")
        if d != (1, 1):
            raise MorphError(f"{layer!r} is a dilated conv (dilation {list(d)}); not supported")
        if n["groups"] != 1:
            raise MorphError(f"{layer!r} is a grouped conv ({n['groups']} groups); "
                             "not supported")
        if k[0] % 2 == 0 or k[1] % 2 == 0:
            raise MorphError(f"{layer!r} has an even {k[0]}×{k[1]} kernel; a module's "
                             "filter is centred in its effective kernel, which needs odd "
                             "sizes")
        bias = net.tensors.get(f"{layer}.bias")
        return _Site(layer, n["inputs"][0], net.tensors[f"{layer}.weight"], bias,
                     _index(net.description)[layer], None, p)
    m = re.fullmatch(r"(.+)\.shortcut", layer)
    if m and f"{m[1]}.add" in nodes:
        add = nodes[f"{m[1]}.add"]
        sc = add.get("shortcut")
        src_op = nodes.get(add["inputs"][sc], {}).get("op") if sc is not None else None
        if sc is None or src_op in ("conv", "bn", "shortcut_a"):
            if sc is None:  # a morph replaced it (its nodes are named "{layer}.…")
                what = "no identity edge left (a morph already replaced it)"
            elif src_op == "shortcut_a":
                what = ("a strided option-A shortcut (subsample and zero-pad), which "
                        "cannot be morphed")
            else:
                proj = [k for k in nodes if k.startswith(f"{layer}.") or k == layer]
                what = (f"a projection ({', '.join(proj)}); projection shortcuts are "
                        "strided and cannot be morphed")
            raise MorphError(f"{layer!r} is not an identity shortcut: it has {what}")
        shapes = validate_description(net.description)
        c = shapes[add["inputs"][sc]][0]
        g = add["coeffs"][sc] * torch.eye(c, dtype=torch.float64).reshape(c, c, 1, 1)
        return _Site(layer, add["inputs"][sc], g, None, None, f"{m[1]}.add")
    if layer in nodes:
        raise MorphError(f"layer {layer!r} is a {nodes[layer]['op']}, not a conv or an "
                         "identity shortcut")
    convs = [k for k, n in nodes.items() if n["op"] == "conv"]
    raise MorphError(f"no layer {layer!r} in the network (convs: {', '.join(convs[:6])}"
                     f"{', …' if len(convs) > 6 else ''})")


def morph_at(net: Network, spec: ModuleGraph, layer: str, *, seed: int = 0, bn: bool = True,
             act: str = "prelu", inner_width: int | None = None, exact_bn: bool = True,
             tol: float = 1e-10, max_sweeps: int = 60, max_seconds: float | None = None,
             max_memory: int | None = None, progress: ProgressFn | None = None) -> Network:
    """Replace the stride-1 conv (or identity shortcut) ``layer`` by the module ``spec``.

    The filters are solved in float64 (``solve.morph_filter``) and stored in the network's
    dtype. Each inner blob gets BN → PReLU (identity at insertion) unless ``bn=False`` /
    ``act="none"``. ``max_sweeps``, ``max_seconds``, ``max_memory`` (bytes) and
    ``progress`` are the solve's limits (see ``morph_filter``): the memory estimate is
    checked before anything is allocated, and nothing is changed when the solve fails.
    """
    if act not in ("prelu", "none"):
        raise MorphError(f"unknown activation {act!r} (prelu or none)")
    site = _site(net, layer)
    for name in [*(e.name for e in spec.edges), *spec.blobs]:
        if "." in name:
            raise MorphError(f"spec name {name!r} contains '.', which layer names reserve")
    g = site.weight.detach().to(torch.float64)
    result = morph_filter(g, spec, inner_width=inner_width, seed=seed, tol=tol,
                          max_sweeps=max_sweeps, max_seconds=max_seconds,
                          max_memory=max_memory, progress=progress)
    desc = copy.deepcopy(net.description)
    tensors = {k: v for k, v in net.tensors.items() if not k.startswith(f"{layer}.")}
    dtype = net.dtype
    new_nodes, out = _module_nodes(spec, result.filters, site, layer, bn, act, tensors, dtype,
                                   exact_bn)
    taken = _index(desc)
    clash = [n["name"] for n in new_nodes if n["name"] in taken and n["name"] != layer]
    if clash:
        raise MorphError(f"module node {clash[0]!r} already exists in the network")
    if site.conv_index is not None:
        desc["nodes"][site.conv_index:site.conv_index + 1] = new_nodes
        for n in desc["nodes"]:
            n["inputs"] = [out if i == layer else i for i in n["inputs"]]
        if desc["output"] == layer:
            desc["output"] = out
        compare = [[layer, out]]
    else:
        assert site.add_name is not None
        pos = _index(desc)[site.add_name]
        desc["nodes"][pos:pos] = new_nodes
        add = desc["nodes"][pos + len(new_nodes)]
        sc = add["shortcut"]
        add["inputs"][sc], add["coeffs"][sc], add["shortcut"] = out, 1.0, None
        compare = [[site.add_name, site.add_name]]
    cond = max(conditioning(f) for f in result.filters.values())
    entry = {"op": "module", "module": spec.name or "module", "spec": spec.to_spec(),
             "at": layer, "seed": seed, "residual": result.residual, "condition": cond,
             "sweeps": result.sweeps,
             "methods": result.methods, "output": out, "compare": compare,
             "exact_bn": exact_bn, "bn": bn, "act": act}
    desc["arch"] = arch_name(desc["arch"], module=spec.name or "module", at=layer)
    return _finish(net, desc, tensors, entry)


def _module_nodes(spec: ModuleGraph, filters: dict[str, torch.Tensor], site: _Site, layer: str,
                  bn: bool, act: str, tensors: dict[str, torch.Tensor], dtype: torch.dtype,
                  exact_bn: bool) -> tuple[list[dict[str, Any]], str]:
    """Nodes realizing ``spec`` with one input padding and centre-cropping joins."""
    k_eff = spec.effective_kernel()
    pre = f"{layer}."
    k = site.weight.shape[2:]
    # the layer's own padding plus the module's margin beyond its kernel: G̃ is G with a
    # zero ring of that margin, so over this input it reads exactly what G read
    nodes = [node(f"{pre}input_pad", "pad", [site.source],
                  pad=[site.padding[0] + (k_eff[0] - k[0]) // 2,
                       site.padding[1] + (k_eff[1] - k[1]) // 2])]
    blob_out = {spec.source: f"{pre}input_pad"}
    sink_edges = spec.in_edges[spec.sink]
    for b in spec.blobs[1:]:
        ins = []
        for e in spec.in_edges[b]:
            f = filters[e.name]
            has_bias = site.bias is not None and e is sink_edges[0]
            nodes.append(node(f"{pre}{e.name}", "conv", [blob_out[e.src]],
                              **{"in": f.shape[1], "out": f.shape[0]}, kernel=list(e.kernel),
                              bias=has_bias))
            _put(tensors, f"{pre}{e.name}", {"weight": f}, dtype)
            if has_bias:
                assert site.bias is not None
                _put(tensors, f"{pre}{e.name}", {"bias": site.bias}, dtype)
            ins.append(f"{pre}{e.name}")
        name = ins[0]
        if len(ins) > 1:
            name = f"{pre}output" if b == spec.sink else f"{pre}{b}_sum"
            nodes.append(node(name, "add", ins, coeffs=[1.0] * len(ins)))
        if b != spec.sink:
            width = filters[spec.in_edges[b][0].name].shape[0]
            if bn:
                nodes.append(node(f"{pre}{b}_bn", "bn", [name], channels=width))
                _put(tensors, f"{pre}{b}_bn", identity_bn(width, nodes[-1]["eps"], exact_bn),
                     dtype)
                name = f"{pre}{b}_bn"
            if act == "prelu":
                nodes.append(node(f"{pre}{b}_act", "prelu", [name], channels=width))
                _put(tensors, f"{pre}{b}_act", {"weight": torch.ones(width)}, dtype)
                name = f"{pre}{b}_act"
        blob_out[b] = name
    return nodes, blob_out[spec.sink]


# -- one entry point for the CLI -----------------------------------------------------------

def is_spec(module: str) -> bool:
    """``--module`` names a spec file (``*.json`` or an existing file), else a preset."""
    from pathlib import Path

    return module.endswith(".json") or Path(module).is_file()


def morph_network(parent: Network, module: str, *, at: str | None = None, seed: int = 0,
                  prelu: bool = False, bn: bool = True, act: str = "prelu",
                  exact_bn: bool = True, dtype: torch.dtype | None = None,
                  parent_sha256: str | None = None, max_sweeps: int = 60,
                  max_seconds: float | None = None, max_memory: int | None = None,
                  progress: ProgressFn | None = None) -> Network:
    """Morph ``parent`` with a preset or a spec file (at ``at``), optionally replacing its
    ReLUs by PReLUs first and casting it to ``dtype``; records the lineage in ``meta``.
    The solver limits (``max_sweeps``, ``max_seconds``, ``max_memory`` in bytes,
    ``progress``) apply to spec morphs (see ``morph_at``)."""
    from .flops import count_flops
    from .spec import load_spec

    net = parent.to(dtype) if dtype is not None else parent
    if is_spec(module):
        if at is None:
            raise MorphError("--module SPEC.json needs --at LAYER (the conv or identity "
                             "shortcut to replace)")
        spec = load_spec(module)
    elif at is not None:
        raise MorphError(f"--at applies to spec files; preset {module!r} places itself")
    if prelu:
        net = prelu_all(net)
    if is_spec(module):
        assert at is not None
        child = morph_at(net, spec, at, seed=seed, bn=bn, act=act, exact_bn=exact_bn,
                         max_sweeps=max_sweeps, max_seconds=max_seconds, max_memory=max_memory,
                         progress=progress)
    else:
        child = morph_preset(net, module, seed=seed, exact_bn=exact_bn)
    parent_ref = {"arch": parent.description.get("arch"),
                  "flops": count_flops(parent.description), "sha256": parent_sha256}
    child.meta["parent"] = parent_ref
    child.meta.setdefault("root", parent.meta.get("root") or
                          {k: parent_ref[k] for k in ("arch", "flops")})
    return child
