"""Inner widths for one layer: fixed, relative to the layer, or chosen from the bound.

A spec's ``"channels"`` gives each inner blob a width in one of three ways:

- a positive integer: **fixed**, at every layer;
- ``"Nx"`` (``"2.5x"``): **relative**, N × the output channels of the layer being replaced,
  rounded up (2.5x at 16 channels → 40), so one spec fits every layer; the user chose
  it, so it is fixed too once resolved;
- ``"auto"``, or no entry: **open**. Open blobs start as wide as the layer's output (what
  every open blob was before, so simple modules and the presets keep their sizes) and,
  where Algorithm 2 would be too narrow there, are raised to the feasibility bound — the
  smallest widths at which some block of Algorithm 2 has as many independent unknowns
  as equations (``feasibility.bound_widening``, only open blobs widened) — plus
  ``feasibility.MARGIN`` (10%), rounded up.

``resolve`` turns the rules into numbers for one layer (C_in → C_out) and says how: the
widths a morph then uses, prints and records in its history entry.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass

from ..base.limits import MAX_WIDTH
from ..errors import SpecError
from ..spec.graph import ModuleGraph
from ..spec.parse import relative_width
from ..spec.reduce import reduce_module
from .feasibility import MARGIN, bound_widening


@dataclass(frozen=True)
class WidthChoice:
    """The widths of one module at one layer and where each came from."""

    widths: dict[str, int]  # every blob; s and t the layer's C_in and C_out
    rules: dict[str, str]  # inner blob → "fixed", "Nx" or "auto"
    layer: tuple[int, int]  # (C_in, C_out)
    bound: str | None = None  # the block whose feasibility bound raised open blobs
    raised: dict[str, int] = dataclasses.field(default_factory=dict)  # bound, before margin
    retried: str | None = None  # why the raised blobs were widened further ("1.5× …")

    @property
    def inner(self) -> dict[str, int]:
        return {b: w for b, w in self.widths.items() if b in self.rules}

    @property
    def open(self) -> list[str]:
        return [b for b, r in self.rules.items() if r == "auto"]

    def line(self) -> str:
        """``a=40 b=40 c=40 (2.5x of the layer's 16 output channels)``, ``a=33 b=31 c=33
        (auto: feasibility bound of the sink cut (F5, F6, F7), a=30 b=28 c=30, + 10%
        margin)``: the widths and how they were chosen."""
        if not self.rules:
            return "none (no inner blobs)"
        return f"{self.text()} ({self.how()})"

    def text(self) -> str:
        """``a=40 b=40 c=40``."""
        return " ".join(f"{b}={w}" for b, w in self.inner.items())

    def how(self) -> str:
        """How the widths were chosen, per kind of rule (see ``line``)."""
        kinds = list(dict.fromkeys(self.rules.values()))
        parts = []
        for kind in kinds:
            blobs = [b for b, r in self.rules.items() if r == kind]
            who = "" if len(kinds) == 1 else ", ".join(blobs) + ": "
            if kind == "fixed":
                parts.append(f"{who}fixed")
            elif kind != "auto":
                parts.append(f"{who}{kind} of the layer's {self.layer[1]} output channels")
            elif self.raised:
                bound = " ".join(f"{b}={self.raised[b]}" for b in self.rules
                                 if b in self.raised)
                parts.append(f"{who}auto: feasibility bound of {self.bound}, {bound}, "
                             f"+ {MARGIN:.0%} margin" + (f", then {self.retried}"
                                                         if self.retried else ""))
            else:
                parts.append(f"{who}auto: the layer's output width; the feasibility bound "
                             "needs no more")
        return "; ".join(parts)

    def wider(self, factor: float, why: str) -> WidthChoice:
        """The raised blobs ``factor`` × wider (rounded up), saying ``why``."""
        new = {b: (math.ceil(factor * w) if b in self.raised else w)
               for b, w in self.widths.items()}
        return dataclasses.replace(self, widths=new,
                                   retried=f"{factor:g}× wider (the bound + margin {why})")

    def to_json(self) -> dict[str, int]:
        """What a history entry records: inner blob → width."""
        return dict(self.inner)


def resolve(graph: ModuleGraph, c_in: int, c_out: int, *, inner: int | None = None,
            whole: bool = False) -> tuple[ModuleGraph, WidthChoice]:
    """``graph`` with every inner width fixed for a C_in → C_out layer, and how.

    Fixed widths stay; ``"Nx"`` is N·C_out rounded up; an open blob (``"auto"`` or no
    entry) takes ``inner`` when given, else C_out raised to the feasibility bound + margin
    where Algorithm 2 needs it — on the irreducible remainder after Algorithm 1, or on the
    whole module with ``whole`` (``method="algorithm2"``). Open blobs that cannot lift any
    block to its equations (a fixed blob is the bottleneck) stay at C_out, and the solve
    then refuses with its advice. ``SpecError`` when a relative width is over netmorph's
    limit at this layer.
    """
    s, t = graph.source, graph.sink
    widths: dict[str, int] = {s: c_in}
    rules: dict[str, str] = {}
    for b in graph.inner_blobs():
        rule = graph.width_rules.get(b)
        if b in graph.channels:
            widths[b], rules[b] = graph.channels[b], "fixed"
        elif rule is not None and rule != "auto":
            w = relative_width(rule, c_out)
            if w > MAX_WIDTH:
                raise SpecError(f"width {rule!r} for blob {b!r} is {w} channels at this "
                                f"{c_in}→{c_out} layer, larger than netmorph's limit of "
                                f"{MAX_WIDTH}")
            widths[b], rules[b] = w, rule
        elif inner is not None:
            widths[b], rules[b] = inner, "fixed"
        else:
            widths[b], rules[b] = c_out, "auto"
    widths[t] = c_out
    choice = WidthChoice(widths, rules, (c_in, c_out))
    open_ = [b for b, r in rules.items() if r == "auto"]
    if open_:
        choice = _raise_open(graph, choice, open_, whole)
    fixed = dataclasses.replace(graph, channels=choice.inner, width_rules={})
    return fixed, choice


def _raise_open(graph: ModuleGraph, choice: WidthChoice, open_: list[str], whole: bool
                ) -> WidthChoice:
    """``choice`` with open blobs raised to the feasibility bound + margin where needed."""
    target = graph
    if not whole:
        plan = reduce_module(graph)
        if plan.simple:  # no Algorithm 2: the splits work at the layer's widths
            return choice
        target = plan.remainder
    widths = choice.widths
    wide = bound_widening(target, {b: widths[b] for b in target.blobs}, allowed=open_)
    if wide is None or not wide.channels:
        return choice
    margin = wide.with_margin()
    new = {b: margin.channels.get(b, w) for b, w in widths.items()}
    return dataclasses.replace(choice, widths=new, bound=wide.what, raised=dict(wide.channels))


def module_widths(graph: ModuleGraph, c_in: int, c_out: int, inner: int | None = None,
                  whole: bool = False) -> dict[str, int]:
    """Width of every blob of ``graph`` at a C_in → C_out layer (see ``resolve``)."""
    return resolve(graph, c_in, c_out, inner=inner, whole=whole)[1].widths


def rule_texts(graph: ModuleGraph) -> Mapping[str, int | str]:
    """The spec's own "channels" (fixed ints and rules) of ``graph``'s inner blobs."""
    out: dict[str, int | str] = {}
    for b in graph.inner_blobs():
        if b in graph.channels:
            out[b] = graph.channels[b]
        elif b in graph.width_rules:
            out[b] = graph.width_rules[b]
    return out
