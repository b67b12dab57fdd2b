"""What can be decided before iterating: the blocks of Algorithm 2, bounds on their rank,
the module's polynomial rank, and candidate widenings of too narrow modules.

Two facts bound what a module can do, whatever its filters.
1. Its function G̃(z) = Σ_paths F_k(z)⋯F_1(z), read as a matrix of polynomials in the
   spatial shift z, factors through any set of blobs that every s→t path crosses (sum the
   paths by the first such blob they reach: G̃ = Σ_x Q(x) P_x), so its rank is at most the
   total width of that set: the minimum vertex cut. A layer whose filter has a larger
   rank cannot be reproduced — proven, refused at once (``rank_refusal``).
2. Each block of Algorithm 2 is a linear map; its rank is at most its number of unknowns
   and, through the prefix / suffix filters it is composed with, at most what those can
   carry at the kernel sizes involved (``_Capacity``). A block whose rank bound is below
   the number of equations cannot absorb a generic residual; when no block can, the
   sweeps can only stall (measured: D with widths = C stalls near 1e-2 at every C tried,
   28–390 s before these checks), so the solve is refused before iterating (``too_narrow``).
Neither bound is a guarantee of success, so width advice is only printed after a
re-solve at the advised widths has reached the tolerance (``solve.morph_filter``). The
smallest widths a block's bound allows, + ``MARGIN``, are also what open ("auto") widths
become (``widths.resolve``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass

import torch

from ..errors import InfeasibleError
from ..spec.graph import Edge, Kernel, ModuleGraph, kernel_area
from .algebra import kernel_of


@dataclass(frozen=True)
class Block:
    """One sub-problem of an Algorithm 2 sweep: a set of edges the module function is
    affine in (the sink cut, the source cut, or one inner edge)."""

    kind: str  # "sink", "source" or "edge"
    edges: tuple[Edge, ...]


def solve_blocks(graph: ModuleGraph) -> list[Block]:
    """The sub-problems of one Algorithm 2 sweep, in visiting order."""
    s, t = graph.source, graph.sink
    blocks = [Block("sink", tuple(graph.in_edges[t])), Block("source", tuple(graph.out_edges[s]))]
    blocks += [Block("edge", (e,)) for e in graph.edges if e.src != s and e.dst != t]
    return blocks


@dataclass(frozen=True)
class Widening:
    """Wider inner blobs after which a block of Algorithm 2 (or the module) is no longer
    ruled out by the rank bounds."""

    what: str  # "the sink cut (F5, F6, F7)", "edge 'F3'", "the vertex cut 'a'", …
    channels: dict[str, int]  # blob → new width (only the widened blobs)
    cost: int  # channels added in all
    # from counting unknowns against equations (a necessary condition, so the widths that
    # are used or advised get ``MARGIN`` more); False for exact requirements (a vertex
    # cut's rank, a structured TYPE-I split's middle width)
    counted: bool = False
    kind: str = ""  # the block's kind ("sink", "source", "edge") for a counted widening

    def with_margin(self) -> Widening:
        """This widening with ``MARGIN`` more channels on each counted blob."""
        if not self.counted:
            return self
        new = {b: with_margin(w) for b, w in self.channels.items()}
        return dataclasses.replace(self, channels=new, cost=self.cost + sum(
            new[b] - w for b, w in self.channels.items()))


# auto widths and width advice: the smallest widths at which some block's unknowns cover
# its equations (``_widen_block``), plus this share, rounded up — the count is necessary,
# not sufficient, and a little slack lets the first sweep absorb the residual
MARGIN = 0.10


def with_margin(width: int) -> int:
    """``width`` + ``MARGIN``, rounded up (exactly: no float rounding)."""
    return -(-width * round(100 * (1 + MARGIN)) // 100)


class Narrow(InfeasibleError):
    """Too narrow, decided before iterating: ``reason`` and the candidate widenings that
    ``morph_filter`` verifies by re-solving before it advises any."""

    def __init__(self, reason: str, candidates: list[Widening]):
        hint = ""
        if candidates:
            best = min(candidates, key=lambda c: c.cost)
            hint = f" (unverified candidate: widen to {channels_text(best.channels)})"
        super().__init__(reason + hint)
        self.reason, self.candidates = reason, candidates


def channels_text(channels: Mapping[str, int | str]) -> str:
    """A spec's "channels" object as JSON text: ``{"a": 38, "b": "1x"}``."""
    return "{" + ", ".join(f"{json.dumps(b)}: {json.dumps(w)}" for b, w in channels.items()) + "}"


