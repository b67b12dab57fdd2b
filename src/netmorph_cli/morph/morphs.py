"""Network-level morphs: any layer into any module, the paper's presets, ReLU → PReLU.

Both morphs go through one engine (``insertion.py``: a site, the solver entry, the node
builder, the wiring) and differ only in the sites they choose:

- ``morph_at(net, spec, layer)``: the module ``spec`` in place of one stride-1 conv or
  identity shortcut (``--module SPEC --at LAYER``);
- ``morph_after(net, spec, node)``: the module where there is no layer (the paper's
  deepening): the identity at ``node``'s (C, H, W) output becomes ``spec``, whose nodes,
  named ``NODE_after.…`` (``NODE_after2.…`` when taken), go right after ``node`` and whose
  output feeds all of ``node``'s consumers (``--module SPEC --after NODE``);
- ``morph_preset(net, preset)``: a preset is data (``presets.py``: a branch module, a
  placement rule, a shortcut split); its branch goes at a share of the identity shortcut
  of every block it places itself in, named ``layerL.I.morphB.*``. Branches an earlier
  preset made grow their kernels by zero padding instead (1c1 → 3c1 → 3c3).

``morph_network`` is the library call behind ``netmorph morph``: a dtype cast and ReLU →
PReLU if asked, the morph, BN calibration, lineage and the quick check. Every morph edits a
copy of the parent's description, checks the result (``Network.check()``) and appends a
history entry with its seed, residual and the node pairs (parent, child) whose outputs
must agree, which ``verify`` compares.
"""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import MorphError
from ..network.description import Network, node, validate_description
from ..network.flops import count_flops
from ..network.history import MorphRecord
from ..network.presets import (
    BRANCH,
    PRESET_RE,
    PRESET_SUFFIXES,
    PRESETS,
    BlobLayers,
    NamedPreset,
    Preset,
)
from ..solver.algebra import pad_to
from ..solver.budget import ProgressFn, SolveLimits
from ..spec.graph import ModuleGraph
from .insertion import (
    Edit,
    Site,
    after_prefix,
    finish,
    identity_bn,
    index_of,
    put,
    site_after,
    site_at,
)
from .verify import VerifyReport, require_passed, verify

__all__ = ["PRESETS", "PRESET_RE", "PRESET_SUFFIXES", "BlobLayers", "NamedPreset", "Preset",
           "arch_name", "identity_bn", "morph_after", "morph_at", "morph_network",
           "morph_preset", "prelu_all", "resnet_blocks"]


