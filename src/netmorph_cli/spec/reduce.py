"""Algorithm 1: reduce a module by inverse atomic morphs; replay the plan outward.

Inverse TYPE-I removes a blob with in-degree = out-degree = 1 (other than s and t) and joins
its two edges into one; inverse TYPE-II joins two parallel edges. Reductions run from a
worklist and parallel edges wait in a heap per pair of blobs, so a module of E edges
reduces in O(E) dictionary operations and at most E heap pops (O(E log E) at worst, for E
parallel edges). The reduction system is confluent (series-parallel reduction), so the
irreducible remainder does not depend on the order; ``reduce_module(…, rng=…)`` picks
reductions at random to test that (also O(E log E): it draws parallel edges by rank).
"""

from __future__ import annotations

import gc
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from heapq import heappop
from typing import cast

from .graph import Edge, Kernel, ModuleGraph, compose_kernels, sum_kernels


@dataclass(frozen=True)
class MorphStep:
    """One atomic morph, in morph order (from M0 outward).

    TYPE-I: ``edge`` (u→v) becomes ``into[0]`` (u→blob) then ``into[1]`` (blob→v), so
    edge = into[1] ⊛ into[0]. TYPE-II: ``edge`` becomes the parallel pair, edge = into[0] +
    into[1]. ``blob`` is the new blob of a TYPE-I morph, None for TYPE-II.
    """

    type: str  # "I" or "II"
    edge: Edge
    into: tuple[Edge, Edge]
    blob: str | None = None

    def to_json(self) -> dict:
        out = {"type": self.type, "edge": self.edge.name,
               "into": [self.into[0].name, self.into[1].name],
               "from": self.edge.src, "to": self.edge.dst, "kernel": list(self.edge.kernel),
               "into_kernels": [list(self.into[0].kernel), list(self.into[1].kernel)]}
        if self.blob is not None:
            out["blob"] = self.blob
        return out


@dataclass(frozen=True)
class ReductionPlan:
    """The result of Algorithm 1 on ``module``.

    ``remainder`` is M0 for a simple morphable module, the irreducible module otherwise;
    replaying ``steps`` from ``remainder`` rebuilds ``module`` exactly (same names).
    """

    module: ModuleGraph
    steps: tuple[MorphStep, ...]
    remainder: ModuleGraph

    @property
    def simple(self) -> bool:
        return len(self.remainder.edges) == 1

    @property
    def classification(self) -> str:
        return "simple" if self.simple else "complex"

    def to_json(self) -> dict:
        rem = self.remainder
        irreducible = None if self.simple else {
            "blobs": list(rem.blobs),
            "edges": [{"name": e.name, "from": e.src, "to": e.dst, "kernel": list(e.kernel)}
                      for e in rem.edges],
        }
        return {
            "name": self.module.name,
            "classification": self.classification,
            "blobs": len(self.module.blobs),
            "edges": len(self.module.edges),
            "steps": [s.to_json() for s in self.steps],
            "irreducible": irreducible,
            "paths": self.module.path_count(),
            "effective_kernel": list(self.module.effective_kernel()),
            "equation": self.equation(),
        }

    def equation(self, max_chars: int = 600) -> str:
        """The module equation, factored along the reduction: each series-parallel part
        appears once, e.g. ``G = F7 + (F6 ⊛ F5 + F4 ⊛ (F2 + F3)) ⊛ F1``."""
        expr: dict[str, tuple[str, bool]] = {}  # edge → (text, is a sum)
        too_long = False
        for st in reversed(self.steps):  # innermost first
            a, b = (expr.get(x.name, (x.name, False)) for x in st.into)
            if st.type == "II":
                text, is_sum = f"{a[0]} + {b[0]}", True
            else:
                paren = [f"({t})" if s else t for t, s in (b, a)]
                text, is_sum = f"{paren[0]} ⊛ {paren[1]}", False
            if len(text) > max_chars:
                too_long = True
                break
            expr[st.edge.name] = (text, is_sum)
        if too_long:
            return self.module.equation(max_chars)
        return self.remainder.equation(max_chars, edge_terms=expr)


