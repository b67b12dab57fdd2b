"""Algorithm 1: reduction to M0 or to the irreducible remainder, replay, order independence."""

from __future__ import annotations

import builtins
import gc
import random
import sys
from collections import Counter
from pathlib import Path

import pytest
from equation_words import expand
from hypothesis import given, settings
from hypothesis import strategies as st

from dag_strategies import dag_modules
from netmorph_cli.spec.graph import Edge, ModuleGraph, compose_kernels, sum_kernels
from netmorph_cli.spec.parse import load_spec
from netmorph_cli.spec.reduce import ReductionPlan, _RankedIds, reduce_module, replay

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "modules"
ODD = st.sampled_from([1, 3, 5])
KERNELS = st.tuples(ODD, ODD)  # square and rectangular


@st.composite
def sp_modules(draw, max_morphs: int = 30) -> ModuleGraph:
    """A random series-parallel module: random TYPE-I/TYPE-II morphs from M0 (s→t)."""
    ends = [("s", "t")]
    for _ in range(draw(st.integers(0, max_morphs))):
        i = draw(st.integers(0, len(ends) - 1))
        u, v = ends[i]
        if draw(st.booleans()):  # TYPE-I: u→v becomes u→b→v
            b = f"b{len(ends)}"
            ends[i] = (u, b)
            ends.append((b, v))
        else:  # TYPE-II: a parallel edge
            ends.append((u, v))
    edges = tuple(Edge(f"F{k}", u, v, draw(KERNELS)) for k, (u, v) in enumerate(ends))
    return ModuleGraph("s", "t", edges).check()


any_modules = st.one_of(sp_modules(), dag_modules())


def edge_set(g: ModuleGraph) -> Counter:
    return Counter((e.name, e.src, e.dst, e.kernel) for e in g.edges)


def canonical(g: ModuleGraph) -> tuple:
    """Order- and name-independent form: blob set and sorted multiset of edges."""
    return (frozenset(g.blobs), tuple(sorted((e.src, e.dst, e.kernel) for e in g.edges)))


def check_steps(plan: ReductionPlan) -> None:
    """Each step is a well-formed atomic morph whose kernels add up (eq. 2 and 4)."""
    for step in plan.steps:
        a, b = step.into
        if step.type == "I":
            assert (a.src, a.dst, b.src, b.dst) == \
                (step.edge.src, step.blob, step.blob, step.edge.dst)
            assert step.edge.kernel == compose_kernels(a.kernel, b.kernel)
        else:
            assert step.type == "II" and step.blob is None
            assert (a.src, a.dst) == (b.src, b.dst) == (step.edge.src, step.edge.dst)
            assert step.edge.kernel == sum_kernels(a.kernel, b.kernel)


# -- properties -----------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(sp_modules())
def test_series_parallel_modules_reduce_to_m0(g):
    plan = reduce_module(g)
    assert plan.classification == "simple"
    assert plan.simple
    (m0,) = plan.remainder.edges
    assert (m0.src, m0.dst) == ("s", "t")
    assert m0.kernel == g.effective_kernel()
    assert len(plan.steps) == len(g.edges) - 1  # every atomic morph adds one edge
    if plan.steps:
        assert plan.steps[0].edge == m0  # morph order starts at M0
    check_steps(plan)


@settings(max_examples=200, deadline=None)
@given(any_modules)
def test_replaying_the_steps_rebuilds_the_module(g):
    plan = reduce_module(g)
    rebuilt = replay(plan.remainder, plan.steps)
    assert edge_set(rebuilt) == edge_set(g)
    assert (rebuilt.source, rebuilt.sink) == (g.source, g.sink)


@settings(max_examples=200, deadline=None)
@given(dag_modules())
def test_remainder_of_a_dag_is_irreducible(g):
    plan = reduce_module(g)
    rem = plan.remainder.check()
    for b in rem.inner_blobs():
        assert not (len(rem.in_edges[b]) == 1 and len(rem.out_edges[b]) == 1), b
    pairs = Counter((e.src, e.dst) for e in rem.edges)
    assert max(pairs.values()) == 1, pairs
    # every reduction keeps the module's function, so its kernel size too
    assert rem.effective_kernel() == g.effective_kernel()
    assert plan.simple == (len(rem.edges) == 1)
    check_steps(plan)