def arch_name(arch: str, *, preset: str | None = None, module: str | None = None,
              at: str | None = None, after: str | None = None) -> str:
    """The architecture name after a morph: ``resnet20`` → ``resnet20+1c1``; a later preset
    replaces the earlier one where it stands (1c1 → 3c1 grows the same branches), a module
    morph appends ``NAME@LAYER`` (``resnet20+1c1+D@layer1.0.conv1``) or, inserted after a
    node, ``NAME@after:NODE`` (``resnet20+D@after:layer1.0.relu1``). Parts recorded by
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
        where = f"after:{after}" if after is not None else at
        parts.append(f"{token}@{_ARCH_UNSAFE.sub('_', where)}" if where else token)
    return "+".join([base, *parts])


_ARCH_UNSAFE = re.compile(r"[+\s]+")  # '+' separates the parts of an arch name


# -- presets: a branch module at a share of each placed block's shortcut ----------------------

def resnet_blocks(desc: dict[str, Any]) -> list[tuple[int, int]]:
    """(stage, index) of every residual block, from its ``layerL.I.add`` join."""
    blocks = []
    for n in desc["nodes"]:
        m = re.fullmatch(r"layer(\d+)\.(\d+)\.add", n["name"])
        if m and n["op"] == "add":
            blocks.append((int(m[1]), int(m[2])))
    return blocks


def morph_preset(net: Network, preset: Preset, *, seed: int = 0, exact_bn: bool = True,
                 limits: SolveLimits | None = None, progress: ProgressFn | None = None
                 ) -> Network:
    """Apply ``preset`` (see ``presets.py``) to a ResNet: in every block it places itself
    in, the identity shortcut splits into 0.5·I + 0.5·I and one half (both with
    ``_2branch``) becomes the branch module. Branches an earlier preset made grow their
    kernels by zero padding (1c1 → 3c1 → 3c3) or gain the second branch; nothing is ever
    shrunk. The solver limits are ``morph_at``'s."""
    blocks = [f"layer{s}.{i}" for s, i in resnet_blocks(net.description) if preset.places(i)]
    if not blocks:
        raise MorphError("no residual block to morph: the network has no layerL.I.add joins "
                         "beyond the first block of each stage")
    spec = preset.spec
    _refuse_module_branches(net.description, blocks, preset.name, spec, preset.branches)
    edit = Edit(net, seed, exact_bn, limits or SolveLimits(), progress)
    shapes = validate_description(edit.desc)
    worst, cond = 0.0, 0.0
    for block in blocks:
        existing = _branches(edit.desc, block)
        for b in existing[:preset.branches]:
            _grow_branch(edit, f"{block}.morph{b}", spec)
        new = [b for b in range(1, preset.branches + 1) if b not in existing]
        if not new:
            continue
        x, c = _identity(edit.desc, block)
        share = c / (len(new) + (preset.branches == 1))  # with one branch, a half stays I
        w = shapes[x][0]
        site = Site(f"{block}.shortcut", x,
                    share * torch.eye(w, dtype=torch.float64).reshape(w, w, 1, 1),
                    join=f"{block}.add", share=share)
        for b in new:  # each takes its share of what is left of the identity
            _, result, _ = edit.insert(site, spec, f"{block}.morph{b}", preset.layers)
            worst, cond = max(worst, result.residual), max(cond, *result.conditioning.values())
    entry = MorphRecord.of(op="preset", preset=preset.name, seed=seed, residual=worst,
                           condition=cond, blocks=tuple(blocks),
                           compare=tuple((f"{b}.add", f"{b}.add") for b in blocks),
                           exact_bn=exact_bn)
    edit.desc["arch"] = arch_name(edit.desc["arch"], preset=preset.name)
    return edit.finish(entry)


def _identity(desc: dict[str, Any], block: str) -> tuple[str, float]:
    """The identity input of ``block``'s join and its coefficient."""
    idx = index_of(desc)
    add = desc["nodes"][idx[f"{block}.add"]]
    sc = add.get("shortcut")
    if sc is None:
        raise MorphError(f"block {block!r} has no identity shortcut left to morph")
    x = add["inputs"][sc]
    # a projection is computed inside the block (``BLOCK.shortcut…``, ``BLOCK.downsample…``);
    # the identity may come from any node before it (a MobileNet block's input is a BN)
    if x.startswith(f"{block}.") or (x in idx and desc["nodes"][idx[x]]["op"] == "shortcut_a"):
        raise MorphError(f"block {block!r} has a projection shortcut, not an identity")
    return x, add["coeffs"][sc]


def _branches(desc: dict[str, Any], block: str) -> list[int]:
    """Branch numbers (1, 2) of a block's preset branches, found by their input pad."""
    idx = index_of(desc)
    return [b for b in (1, 2) if f"{block}.morph{b}.{BRANCH.names['input_pad']}" in idx]


