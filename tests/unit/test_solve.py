"""Atomic splits, TYPE-I decompositions, Algorithm 2 and ``morph_filter``.

Tolerances (all relative, ‖·‖ = Frobenius norm):
- SIMPLE_F64 = 1e-12: atomic splits and the simple example modules in float64 (a handful
  of exact constructions and small least-squares solves; observed ≲ 1e-14).
- ITER_F64 = 1e-10 / ITER_F32 = 1e-6: Algorithm 2 (module D) — the solver's own default
  tolerances in float64 / float32, as in the issue.
- CONV_F64 = 1e-10: the independent check that running a solved module's filters as real
  convolutions on an image equals convolving with G itself (float64).
- the cut-only stall of D with widths = C: 1e-3 < residual < 1e-1 ("stalls near 1e-2").
"""

from __future__ import annotations

import dataclasses
import json
import math
import re

import pytest
import torch
import torch.nn.functional as F
from conv_reference import relative_error, run_module

from netmorph_cli.base import limits
from netmorph_cli.errors import InfeasibleError, ResourceLimitError, SolverTimeout
from netmorph_cli.solver import budget, solve, sweeps
from netmorph_cli.solver.algebra import (
    add,
    compose,
    identity_filter,
    kernel_of,
    module_function,
    pad_to,
    prefix_filters,
    resize,
    suffix_filters,
    support,
)
from netmorph_cli.solver.budget import SolveProgress, solve_memory
from netmorph_cli.solver.feasibility import (
    _Capacity,
    min_vertex_cut,
    polynomial_rank,
    solve_blocks,
    too_narrow,
    width_advice,
)
from netmorph_cli.solver.lsq import dense_lstsq, dense_matrix, dense_min_norm, lsqr
from netmorph_cli.solver.rng import SeededRng
from netmorph_cli.solver.solve import module_widths, morph_filter, relative_residual, solve_random
from netmorph_cli.solver.splits import decompose_type1, split_type2, unimodular_pair
from netmorph_cli.solver.sweeps import algorithm2, compact_prefixes, edge_map, solve_linear
from netmorph_cli.spec.graph import Edge, ModuleGraph
from netmorph_cli.spec.parse import load_spec, spec_from_dict

SIMPLE_F64 = 1e-12
ITER_F64, ITER_F32 = 1e-10, 1e-6
CONV_F64 = 1e-10

SIMPLE_MODULES = ["A", "B", "C", "resnet", "morph_1c1", "inception"]


@pytest.fixture(scope="module")
def modules(request) -> dict[str, ModuleGraph]:
    root = request.config.rootpath / "examples" / "modules"
    return {p.stem: load_spec(p) for p in root.glob("*.json")}


