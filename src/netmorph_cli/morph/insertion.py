"""The one module-insertion engine: a module in place of a site of a network, exactly.

A **site** is what a module replaces: a stride-1 conv, a block's identity shortcut, a
share of one (a preset's TYPE-II split 0.5·I + 0.5·I of the shortcut), or the identity at a
node's output (``site_after``: the paper's deepening, a module where there was no layer, its
nodes inserted right after the node and its output taking the node's place). ``Edit.insert``
solves the site's filter G into the module (``solve.morph_filter``, the one solver entry;
every solve of one morph draws from one stream seeded by the morph's seed), builds the
module's nodes (``module_nodes``, with the BN and activation layers a ``BlobLayers`` asks
for) and wires them in place of the site (``wire``). ``morph.morph_at`` and
``morph.morph_after`` and ``morph.morph_preset`` only choose the sites, the module and
the names.

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
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import MorphError
from ..network.description import Network, as_pair, node, validate_description
from ..network.history import MorphRecord
from ..network.presets import BlobLayers
from ..solver.budget import ProgressFn, SolveLimits
from ..solver.groups import solve_groups
from ..solver.rng import SeededRng
from ..solver.solve import SolveResult, morph_filter
from ..spec.graph import ModuleGraph


def index_of(desc: dict[str, Any]) -> dict[str, int]:
    """Position of every node of a description, by name."""
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


def put(tensors: dict[str, torch.Tensor], name: str, values: dict[str, torch.Tensor],
        dtype: torch.dtype) -> None:
    """Store ``values`` as the tensors ``name.*``, floating ones in ``dtype``."""
    for k, v in values.items():
        tensors[f"{name}.{k}"] = v if v.dtype == torch.long else v.to(dtype).contiguous()


@dataclass(frozen=True)
class Site:
    """What a module replaces: a conv node, a block's identity shortcut, a share of it, or
    the identity at a node's output (``after``)."""

    layer: str
    source: str  # node feeding the site
    weight: torch.Tensor  # G: (C_out, C_in, k, k)
    bias: torch.Tensor | None = None
    padding: tuple[int, int] = (0, 0)  # the conv's zero padding (a shortcut has none)
    join: str | None = None  # the add whose identity input is the site (None: a conv)
    share: float | None = None  # the part of the identity's coefficient taken (None: all)
    after: bool = False  # the identity at ``source``'s output: the module goes right after it
    groups: int = 1  # a grouped conv's groups: the module's convs keep them (``groups.py``)


class Edit:
    """One morph in progress: copies of the parent's description and tensors (less those
    named ``drop…``), the seeded stream every solve of the morph draws from, the solver's
    ``limits`` (a ``SolveLimits``, passed whole to ``morph_filter``) and its ``progress``."""

    def __init__(self, net: Network, seed: int, exact_bn: bool, limits: SolveLimits,
                 progress: ProgressFn | None = None, drop: str | None = None) -> None:
        self.net, self.seed, self.exact_bn = net, seed, exact_bn
        self.limits, self.progress = limits, progress
        self.desc = copy.deepcopy(net.description)
        self.tensors = {k: v for k, v in net.tensors.items()
                        if drop is None or not k.startswith(drop)}
        self.rng = SeededRng(seed, torch.float64, "cpu")

    def insert(self, site: Site, spec: ModuleGraph, prefix: str, layers: BlobLayers,
               inner_width: int | None = None) -> tuple[list[str], SolveResult, str]:
        """Solve ``site``'s filter into ``spec`` (in float64; stored in the network's
        dtype) and put the module's nodes, named ``prefix.…``, in its place. Returns the
        (parent, child) nodes to compare, the solve and the module's output node."""
        g = site.weight.detach().to(torch.float64)
        lim = self.limits
        if site.groups > 1:
            result = solve_groups(g, site.groups, spec, inner_width=inner_width,
                                  seed=self.seed, rng=self.rng, limits=lim,
                                  progress=self.progress)
        else:
            result = morph_filter(g, spec, inner_width=inner_width, seed=self.seed,
                                  rng=self.rng, tol=lim.tol, max_sweeps=lim.max_sweeps,
                                  method=lim.method, max_seconds=lim.max_seconds,
                                  max_memory=lim.max_memory, progress=self.progress)
        nodes, out = module_nodes(spec, result.filters, site, prefix, layers, self.tensors,
                                  self.net.dtype, self.exact_bn)
        taken = index_of(self.desc)
        clash = [n["name"] for n in nodes if n["name"] in taken and n["name"] != site.layer]
        if clash:
            raise MorphError(f"module node {clash[0]!r} already exists in the network")
        return wire(self.desc, site, nodes, out), result, out

    def finish(self, entry: MorphRecord) -> Network:
        return finish(self.net, self.desc, self.tensors, entry)