def _refuse_module_branches(desc: dict[str, Any], blocks: list[str], preset: str,
                            spec: ModuleGraph, branches: int) -> None:
    """A preset grows the plain convs of the branches it made; where a module morph
    replaced one of them (its nodes are then ``…morphB.convN.*``), say so up front."""
    nodes = {n["name"]: n for n in desc["nodes"]}
    stuck = []
    for block in blocks:
        for b in _branches(desc, block)[:branches]:
            stuck += [f"{block}.morph{b}.{e.name}" for e in spec.edges
                      if nodes.get(f"{block}.morph{b}.{e.name}", {}).get("op") != "conv"]
    if stuck:
        which = ", ".join(repr(c) for c in stuck[:4]) + (", …" if len(stuck) > 4 else "")
        raise MorphError(
            f"preset {preset!r} cannot grow {which}: a module morph replaced "
            f"{'that conv' if len(stuck) == 1 else 'those convs'} of the preset branch "
            f"(nodes '{stuck[0]}.*'), and presets only grow the plain K×K convs of their "
            "branches. Apply presets before module morphs, or morph that layer further with "
            "--module SPEC.json --at LAYER")


def _grow_branch(edit: Edit, bp: str, spec: ModuleGraph) -> None:
    """Grow a branch's kernels to ``spec``'s by zero padding and widen its input padding
    by as much: exact."""
    idx = index_of(edit.desc)
    for e in spec.edges:
        n = edit.desc["nodes"][idx[f"{bp}.{e.name}"]]
        old, k = n["kernel"][0], e.kernel[0]
        if k < old:
            raise MorphError(f"{bp}.{e.name} is already {old}×{old}: presets only grow kernels "
                             f"(asked for {k}×{k})")
        n["kernel"] = [k, k]
        key = f"{bp}.{e.name}.weight"
        edit.tensors[key] = pad_to(edit.tensors[key], (k, k)).contiguous()
    margin = (spec.effective_kernel()[0] - 1) // 2
    edit.desc["nodes"][idx[f"{bp}.{BRANCH.names['input_pad']}"]]["pad"] = [margin, margin]


# -- ReLU → PReLU ------------------------------------------------------------------------

def prelu_all(net: Network) -> Network:
    """Replace every ReLU by a PReLU with slope 0, which computes the same function."""
    desc = copy.deepcopy(net.description)
    shapes = validate_description(desc)
    tensors = dict(net.tensors)
    replaced = []
    for i, n in enumerate(desc["nodes"]):
        if n["op"] == "relu":
            c = shapes[n["inputs"][0]][0]
            desc["nodes"][i] = node(n["name"], "prelu", n["inputs"], channels=c)
            put(tensors, n["name"], {"weight": torch.zeros(c)}, net.dtype)
            replaced.append(n["name"])
    if not replaced:
        raise MorphError("the network has no ReLU to replace")
    entry = MorphRecord.of(op="prelu_all", replaced=len(replaced), residual=0.0,
                           compare=((desc["output"], desc["output"]),))
    return finish(net, desc, tensors, entry)


# -- any layer into any module ---------------------------------------------------------

def morph_at(net: Network, spec: ModuleGraph, layer: str, *, seed: int = 0, bn: bool = True,
             act: str = "prelu", inner_width: int | None = None, exact_bn: bool = True,
             limits: SolveLimits | None = None, progress: ProgressFn | None = None
             ) -> Network:
    """Replace the stride-1 conv (or identity shortcut) ``layer`` by the module ``spec``.

    The filters are solved in float64 (``solve.morph_filter``) and stored in the network's
    dtype. Each inner blob gets BN → PReLU (identity at insertion) unless ``bn=False`` /
    ``act="none"``. ``limits`` (a ``SolveLimits``: time, sweeps, memory, tolerance, route)
    bound the solve and ``progress`` receives its heartbeat (see ``morph_filter``): the
    memory estimate is checked before anything is allocated, and nothing is changed when
    the solve fails.
    """
    _check_module_args(spec, act)
    edit = Edit(net, seed, exact_bn, limits or SolveLimits(), progress, drop=f"{layer}.")
    return _insert_module(edit, site_at(net, layer), spec, layer, {"at": layer}, bn, act,
                          inner_width)