def rng(seed: int = 0, dtype: torch.dtype = torch.float64) -> SeededRng:
    return SeededRng(seed, dtype, "cpu")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ in the extended sense (both padded to the larger kernel)."""
    return float(torch.linalg.vector_norm(add(a, -b)) / torch.linalg.vector_norm(b))


def off_centre(f: torch.Tensor) -> torch.Tensor:
    g = f.clone()
    g[..., f.shape[-2] // 2, f.shape[-1] // 2] = 0
    return g


def assert_conv_exact(graph: ModuleGraph, filters: dict[str, torch.Tensor], g: torch.Tensor,
                      tol: float = CONV_F64) -> None:
    """The independent check: the module as real convolutions on a random image equals
    one convolution with G (zero-padded to the effective kernel), unpadded."""
    k = graph.effective_kernel()
    x = torch.randn(2, g.shape[1], k[0] + 8, k[1] + 8, dtype=g.dtype,
                    generator=torch.Generator().manual_seed(42))
    assert relative_error(run_module(graph, filters, x), F.conv2d(x, pad_to(g, k))) <= tol


# -- TYPE-II --------------------------------------------------------------------------------

@pytest.mark.parametrize("gk,ka,kb", [
    ((3, 3), (3, 3), (3, 3)),
    ((3, 3), (3, 3), (1, 1)),
    ((3, 3), (1, 1), (3, 3)),
    ((3, 3), (5, 5), (3, 3)),
    ((1, 3), (1, 3), (3, 1)),
    ((3, 1), (1, 1), (5, 3)),
    ((1, 1), (1, 3), (3, 1)),
])
def test_split_type2_is_exact_and_both_parts_random(gk, ka, kb):
    g = rng(1).filter(6, 5, gk)
    fa, fb = split_type2(g, ka, kb, rng(2))
    assert kernel_of(fa) == ka and kernel_of(fb) == kb
    assert fa.shape[:2] == fb.shape[:2] == (6, 5)
    assert rel(add(fa, fb), g) <= SIMPLE_F64
    gn = float(torch.linalg.vector_norm(g))
    # both parts carry a random share of G, not G and zero
    assert float(torch.linalg.vector_norm(fa)) > 0.1 * gn
    assert float(torch.linalg.vector_norm(fb)) > 0.1 * gn
    fa2, fb2 = split_type2(g, ka, kb, rng(3))
    assert not torch.allclose(fa, fa2) and not torch.allclose(fb, fb2)


@pytest.mark.parametrize("gk,ka,kb", [((3, 3), (1, 1), (1, 1)), ((3, 3), (1, 3), (3, 1)),
                                      ((5, 5), (3, 3), (3, 5))])
def test_split_type2_refuses_impossible_supports(gk, ka, kb):
    with pytest.raises(InfeasibleError, match="TYPE-II split impossible"):
        split_type2(rng(1).filter(3, 3, gk), ka, kb, rng(2))


# -- TYPE-I ---------------------------------------------------------------------------------

def test_decompose_type1_deconvolution_random_first_factor():
    # eq. 3 holds on both sides (12·9 ≥ 4·25); with equal slack F1 is the random factor
    g = rng(1).filter(4, 4, (3, 3))
    f1, f2, ways = decompose_type1(g, (3, 3), (3, 3), 12, rng(2), tol=ITER_F64)
    assert ways == ("deconvolution (random factor)", "deconvolution (least squares)")
    assert f1.shape == (12, 4, 3, 3) and f2.shape == (4, 12, 3, 3)
    assert rel(compose(f2, f1), g) <= SIMPLE_F64


def test_decompose_type1_deconvolution_random_second_factor():
    # eq. 3 only with F2 random: C_l·K1² = 12·9 ≥ C_j·25 = 100, but C_l·K2² < C_i·25 = 200
    g = rng(1).filter(4, 8, (3, 3))
    f1, f2, ways = decompose_type1(g, (3, 3), (3, 3), 12, rng(2), tol=ITER_F64)
    assert ways[1] == "deconvolution (random factor)"
    assert ways[0] == "deconvolution (least squares)"
    assert rel(compose(f2, f1), g) <= SIMPLE_F64


@pytest.mark.parametrize("c", [4, 8, 16])
def test_decompose_type1_unimodular_for_half_identity(c):
    """0.5·I through 3×3 then 3×3 at equal widths: eq. 3 fails (c·9 < c·25), yet the
    unimodular construction is exact and non-degenerate."""
    g = 0.5 * identity_filter(c)
    f1, f2, ways = decompose_type1(g, (3, 3), (3, 3), c, rng(3), tol=ITER_F64)
    assert ways == ("unimodular", "unimodular")
    h = compose(f2, f1)
    assert rel(h, g) <= SIMPLE_F64
    assert float(torch.linalg.vector_norm(add(h, -g))) <= SIMPLE_F64 * math.sqrt(c)
    for f in (f1, f2):
        assert f.shape == (c, c, 3, 3)
        for i in range(3):
            for j in range(3):
                if (i, j) != (1, 1):  # every off-centre tap is a non-zero matrix
                    assert float(f[:, :, i, j].abs().max()) > 1e-3
        assert torch.linalg.matrix_rank(f[:, :, 1, 1]) == c  # centre tap invertible


def test_decompose_type1_unimodular_into_wider_middle():
    g = 0.5 * identity_filter(6)
    f1, f2, ways = decompose_type1(g, (3, 3), (1, 3), 9, rng(3), tol=ITER_F64)
    assert ways == ("unimodular", "unimodular")
    assert f1.shape == (9, 6, 3, 3) and f2.shape == (6, 9, 1, 3)
    assert rel(compose(f2, f1), g) <= SIMPLE_F64


def test_decompose_type1_identity_padding_filter_first():
    # G 3×3 through 3×3 then 3×3 at width 4: eq. 3 fails, G fits the first kernel
    g = rng(1).filter(4, 4, (3, 3))
    f1, f2, ways = decompose_type1(g, (3, 3), (3, 3), 4, rng(2), tol=ITER_F64)
    assert ways == ("identity-padding (filter)", "identity-padding (embedding)")
    assert rel(compose(f2, f1), g) <= SIMPLE_F64


def test_decompose_type1_identity_padding_filter_second():
    # G 3×3 through 1×3 then 3×3: G fits only the second kernel; eq. 3 fails (4·9 < 4·15)
    g = rng(1).filter(4, 4, (3, 3))
    f1, f2, ways = decompose_type1(g, (1, 3), (3, 3), 4, rng(2), tol=ITER_F64)
    assert ways == ("identity-padding (embedding)", "identity-padding (filter)")
    assert kernel_of(f1) == (1, 3) and kernel_of(f2) == (3, 3)
    assert rel(compose(f2, f1), g) <= SIMPLE_F64


def test_decompose_type1_infeasible_names_eq3_and_smallest_width():
    # a full 5×5 G into 3×3 ⊛ 3×3: no structured split applies; eq. 3 needs ⌈4·25/9⌉ = 12
    g = rng(1).filter(4, 4, (5, 5))
    with pytest.raises(InfeasibleError) as info:
        decompose_type1(g, (3, 3), (3, 3), 11, rng(2), tol=ITER_F64)
    msg = str(info.value)
    assert "eq. 3" in msg and "C_j·C_i·(K1+K2−1)²" in msg
    assert "at least 12" in msg and "through 11 channels" in msg
    f1, f2, _ = decompose_type1(g, (3, 3), (3, 3), 12, rng(2), tol=ITER_F64)
    assert rel(compose(f2, f1), g) <= SIMPLE_F64


def test_decompose_type1_infeasible_advises_a_structured_width_when_smaller():
    g = rng(1).filter(4, 4, (3, 3))
    with pytest.raises(InfeasibleError, match="needs only a middle width of 4$"):
        decompose_type1(g, (3, 3), (3, 3), 3, rng(2), tol=ITER_F64)
    f1, f2, _ = decompose_type1(g, (3, 3), (3, 3), 4, rng(2), tol=ITER_F64)
    assert rel(compose(f2, f1), g) <= SIMPLE_F64


def test_decompose_type1_refuses_a_filter_larger_than_the_composed_kernel():
    with pytest.raises(InfeasibleError, match="cannot be split"):
        decompose_type1(rng(1).filter(2, 2, (5, 5)), (1, 1), (3, 3), 50, rng(2), tol=ITER_F64)


@pytest.mark.parametrize("c", [1, 2, 5, 8])
@pytest.mark.parametrize("k", [(1, 1), (3, 3), (1, 3), (5, 3)])
def test_unimodular_pair_is_inverse(c, k):
    v, v_inv = unimodular_pair(c, k, rng(7))
    eye = identity_filter(c, dtype=torch.float64)
    assert rel(compose(v_inv, v), eye) <= SIMPLE_F64
    assert rel(compose(v, v_inv), eye) <= SIMPLE_F64
    if c >= 2 and k != (1, 1):  # a genuine polynomial matrix, not a constant one
        assert float(off_centre(v).abs().max()) > 1e-3


# -- morph_filter on the examples -------------------------------------------------------

@pytest.mark.parametrize("name", SIMPLE_MODULES)
@pytest.mark.parametrize("gk", [(3, 3), (1, 1)])
def test_morph_filter_simple_modules_exact(modules, name, gk):
    graph = modules[name]
    g = rng(11).filter(16, 16, gk)
    res = morph_filter(g, graph, seed=0)
    assert res.residual <= SIMPLE_F64
    assert relative_residual(graph, res.filters, g) == res.residual
    widths = module_widths(graph, 16, 16)
    for e in graph.edges:
        assert res.filters[e.name].shape == (widths[e.dst], widths[e.src], *e.kernel)
        assert res.filters[e.name].dtype == torch.float64
    assert_conv_exact(graph, res.filters, g)


def test_morph_filter_half_identity_into_resnet_presets(modules):
    """The paper's use: ResNet's 0.5·I shortcut half into 1c1 / 3c3 style branches."""
    for name in ("resnet", "morph_1c1"):
        g = 0.5 * identity_filter(16)
        res = morph_filter(g, modules[name], seed=1)
        assert res.residual <= SIMPLE_F64
        assert_conv_exact(modules[name], res.filters, g)


def test_morph_filter_d_float64(modules):
    graph = modules["D"]
    g = rng(5).filter(16, 16, (3, 3))
    res = morph_filter(g, graph, seed=0)
    assert res.residual <= ITER_F64
    assert res.sweeps >= 1 and len(res.history) == res.sweeps
    assert res.history[-1] == pytest.approx(res.residual, rel=1e-3, abs=1e-14)
    assert set(res.methods.values()) == {"algorithm-2"}
    assert_conv_exact(graph, res.filters, g)


def test_morph_filter_d_float32(modules):
    graph = modules["D"]
    g = rng(5, torch.float32).filter(16, 16, (3, 3))
    res = morph_filter(g, graph, seed=0)
    assert res.residual <= ITER_F32
    assert all(f.dtype == torch.float32 for f in res.filters.values())
    # the float32 filters, evaluated in float64, still reproduce G to float32 accuracy
    f64 = {k: f.double() for k, f in res.filters.items()}
    assert relative_residual(graph, f64, g.double()) <= ITER_F32
    assert_conv_exact(graph, f64, g.double(), tol=ITER_F32)


def test_d_filters_are_full_rank_and_well_conditioned(modules):
    graph = modules["D"]
    res = morph_filter(rng(5).filter(16, 16, (3, 3)), graph, seed=0)
    for name, f in res.filters.items():
        m = f.reshape(f.shape[0], -1)  # (C_out, C_in·kh·kw)
        assert torch.linalg.matrix_rank(m) == min(m.shape), name
        assert math.isfinite(res.conditioning[name]) and res.conditioning[name] < 1e4, name


def assert_off_centre_taps_live(res) -> None:
    for name, f in res.filters.items():
        n = float(torch.linalg.vector_norm(f))
        assert float(torch.linalg.vector_norm(off_centre(f))) > 0.1 * n, name


def test_d_filters_have_live_off_centre_taps(modules):
    # w = 2.5·C < 3·C: from random filters the ring of F6 ⊛ P(c) pins F6's off-centre taps
    # to zero in every exact solve; Algorithm 2 starts from compact prefixes instead
    graph = dataclasses.replace(modules["D"], channels={"a": 40, "b": 40, "c": 40})
    res = morph_filter(rng(5).filter(16, 16, (3, 3)), graph, seed=0)
    assert_off_centre_taps_live(res)


def response_at_c(f: dict[str, torch.Tensor], c: int) -> torch.Tensor:
    """Blob c of module D for a unit impulse in each input channel (direct convolutions,
    each padded 'same'; the 9×9 image is large enough that no border is reached)."""
    x = torch.zeros(c, c, 9, 9, dtype=torch.float64)
    x[range(c), range(c), 4, 4] = 1
    a, b = F.conv2d(x, f["F1"], padding=1), F.conv2d(x, f["F2"], padding=1)
    return F.conv2d(a, f["F3"], padding=1) + F.conv2d(b, f["F4"], padding=1)


def test_compact_prefixes_keep_each_prefix_to_its_own_kernel(modules):
    """From random filters blob c of D sees a 5×5 neighbourhood of the input; the compact
    start corrects F3 and F4 (only) so that it sees 3×3, as its own in-edges do."""
    graph = dataclasses.replace(modules["D"], channels={"a": 20, "b": 20, "c": 20})
    widths = module_widths(graph, 8, 8)
    r = rng(3)
    random = {e.name: r.filter(widths[e.dst], widths[e.src], e.kernel) for e in graph.edges}
    compact = compact_prefixes(graph, random, 8, (3, 3))
    assert compact is not None
    ring = torch.ones(9, 9, dtype=torch.bool)
    ring[3:6, 3:6] = False  # the impulse at (4, 4) and its 3×3 neighbourhood
    before, after = response_at_c(random, 8), response_at_c(compact, 8)
    assert float(before[..., ring].abs().max()) > 0.1 * float(before.abs().max())
    assert float(after[..., ring].abs().max()) <= 1e-12 * float(after.abs().max())
    changed = {k for k in random if not torch.equal(random[k], compact[k])}
    assert changed == {"F3", "F4"}


def test_compact_start_is_skipped_when_the_layer_needs_the_whole_kernel(modules):
    """A 7×7 layer needs D's full 7×7 reach, which compact prefixes (5×5) do not have: the
    plain random start is used, and the solve is exact."""
    graph = dataclasses.replace(modules["D"], channels={"a": 40, "b": 40, "c": 40})
    widths = module_widths(graph, 8, 8)
    r = rng(4)
    random = {e.name: r.filter(widths[e.dst], widths[e.src], e.kernel) for e in graph.edges}
    assert compact_prefixes(graph, random, 8, (7, 7)) is None
    assert compact_prefixes(graph, random, 8, (5, 5)) is not None
    res = morph_filter(rng(5).filter(8, 8, (7, 7)), graph, seed=0)
    assert res.residual <= ITER_F64


def test_d_filters_have_live_off_centre_taps_above_3c(modules):
    # w = 25 > 3·C = 24: the sink cut's ring equations no longer pin F6's off-centre taps
    graph = dataclasses.replace(modules["D"], channels={"a": 25, "b": 25, "c": 25})
    res = morph_filter(rng(5).filter(8, 8, (3, 3)), graph, seed=0)
    assert res.residual <= ITER_F64
    assert_off_centre_taps_live(res)


@pytest.mark.parametrize("name", SIMPLE_MODULES + ["D"])
def test_methods_name_every_edge(modules, name):
    graph = modules[name]
    res = morph_filter(rng(2).filter(8, 8, (3, 3)), graph, seed=0)
    names = {e.name for e in graph.edges}
    assert set(res.methods) == names == set(res.filters) == set(res.conditioning)
    known = ("type-I ", "type-II ", "algorithm-2", "given")
    assert all(m.startswith(known) for m in res.methods.values()), res.methods
    js = res.to_json()
    assert json.loads(json.dumps(js))["methods"] == res.methods
    assert {"residual", "seconds", "sweeps", "history"} <= set(js)


def test_morph_filter_reports_the_route(modules):
    # A: simple → atomic splits only, no Algorithm 2 sweep
    res = morph_filter(rng(2).filter(8, 8, (3, 3)), modules["A"], seed=0)
    assert res.sweeps == 0 and res.history == ()
    assert all(m.startswith("type-I ") for m in res.methods.values())
    # forcing Algorithm 2 on a module where one block can absorb G̃ works too
    res = morph_filter(rng(2).filter(8, 8, (3, 3)), modules["D"], seed=0,
                       method="algorithm2")
    assert set(res.methods.values()) == {"algorithm-2"} and res.residual <= ITER_F64
    with pytest.raises(ValueError, match="unknown method"):
        morph_filter(rng(2).filter(8, 8, (3, 3)), modules["A"], method="magic")


def test_morph_filter_refuses_a_too_small_effective_kernel():
    graph = ModuleGraph("s", "t", (Edge("F1", "s", "a", (1, 1)),
                                   Edge("F2", "a", "t", (1, 3)))).check()
    with pytest.raises(InfeasibleError, match="effective kernel 1×3 is smaller"):
        morph_filter(rng(1).filter(4, 4, (3, 3)), graph)


# module B with a 5×5 first edge: the reduction splits G̃ (7×7) by TYPE-II off the 3×3 skip
# F3, then by TYPE-I with identity padding, which leaves F1 a 3×3 filter in a zero ring
B5_EDGES = [("F1", "s", "a", 5), ("F2", "a", "t", 3), ("F3", "s", "t", 3)]


def test_algorithm2_fills_the_kernel_the_reduction_leaves_zero():
    graph = spec("B5", B5_EDGES)
    g = rng(1).filter(8, 8, (3, 3))
    auto = morph_filter(g, graph, seed=0)
    assert support(auto.filters["F1"]) == (3, 3) and auto.sweeps == 0
    whole = morph_filter(g, graph, seed=0, method="algorithm2")
    assert set(whole.methods.values()) == {"algorithm-2"} and whole.sweeps >= 1
    assert all(support(whole.filters[e.name]) == e.kernel for e in graph.edges)
    ring = whole.filters["F1"].clone()
    ring[..., 1:4, 1:4] = 0
    assert float(torch.linalg.vector_norm(ring)) > 0.1 * float(
        torch.linalg.vector_norm(whole.filters["F1"]))  # live, not rounding noise
    assert whole.residual <= ITER_F64
    assert_conv_exact(graph, whole.filters, g)
    # auto took the reduction route without its fallback: the same filters as "reduce"
    red = morph_filter(g, graph, seed=0, method="reduce")
    assert all(torch.equal(auto.filters[k], red.filters[k]) for k in auto.filters)


def test_solve_random_passes_the_method_on():
    graph = spec("B5", B5_EDGES)
    default = solve_random(graph, channels=8, seed=2)
    auto = solve_random(graph, channels=8, seed=2, method="auto")
    assert all(torch.equal(default.filters[k], auto.filters[k]) for k in default.filters)
    assert default.methods == auto.methods and default.residual == auto.residual
    whole = solve_random(graph, channels=8, seed=2, method="algorithm2")
    assert set(whole.methods.values()) == {"algorithm-2"} and whole.residual <= ITER_F64
    assert support(whole.filters["F1"]) == (5, 5)
    with pytest.raises(ValueError, match="unknown method 'magic' \\(one of auto, algorithm2, "
                                         "reduce\\)"):
        solve_random(graph, channels=8, method="magic")


@pytest.mark.parametrize("name", ["D", "C"])
def test_morph_filter_is_deterministic_under_a_seed(modules, name):
    graph = modules[name]
    g = rng(9).filter(8, 8, (3, 3))
    a = morph_filter(g, graph, seed=3)
    b = morph_filter(g, graph, seed=3)
    c = morph_filter(g, graph, seed=4)
    for e in graph.edges:
        assert torch.equal(a.filters[e.name], b.filters[e.name])  # bit-identical
    assert a.residual == b.residual and a.history == b.history
    assert any(not torch.allclose(a.filters[e.name], c.filters[e.name]) for e in graph.edges)
    assert c.residual <= ITER_F64


# -- limits: decided before iterating, verified advice, time, progress, memory --------------

def spec(name: str, edges: list[tuple[str, str, str, int]], **channels: int | str
         ) -> ModuleGraph:
    """A module whose inner blobs not in ``channels`` are as wide as the layer ("1x"):
    fixed, as these tests need (an open blob would be chosen wide enough)."""
    inner = dict.fromkeys((b for _, a, b, _ in edges for b in (a, b) if b not in "st"), "1x")
    return spec_from_dict({"name": name, "channels": {**inner, **channels}, "edges": [
        {"name": n, "from": a, "to": b, "kernel": k} for n, a, b, k in edges]})


def with_channels(graph: ModuleGraph, channels: dict[str, int | str]) -> ModuleGraph:
    """``graph`` with its spec's "channels" replaced (an advice's, say)."""
    return spec_from_dict({**graph.to_spec(), "channels": channels})


# module D with every width C (examples/modules/D_narrow.json)
D_EDGES = [("F1", "s", "a", 3), ("F2", "s", "b", 3), ("F3", "a", "c", 3), ("F4", "b", "c", 3),
           ("F5", "a", "t", 3), ("F6", "c", "t", 3), ("F7", "b", "t", 3)]
# the "D-like module with a bridge a→b and a skip s→c": D with a 1×1 F7, a 1×1
# bridge F8 and a 1×1 skip F9; at C = 16 the unknowns-vs-equations count advises
# {"a": 38, "c": 37} (edge F3), the advice that a user reported failing after 1,127 s
BRIDGE_EDGES = [("F1", "s", "a", 3), ("F2", "s", "b", 3), ("F3", "a", "c", 3),
                ("F4", "b", "c", 3), ("F5", "a", "t", 3), ("F6", "c", "t", 3),
                ("F7", "b", "t", 1), ("F8", "a", "b", 1), ("F9", "s", "c", 1)]
# a random module on which the count's candidate for the source cut ({a, b, c, d} = 18 at
# C = 8) does not solve: its real rank is 458 of 648 (1×1 edges make paths overlap)
M82_EDGES = [("E0", "s", "a", 3), ("E1", "s", "b", 3), ("E2", "s", "c", 3), ("E3", "s", "d", 3),
             ("E4", "a", "b", 3), ("E5", "a", "c", 1), ("E6", "a", "d", 1), ("E7", "a", "t", 1),
             ("E8", "b", "c", 3), ("E9", "c", "d", 1), ("E10", "d", "t", 3)]


def advised(msg: str) -> dict[str, int]:
    """The verified "channels" of an error message (None when it proves none)."""
    assert "verified, a re-solve of this filter at those widths" in msg, msg
    return json.loads(re.search(r'"channels": (\{[^}]*\})', msg).group(1))


def no_sweeps(monkeypatch) -> None:
    """Fail the test if Algorithm 2's (slow) sweeps ever run."""
    def refuse(*args, **kwargs):
        raise AssertionError("Algorithm 2 sweeps ran")
    monkeypatch.setattr(sweeps, "_sweeps", refuse)