@settings(max_examples=100, deadline=None)
@given(any_modules, st.lists(st.integers(0, 2**32), min_size=3, max_size=3))
def test_remainder_does_not_depend_on_reduction_order(g, seeds):
    expected = canonical(reduce_module(g).remainder)
    for seed in seeds:
        assert canonical(reduce_module(g, rng=random.Random(seed)).remainder) == expected
        shuffled = list(g.edges)
        random.Random(seed).shuffle(shuffled)
        h = ModuleGraph(g.source, g.sink, tuple(shuffled)).check()
        assert canonical(reduce_module(h).remainder) == expected
        assert canonical(reduce_module(h, rng=random.Random(seed + 1)).remainder) == expected


@settings(max_examples=100, deadline=None)
@given(any_modules)
def test_factored_equation_expands_to_the_module_equation(g):
    plan = reduce_module(g)
    assert expand(plan.equation(max_chars=10**9), g) == expand(g.equation(max_chars=10**9), g)


@settings(max_examples=50, deadline=None)
@given(any_modules, st.integers(0, 2**32))
def test_random_order_plans_replay_too(g, seed):
    plan = reduce_module(g, rng=random.Random(seed))
    assert edge_set(replay(plan.remainder, plan.steps)) == edge_set(g)
    check_steps(plan)


# -- known modules --------------------------------------------------------------------------
def test_module_d_is_complex_and_irreducible():
    g = load_spec(EXAMPLES / "D.json")
    plan = reduce_module(g)
    assert plan.classification == "complex"
    assert plan.steps == ()
    assert edge_set(plan.remainder) == edge_set(g)
    out = plan.to_json()
    assert out["classification"] == "complex"
    assert len(out["irreducible"]["edges"]) == 7
    assert set(out["irreducible"]["blobs"]) == {"s", "a", "b", "c", "t"}
    assert out["paths"] == 4
    assert out["effective_kernel"] == [7, 7]
    assert out["steps"] == []
    assert out["equation"] == "G = F5 ⊛ F1 + F6 ⊛ (F3 ⊛ F1 + F4 ⊛ F2) + F7 ⊛ F2"


@pytest.mark.parametrize("name", ["A", "B", "C", "resnet", "morph_1c1", "inception"])
def test_examples_are_simple_morphable(name):
    g = load_spec(EXAMPLES / f"{name}.json")
    plan = reduce_module(g)
    assert plan.classification == "simple"
    assert plan.to_json()["irreducible"] is None
    assert len(plan.steps) == len(g.edges) - 1
    first = plan.steps[0]
    assert (first.edge.name, first.edge.src, first.edge.dst) == ("G", "s", "t")
    assert first.edge.kernel == g.effective_kernel()
    assert edge_set(replay(plan.remainder, plan.steps)) == edge_set(g)


def test_module_c_plan_and_equation():
    plan = reduce_module(load_spec(EXAMPLES / "C.json"))
    assert [(s.type, s.edge.name) for s in plan.steps][:2] == [("II", "G"), ("I", "G1")]
    assert plan.equation() == "G = F7 + (F6 ⊛ F5 + F4 ⊛ (F2 + F3)) ⊛ F1"
    step = plan.steps[0].to_json()
    assert step["type"] == "II" and step["edge"] == "G" and step["into"][0] == "F7"
    assert step["kernel"] == [7, 7] and "blob" not in step
    assert plan.steps[1].to_json()["blob"] == "a"


def test_reduced_sum_out_of_the_source_is_parenthesized():
    # s→v3 reduces to the sum F2 + F3 ⊛ F0; as P(v3) it must stay one factor of F5 and F4
    # (found by test_factored_equation_expands_to_the_module_equation)
    k = (1, 1)
    g = ModuleGraph("s", "t", (
        Edge("F0", "s", "v1", k), Edge("F1", "s", "v2", k), Edge("F2", "s", "v3", k),
        Edge("F3", "v1", "v3", k), Edge("F4", "v3", "v4", k), Edge("F5", "v3", "t", k),
        Edge("F6", "v2", "v4", k), Edge("F7", "v4", "t", k))).check()
    plan = reduce_module(g)
    assert plan.classification == "complex"
    assert plan.equation() == \
        "G = F5 ⊛ (F2 + F3 ⊛ F0) + F7 ⊛ (F4 ⊛ (F2 + F3 ⊛ F0) + F6 ⊛ F1)"


