"""ModuleGraph analysis checked against brute force: paths, effective kernel, equation."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from equation_words import expand
from hypothesis import given, settings
from hypothesis import strategies as st

from dag_strategies import dag_modules
from netmorph_cli.errors import SpecError
from netmorph_cli.spec.graph import Edge, ModuleGraph, compose_kernels, sum_kernels
from netmorph_cli.spec.parse import load_spec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "modules"
ODD = st.sampled_from([1, 3, 5])


def all_paths(g: ModuleGraph) -> list[list[Edge]]:
    """Every s→t path as its list of edges, by plain depth-first enumeration."""
    out: list[list[Edge]] = []

    def walk(blob: str, path: list[Edge]) -> None:
        if blob == g.sink:
            out.append(list(path))
            return
        for e in g.edges:
            if e.src == blob:
                path.append(e)
                walk(e.dst, path)
                path.pop()

    walk(g.source, [])
    return out


def path_kernel(path: list[Edge]) -> tuple[int, int]:
    return (sum(e.kernel[0] - 1 for e in path) + 1, sum(e.kernel[1] - 1 for e in path) + 1)


def diamond_chain(n: int, kernel: int = 3) -> ModuleGraph:
    """n diamonds in series: 2**n paths through 4n edges."""
    edges = []
    for i in range(n):
        u, v = ("s" if i == 0 else f"v{i}"), ("t" if i == n - 1 else f"v{i + 1}")
        k = (kernel, kernel)
        edges += [Edge(f"a{i}", u, f"x{i}", k), Edge(f"b{i}", u, f"y{i}", k),
                  Edge(f"c{i}", f"x{i}", v, k), Edge(f"d{i}", f"y{i}", v, k)]
    return ModuleGraph("s", "t", tuple(edges)).check()


# -- kernel arithmetic ----------------------------------------------------------------------
def test_compose_and_sum_kernels():
    assert compose_kernels((3, 3), (3, 3)) == (5, 5)
    assert compose_kernels((1, 3), (5, 1)) == (5, 3)
    assert compose_kernels((1, 1), (7, 3)) == (7, 3)  # 1×1 is the identity's size
    assert sum_kernels((1, 5), (3, 3)) == (3, 5)


# -- brute-force properties -----------------------------------------------------------------
@settings(max_examples=150, deadline=None)
@given(dag_modules(7))
def test_path_count_matches_enumeration(g):
    assert g.path_count() == len(all_paths(g))


@settings(max_examples=150, deadline=None)
@given(dag_modules(7))
def test_effective_kernel_matches_enumeration(g):
    kernels = [path_kernel(p) for p in all_paths(g)]
    assert g.effective_kernel() == (max(k[0] for k in kernels), max(k[1] for k in kernels))


@settings(max_examples=150, deadline=None)
@given(dag_modules(7))
def test_equation_expands_to_exactly_the_paths(g):
    paths = Counter(tuple(e.name for e in p) for p in all_paths(g))
    assert expand(g.equation(max_chars=10**9), g) == paths


@settings(max_examples=100, deadline=None)
@given(dag_modules(7))
def test_blobs_are_in_topological_order(g):
    pos = {b: i for i, b in enumerate(g.blobs)}
    assert len(pos) == len(g.blobs)
    assert g.blobs[0] == g.source and g.blobs[-1] == g.sink
    assert all(pos[e.src] < pos[e.dst] for e in g.edges)
    assert g.find_cycle() == []


# -- known modules --------------------------------------------------------------------------
def test_module_d_equation_is_factored_like_eq6():
    g = load_spec(EXAMPLES / "D.json")
    assert g.equation() == "G = F5 ⊛ F1 + F6 ⊛ (F3 ⊛ F1 + F4 ⊛ F2) + F7 ⊛ F2"
    assert g.path_count() == 4
    assert g.effective_kernel() == (7, 7)


def test_long_equation_falls_back_to_one_line_per_blob():
    g = load_spec(EXAMPLES / "D.json")
    text = g.equation(max_chars=10)
    assert text.splitlines() == [
        "P(a) = F1", "P(b) = F2", "P(c) = F3 ⊛ P(a) + F4 ⊛ P(b)",
        "G = F5 ⊛ P(a) + F6 ⊛ P(c) + F7 ⊛ P(b)",
    ]


@pytest.mark.parametrize("name, paths, kernel", [
    ("A", 1, (5, 5)), ("B", 2, (5, 5)), ("C", 4, (7, 7)), ("resnet", 2, (5, 5)),
    ("morph_1c1", 3, (5, 5)), ("inception", 4, (3, 3)),
])
def test_example_analysis(name, paths, kernel):
    g = load_spec(EXAMPLES / f"{name}.json")
    assert g.path_count() == paths
    assert g.effective_kernel() == kernel


def test_rectangular_effective_kernel_is_per_dimension():
    # paths: 1×3 then 3×1 = 3×3; and 1×5 alone: the maximum per dimension is 3×5
    g = ModuleGraph("s", "t", (Edge("A", "s", "m", (1, 3)), Edge("B", "m", "t", (3, 1)),
                               Edge("C", "s", "t", (1, 5)))).check()
    assert g.effective_kernel() == (3, 5)


def test_path_count_of_diamond_chain_is_exact_without_enumeration():
    n = 200
    g = diamond_chain(n)
    assert len(g.edges) == 4 * n
    assert g.path_count() == 2**n  # exact Python int, far beyond any enumeration
    assert g.effective_kernel() == (1 + 2 * n * 2, 1 + 2 * n * 2)
    text = g.equation()  # would be 2**200 terms expanded; shown per blob instead
    assert len(text.splitlines()) == len(g.blobs) - 1
    assert text.splitlines()[-1] == f"G = c{n - 1} ⊛ P(x{n - 1}) + d{n - 1} ⊛ P(y{n - 1})"


def test_cycle_is_reported_by_blobs_and_find_cycle():
    g = ModuleGraph("s", "t", (Edge("A", "s", "a", (3, 3)), Edge("B", "a", "b", (3, 3)),
                               Edge("C", "b", "a", (3, 3)), Edge("D", "b", "t", (3, 3))))
    assert g.find_cycle() == ["a", "b", "a"]
    with pytest.raises(SpecError, match="a → b → a"):
        g.check()


def test_inner_blobs_and_replace_edges():
    g = load_spec(EXAMPLES / "A.json")
    assert g.inner_blobs() == ["a"]
    h = g.replace_edges(["F1", "F2"], [Edge("G", "s", "t", (5, 5))]).check()
    assert h.edges == (Edge("G", "s", "t", (5, 5)),)
    assert g.edges[0].name == "F1"  # the original is untouched