@pytest.mark.parametrize("c", [4, 8])
def test_d_narrow_is_refused_before_iterating_with_verified_advice(modules, monkeypatch, c):
    """D with every width equal to C: no block has as many unknowns as equations and the
    cut solves alone stall near 1e-2, so the solve is refused without a single Algorithm 2
    sweep (it used to grind 28–390 s first); the advised widths come from a re-solve that
    reached the tolerance, and following them solves exactly."""
    graph = modules["D_narrow"]
    g = rng(1).filter(c, c, (3, 3))
    with monkeypatch.context() as m:
        no_sweeps(m)
        with pytest.raises(InfeasibleError) as info:
            morph_filter(g, graph, seed=0, verify_advice=False)
    assert "too narrow for Algorithm 2" in str(info.value)
    with pytest.raises(InfeasibleError) as info:
        morph_filter(g, graph, seed=0)
    msg = str(info.value)
    assert "the sink cut (F5, F6, F7), has at most" in msg and "stalls at relative" in msg
    reached = float(re.search(r"stalls at relative residual ([0-9.e+-]+)", msg).group(1))
    assert 1e-3 < reached < 1e-1, msg
    channels = advised(msg)
    widened = {b: w for b, w in channels.items() if w != "1x"}
    assert set(widened) <= {"a", "b", "c"} and all(w > c for w in widened.values())
    wide = with_channels(graph, channels)
    res = morph_filter(g, wide, seed=0)
    assert res.residual <= ITER_F64
    assert_conv_exact(wide, res.filters, g)