class _Capacity:
    """Upper bounds on the rank of Algorithm 2's block maps at given widths.

    ``right(u, k)`` bounds dim{x ⊛ P(u)} over one output row x (1, w_u, k): at most the
    unknowns w_u·|k|, the entries C_s·|k + K_P(u) − 1| it can reach, and — since
    x ⊛ P(u) = Σ over u's in-edges (x ⊛ F_e) ⊛ P(src e) — the sum of the same bound one
    blob upstream. ``left(v, k)`` is the mirror image through the suffix filters Q(v)."""

    def __init__(self, graph: ModuleGraph, widths: Mapping[str, int]):
        self.graph, self.widths = graph, widths
        self.kp, self.kq = graph.kernel_reach(), graph.kernel_reach(to_sink=True)
        self.k_eff = graph.effective_kernel()
        self._memo: dict[tuple[str, str, Kernel], int] = {}

    def right(self, u: str, k: Kernel) -> int:
        g, w = self.graph, self.widths
        if u == g.source:
            return w[u] * kernel_area(k)
        key = ("r", u, k)
        if key not in self._memo:
            reach = (k[0] + self.kp[u][0] - 1, k[1] + self.kp[u][1] - 1)
            up = sum(self.right(e.src, (k[0] + e.kernel[0] - 1, k[1] + e.kernel[1] - 1))
                     for e in g.in_edges[u])
            self._memo[key] = min(w[u] * kernel_area(k), w[g.source] * kernel_area(reach), up)
        return self._memo[key]

    def left(self, v: str, k: Kernel) -> int:
        g, w = self.graph, self.widths
        if v == g.sink:
            return w[v] * kernel_area(k)
        key = ("l", v, k)
        if key not in self._memo:
            reach = (k[0] + self.kq[v][0] - 1, k[1] + self.kq[v][1] - 1)
            down = sum(self.left(e.dst, (k[0] + e.kernel[0] - 1, k[1] + e.kernel[1] - 1))
                       for e in g.out_edges[v])
            self._memo[key] = min(w[v] * kernel_area(k), w[g.sink] * kernel_area(reach), down)
        return self._memo[key]

    def block(self, block: Block) -> tuple[int, int, str]:
        """(rank bound, equations, what one system is) of one block."""
        g, w = self.graph, self.widths
        cs, ct, area = w[g.source], w[g.sink], kernel_area(self.k_eff)
        if block.kind == "sink":  # one system per output channel
            cap = sum(self.right(e.src, e.kernel) for e in block.edges)
            return min(cap, cs * area), cs * area, "each output channel"
        if block.kind == "source":  # one per input channel
            cap = sum(self.left(e.dst, e.kernel) for e in block.edges)
            return min(cap, ct * area), ct * area, "each input channel"
        (e,) = block.edges
        u, v, k = e.src, e.dst, e.kernel
        reach = (min(self.kp[u][0] + k[0] + self.kq[v][0] - 2, self.k_eff[0]),
                 min(self.kp[u][1] + k[1] + self.kq[v][1] - 2, self.k_eff[1]))
        cap = min(w[u] * w[v] * kernel_area(k), w[v] * self.right(u, k), w[u] * self.left(v, k),
                  ct * cs * kernel_area(reach))
        return cap, ct * cs * area, "the whole filter"


def _block_name(block: Block) -> str:
    if block.kind == "edge":
        return f"edge {block.edges[0].name!r}"
    return f"the {block.kind} cut ({', '.join(e.name for e in block.edges)})"