def test_complex_core_with_reducible_parts_reduces_to_d():
    d = load_spec(EXAMPLES / "D.json")
    k3, k1 = (3, 3), (1, 1)
    # F3 (a→c) becomes a chain a→m→c (1×1 then 3×3 = 3×3); F7 (b→t) a parallel pair (3 + 1);
    # F1 (s→a) a parallel pair whose second branch is itself a chain.
    edges = [e for e in d.edges if e.name not in ("F1", "F3", "F7")] + [
        Edge("P1", "a", "m", k1), Edge("P2", "m", "c", k3),
        Edge("Q1", "b", "t", k3), Edge("Q2", "b", "t", k1),
        Edge("S1", "s", "a", k1), Edge("S2", "s", "n", k1), Edge("S3", "n", "a", k3),
    ]
    g = ModuleGraph("s", "t", tuple(edges)).check()
    plan = reduce_module(g)
    assert plan.classification == "complex"
    assert canonical(plan.remainder) == canonical(d)
    assert len(plan.steps) == len(g.edges) - len(d.edges)
    kept = {e.name for e in plan.remainder.edges}
    assert {"F2", "F4", "F5", "F6"} <= kept
    assert edge_set(replay(plan.remainder, plan.steps)) == edge_set(g)
    # D's paths F5F1, F6F3F1 (F1 doubled), F7F2 (F7 doubled) and F6F4F2
    assert plan.to_json()["paths"] == g.path_count() == 2 * 2 + 2 + 1


def test_single_edge_module_is_m0_itself():
    g = ModuleGraph("s", "t", (Edge("W", "s", "t", (3, 5)),)).check()
    plan = reduce_module(g)
    assert plan.simple and plan.steps == ()
    assert plan.remainder.edges == g.edges


def test_created_names_never_clash_with_the_modules_own():
    g = ModuleGraph("s", "t", (Edge("G", "s", "a", (3, 3)), Edge("G1", "a", "t", (3, 3)),
                               Edge("R", "s", "t", (1, 1)))).check()
    plan = reduce_module(g)
    names = [e.name for st_ in plan.steps for e in st_.into] + [plan.remainder.edges[0].name]
    assert len(names) == len(set(names)) == 2 * len(plan.steps) + 1
    assert plan.steps[0].edge.name not in {"G", "G1", "R"}


def test_large_series_parallel_module_reduces_without_recursion():
    rng = random.Random(1)
    ends = [("s", "t")]
    for _ in range(5000):
        i = rng.randrange(len(ends))
        u, v = ends[i]
        if rng.random() < 0.5:
            b = f"b{len(ends)}"
            ends[i] = (u, b)
            ends.append((b, v))
        else:
            ends.append((u, v))
    g = ModuleGraph("s", "t", tuple(Edge(f"e{k}", u, v, (3, 3))
                                    for k, (u, v) in enumerate(ends))).check()
    plan = reduce_module(g)
    assert plan.simple and len(plan.steps) == len(g.edges) - 1
    assert plan.remainder.edges[0].kernel == g.effective_kernel()


@pytest.mark.parametrize("enabled", [True, False])
def test_reduce_restores_the_garbage_collector_state(enabled):
    was = gc.isenabled()
    try:
        (gc.enable if enabled else gc.disable)()
        reduce_module(load_spec(EXAMPLES / "C.json"))
        assert gc.isenabled() == enabled
    finally:
        (gc.enable if was else gc.disable)()


# -- work grows linearly with the number of edges (issue 13) --------------------------------
SCANS = ("sorted", "min", "max", "list", "tuple", "set", "sum")  # builtins that scan


def reduction_work(g: ModuleGraph, rng: random.Random | None,
                   monkeypatch: pytest.MonkeyPatch) -> int:
    """The work of ``reduce_module(g, rng)``, counted without a clock: Python bytecodes run
    in every frame, plus the elements handed from reduce.py to the C builtins that scan a
    whole container (a sorted() per TYPE-II merge was the quadratic part; bytecodes cannot
    see inside it)."""
    import netmorph_cli.spec.reduce as red

    count = 0

    def counted(fn):
        def wrapper(*args, **kwargs):
            nonlocal count
            if len(args) == 1 and hasattr(args[0], "__len__"):
                count += len(args[0])
            return fn(*args, **kwargs)
        return wrapper

    def per_opcode(frame, event, arg):
        nonlocal count
        count += event == "opcode"
        return per_opcode

    def per_call(frame, event, arg):
        frame.f_trace_opcodes = True
        return per_opcode

    with monkeypatch.context() as m:
        for name in SCANS:  # module globals shadow the builtins
            m.setattr(red, name, counted(getattr(builtins, name)), raising=False)
        previous = sys.gettrace()
        sys.settrace(per_call)
        try:
            reduce_module(g, rng=rng)
        finally:
            sys.settrace(previous)
    return count