def test_bridge_module_advice_is_verified_and_solves(monkeypatch):
    """The issue's bridge module at C = 16: the count's cheapest candidate is edge F3 at
    {"a": 38, "c": 37}; the message advises it + 10% ({"a": 42, "c": 41}) only because a
    re-solve there reached 1e-10, and the same filter then solves there exactly."""
    graph = spec("D_bridge", BRIDGE_EDGES)
    widths = module_widths(graph, 16, 16)
    narrow = too_narrow(graph, widths)
    assert narrow is not None and narrow.candidates[0].what == "edge 'F3'"
    assert narrow.candidates[0].channels == {"a": 38, "c": 37}
    g = rng(1).filter(16, 16, (3, 3))
    with pytest.raises(InfeasibleError) as info:
        morph_filter(g, graph, seed=0)
    channels = advised(str(info.value))
    assert channels == {"a": 42, "b": "1x", "c": 41}
    res = morph_filter(g, with_channels(graph, channels), seed=0)
    assert res.residual <= ITER_F64


def cut_rank(graph: ModuleGraph, widths: dict[str, int], kind: str, seed: int = 0) -> int:
    """The numerical rank of a cut's dense matrix at random filters."""
    r = rng(seed)
    filters = {e.name: r.filter(widths[e.dst], widths[e.src], e.kernel) for e in graph.edges}
    pre = prefix_filters(graph, filters, widths[graph.source])
    suf = suffix_filters(graph, filters, widths[graph.sink])
    (block,) = [b for b in solve_blocks(graph) if b.kind == kind]
    k, sink = graph.effective_kernel(), kind == "sink"
    shapes = [(1, widths[e.src], *e.kernel) if sink else (widths[e.dst], 1, *e.kernel)
              for e in block.edges]
    sizes = [math.prod(sh) for sh in shapes]

    def op(flat: torch.Tensor) -> torch.Tensor:
        out = torch.zeros((), dtype=flat.dtype)
        for e, part, sh in zip(block.edges, flat.split(sizes), shapes, strict=True):
            x = part.reshape(sh)
            out = out + pad_to(compose(x, pre[e.src]) if sink else compose(suf[e.dst], x), k)
        return out

    return int(torch.linalg.matrix_rank(dense_matrix(op, torch.zeros(sum(sizes),
                                                                      dtype=torch.float64))))