class _RankedIds:
    """Edge ids in ascending order with O(log n) access by rank and O(log n) removal.

    The random-order reduction draws two parallel edges by rank among their sorted ids;
    sorting the bundle for every draw made k parallel edges cost O(k² log k). Ids only
    ever grow (each new edge gets the next id), so appending keeps the order; a Fenwick
    tree over the slots counts the live ones, and a rank is found by descending it.
    """

    __slots__ = ("ids", "slot", "tree")

    def __init__(self) -> None:
        self.ids: list[int] = []  # slot - 1 → id, ascending; removed ids stay as dead slots
        self.slot: dict[int, int] = {}  # live id → slot (1-based)
        self.tree: list[int] = [0]  # tree[k]: live slots in (k - lowbit(k), k]

    def __len__(self) -> int:
        return len(self.slot)

    def append(self, i: int) -> None:
        assert not self.ids or i > self.ids[-1], "ids must be appended in ascending order"
        self.ids.append(i)
        k = len(self.ids)
        self.slot[i] = k
        live, j, stop = 1, k - 1, k - (k & -k)
        while j > stop:  # the live slots in (stop, k - 1]
            live += self.tree[j]
            j -= j & -j
        self.tree.append(live)

    def remove(self, i: int) -> None:
        k = self.slot.pop(i)
        while k < len(self.tree):
            self.tree[k] -= 1
            k += k & -k

    def __getitem__(self, rank: int) -> int:
        """The id of the given rank (0 = smallest live id)."""
        pos, left, n = 0, rank + 1, len(self.ids)
        step = 1 << n.bit_length()
        while step:
            if pos + step <= n and self.tree[pos + step] < left:
                pos += step
                left -= self.tree[pos]
            step >>= 1
        return self.ids[pos]  # slot pos + 1


class _Names:
    """Fresh edge names that never clash with the module's own."""

    def __init__(self, taken: Iterable[str]):
        self.taken = set(taken)
        self.n = 0

    def fresh(self, stem: str) -> str:
        if stem not in self.taken:
            self.taken.add(stem)
            return stem
        while True:
            self.n += 1
            name = f"{stem}{self.n}"
            if name not in self.taken:
                self.taken.add(name)
                return name


def reduce_module(module: ModuleGraph, rng: random.Random | None = None) -> ReductionPlan:
    """Algorithm 1: apply inverse TYPE-I and TYPE-II morphs until none applies."""
    # The plan allocates a few objects per edge and none of them form reference cycles;
    # Python's cyclic GC would rescan them over and over (about 40% of the time at 100,000
    # edges), so it is paused for the call.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _reduce(module, rng)
    finally:
        if was_enabled:
            gc.enable()


