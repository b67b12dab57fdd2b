"""Hypothesis strategies for module DAGs, shared by the graph and reduction tests."""

from __future__ import annotations

from hypothesis import strategies as st

from netmorph_cli.spec.graph import Edge, ModuleGraph

ODD = st.sampled_from([1, 3, 5])
KERNELS = st.tuples(ODD, ODD)  # square and rectangular


@st.composite
def dag_modules(draw, max_blobs: int = 8) -> ModuleGraph:
    """A random single-source single-sink DAG over blobs 0..n-1 (0 = s, n-1 = t).

    Random edges i→j (i < j, parallel edges allowed), then for every blob without a
    predecessor (successor) an edge from (to) a random earlier (later) blob, so every blob
    lies on an s→t path. Kernels are random odd sizes, rectangular ones included.
    """
    n = draw(st.integers(2, max_blobs))
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    ends = list(draw(st.lists(st.sampled_from(pairs), max_size=2 * n)))
    for b in range(1, n):
        if not any(j == b for _, j in ends):
            ends.append((draw(st.integers(0, b - 1)), b))
    for b in range(n - 1):
        if not any(i == b for i, _ in ends):
            ends.append((b, draw(st.integers(b + 1, n - 1))))
    name = {0: "s", n - 1: "t"}
    edges = tuple(Edge(f"F{k}", name.get(i, f"v{i}"), name.get(j, f"v{j}"), draw(KERNELS))
                  for k, (i, j) in enumerate(ends))
    return ModuleGraph("s", "t", edges).check()