@pytest.mark.parametrize("name,edges,c,channels", [
    ("D_narrow", D_EDGES, 4, {}),
    ("D_narrow", D_EDGES, 4, {"a": 8, "b": 6, "c": 8}),
    ("D_bridge", BRIDGE_EDGES, 4, {}),
    ("M82", M82_EDGES, 4, {"a": 9, "b": 9, "c": 9, "d": 9}),
])
def test_capacity_bounds_the_real_rank_of_every_cut(name, edges, c, channels):
    """``_Capacity`` is an upper bound (never below the rank a dense solve sees)."""
    graph = spec(name, edges, **channels)
    widths = module_widths(graph, c, c)
    cap = _Capacity(graph, widths)
    for block in solve_blocks(graph):
        if block.kind != "edge":
            bound, _, _ = cap.block(block)
            assert cut_rank(graph, widths, block.kind) <= bound, block


def test_the_unknowns_count_is_necessary_not_sufficient():
    """M82 at C = 8 widened to 18: the source cut's bound reaches its 648 equations, yet its
    real rank is 458 — a candidate from counting alone need not solve, which is why advice
    is verified by re-solving first."""
    graph = spec("M82", M82_EDGES, a=18, b=18, c=18, d=18)
    widths = module_widths(graph, 8, 8)
    (source,) = [b for b in solve_blocks(graph) if b.kind == "source"]
    bound, need, _ = _Capacity(graph, widths).block(source)
    assert bound == need == 8 * 81
    assert cut_rank(graph, widths, "source") < need - 100