def morph_after(net: Network, spec: ModuleGraph, name: str, *, seed: int = 0,
                bn: bool = True, act: str = "prelu", inner_width: int | None = None,
                exact_bn: bool = True, limits: SolveLimits | None = None,
                progress: ProgressFn | None = None) -> Network:
    """Insert the module ``spec`` where there is no layer: the identity at node ``name``'s
    output (a C×C 1×1 identity filter; C the channels of its (C, H, W) output, ``input``
    included) is morphed into ``spec`` (the paper's deepening).

    The module's nodes, named ``NODE_after.…`` (``NODE_after2.…``, … when taken), go right
    after the node; its output takes the node's place for all its consumers. The history
    entry records ``after`` (not ``at``) and the pair (node, module output) ``verify``
    compares; the arch name gains ``NAME@after:NODE``. Options as ``morph_at``'s.
    """
    _check_module_args(spec, act)
    site = site_after(net, name)
    edit = Edit(net, seed, exact_bn, limits or SolveLimits(), progress)
    return _insert_module(edit, site, spec, after_prefix(edit.desc, name), {"after": name},
                          bn, act, inner_width)


def _check_module_args(spec: ModuleGraph, act: str) -> None:
    if act not in ("prelu", "none"):
        raise MorphError(f"unknown activation {act!r} (prelu or none)")
    for name in [*(e.name for e in spec.edges), *spec.blobs]:
        if "." in name:
            raise MorphError(f"spec name {name!r} contains '.', which layer names reserve")


def _insert_module(edit: Edit, site: Site, spec: ModuleGraph, prefix: str,
                   where: dict[str, str], bn: bool, act: str, inner_width: int | None
                   ) -> Network:
    """``morph_at``/``morph_after``: solve, wire, record (``where``: ``at`` or ``after``)."""
    compare, result, out = edit.insert(site, spec, prefix, BlobLayers(bn=bn, act=act),
                                       inner_width)
    name = spec.name or "module"
    widths: dict[str, Any] = {}
    if result.widths is not None and result.widths.rules:
        widths = {"widths": result.widths.to_json(), "widths_how": result.widths.how()}
    if site.groups > 1:  # widths are one group's; the module's convs keep the groups
        how = (widths.get("widths_how") or "").replace("the layer's", "one group's")
        widths["widths_how"] = (f"{how}; " if how else "") + (
            f"per group: {site.groups} groups, kept by every conv of the module")
    entry = MorphRecord.of(op="module", module=name, spec=spec.to_spec(), **where,
                           seed=edit.seed, residual=result.residual,
                           condition=max(result.conditioning.values()), sweeps=result.sweeps,
                           methods=result.methods, output=out, **widths,
                           compare=((compare[0], compare[1]),),
                           exact_bn=edit.exact_bn, bn=bn, act=act)
    edit.desc["arch"] = arch_name(edit.desc["arch"], module=name, **where)
    return edit.finish(entry)


# -- the library call behind `netmorph morph` -----------------------------------------------

@dataclass(frozen=True)
class MorphResult:
    """What ``morph_network`` did: the child, its morph's history entry, the FLOPs before and
    after, the quick check's report and the seconds each phase took. Unpacks and indexes as
    ``(network, check)``, the pair it returned before."""

    network: Network
    record: MorphRecord  # the morph's history entry, calibration included
    parent_arch: str
    flops_before: int
    flops_after: int
    check: VerifyReport | None
    seconds: dict[str, float]  # "morph" (solve and build), "calibrate", "check"

    def __iter__(self) -> Iterator[Any]:
        return iter((self.network, self.check))

    def __getitem__(self, i: int) -> Any:
        return (self.network, self.check)[i]


