"""ModuleGraph: blobs and convolution edges of a module, with its structural analysis.

A module is a DAG with one source ``s`` and one sink ``t`` in which every blob lies on an
s→t path (paper, Definition 1). Edges carry a kernel size per dimension; parallel edges
(same from/to) are allowed. Everything here is pure: no I/O, no tensors.
"""

from __future__ import annotations

from collections import Counter, defaultdict, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property

from ..errors import SpecError

Kernel = tuple[int, int]  # (kh, kw), both positive and odd


@dataclass(frozen=True)
class Edge:
    """A convolution from blob ``src`` to blob ``dst`` with a (kh, kw) kernel."""

    name: str
    src: str
    dst: str
    kernel: Kernel


def compose_kernels(first: Kernel, second: Kernel) -> Kernel:
    """Kernel of "apply ``first`` then ``second``": K1 + K2 - 1 per dimension (eq. 2)."""
    return (first[0] + second[0] - 1, first[1] + second[1] - 1)


def sum_kernels(a: Kernel, b: Kernel) -> Kernel:
    """Kernel of F1 + F2 in the extended sense: the larger per dimension (eq. 4)."""
    return (max(a[0], b[0]), max(a[1], b[1]))


def fits(k: Kernel, outer: Kernel) -> bool:
    """Whether ``k`` fits inside ``outer`` (both centred) in every dimension."""
    return k[0] <= outer[0] and k[1] <= outer[1]


def kernel_area(k: Kernel) -> int:
    """Taps of a kernel: kh·kw."""
    return k[0] * k[1]