def finish(net: Network, desc: dict[str, Any], tensors: dict[str, torch.Tensor],
           entry: MorphRecord) -> Network:
    """The checked child of ``net``: ``desc`` and ``tensors``, ``entry`` in its history."""
    validate_description(desc)
    old = net.nodes
    # BN layers this morph added: identity in eval mode on (mean 0, var 1) until
    # ``calibrate`` sets them from data for training mode
    entry = entry.with_(new_bn=tuple(n["name"] for n in desc["nodes"]
                                     if n["op"] == "bn" and n["name"] not in old),
                        added=added_tensors(net.tensors, tensors))
    child = Network(desc, tensors, [*net.history, entry.to_json()], dict(net.meta))
    return child.check()


def added_tensors(parent: Mapping[str, torch.Tensor], child: Mapping[str, torch.Tensor]
                  ) -> tuple[str, ...]:
    """The child's tensors a morph created: names the parent lacks, and tensors of the
    parent's shape whose values changed. A kernel grown by zero padding (1c1 → 3c1: another
    shape, the parent's values at its centre) keeps its trained values and is not added."""
    return tuple(k for k, t in child.items()
                 if k not in parent or (parent[k].shape == t.shape
                                        and not torch.equal(parent[k], t)))


def module_nodes(spec: ModuleGraph, filters: dict[str, torch.Tensor], site: Site, prefix: str,
                 layers: BlobLayers, tensors: dict[str, torch.Tensor], dtype: torch.dtype,
                 exact_bn: bool) -> tuple[list[dict[str, Any]], str]:
    """Nodes realizing ``spec`` with one input padding and centre-cropping joins (their
    tensors go to ``tensors``); returns them and the module's output node."""
    def name(n: str) -> str:
        return f"{prefix}.{layers.names.get(n, n)}"

    k_eff = spec.effective_kernel()
    k = site.weight.shape[2:]
    # the layer's own padding plus the module's margin beyond its kernel: G̃ is G with a
    # zero ring of that margin, so over this input it reads exactly what G read
    nodes = [node(name("input_pad"), "pad", [site.source],
                  pad=[site.padding[0] + (k_eff[0] - k[0]) // 2,
                       site.padding[1] + (k_eff[1] - k[1]) // 2])]
    blob_out = {spec.source: nodes[0]["name"]}
    sink_edges = spec.in_edges[spec.sink]
    for b in spec.blobs[1:]:
        ins = []
        for e in spec.in_edges[b]:
            f = filters[e.name]
            has_bias = site.bias is not None and e is sink_edges[0]
            nodes.append(node(name(e.name), "conv", [blob_out[e.src]],
                              **{"in": f.shape[1] * site.groups, "out": f.shape[0]},
                              kernel=list(e.kernel), groups=site.groups, bias=has_bias))
            put(tensors, name(e.name), {"weight": f}, dtype)
            if has_bias:
                assert site.bias is not None
                put(tensors, name(e.name), {"bias": site.bias}, dtype)
            ins.append(name(e.name))
        out = ins[0]
        if len(ins) > 1:
            out = name("output") if b == spec.sink else name(f"{b}_sum")
            nodes.append(node(out, "add", ins, coeffs=[1.0] * len(ins)))
        width = filters[spec.in_edges[b][0].name].shape[0]
        inner = b != spec.sink
        if (layers.bn and inner) or (layers.sink_bn and not inner):
            nodes.append(node(name(f"{b}_bn"), "bn", [out], channels=width))
            put(tensors, name(f"{b}_bn"), identity_bn(width, nodes[-1]["eps"], exact_bn), dtype)
            out = name(f"{b}_bn")
        if layers.act == "prelu" and inner:
            nodes.append(node(name(f"{b}_act"), "prelu", [out], channels=width))
            put(tensors, name(f"{b}_act"), {"weight": torch.ones(width)}, dtype)
            out = name(f"{b}_act")
        blob_out[b] = out
    return nodes, blob_out[spec.sink]


def wire(desc: dict[str, Any], site: Site, nodes: list[dict[str, Any]], out: str
         ) -> list[str]:
    """Put ``nodes`` (output ``out``) in place of ``site``; returns the pair to compare."""
    if site.after:  # right after the source; its consumers (not the module's pad) read out
        for n in desc["nodes"]:  # (never the network's output: a vector, not a site)
            n["inputs"] = [out if x == site.source else x for x in n["inputs"]]
        pos = 0 if site.source == "input" else index_of(desc)[site.source] + 1
        desc["nodes"][pos:pos] = nodes
        return [site.source, out]
    if site.join is None:  # a conv: the module takes its place and its consumers
        i = index_of(desc)[site.layer]
        desc["nodes"][i:i + 1] = nodes
        for n in desc["nodes"]:
            n["inputs"] = [out if x == site.layer else x for x in n["inputs"]]
        if desc["output"] == site.layer:
            desc["output"] = out
        return [site.layer, out]
    pos = index_of(desc)[site.join]
    desc["nodes"][pos:pos] = nodes
    add = desc["nodes"][pos + len(nodes)]
    sc = add["shortcut"]
    if site.share is None:  # the whole identity: the module's output takes its place
        add["inputs"][sc], add["coeffs"][sc], add["shortcut"] = out, 1.0, None
    else:  # TYPE-II: the module joins beside what is left of the identity, if anything
        add["inputs"].append(out)
        add["coeffs"].append(1.0)
        add["coeffs"][sc] -= site.share
        if add["coeffs"][sc] == 0:
            del add["inputs"][sc], add["coeffs"][sc]
            add["shortcut"] = None
    return [site.join, site.join]


def site_at(net: Network, layer: str) -> Site:
    """The site ``layer`` names: a stride-1 conv (grouped and depthwise ones too: the module
    keeps the groups), or ``BLOCK.shortcut``, the identity input of ``BLOCK.add``; anything
    else is refused, saying why."""
    nodes = net.nodes
    if layer in nodes and nodes[layer]["op"] == "conv":
        n = nodes[layer]
        k, s, p, d = (as_pair(n[a]) for a in ("kernel", "stride", "padding", "dilation"))
        instead = f"; insert the module after it instead (--after {layer})"
        if s != (1, 1):
            raise MorphError(f"{layer!r} is a strided conv (stride {list(s)}): a module's "
                             "convs compose to one stride-1 filter, and a strided conv's "
                             "output is a subsampled grid, which would need the module's last "
                             "conv strided (not in this version); morph the stride-1 conv "
                             f"after it, or insert the module after it (--after {layer})")
        if d != (1, 1):
            raise MorphError(f"{layer!r} is a dilated conv (dilation {list(d)}): a dilated "
                             "kernel would need dilated module convs, and the module's convs "
                             f"are not dilated{instead}")
        if k[0] % 2 == 0 or k[1] % 2 == 0:
            raise MorphError(f"{layer!r} has an even {k[0]}×{k[1]} kernel; a module's "
                             "filter is centred in its effective kernel, which needs odd "
                             f"sizes{instead}")
        return Site(layer, n["inputs"][0], net.tensors[f"{layer}.weight"],
                    net.tensors.get(f"{layer}.bias"), p, groups=n["groups"])
    m = re.fullmatch(r"(.+)\.shortcut", layer)
    if m and f"{m[1]}.add" in nodes:
        add = nodes[f"{m[1]}.add"]
        sc = add.get("shortcut")
        src = add["inputs"][sc] if sc is not None else None
        src_op = nodes.get(src, {}).get("op") if src is not None else None
        # a projection is computed inside the block; a conv or BN before it is an identity
        inside = src is not None and src.startswith(f"{m[1]}.")
        if sc is None or src_op == "shortcut_a" or inside:
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
        c = validate_description(net.description)[add["inputs"][sc]][0]
        g = add["coeffs"][sc] * torch.eye(c, dtype=torch.float64).reshape(c, c, 1, 1)
        return Site(layer, add["inputs"][sc], g, join=f"{m[1]}.add")
    if layer in nodes:
        raise MorphError(f"layer {layer!r} is a {nodes[layer]['op']}, not a conv or an "
                         f"identity shortcut; to insert a module at its output, use --after "
                         f"{layer}")
    convs = [k for k, n in nodes.items() if n["op"] == "conv"]
    raise MorphError(f"no layer {layer!r} in the network (convs: {', '.join(convs[:6])}"
                     f"{', …' if len(convs) > 6 else ''})")


def site_after(net: Network, name: str) -> Site:
    """The identity at node ``name``'s output (``input`` included): a C×C 1×1 identity
    filter, C the channels of the node's (C, H, W) output; anything else is refused."""
    shapes = validate_description(net.description)
    maps = [k for k, shape in shapes.items() if len(shape) == 3]
    if name not in shapes:
        raise MorphError(f"no node {name!r} in the network (nodes with a (C, H, W) output: "
                         f"{', '.join(maps[:6])}{', …' if len(maps) > 6 else ''})")
    if len(shapes[name]) != 3:
        raise MorphError(f"node {name!r} outputs a vector of {shapes[name][0]} features, not "
                         "a (C, H, W) map, and a module's convs need a map; insert it after "
                         f"a node before the pooling (the last one is {maps[-1]!r})")
    c = shapes[name][0]
    return Site(name, name, torch.eye(c, dtype=torch.float64).reshape(c, c, 1, 1), after=True)


def after_prefix(desc: dict[str, Any], name: str) -> str:
    """The first free name of ``NODE_after``, ``NODE_after2``, … for a module inserted after
    node ``name`` (``NODE.after`` would lie inside the node's layer)."""
    taken = index_of(desc)
    prefix, k = f"{name}_after", 1
    while any(n == prefix or n.startswith(f"{prefix}.") for n in taken):
        k += 1
        prefix = f"{name}_after{k}"
    return prefix
