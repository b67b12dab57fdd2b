"""Modules at non-square convs (C_out ≠ C_in): widening and narrowing layers (issue 22).

The pathology: replaying module C's reduction at a widening layer (8→16, inner widths 16),
the first TYPE-I split (a 7×7 = 3×3 ⊛ 5×5 factorization of a 3×3 filter) satisfied eq. 3
(16·25 ≥ 8·49), so it took the deconvolution, which fills the *intermediate* 5×5 factor's
whole kernel; the later 3×3 ⊛ 3×3 split of that factor then needed a middle width of 45,
the route failed and the fallback (Algorithm 2 on the whole module) was too narrow. At
64→128 the same deconvolution ran LSQR on 128 nearly square systems and never finished.
A square layer never met it (eq. 3 fails there, so identity padding was taken).

Tolerances (the DESIGN's numerical rules):
- F64 = 1e-10: float64, the child against the parent, and the module's filters run as
  real convolutions against ``conv2d(x, G)`` (observed ≲ 1e-14).
- F32 = 1e-5: the same child run in float32.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conv_reference import center_crop, relative_error, run_module

from netmorph_cli.morph.morphs import morph_at
from netmorph_cli.morph.verify import verify
from netmorph_cli.network.description import FORMAT, Network, node
from netmorph_cli.solver import budget, splits
from netmorph_cli.solver.algebra import compose, support
from netmorph_cli.solver.budget import SolveLimits
from netmorph_cli.solver.lsq import dense_matrix
from netmorph_cli.solver.rng import SeededRng
from netmorph_cli.solver.solve import morph_filter
from netmorph_cli.solver.splits import decompose_type1, shift_matrix
from netmorph_cli.spec.parse import load_spec

F64, F32 = 1e-10, 1e-5
MODULES = Path(__file__).resolve().parents[2] / "examples" / "modules"
SIMPLE = ["A", "B", "C"]
SHAPES = [(8, 16), (16, 8), (8, 24), (24, 8)]  # (C_in, C_out): widening and narrowing

pytestmark = pytest.mark.usefixtures("one_thread")


def spec(name: str):
    return load_spec(MODULES / f"{name}.json")


def rng(seed: int = 0) -> SeededRng:
    return SeededRng(seed, torch.float64, "cpu")


def layer_filter(c_in: int, c_out: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(c_out, c_in, 3, 3, generator=gen, dtype=torch.float64)


# -- the solver entry, checked by running the convolutions ------------------------------

@pytest.mark.parametrize("c_in,c_out", SHAPES)
@pytest.mark.parametrize("name", SIMPLE)
def test_simple_module_at_a_non_square_filter_is_exact(name, c_in, c_out):
    graph = spec(name)
    g = layer_filter(c_in, c_out)
    res = morph_filter(g, graph, max_seconds=30, advice_seconds=0)
    assert res.residual <= F64
    for e in graph.edges:
        assert res.filters[e.name].dtype == torch.float64
    k = graph.effective_kernel()
    x = torch.randn(2, c_in, 9 + k[0], 9 + k[1], dtype=torch.float64,
                    generator=torch.Generator().manual_seed(1))
    # the layer's 3×3 conv, unpadded, cropped to the module's (k_eff-unpadded) output
    want = center_crop(F.conv2d(x, g), 10, 10)
    got = run_module(graph, res.filters, x)
    assert got.shape == want.shape
    assert relative_error(got, want) <= F64
    got32 = run_module(graph, {n: f.float() for n, f in res.filters.items()}, x.float())
    assert relative_error(got32.double(), want) <= F32


def test_widening_split_keeps_the_intermediate_factor_one_by_one():
    """The split that used to break C at 8→16: eq. 3 holds (16·25 ≥ 8·49), but the 5×5
    factor is split again later, so it must come out as the 1×1 embedding (identity
    padding), not as a full 5×5 deconvolution factor."""
    g = layer_filter(8, 16)
    f1, f2, ways = decompose_type1(g, (3, 3), (5, 5), 16, rng(), tol=F64,
                                   later=(False, True))
    assert ways == ("identity-padding (filter)", "identity-padding (embedding)")
    assert support(f2) == (1, 1)
    assert relative_error(compose(f2, f1), F.pad(g, (2, 2, 2, 2))) <= F64
    # a leaf split keeps its preference for genuinely spatial factors
    _, f2, ways = decompose_type1(g, (3, 3), (5, 5), 16, rng(), tol=F64)
    assert ways[1].startswith("deconvolution") and support(f2) == (5, 5)
    # the factor split again is F1: F1 becomes the embedding (narrowing: 16 ≥ C_in = 8)
    f1, f2, ways = decompose_type1(g, (5, 5), (3, 3), 16, rng(), tol=F64,
                                   later=(True, False))
    assert ways == ("identity-padding (embedding)", "identity-padding (filter)")
    assert support(f1) == (1, 1)
    assert relative_error(compose(f2, f1), F.pad(g, (2, 2, 2, 2))) <= F64


@pytest.mark.parametrize("kf,kx", [((3, 3), (3, 3)), ((3, 1), (1, 3)), ((5, 3), (3, 5)),
                                   ((1, 1), (3, 3))])
def test_shift_matrix_is_the_dense_matrix_of_composition(kf, kx):
    gen = torch.Generator().manual_seed(2)
    f1 = torch.randn(5, 4, *kf, dtype=torch.float64, generator=gen)
    like = torch.zeros(1, 5, *kx, dtype=torch.float64)
    want = dense_matrix(lambda x: compose(x, f1), like)
    assert torch.equal(shift_matrix(f1, kx, after=True), want)
    f2 = torch.randn(3, 5, *kf, dtype=torch.float64, generator=gen)
    like = torch.zeros(5, 1, *kx, dtype=torch.float64)
    want = dense_matrix(lambda x: compose(f2, x), like)
    assert torch.equal(shift_matrix(f2, kx, after=False), want)


def test_deconvolution_factors_its_shared_matrix_once(monkeypatch):
    """Module A with a wide middle blob (eq. 3 holds, both factors are leaves): the rows of
    F2 share one matrix, solved densely even above the single-system dense limit (3,200
    rows by 3,456 columns at 128 channels took LSQR over a minute); here at 24 channels,
    with LSQR forbidden."""
    def no_lsqr(*args, **kwargs):
        raise AssertionError("the shared deconvolution must not run LSQR per row")

    # the 128-channel case (rows C_in·5², columns 384·3²) is on the dense path
    assert budget.DENSE_LIMIT < 128 * 25 * 384 * 9 <= budget.SHARED_DENSE_LIMIT
    monkeypatch.setattr(splits, "lsqr", no_lsqr)
    graph = dataclasses.replace(spec("A"), channels={"a": 72})
    g = layer_filter(24, 24)
    res = morph_filter(g, graph, max_seconds=30, advice_seconds=0)
    assert res.methods["F2"] == "type-I deconvolution (least squares)"
    assert res.residual <= F64


# -- a network: the child against the parent, through verify ----------------------------

def small_net() -> Network:
    """conv 4→8 → ReLU → conv 8→16 (widening) → ReLU → conv 16→8 (narrowing) → ReLU →
    GAP → linear, float64, random weights."""
    desc = {"format": FORMAT, "arch": "nonsquare", "input": [4, 10, 10], "num_classes": 3,
            "output": "fc", "nodes": [
                node("c0", "conv", ["input"], **{"in": 4, "out": 8}, kernel=[3, 3],
                     padding=[1, 1]),
                node("r0", "relu", ["c0"]),
                node("wide", "conv", ["r0"], **{"in": 8, "out": 16}, kernel=[3, 3],
                     padding=[1, 1]),
                node("r1", "relu", ["wide"]),
                node("narrow", "conv", ["r1"], **{"in": 16, "out": 8}, kernel=[3, 3],
                     padding=[1, 1]),
                node("r2", "relu", ["narrow"]),
                node("pool", "gap", ["r2"]),
                node("fc", "linear", ["pool"], **{"in": 8, "out": 3})]}
    gen = torch.Generator().manual_seed(3)

    def w(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64) / 3

    tensors = {"c0.weight": w(8, 4, 3, 3), "wide.weight": w(16, 8, 3, 3),
               "narrow.weight": w(8, 16, 3, 3), "fc.weight": w(3, 8), "fc.bias": w(3)}
    return Network(desc, tensors, [], {}).check()


@pytest.fixture(scope="module")
def parent() -> Network:
    return small_net()


@pytest.mark.parametrize("layer", ["wide", "narrow"])
@pytest.mark.parametrize("name", SIMPLE)
def test_simple_module_at_a_widening_and_a_narrowing_conv(parent, name, layer):
    child = morph_at(parent, spec(name), layer, seed=1, limits=SolveLimits(max_seconds=30))
    assert child.history[-1]["residual"] <= F64
    assert f"{layer}.F1.weight" in child.tensors
    r64 = verify(parent, child, dtype=torch.float64, samples=8)
    assert r64.passed and r64.max_rel_err <= F64
    r32 = verify(parent, child, dtype=torch.float32, samples=8)
    assert r32.passed and r32.max_rel_err <= F32
