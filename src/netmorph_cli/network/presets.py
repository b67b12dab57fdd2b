"""The paper's ResNet presets as data: a branch module, where it goes, how the shortcut splits.

A preset ``KcJ[_2branch][_half]`` is three things and nothing else:

- the **branch**: the module s → a → t with a K×K conv ``conv1`` and a J×J conv ``conv2``,
  a BN and a PReLU at its inner blob and a BN at its sink (``bn1``, ``prelu``, ``bn2``; all
  identities when inserted): ``Preset.spec`` and ``BRANCH``;
- the **placement**: every residual block but the first of each stage, or only the
  odd-indexed ones (1, 3, 5, …) with ``_half``: ``Preset.places``;
- the **split** of the block's identity shortcut, I = 0.5·I + 0.5·I (TYPE-II): one half
  stays the identity and the other becomes the branch, or both become branches
  (``_2branch``): ``Preset.branches``.

``morph.morph_preset`` places the branch with the engine that puts any module at any layer
(``morph.morph_at``): the same solver entry and node builder, at a share of the shortcut.
Any KcJ with odd K, J parses; the named presets in ``PRESETS`` are the ones ``--module``'s
help and errors list. Adding one is one ``NamedPreset`` entry.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..base.limits import MAX_KERNEL
from ..errors import MorphError
from ..spec.graph import Edge, ModuleGraph


@dataclass(frozen=True)
class BlobLayers:
    """What the node builder puts after a module's blobs, and how it names the nodes.

    The builder names a module's nodes ``input_pad``, one per edge (the edge's name),
    ``{blob}_sum`` at a join, ``{blob}_bn`` and ``{blob}_act`` after a blob; ``names``
    renames any of them (the presets' ``a_bn`` → ``bn1``)."""

    bn: bool = True  # a BN (the identity in eval mode) after every inner blob
    act: str = "prelu"  # then an activation: "prelu" (slope 1, the identity) or "none"
    sink_bn: bool = False  # a BN after the sink too
    names: Mapping[str, str] = field(default_factory=dict)


# a preset branch: conv1 → bn1 → prelu → conv2 → bn2, fed by its own input padding "pad"
BRANCH = BlobLayers(sink_bn=True, names={"input_pad": "pad", "a_bn": "bn1",
                                         "a_act": "prelu", "t_bn": "bn2"})


@dataclass(frozen=True)
class NamedPreset:
    """A registry record: a preset listed by ``--module``'s help and errors."""

    name: str
    what: str  # what it does to each morphed block
    networks: tuple[str, ...] = ()  # the paper's networks made with it (Tables 1–3)


# a preset is KcJ plus any of these suffixes, in this order (odd K, J ≤ MAX_KERNEL)
PRESET_SUFFIXES = {"_2branch": "both 0.5·I halves of the shortcut are morphed, not one",
                   "_half": "only the odd-indexed blocks of each stage are morphed"}
PRESET_RE = re.compile(r"^(\d+)c(\d+)" + "".join(f"({s})?" for s in PRESET_SUFFIXES) + "$")
# the named presets: the paper's (Tables 1–3), then ours
PRESETS: dict[str, NamedPreset] = {p.name: p for p in (
    NamedPreset("1c1", "one 0.5·I half of the identity shortcut becomes 1×1 conv → BN → "
                "PReLU → 1×1 conv → BN", ("morph20_1c1", "morph56_1c1", "morph110_1c1",
                                          "morph18_1c1")),
    NamedPreset("3c1", "as 1c1 with a 3×3 first conv", ("morph20_3c1",)),
    NamedPreset("3c3", "as 1c1 with both convs 3×3", ("morph20_3c3",)),
    NamedPreset("1c1_half", "1c1 in the odd-indexed blocks of each stage only",
                ("morph56_1c1_half", "morph110_1c1_half")),
    NamedPreset("1c1_2branch", "1c1 on both halves of the identity shortcut",
                ("morph20_1c1_2branch",)),
    NamedPreset("1c3", "as 1c1 with a 3×3 second conv (a channel mix, then a spatial conv)"),
)}


@dataclass(frozen=True)
class Preset:
    """KcJ[_2branch][_half] as data (see the module docstring)."""

    k1: int  # K: kernel of the branch's first conv
    k2: int  # J: kernel of its second conv
    branches: int = 1  # halves of the identity shortcut that become branches: 1 or 2
    half: bool = False  # only the odd-indexed blocks of each stage

    @property
    def name(self) -> str:
        on = (self.branches == 2, self.half)  # in PRESET_SUFFIXES' order
        return f"{self.k1}c{self.k2}" + "".join(
            s for s, o in zip(PRESET_SUFFIXES, on, strict=True) if o)

    @property
    def spec(self) -> ModuleGraph:
        """The branch module: s → conv1 (K×K) → a → conv2 (J×J) → t."""
        edges = (Edge("conv1", "s", "a", (self.k1, self.k1)),
                 Edge("conv2", "a", "t", (self.k2, self.k2)))
        return ModuleGraph("s", "t", edges, name=self.name).check()

    @property
    def layers(self) -> BlobLayers:
        return BRANCH

    def places(self, index: int) -> bool:
        """Whether block ``index`` of a stage (0: the first) gets the preset."""
        return index >= 1 and (not self.half or index % 2 == 1)

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