def _reduce(module: ModuleGraph, rng: random.Random | None) -> ReductionPlan:
    s, t = module.source, module.sink
    edges: dict[int, tuple[str, str, Kernel]] = {}  # id → (src, dst, kernel)
    out_e: dict[str, set[int]] = {}
    in_e: dict[str, set[int]] = {}
    # (u, v) → ids of the parallel edges u→v. A TYPE-II reduction joins the two smallest
    # ids: a heap (a list) gives them in O(log k), where sorting the bundle for each
    # join cost O(k log k), so O(k² log k) for k parallel edges. Every new edge gets a
    # larger id than any before, so appending one keeps the heap. The random order draws
    # two ids by rank (_RankedIds).
    bundle = list if rng is None else _RankedIds
    pair: dict[tuple[str, str], list[int] | _RankedIds] = {}
    label: dict[int, str] = {}
    for i, e in enumerate(module.edges):
        edges[i] = (e.src, e.dst, e.kernel)
        label[i] = e.name
        out_e.setdefault(e.src, set()).add(i)
        in_e.setdefault(e.dst, set()).add(i)
        ids = pair.get((e.src, e.dst))
        if ids is None:
            ids = pair[(e.src, e.dst)] = bundle()
        ids.append(i)
    out_e.setdefault(t, set())
    in_e.setdefault(s, set())
    next_id = len(module.edges)
    # reverse-order record: (type, new_id, (id_a, id_b), blob)
    record: list[tuple[str, int, tuple[int, int], str | None]] = []

    def add(src: str, dst: str, kernel: Kernel) -> int:
        nonlocal next_id
        i = next_id
        next_id += 1
        edges[i] = (src, dst, kernel)
        out_e[src].add(i)
        in_e[dst].add(i)
        ids = pair.get((src, dst))
        if ids is None:
            ids = pair[(src, dst)] = bundle()
        ids.append(i)
        return i

    def drop(i: int) -> None:  # the caller takes ``i`` out of its bundle
        src, dst, _ = edges.pop(i)
        out_e[src].discard(i)
        in_e[dst].discard(i)

    blob_q: list[str] = [b for b in module.blobs if b not in (s, t)]
    pair_q: list[tuple[str, str]] = [p for p, ids in pair.items() if len(ids) > 1]

    def pop(q: list):
        if rng is not None:
            j = rng.randrange(len(q))
            q[j], q[-1] = q[-1], q[j]
        return q.pop()

    while blob_q or pair_q:
        # Algorithm 1: exhaust TYPE-I, then TYPE-II, and repeat.
        while blob_q and (rng is None or not pair_q or rng.random() < 0.5):
            b = pop(blob_q)
            if b not in in_e or len(in_e[b]) != 1 or len(out_e[b]) != 1:
                continue
            (a,), (c,) = tuple(in_e[b]), tuple(out_e[b])
            u, v = edges[a][0], edges[c][1]
            k = compose_kernels(edges[a][2], edges[c][2])
            drop(a)
            drop(c)
            del in_e[b], out_e[b], pair[(u, b)], pair[(b, v)]  # a and c were alone there
            n = add(u, v, k)
            record.append(("I", n, (a, c), b))
            if len(pair[(u, v)]) > 1:
                pair_q.append((u, v))
        while pair_q and (rng is None or not blob_q or rng.random() < 0.5):
            u, v = pop(pair_q)
            ids = pair.get((u, v))
            if ids is None or len(ids) < 2:
                continue
            if rng is None:  # the two smallest ids (the bundle is a heap in this order)
                heap = cast("list[int]", ids)
                a, c = heappop(heap), heappop(heap)
            else:
                # rng.sample draws positions only: sampling range(len) and looking up those
                # ranks draws what rng.sample(sorted(ids), 2) drew, without the sort
                a, c = (ids[j] for j in rng.sample(range(len(ids)), 2))
                ids.remove(a)
                ids.remove(c)
            k = sum_kernels(edges[a][2], edges[c][2])
            drop(a)
            drop(c)
            n = add(u, v, k)  # into the same bundle, so it is never left empty
            record.append(("II", n, (a, c), None))
            if len(pair[(u, v)]) > 1:
                pair_q.append((u, v))
            blob_q.extend(x for x in (u, v) if x not in (s, t))

    # Name the edges the reduction created: the last one standing of a simple module is
    # G; the others G1, G2, … in morph order.
    names = _Names(label.values())
    kernels = {i: e.kernel for i, e in enumerate(module.edges)}
    ends = {i: (e.src, e.dst) for i, e in enumerate(module.edges)}
    for typ, n, (a, c), _blob in record:
        combine = compose_kernels if typ == "I" else sum_kernels
        kernels[n] = combine(kernels[a], kernels[c])
        ends[n] = (ends[a][0], ends[c][1])
    simple = len(edges) == 1
    for i in sorted(edges):
        if i not in label:
            label[i] = names.fresh("G") if simple else names.fresh("R")
    for _typ, _n, (a, c), _blob in reversed(record):
        for i in (a, c):
            if i not in label:
                label[i] = names.fresh("G")

    made: dict[int, Edge] = dict(enumerate(module.edges))  # each Edge built once

    def edge(i: int) -> Edge:
        e = made.get(i)
        if e is None:
            e = made[i] = Edge(label[i], ends[i][0], ends[i][1], kernels[i])
        return e

    steps = tuple(MorphStep(typ, edge(n), (edge(a), edge(c)), blob)
                  for typ, n, (a, c), blob in reversed(record))
    rem_edges = tuple(edge(i) for i in sorted(edges))
    rem_blobs = {b for e in rem_edges for b in (e.src, e.dst)}
    remainder = ModuleGraph(s, t, rem_edges,
                            {b: w for b, w in module.channels.items() if b in rem_blobs},
                            module.name,
                            {b: r for b, r in module.width_rules.items() if b in rem_blobs})
    return ReductionPlan(module, steps, remainder)


def replay(start: ModuleGraph, steps: Sequence[MorphStep],
           channels: dict[str, int] | None = None) -> ModuleGraph:
    """Apply ``steps`` (morph order) to ``start``; returns the morphed module, checked."""
    current: dict[str, Edge] = {e.name: e for e in start.edges}
    for st in steps:
        old = current.pop(st.edge.name)
        a, b = st.into
        if st.type == "I":
            assert (a.src, a.dst, b.src, b.dst) == (old.src, st.blob, st.blob, old.dst)
        else:
            assert (a.src, a.dst) == (b.src, b.dst) == (old.src, old.dst)
        current[a.name] = a
        current[b.name] = b
    chans = dict(start.channels if channels is None else channels)
    return ModuleGraph(start.source, start.sink, tuple(current.values()), chans,
                       start.name, dict(start.width_rules)).check()