@dataclass(frozen=True)
class ModuleGraph:
    """A single-source single-sink DAG of convolutions.

    ``channels`` holds the fixed widths of inner blobs; ``width_rules`` the widths given
    relative to the layer (``"2.5x"``: 2.5 × its output channels, rounded up) or left open
    (``"auto"``); a blob in neither is open too, and a blob in both takes its fixed width.
    ``widths.resolve`` turns the rules into numbers for one layer. Construct through
    ``spec.parse_spec`` or call ``check()`` after building one by hand: it raises
    ``SpecError`` naming the culprit.
    """

    source: str
    sink: str
    edges: tuple[Edge, ...]
    channels: dict[str, int] = field(default_factory=dict)
    name: str = ""
    width_rules: dict[str, str] = field(default_factory=dict)

    # -- structure ---------------------------------------------------------------------
    @cached_property
    def blobs(self) -> tuple[str, ...]:
        """All blobs, in topological order (Kahn's algorithm, ties in first-seen order)."""
        return tuple(self._topological_order())

    @cached_property
    def out_edges(self) -> dict[str, list[Edge]]:
        out: dict[str, list[Edge]] = defaultdict(list)
        for e in self.edges:
            out[e.src].append(e)
        return out

    @cached_property
    def in_edges(self) -> dict[str, list[Edge]]:
        inc: dict[str, list[Edge]] = defaultdict(list)
        for e in self.edges:
            inc[e.dst].append(e)
        return inc

    def _seen_blobs(self) -> list[str]:
        seen: dict[str, None] = {}
        for e in self.edges:
            seen.setdefault(e.src)
            seen.setdefault(e.dst)
        return list(seen)

    def _topological_order(self) -> Iterator[str]:
        blobs = self._seen_blobs()
        indeg = {b: 0 for b in blobs}
        for e in self.edges:
            indeg[e.dst] += 1
        ready = deque(b for b in blobs if indeg[b] == 0)
        done = 0
        while ready:
            b = ready.popleft()
            done += 1
            yield b
            for e in self.out_edges.get(b, ()):
                indeg[e.dst] -= 1
                if indeg[e.dst] == 0:
                    ready.append(e.dst)
        if done != len(blobs):
            cycle = self.find_cycle()
            raise SpecError(f"module has a cycle: {' → '.join(cycle)}")

    def find_cycle(self) -> list[str]:
        """One directed cycle as a closed walk ``[a, b, …, a]``, or ``[]`` if acyclic."""
        succ: dict[str, list[str]] = defaultdict(list)
        for e in self.edges:
            succ[e.src].append(e.dst)
        color: dict[str, int] = {}  # 1 on the stack, 2 finished
        for root in self._seen_blobs():
            if root in color:
                continue
            stack: list[tuple[str, Iterator[str]]] = [(root, iter(succ[root]))]
            path = [root]
            color[root] = 1
            while stack:
                node, it = stack[-1]
                nxt = next(it, None)
                if nxt is None:
                    color[node] = 2
                    stack.pop()
                    path.pop()
                elif color.get(nxt) == 1:
                    return path[path.index(nxt):] + [nxt]
                elif nxt not in color:
                    color[nxt] = 1
                    stack.append((nxt, iter(succ[nxt])))
                    path.append(nxt)
        return []

    def inner_blobs(self) -> list[str]:
        return [b for b in self.blobs if b not in (self.source, self.sink)]

    def width(self, blob: str, default: int) -> int:
        """Fixed channel width of ``blob``; s, t and the other inner blobs take
        ``default``."""
        return self.channels.get(blob, default)

    # -- validation ----------------------------------------------------------------------
    def check(self) -> ModuleGraph:
        """Raise ``SpecError`` unless this is a valid module; return self for chaining."""
        if not self.edges:
            raise SpecError("module is empty: it needs at least one edge from source to sink")
        dup = [n for n, c in Counter(e.name for e in self.edges).items() if c > 1]
        if dup:
            raise SpecError(f"duplicate edge name {dup[0]!r}: edge names must be unique")
        seen = set(self._seen_blobs())
        for role, blob in (("source", self.source), ("sink", self.sink)):
            if blob not in seen:
                raise SpecError(f"unknown blob {blob!r} given as {role}: no edge touches it")
        for blob in [*self.channels, *self.width_rules]:
            if blob not in seen:
                raise SpecError(f"unknown blob {blob!r} in 'channels': no edge touches it")
        if self.source == self.sink:
            raise SpecError(f"source and sink are the same blob {self.source!r}")
        order = self.blobs  # raises on a cycle
        if self.in_edges.get(self.source):
            into = ", ".join(e.name for e in self.in_edges[self.source])
            raise SpecError(f"source {self.source!r} has incoming edges ({into}); "
                            "the source must have none")
        if self.out_edges.get(self.sink):
            out = ", ".join(e.name for e in self.out_edges[self.sink])
            raise SpecError(f"sink {self.sink!r} has outgoing edges ({out}); "
                            "the sink must have none")
        from_s = self._reachable(self.source, forward=True)
        to_t = self._reachable(self.sink, forward=False)
        for blob in order:
            if blob in from_s and blob in to_t:
                continue
            why = []
            if blob not in from_s:
                why.append(f"not reachable from {self.source!r}")
            if blob not in to_t:
                why.append(f"cannot reach {self.sink!r}")
            into = ", ".join(e.name for e in self.in_edges.get(blob, ())) or "none"
            out = ", ".join(e.name for e in self.out_edges.get(blob, ())) or "none"
            raise SpecError(f"blob {blob!r} is not on any path from {self.source!r} to "
                            f"{self.sink!r} ({' and '.join(why)}; edges into it: {into}; "
                            f"edges out of it: {out})")
        return self

    def _reachable(self, start: str, forward: bool) -> set[str]:
        adj = self.out_edges if forward else self.in_edges
        seen = {start}
        todo = [start]
        while todo:
            b = todo.pop()
            for e in adj.get(b, ()):
                nxt = e.dst if forward else e.src
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    # -- analysis ------------------------------------------------------------------------
    def path_count(self) -> int:
        """Number of s→t paths, by dynamic programming over blobs (exact Python ints)."""
        count: dict[str, int] = {self.source: 1}
        for b in self.blobs:
            c = count.get(b, 0)
            for e in self.out_edges.get(b, ()):
                count[e.dst] = count.get(e.dst, 0) + c
        return count.get(self.sink, 0)

    def kernel_reach(self, *, to_sink: bool = False) -> dict[str, Kernel]:
        """Kernel of the filter from s to every blob, P(v) (or with ``to_sink`` from every
        blob to t, Q(v)): the largest composed kernel over all paths between them, per
        dimension. Longest-path dynamic programming over blobs in topological order, one
        step per edge; blobs not connected to s (to t) are left out."""
        start = self.sink if to_sink else self.source
        order = reversed(self.blobs) if to_sink else iter(self.blobs)
        adj = self.in_edges if to_sink else self.out_edges
        reach: dict[str, Kernel] = {start: (1, 1)}
        for b in order:
            if b not in reach:
                continue
            for e in adj.get(b, ()):
                nxt = e.src if to_sink else e.dst
                k = compose_kernels(reach[b], e.kernel)
                reach[nxt] = sum_kernels(reach.get(nxt, k), k)
        return {b: reach[b] for b in self.blobs if b in reach}

    def effective_kernel(self) -> Kernel:
        """Largest composed kernel over all s→t paths, per dimension: P(t)'s kernel."""
        return self.kernel_reach()[self.sink]

    def equation(self, max_chars: int = 600,
                 edge_terms: dict[str, tuple[str, bool]] | None = None) -> str:
        """The module equation (eq. 5) as text, factored like eq. 6.

        The filter from s to blob v is P(v) = Σ over edges u→v of F ⊛ P(u), P(s) = identity;
        the equation is G = P(t). Sub-expressions are inlined, which reproduces the paper's
        factoring for module (D). ``edge_terms`` may replace an edge by an expression
        (text, is_a_sum), as the reduction does for the edges of an irreducible remainder.
        Past ``max_chars`` the equation is shown as one line per blob instead: path counts
        can explode, so nothing is ever expanded path by path.
        """
        terms_of = edge_terms or {}
        # blob → (text of P(blob), whether that text is a sum); None: identity at s
        expr: dict[str, tuple[str, bool] | None] = {self.source: None}
        for b in self.blobs[1:]:
            terms = []
            a_sum = False  # a lone term that is itself a sum (an edge from s given as a sum)
            for e in self.in_edges[b]:
                text, is_sum = terms_of.get(e.name, (e.name, False))
                sub = expr[e.src]
                if sub is not None:
                    f = f"({text})" if is_sum else text
                    text = f"{f} ⊛ ({sub[0]})" if sub[1] else f"{f} ⊛ {sub[0]}"
                else:
                    a_sum = a_sum or is_sum
                terms.append(text)
            text = " + ".join(terms)
            if len(text) > max_chars:
                return self._blobwise_equation()
            expr[b] = (text, len(terms) > 1 or a_sum)
        final = expr[self.sink]
        assert final is not None
        return f"G = {final[0]}"

    def _blobwise_equation(self) -> str:
        lines = []
        for b in self.blobs[1:]:
            terms = [e.name if e.src == self.source else f"{e.name} ⊛ P({e.src})"
                     for e in self.in_edges[b]]
            lhs = "G" if b == self.sink else f"P({b})"
            lines.append(f"{lhs} = {' + '.join(terms)}")
        return "\n".join(lines)

    # -- construction helpers ------------------------------------------------------------
    def replace_edges(self, remove: Iterable[str], add: Iterable[Edge],
                      channels: dict[str, int] | None = None) -> ModuleGraph:
        """A new graph with edges ``remove`` taken out and ``add`` appended (unchecked)."""
        gone = set(remove)
        edges = tuple(e for e in self.edges if e.name not in gone) + tuple(add)
        chans = dict(self.channels if channels is None else channels)
        blobs = {b for e in edges for b in (e.src, e.dst)}
        rules = {b: r for b, r in self.width_rules.items() if b in blobs}
        return ModuleGraph(self.source, self.sink, edges, chans, self.name, rules)

    def to_spec(self) -> dict:
        """The JSON spec of this graph (``spec.parse_spec`` reads it back)."""
        spec: dict = {"source": self.source, "sink": self.sink}
        if self.name:
            spec = {"name": self.name, **spec}
        inner: dict[str, int | str] = dict(self.channels)
        inner.update({b: r for b, r in self.width_rules.items() if b not in self.channels})
        if inner:
            spec["channels"] = inner
        spec["edges"] = [
            {"name": e.name, "from": e.src, "to": e.dst,
             "kernel": e.kernel[0] if e.kernel[0] == e.kernel[1] else list(e.kernel)}
            for e in self.edges
        ]
        return spec