def parallel_ends(n: int) -> list[tuple[str, str]]:
    return [("s", "t")] * n


def chain_ends(n: int) -> list[tuple[str, str]]:
    blobs = ["s"] + [f"b{i}" for i in range(1, n)] + ["t"]
    return [(blobs[i], blobs[i + 1]) for i in range(n)]


def wide_ends(n: int) -> list[tuple[str, str]]:
    """Branches s ⇉ a ⇉ b ⇉ t of 1–3 parallel edges per link, among parallel s→t edges."""
    rng = random.Random(0)
    ends: list[tuple[str, str]] = []
    while len(ends) + 9 <= n:
        if rng.random() < 0.2:
            ends.append(("s", "t"))
            continue
        a, b = f"a{len(ends)}", f"b{len(ends)}"
        for link in (("s", a), (a, b), (b, "t")):
            ends += [link] * rng.randint(1, 3)
    return ends + [("s", "t")] * (n - len(ends))


@pytest.mark.parametrize("seed", [None, 1], ids=["in order", "random order"])
@pytest.mark.parametrize("shape", [parallel_ends, chain_ends, wide_ends],
                         ids=["parallel", "chain", "wide"])
def test_reduction_work_is_linear_in_the_edges(shape, seed, monkeypatch):
    # 4× the edges must cost about 4× the work: linear is 4.0, the random order's rank
    # lookups (log n) 4.3; the old sort per merge made 4,000 parallel edges cost ~9× 1,000.
    work = []
    for n in (1000, 4000):
        g = ModuleGraph("s", "t", tuple(Edge(f"F{i}", u, v, (3, 3))
                                        for i, (u, v) in enumerate(shape(n)))).check()
        work.append(reduction_work(g, None if seed is None else random.Random(seed),
                                   monkeypatch))
    assert work[1] <= 5 * work[0], f"work {work[0]} → {work[1]} ({work[1] / work[0]:.1f}×)"


def test_parallel_edges_merge_in_the_same_order_as_before():
    # the bundle structures replace sorted(ids)[:2] and rng.sample(sorted(ids), 2); the
    # plans must not change (26 edges: rng.sample's set-based branch, above 21, too)
    g = ModuleGraph("s", "t", tuple(Edge(f"F{i}", "s", "t", (1 + 2 * (i % 3), 3))
                                    for i in range(26))).check()

    def merges(rng):
        plan = reduce_module(g, rng=rng)
        return " ".join(f"{s.into[0].name}+{s.into[1].name}" for s in reversed(plan.steps))

    assert merges(None) == (
        "F0+F1 F2+F3 F4+F5 F6+F7 F8+F9 F10+F11 F12+F13 F14+F15 F16+F17 F18+F19 F20+F21 "
        "F22+F23 F24+F25 G23+G24 G21+G22 G19+G20 G17+G18 G15+G16 G13+G14 G11+G12 G9+G10 "
        "G7+G8 G5+G6 G3+G4 G1+G2")
    assert merges(random.Random(7)) == (
        "F4+F12 F2+F19 F14+F22 F21+F8 F3+F18 F5+F11 G24+F25 G23+F7 F1+G22 F17+F6 G21+F20 "
        "G20+F9 G18+G19 F10+G17 F24+F13 G16+F0 G14+G15 G12+G13 G11+F23 G10+F16 F15+G9 "
        "G7+G8 G5+G6 G3+G4 G1+G2")


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 2), max_size=300), st.integers(0, 2**32))
def test_ranked_ids_match_a_sorted_list(ops, seed):
    rng = random.Random(seed)
    ranked, reference, next_id = _RankedIds(), [], 0
    for op in ops:
        if op and reference:  # remove one at random
            i = reference.pop(rng.randrange(len(reference)))
            ranked.remove(i)
        else:  # append a larger id, sometimes skipping some
            next_id += rng.randint(1, 3)
            ranked.append(next_id)
            reference.append(next_id)
        assert len(ranked) == len(reference)
        assert [ranked[r] for r in range(len(reference))] == reference