def test_advice_widens_once_more_where_the_bound_plus_margin_grinds():
    """M82 at fixed widths 8 → 8: its sweeps at the source cut's bound + 10% (a = b = 29)
    grind, so the advice is the second try, 1.5× that (44), verified by its re-solve —
    where a single re-solve at the bound used to prove no advice at all."""
    graph = spec("M82", M82_EDGES)
    with pytest.raises(InfeasibleError) as info:
        morph_filter(rng(1).filter(8, 8, (3, 3)), graph, seed=0, advice_seconds=10.0)
    wide = advised(str(info.value))
    assert (wide["a"], wide["b"]) == (math.ceil(1.5 * 29), math.ceil(1.5 * 29))
    assert (wide["c"], wide["d"]) == ("1x", "1x")  # the blobs the bound did not raise


def test_no_advice_is_printed_unless_a_re_solve_proved_it():
    """With too little time to verify any candidate, the refusal says plainly that no
    advice is proven and lists what it tried; it never prints unverified widths."""
    graph = spec("M82", M82_EDGES)
    g = rng(1).filter(8, 8, (3, 3))
    with pytest.raises(InfeasibleError) as info:
        morph_filter(g, graph, seed=0, advice_seconds=0.01)  # (its second try: 0.15 s)
    msg = str(info.value)
    assert "too narrow for Algorithm 2" in msg
    assert "No width advice is proven" in msg and "tried:" in msg
    assert "Widen" not in msg and "verified" not in msg


def test_a_vertex_cut_narrower_than_the_layer_is_proven_infeasible(monkeypatch):
    """Every path of A crosses blob a: the module's function has rank ≤ width(a) as a
    polynomial matrix, below the layer's rank, so it is refused before any solve — with
    the verified widening."""
    graph = spec("A", [("F1", "s", "a", 3), ("F2", "a", "t", 3)], a=3)
    g = rng(1).filter(8, 8, (3, 3))
    monkeypatch.setattr(solve, "decompose_type1", lambda *a, **k: pytest.fail("split ran"))
    with pytest.raises(InfeasibleError) as info:
        morph_filter(g, graph, seed=0, verify_advice=False)
    msg = str(info.value)
    assert "passes through blob 'a' of total width 3" in msg and "rank 8" in msg
    monkeypatch.undo()
    with pytest.raises(InfeasibleError) as info:
        morph_filter(g, graph, seed=0)
    assert advised(str(info.value)) == {"a": 8}  # a rank: exact, no margin


def test_min_vertex_cut_and_polynomial_rank(modules):
    graph = modules["D_narrow"]
    assert min_vertex_cut(graph, {"s": 8, "a": 3, "b": 2, "c": 9, "t": 8}) == (5, ["a", "b"])
    assert min_vertex_cut(graph, {"s": 4, "a": 9, "b": 9, "c": 9, "t": 8}) == (4, ["s"])
    g = rng(2).filter(6, 5, (3, 3))
    assert polynomial_rank(g) == 5
    u, v = torch.randn(6, 2, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64)
    low = torch.einsum("or,ri,pq->oipq", u, v, torch.randn(3, 3, dtype=torch.float64))
    assert polynomial_rank(low) == 2
    assert polynomial_rank(0.5 * identity_filter(7)) == 7


def test_a_special_target_still_solves_where_no_block_is_wide_enough(modules):
    """0.5·I through inception (1×1 skips): no block has the unknowns for a generic filter,
    but the target lies in the sink cut's range, which the dense cut solve finds at once."""
    # inception at its old fixed widths (24, 16, 24: 1.5x, 1x, 1.5x of 16 channels)
    graph = dataclasses.replace(modules["inception"], channels={"r3": 24, "r5": 16, "m5": 24})
    assert too_narrow(graph, module_widths(graph, 64, 64)) is not None
    res = morph_filter(0.5 * identity_filter(64), graph, seed=1)
    assert res.residual <= SIMPLE_F64


def test_width_advice_for_d(modules):
    graph = modules["D_narrow"]
    k = graph.effective_kernel()
    assert k == (7, 7)
    # C = 16: the sink cut needs 9·(a + b + c) ≥ 16·49 per output row → 30 + 28 + 30
    # (cost 40), cheaper than edge F3 (38·37·9 ≥ 16·16·49, cost 22 + 21 = 43)
    what, new = width_advice(graph, module_widths(graph, 16, 16), k)
    assert what == "the sink cut (F5, F6, F7)"
    assert new == {"a": 30, "b": 28, "c": 30}
    # C = 4: the sink cut again, 9·(8 + 6 + 8) = 198 ≥ 196 (cost 10) beats edge F3 (11)
    what, new = width_advice(graph, module_widths(graph, 4, 4), k)
    assert what == "the sink cut (F5, F6, F7)" and new == {"a": 8, "b": 6, "c": 8}
    # after widening, no advice is left; D's own widths (3x: 48) need none
    assert width_advice(graph, module_widths(dataclasses.replace(graph, channels=new), 4, 4),
                        k) is None
    assert width_advice(modules["D"], module_widths(modules["D"], 16, 16), k) is None