def _widen_block(graph: ModuleGraph, widths: Mapping[str, int], block: Block,
                 allowed: Collection[str] | None = None) -> Widening | None:
    """The cheapest widening (found by bisection: the bounds grow with every width) after
    which ``block``'s rank bound reaches its equations; None when no width suffices (the
    block's kernels cannot reach the whole effective kernel). ``allowed``: the blobs that
    may be widened (default: every inner blob)."""
    s, t = graph.source, graph.sink
    _, need, _ = _Capacity(graph, widths).block(block)

    def ok(new: Mapping[str, int]) -> bool:
        cap, _, _ = _Capacity(graph, {**widths, **new}).block(block)
        return cap >= need

    ends = [b for e in block.edges for b in (e.src, e.dst) if b not in (s, t)]
    inner = [b for b in graph.blobs if b not in (s, t)]
    if allowed is not None:
        ends = [b for b in ends if b in allowed]
        inner = [b for b in inner if b in allowed]
    for free in (list(dict.fromkeys(ends)), inner):
        if not free:
            continue
        hi = max(need, *(widths[b] for b in free))
        if not ok({b: hi for b in free}):
            continue
        lo = max(widths[b] for b in free)  # uniform width first …
        while lo < hi:
            mid = (lo + hi) // 2
            if ok({b: max(widths[b], mid) for b in free}):
                hi = mid
            else:
                lo = mid + 1
        new = {b: max(widths[b], lo) for b in free}
        for b in reversed(free):  # … then each blob as narrow as the others allow
            lo, hi = widths[b], new[b]
            while lo < hi:
                mid = (lo + hi) // 2
                if ok({**new, b: mid}):
                    hi = mid
                else:
                    lo = mid + 1
            new[b] = lo
        new = {b: v for b, v in new.items() if v > widths[b]}
        return Widening(_block_name(block), new, sum(v - widths[b] for b, v in new.items()),
                        counted=True, kind=block.kind)
    return None


def bound_widening(graph: ModuleGraph, widths: Mapping[str, int],
                   allowed: Collection[str] | None = None) -> Widening | None:
    """The cheapest widening of the ``allowed`` blobs (default: all inner blobs) after
    which some block of Algorithm 2 on ``graph`` has as many independent unknowns as
    equations — the feasibility bound, before any margin; None when some block already
    has, or when no widening of those blobs gives any block enough."""
    if too_narrow(graph, widths, candidates=False) is None:
        return None
    cands = [w for b in solve_blocks(graph)
             if (w := _widen_block(graph, widths, b, allowed)) is not None]
    return min(cands, key=lambda w: w.cost) if cands else None


def too_narrow(graph: ModuleGraph, widths: Mapping[str, int], *, candidates: bool = True
               ) -> InfeasibleError | None:
    """The refusal (an ``InfeasibleError`` carrying candidate widenings, unless
    ``candidates`` is False) when no block of Algorithm 2 can absorb a generic residual at
    these widths; None when one can."""
    cap = _Capacity(graph, widths)
    closest: tuple[float, str, int, int, str] | None = None
    for block in solve_blocks(graph):
        c, need, unit = cap.block(block)
        if c >= need:
            return None
        if closest is None or c / need > closest[0]:
            closest = (c / need, _block_name(block), c, need, unit)
    if closest is None:  # no block at all (cannot happen for a checked module)
        return None
    _, what, c, need, unit = closest
    name = f"module {graph.name!r}" if graph.name else "the module"
    inner = ", ".join(f"{b}: {widths[b]}" for b in graph.blobs
                      if b not in (graph.source, graph.sink))
    reason = (f"{name} is too narrow for Algorithm 2 at these widths ({inner}; layer "
              f"{widths[graph.source]}→{widths[graph.sink]}): no block of its filters has as "
              f"many independent unknowns as equations — the closest, {what}, has at most "
              f"{c:,} for the {need:,} equations of {unit}")
    if not candidates:
        return Narrow(reason, [])
    cands = [w for b in solve_blocks(graph) if (w := _widen_block(graph, widths, b)) is not None]
    return Narrow(reason, sorted(cands, key=lambda w: w.cost))


def width_advice(graph: ModuleGraph, widths: Mapping[str, int], k_eff: Kernel | None = None
                 ) -> tuple[str, dict[str, int]] | None:
    """The cheapest candidate widening of inner blobs after which some block of Algorithm 2
    is no longer ruled out by its rank bound; None when a block already is not. A
    candidate, not a guarantee: ``morph_filter`` verifies it by re-solving before advising."""
    narrow = too_narrow(graph, widths)
    if not isinstance(narrow, Narrow) or not narrow.candidates:
        return None
    best = narrow.candidates[0]
    return best.what, dict(best.channels)