def morph_network(parent: Network, module: Preset | ModuleGraph, *, at: str | None = None,
                  after: str | None = None, seed: int = 0, check: bool = True,
                  prelu: bool = False, bn: bool = True, act: str = "prelu",
                  exact_bn: bool = True, dtype: torch.dtype | None = None,
                  calibrate: tuple[str, Sequence[torch.Tensor]] | None = None,
                  parent_sha256: str | None = None, limits: SolveLimits | None = None,
                  progress: ProgressFn | None = None,
                  calibrate_progress: Callable[[int, int], None] | None = None
                  ) -> MorphResult:
    """Morph ``parent`` with a preset (placed by itself), a module at the layer ``at`` or a
    module inserted after the node ``after`` (``morph_after``), after casting it to
    ``dtype`` and replacing its ReLUs by PReLUs (``prelu``) if asked; returns a
    ``MorphResult`` (the child, its record, FLOPs, the quick check's report, timings).

    ``bn``/``act`` shape a module's inner blobs (``morph_at``); ``calibrate`` = (data-set
    name, normalized training images) sets the new BN layers from data
    (``calibrate.calibrate``, which reports each batch to ``calibrate_progress``); the
    lineage (parent's arch, FLOPs, ``parent_sha256``) goes to ``meta``. ``check``: compare
    child and parent on 4 random inputs in the child's dtype and raise
    ``VerificationError`` (exit code 1) if they differ; skipped (report None) with
    ``exact_bn=False``, whose paper BN is approximate by design. ``limits`` and
    ``progress`` are ``morph_at``'s.
    """
    if not isinstance(module, Preset | ModuleGraph):  # names are resolved by the caller
        raise TypeError(f"module must be a Preset or a ModuleGraph (Preset.parse(name), "
                        f"spec.load_spec(path)), not {type(module).__name__}")
    if at is not None and after is not None:
        raise MorphError("--at LAYER replaces a layer and --after NODE inserts the module "
                         "after a node: give one of them")
    if isinstance(module, Preset) and (at, after) != (None, None):
        flag = "--at" if at is not None else "--after"
        raise MorphError(f"{flag} applies to spec files; preset {module.name!r} places itself")
    if not isinstance(module, Preset) and at is None and after is None:
        raise MorphError("--module SPEC.json needs --at LAYER (the conv or identity "
                         "shortcut to replace) or --after NODE (the node whose output the "
                         "module is inserted after)")
    net = parent.to(dtype) if dtype is not None else parent
    if prelu:
        net = prelu_all(net)
    limits = limits or SolveLimits()
    t0 = time.perf_counter()
    if isinstance(module, Preset):
        child = morph_preset(net, module, seed=seed, exact_bn=exact_bn, limits=limits,
                             progress=progress)
    elif after is not None:
        child = morph_after(net, module, after, seed=seed, bn=bn, act=act, exact_bn=exact_bn,
                            limits=limits, progress=progress)
    else:
        assert at is not None
        child = morph_at(net, module, at, seed=seed, bn=bn, act=act, exact_bn=exact_bn,
                         limits=limits, progress=progress)
    seconds = {"morph": time.perf_counter() - t0}
    flops_before = count_flops(parent.description)
    parent_ref = {"arch": parent.description.get("arch"), "flops": flops_before,
                  "sha256": parent_sha256}
    child.meta["parent"] = parent_ref
    child.meta.setdefault("root", parent.meta.get("root") or
                          {k: parent_ref[k] for k in ("arch", "flops")})
    t0 = time.perf_counter()
    if calibrate is not None:
        from .calibrate import calibrate as calibrate_bn

        child = calibrate_bn(child, calibrate[1], dataset=calibrate[0], seed=seed,
                             progress=calibrate_progress)
    seconds["calibrate"], t0 = time.perf_counter() - t0, time.perf_counter()
    report = verify(parent, child, dtype=child.dtype, samples=4) if check and exact_bn else None
    seconds["check"] = time.perf_counter() - t0
    if report is not None:
        require_passed(report)
    return MorphResult(child, MorphRecord.from_json(child.history[-1]),
                       str(parent_ref["arch"]), flops_before, count_flops(child.description),
                       report, seconds)