def test_width_advice_none_without_inner_blobs():
    m0 = ModuleGraph("s", "t", (Edge("G", "s", "t", (3, 3)),)).check()
    assert width_advice(m0, {"s": 4, "t": 4}, (3, 3)) is None


def test_max_seconds_stops_a_solve_with_what_it_reached(modules):
    g = rng(5).filter(16, 16, (3, 3))
    with pytest.raises(SolverTimeout, match=r"within the time limit of 0\.001 s \(stopped "
                                            r"in .*--max-seconds"):
        morph_filter(g, modules["D"], seed=0, max_seconds=1e-3)


def test_progress_is_reported_with_sweeps_and_residuals(modules, monkeypatch):
    monkeypatch.setattr(budget, "PROGRESS_EVERY", 0.0)  # every heartbeat
    seen: list[SolveProgress] = []
    res = morph_filter(rng(5).filter(8, 8, (3, 3)), modules["D"], seed=0,
                       progress=seen.append, max_seconds=300)
    assert res.residual <= ITER_F64 and len(seen) > 10
    assert {p.phase for p in seen} >= {"Algorithm 2"}
    residuals = [p.residual for p in seen if p.residual is not None]
    assert residuals and min(residuals) <= ITER_F64
    line = seen[-1].line()
    assert re.fullmatch(r"Algorithm 2(, sweep \d+)?, relative residual \d\.\d\de-\d+, \d+ s "
                        r"of 300 s", line), line
    sweeps = [p.sweep for p in seen]
    assert sweeps == sorted(sweeps)


def test_progress_names_the_advice_being_verified(modules, monkeypatch):
    monkeypatch.setattr(budget, "PROGRESS_EVERY", 0.0)
    seen: list[SolveProgress] = []
    with pytest.raises(InfeasibleError):
        morph_filter(rng(1).filter(4, 4, (3, 3)), modules["D_narrow"], progress=seen.append)
    assert any(p.phase.startswith('verifying widths {"a": 9') for p in seen)  # 8 + 10%


def test_progress_of_a_refused_module_names_the_cut_probe_not_sweeps(modules, monkeypatch):
    """Too narrow: only the dense cut probe runs before the refusal, and its progress lines
    say so; none claims an Algorithm 2 sweep that the refusal then says was not run."""
    monkeypatch.setattr(budget, "PROGRESS_EVERY", 0.0)
    seen: list[SolveProgress] = []
    with pytest.raises(InfeasibleError, match="Algorithm 2 was not run"):
        morph_filter(rng(1).filter(4, 4, (3, 3)), modules["D_narrow"], progress=seen.append)
    main = [p for p in seen if not p.phase.startswith("verifying widths")]
    assert any(p.phase.startswith("probing the sink and source cuts (dense), round 1")
               for p in main)
    assert not [p.line() for p in main if "sweep" in p.line()]


def test_memory_is_estimated_and_refused_before_allocating(modules, monkeypatch):
    """60,000-wide blobs would need terabytes (their filters alone): refused with the figure
    and the limit, before a single filter is drawn."""
    huge = dataclasses.replace(modules["D"], channels={"a": 60_000, "b": 60_000, "c": 60_000})
    monkeypatch.setattr(SeededRng, "filter", lambda *a, **k: pytest.fail("allocated"))
    g = torch.zeros(16, 16, 3, 3, dtype=torch.float64)
    with pytest.raises(ResourceLimitError, match=r"needs about [0-9.]+ TiB of memory \(largest "
                                                 r"piece: .*\), above the limit of .*"
                                                 r"--max-memory") as info:
        morph_filter(g, huge)
    assert info.value.exit_code == 2
    with pytest.raises(ResourceLimitError, match=r"above the limit of 1 MiB"):
        solve_random(modules["D"], channels=16, max_memory=2**20)


def test_memory_estimate_covers_the_dense_matrices(modules):
    widths = module_widths(modules["D"], 16, 16)
    est = solve_memory(modules["D"], widths, kernel=(3, 3))
    sink_cols = 3 * 48 * 9  # F5, F6, F7: 3×3 from 48-wide blobs (3x of 16)
    assert est.bytes >= 8 * (16 * 49) * sink_cols  # at least the sink cut's matrix
    assert est.bytes < 2**30  # and no absurd over-estimate for a C = 16 solve
    wider = solve_memory(dataclasses.replace(modules["D"], channels={"a": 80, "b": 80, "c": 80}),
                         widths | {"a": 80, "b": 80, "c": 80}, kernel=(3, 3))
    assert wider.bytes > est.bytes


def test_default_memory_limit_is_half_the_physical_memory():
    limit = budget.default_memory_limit("cpu")
    assert 2**28 <= limit <= 2**50
    assert limits.format_bytes(1.5 * 2**30) == "1.5 GiB" and limits.format_bytes(512) == "512 B"


def test_solve_blocks_of_d(modules):
    blocks = solve_blocks(modules["D"])
    assert [(b.kind, [e.name for e in b.edges]) for b in blocks] == [
        ("sink", ["F5", "F6", "F7"]), ("source", ["F1", "F2"]),
        ("edge", ["F3"]), ("edge", ["F4"])]


# -- the dense-Jacobian baseline and the least-squares kernels ----------------------------

def test_dense_jacobian_baseline_matches_on_a_tiny_module(modules):
    graph = dataclasses.replace(modules["D"], channels={"a": 10, "b": 10, "c": 10})
    g = rng(1).filter(4, 4, (3, 3))
    widths = module_widths(graph, 4, 4)
    target = resize(g, graph.effective_kernel())
    dense, hist = algorithm2(graph, target, widths, rng(0), tol=ITER_F64, max_sweeps=60,
                             dense_jacobian=True)
    assert relative_residual(graph, dense, g) <= ITER_F64 and hist[-1] <= ITER_F64
    ours = morph_filter(g, graph, seed=0)
    assert ours.residual <= ITER_F64