def polynomial_rank(g: torch.Tensor) -> int:
    """Rank of a filter as a matrix of polynomials in the spatial shift: the rank of
    G(z) = Σ_taps G[:, :, p, q]·z₁^p·z₂^q at random points on the unit torus (the largest of
    two; singular values below 1e-9 of the largest count as zero, so it never
    over-counts)."""
    kh, kw = kernel_of(g)
    m = g.detach().to("cpu", torch.complex128)
    gen = torch.Generator().manual_seed(20240613)
    best = 0
    for _ in range(2):
        th = torch.rand(2, generator=gen, dtype=torch.float64) * 2 * math.pi
        zh = torch.exp(1j * th[0] * torch.arange(kh, dtype=torch.float64))
        zw = torch.exp(1j * th[1] * torch.arange(kw, dtype=torch.float64))
        sv = torch.linalg.svdvals(torch.einsum("oipq,p,q->oi", m, zh, zw))
        if sv.numel() and float(sv[0]) > 0:
            best = max(best, int((sv > 1e-9 * sv[0]).sum()))
    return best


def min_vertex_cut(graph: ModuleGraph, widths: Mapping[str, int]) -> tuple[int, list[str]]:
    """(capacity, blobs) of a minimum set of blobs, weighted by width, that every s→t path
    crosses (s and t included): max-flow with each blob split into in → out."""
    inf = sum(widths[b] for b in graph.blobs) + 1
    cap: dict[tuple[str, str], dict[tuple[str, str], int]] = {}

    def arc(a: tuple[str, str], b: tuple[str, str], c: int) -> None:
        cap.setdefault(a, {}).setdefault(b, 0)
        cap[a][b] += c
        cap.setdefault(b, {}).setdefault(a, 0)

    for b in graph.blobs:
        arc((b, "in"), (b, "out"), widths[b])
    for e in graph.edges:
        arc((e.src, "out"), (e.dst, "in"), inf)
    src, dst = (graph.source, "in"), (graph.sink, "out")
    flow = 0
    while True:
        parent: dict[tuple[str, str], tuple[str, str]] = {src: src}
        queue = [src]
        for x in queue:  # breadth first (Edmonds–Karp)
            for y, c in cap[x].items():
                if c > 0 and y not in parent:
                    parent[y] = x
                    queue.append(y)
        if dst not in parent:
            break
        path: list[tuple[tuple[str, str], tuple[str, str]]] = []
        node = dst
        while node != src:
            path.append((parent[node], node))
            node = parent[node]
        push = min(cap[u][v] for u, v in path)
        for u, v in path:
            cap[u][v] -= push
            cap[v][u] += push
        flow += push
    cut = [b for b in graph.blobs if (b, "in") in parent and (b, "out") not in parent]
    return flow, cut


def rank_refusal(g: torch.Tensor, graph: ModuleGraph, widths: Mapping[str, int]
                 ) -> Narrow | None:
    """The proven refusal of fact 1 (module docstring), with the widening of the cut's
    blobs that lifts every vertex cut to the filter's rank as the candidate."""
    if len(graph.edges) > 2000:  # a bound, not a necessity: skip it on huge modules
        return None
    flow, cut = min_vertex_cut(graph, widths)
    if flow >= min(widths[graph.source], widths[graph.sink]):
        return None  # no cut below the layer's widths: nothing to check
    r = polynomial_rank(g)
    if flow >= r:
        return None
    s, t = graph.source, graph.sink
    new: dict[str, int] = {}
    for _ in range(100):
        f, c = min_vertex_cut(graph, {**widths, **new})
        inner = [b for b in c if b not in (s, t)]
        if f >= r or not inner:
            break
        step = math.ceil((r - f) / len(inner))
        for b in inner:
            new[b] = new.get(b, widths[b]) + step
    names = ", ".join(repr(b) for b in cut)
    name = f"module {graph.name!r}" if graph.name else "the module"
    reason = (f"every path from {s!r} to {t!r} in {name} passes through blob"
              f"{'s' if len(cut) > 1 else ''} {names} of total width {flow}, so the "
              f"module's function has rank at most {flow} (as a matrix of polynomials); the "
              f"layer's filter has rank {r}, so no filters can reproduce it")
    cands = [Widening(f"the vertex cut {names}", new, sum(v - widths[b] for b, v in new.items()))]
    return Narrow(reason, cands)