def test_algorithm2_matrix_free_edge_blocks_alone(modules):
    """Inner edges only (the LSQR path): fix every cut filter and solve F3 then F4 from a
    random start; with F3 wide enough (a = c = 12: 12·12·9 ≥ 3·3·49) it reaches 1e-10."""
    graph = dataclasses.replace(modules["D"], channels={"a": 12, "b": 3, "c": 12})
    widths = module_widths(graph, 3, 3)
    r = rng(4)
    filters = {e.name: r.filter(widths[e.dst], widths[e.src], e.kernel) for e in graph.edges}
    g = rng(1).filter(3, 3, (3, 3))
    k = graph.effective_kernel()
    residual = resize(g, k) - module_function(graph, filters)
    pre = prefix_filters(graph, filters, 3)
    suf = suffix_filters(graph, filters, 3)
    op = edge_map(pre["a"], suf["c"], k)
    delta = solve_linear(op, residual, filters["F3"], rtol=1e-13, dense=False)
    filters["F3"] = filters["F3"] + delta
    assert relative_residual(graph, filters, g) <= ITER_F64


def test_lsqr_gives_the_minimum_norm_solution():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(30, 50, generator=gen, dtype=torch.float64)
    b = a @ torch.randn(50, generator=gen, dtype=torch.float64)  # consistent
    res = lsqr(lambda x: a @ x, b, torch.zeros(50, dtype=torch.float64), rtol=1e-15,
               max_iter=500)
    expected = torch.linalg.pinv(a) @ b
    assert relative_error(res.x, expected) <= 1e-10  # LSQR from 0 stays in range(Aᵀ)
    assert res.residual <= 1e-10 * float(torch.linalg.vector_norm(b))


def test_lsqr_on_an_inconsistent_system_gives_least_squares():
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(60, 20, generator=gen, dtype=torch.float64)
    b = torch.randn(60, generator=gen, dtype=torch.float64)
    res = lsqr(lambda x: a @ x, b, torch.zeros(20, dtype=torch.float64), rtol=1e-14,
               max_iter=500)
    assert relative_error(res.x, torch.linalg.pinv(a) @ b) <= 1e-10


def test_lsqr_zero_rhs_and_convolution_operator():
    z = torch.zeros(7, dtype=torch.float64)
    res = lsqr(lambda x: 2 * x, z, z, rtol=1e-12, max_iter=10)
    assert res.iterations == 0 and torch.count_nonzero(res.x) == 0
    # a convolution operator: x ↦ F2 ⊛ x, compared with the materialized matrix
    f2 = rng(3).filter(4, 3, (3, 3))
    like = torch.zeros(3, 2, 1, 3, dtype=torch.float64)

    def op(x):
        return compose(f2, x)

    a = dense_matrix(op, like)
    x0 = rng(4).filter(3, 2, (1, 3))
    assert relative_error(a @ x0.reshape(-1), op(x0).reshape(-1)) <= SIMPLE_F64
    b = op(x0)
    res = lsqr(op, b, like, rtol=1e-14, max_iter=500)
    assert relative_error(op(res.x), b) <= 1e-10
    assert relative_error(res.x.reshape(-1),
                          torch.linalg.pinv(a) @ b.reshape(-1)) <= 1e-10
    assert relative_error(dense_lstsq(op, b, like).x, res.x) <= 1e-10


@pytest.mark.parametrize("m,n", [(30, 50), (50, 30), (40, 40)])
def test_dense_min_norm_matches_pinv_full_rank(m, n):
    gen = torch.Generator().manual_seed(m * n)
    a = torch.randn(m, n, generator=gen, dtype=torch.float64)
    b = torch.randn(m, 2, generator=gen, dtype=torch.float64)  # inconsistent when m > n
    assert relative_error(dense_min_norm(a, b), torch.linalg.pinv(a) @ b) <= 1e-10


def test_dense_min_norm_matches_pinv_even_when_rank_deficient():
    gen = torch.Generator().manual_seed(2)
    a = torch.randn(40, 8, generator=gen, dtype=torch.float64) @ \
        torch.randn(8, 60, generator=gen, dtype=torch.float64)  # rank 8 of 40×60
    b = a @ torch.randn(60, 3, generator=gen, dtype=torch.float64)
    x = dense_min_norm(a, b)
    assert relative_error(x, torch.linalg.pinv(a) @ b) <= 1e-10
    assert relative_error(a @ x, b) <= 1e-10
    # float32 inputs are solved in float64 with a float32 cutoff for the null space
    x32 = dense_min_norm(a.float(), b.float())
    assert relative_error(x32, torch.linalg.pinv(a) @ b) <= 1e-4


@pytest.mark.parametrize("shape,decades", [((16, 16, 3, 3), 0), ((64, 16, 3, 3), 0),
                                           ((8, 200, 1, 1), 0), ((20, 20, 1, 1), 3),
                                           ((20, 20, 1, 1), 7)])
def test_conditioning_is_the_singular_value_ratio(shape, decades):
    """The Gram-eigenvalue route (and its SVD fallback past cond ~6.7e4) against svdvals."""
    from netmorph_cli.solver.solve import conditioning

    gen = torch.Generator().manual_seed(1)
    f = torch.randn(*shape, generator=gen, dtype=torch.float64)
    if decades:  # singular values spread over ``decades`` decades
        u = torch.linalg.qr(torch.randn(20, 20, generator=gen, dtype=torch.float64))[0]
        f = ((u * torch.logspace(0, -decades, 20, dtype=torch.float64)) @ u.T).reshape(shape)
    s = torch.linalg.svdvals(f.reshape(shape[0], -1))
    assert conditioning(f) == pytest.approx(float(s[0] / s[-1]), rel=1e-9)
