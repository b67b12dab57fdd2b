"""The structured cut solves (``solver.cutgram``) against the dense path they replace.

Tolerances (float64 throughout):
- EXACT = 1e-12: the structured Gram matrix against the dense a·aᵀ, and the structured
  minimum-norm corrections against ``lsq.dense_min_norm``'s, relative (observed ≲ 5e-14:
  both are exact solves of systems with cond ≲ 500, one refinement step each where needed).
- ADJOINT = 1e-13: ⟨A x, y⟩ against ⟨x, Aᵀ y⟩, relative to ‖A x‖·‖y‖.
- LSQR = 1e-8: the matrix-free fallback (LSQR to a relative residual of 1e-12) against
  the dense solution.
- F64 = 1e-10: a morph of module D, its filters run as real convolutions, against the
  layer's conv (observed ≲ 1e-14).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conv_reference import center_crop, relative_error, run_module

from netmorph_cli.solver import budget, sweeps
from netmorph_cli.solver.algebra import compose, pad_to, prefix_filters, suffix_filters
from netmorph_cli.solver.budget import solve_memory
from netmorph_cli.solver.cutgram import adjoint, apply, gram, make_cut, solve_cut
from netmorph_cli.solver.feasibility import Block, solve_blocks
from netmorph_cli.solver.rng import SeededRng
from netmorph_cli.solver.solve import morph_filter
from netmorph_cli.solver.widths import resolve
from netmorph_cli.spec.parse import load_spec
from netmorph_cli.spec.reduce import reduce_module

EXACT, ADJOINT, LSQR, F64 = 1e-12, 1e-13, 1e-8, 1e-10
D_SPEC = Path(__file__).resolve().parents[2] / "examples" / "modules" / "D.json"
SHAPES = [(8, 8), (16, 16), (8, 16), (16, 8)]  # (C_in, C_out): square, widening, narrowing

pytestmark = pytest.mark.usefixtures("one_thread")


def rng(seed: int = 0) -> SeededRng:
    return SeededRng(seed, torch.float64, "cpu")


def d_state(c_in: int, c_out: int, *, compact: bool = True):
    """Module D at a c_in → c_out layer ("3x" widths): filters (the compact start, or the
    plain random one), their prefixes and suffixes, and the residual of a random target."""
    graph, choice = resolve(load_spec(D_SPEC), c_in, c_out)
    widths = choice.widths
    stream = rng(0)
    filters = {e.name: stream.filter(widths[e.dst], widths[e.src], e.kernel)
               for e in graph.edges}
    if compact:
        start = sweeps.compact_prefixes(graph, filters, c_in, (3, 3))
        assert start is not None
        filters = start
    pre = prefix_filters(graph, filters, c_in)
    suf = suffix_filters(graph, filters, c_out)
    k = graph.effective_kernel()
    residual = pad_to(rng(5).filter(c_out, c_in, (3, 3)), k) - pad_to(pre[graph.sink], k)
    return graph, filters, pre, suf, residual


def flat(deltas: dict[str, torch.Tensor], block: Block) -> torch.Tensor:
    return torch.cat([deltas[e.name].flatten() for e in block.edges])


def cut_of(block: Block, pre, suf, kernel):
    sink = block.kind == "sink"
    ends = [pre[e.src] if sink else suf[e.dst].transpose(0, 1) for e in block.edges]
    return make_cut(ends, [e.kernel for e in block.edges], kernel)


# -- the structure: Gram matrix and adjoint --------------------------------------------

@pytest.mark.parametrize("kind", ["sink", "source"])
def test_gram_is_the_dense_a_at(kind):
    """The lower triangle of the structured Gram matrix equals that of a·aᵀ (the dense cut
    matrix, ``sweeps._cut_matrix``) over the window's rows; every other row of a is zero."""
    graph, filters, pre, suf, _ = d_state(8, 16, compact=False)
    block = next(b for b in solve_blocks(graph) if b.kind == kind)
    k = graph.effective_kernel()
    cut = cut_of(block, pre, suf, k)
    a = sweeps._cut_matrix(block, pre if kind == "sink" else suf, k, sum(cut.sizes))
    a = a.reshape(cut.channels, *k, -1)
    fh, fw = (k[0] - cut.window[0]) // 2, (k[1] - cut.window[1]) // 2
    inside = a[:, fh:fh + cut.window[0], fw:fw + cut.window[1]].reshape(-1, a.shape[-1])
    assert float(torch.linalg.vector_norm(a)) == pytest.approx(
        float(torch.linalg.vector_norm(inside)), rel=EXACT)
    want = (inside @ inside.T).tril()
    assert relative_error(gram(cut).tril(), want) <= EXACT


def test_adjoint_is_the_transpose():
    graph, filters, pre, suf, _ = d_state(8, 8)
    block = solve_blocks(graph)[0]
    cut = cut_of(block, pre, suf, graph.effective_kernel())
    x = [torch.randn(3, p.shape[0], *k, dtype=torch.float64,
                     generator=torch.Generator().manual_seed(i))
         for i, (p, k) in enumerate(zip(cut.ends, cut.kernels, strict=True))]
    y = torch.randn(3, cut.channels, *cut.window, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(9))
    ax = apply(cut, x)
    lhs = float((ax * y).sum())
    rhs = sum(float((a * b).sum()) for a, b in zip(x, adjoint(cut, y), strict=True))
    assert abs(lhs - rhs) <= ADJOINT * float(torch.linalg.vector_norm(ax) *
                                             torch.linalg.vector_norm(y))


def test_the_compact_start_crops_p_c_to_its_support():
    """After the ring correction P(c) is 5×5 with a ring at rounding level: the sink cut
    drops it (window 5×5, not 7×7), and bounds what it dropped."""
    graph, filters, pre, suf, _ = d_state(16, 16)
    assert tuple(pre["c"].shape[-2:]) == (5, 5)
    ends = [pre["a"], pre["c"], pre["b"]]  # of F5, F6, F7
    cut = make_cut(ends, [(3, 3)] * 3, (7, 7))
    assert cut.window == (5, 5)
    assert 0 < cut.dropped <= cut.tol * max(float(torch.linalg.vector_norm(p.flatten(1), dim=1)
                                                   .max()) for p in ends)


# -- structured against dense minimum-norm solutions -----------------------------------

@pytest.mark.parametrize("compact", [True, False])
@pytest.mark.parametrize("kind", ["sink", "source"])
@pytest.mark.parametrize("c_in,c_out", SHAPES)
def test_cut_update_matches_the_dense_solution(c_in, c_out, kind, compact):
    graph, filters, pre, suf, residual = d_state(c_in, c_out, compact=compact)
    block = next(b for b in solve_blocks(graph) if b.kind == kind)
    k = graph.effective_kernel()
    update = sweeps._cut_update(block, filters, residual, pre, suf, k)
    dense = sweeps._dense_cut_update(block, filters, residual, pre, suf, k)
    assert update is not None and dense is not None
    assert relative_error(flat(update.deltas, block), flat(dense, block)) <= EXACT
    rhs = residual if kind == "sink" else residual.transpose(0, 1)
    took = solve_cut(cut_of(block, pre, suf, k), rhs) is not None
    # the structured path declines only a tall cut (the random start's sink cut at 16→8:
    # 784 rows, 648 unknowns), where the dense fallback gave the update
    assert took or (kind, compact, c_in, c_out) == ("sink", False, 16, 8)


@pytest.mark.parametrize("c_in,c_out", SHAPES)
def test_ring_correction_matches_the_dense_solution(c_in, c_out):
    """The compact start's correction at blob c: rows only on the 5×5 frame's ring."""
    graph, filters, pre, _, _ = d_state(c_in, c_out, compact=False)
    ins = graph.in_edges["c"]
    current = sum(pad_to(compose(filters[e.name], pre[e.src]), (5, 5)) for e in ins)
    ring = torch.ones(5, 5, dtype=torch.bool)
    ring[1:4, 1:4] = False
    block = Block("sink", tuple(ins))
    update = sweeps._cut_update(block, filters, -current, pre, {}, (5, 5), taps=ring,
                                exact=True, fit=True)
    rows = ring.expand(current.shape[1], 5, 5).reshape(-1)
    dense = sweeps._dense_cut_update(block, filters, -current, pre, {}, (5, 5), rows=rows,
                                     exact=True)
    assert update is not None and dense is not None and update.fit is not None
    assert relative_error(flat(update.deltas, block), flat(dense, block)) <= EXACT
    moved = current + update.fit  # the new P(c): its ring is gone
    assert float(torch.linalg.vector_norm(moved[:, :, ring])) <= EXACT * float(
        torch.linalg.vector_norm(current))


def test_lsqr_fallback_where_nothing_dense_fits(monkeypatch):
    """With no memory left for the Gram matrix or the dense matrix, a cut is solved by
    LSQR, to the dense solution within LSQR's tolerance."""
    graph, filters, pre, suf, residual = d_state(8, 8)
    block = solve_blocks(graph)[0]
    k = graph.effective_kernel()
    dense = sweeps._dense_cut_update(block, filters, residual, pre, suf, k)
    monkeypatch.setattr(sweeps, "memory_room", lambda device: 0)
    update = sweeps._cut_update(block, filters, residual, pre, suf, k)
    assert update is not None and dense is not None
    assert relative_error(flat(update.deltas, block), flat(dense, block)) <= LSQR


# -- morphs of D, run as convolutions --------------------------------------------------

@pytest.mark.parametrize("c_in,c_out", [(8, 8), (8, 16), (16, 8)])
def test_morph_of_d_is_exact_as_convolutions(c_in, c_out):
    graph = load_spec(D_SPEC)
    g = rng(3).filter(c_out, c_in, (3, 3))
    res = morph_filter(g, graph, seed=0, max_seconds=60, advice_seconds=0)
    assert res.residual <= F64
    k = graph.effective_kernel()
    x = torch.randn(2, c_in, 9 + k[0], 9 + k[1], dtype=torch.float64,
                    generator=torch.Generator().manual_seed(1))
    want = center_crop(F.conv2d(x, g), 10, 10)
    assert relative_error(run_module(graph, res.filters, x), want) <= F64


# -- the memory estimate ---------------------------------------------------------------

@pytest.mark.parametrize("c", [256, 512])
def test_d_at_wide_layers_fits_under_12_gib(c):
    """The structured cut solves need no dense cut matrix: D at 256 and 512 channels is no
    longer refused under a 12 GiB limit (it was estimated at 21 and 85 GiB)."""
    graph, choice = resolve(load_spec(D_SPEC), c, c)
    est = solve_memory(graph, choice.widths, kernel=(3, 3), plan=reduce_module(graph))
    assert est.bytes <= 12 * 2**30
    assert 0 < est.solves < est.bytes


def test_memory_estimate_covers_a_measured_peak(tmp_path):
    """The peak resident memory of a morph of D at 32 channels (measured in a fresh process,
    big allocations mapped and unmapped directly, after a warm-up at the same size) is
    below the estimate the solve checks."""
    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("no /proc/self/clear_refs to reset the peak resident memory")
    script = textwrap.dedent(f"""
        import torch
        from netmorph_cli.solver.rng import SeededRng
        from netmorph_cli.solver.solve import morph_filter
        from netmorph_cli.spec.parse import load_spec
        torch.set_num_threads(1)
        graph = load_spec({str(D_SPEC)!r})
        morph_filter(SeededRng(2, torch.float64, "cpu").filter(32, 32, (3, 3)), graph)
        g = SeededRng(1, torch.float64, "cpu").filter(32, 32, (3, 3))
        def status(key):
            with open("/proc/self/status") as f:
                return next(int(s.split()[1]) * 1024 for s in f if s.startswith(key))
        before = status("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        morph_filter(g, graph, seed=0)
        print(status("VmHWM") - before)
    """)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=120, check=True)
    peak = int(done.stdout.split()[-1])
    graph, choice = resolve(load_spec(D_SPEC), 32, 32)
    est = solve_memory(graph, choice.widths, kernel=(3, 3), plan=reduce_module(graph))
    assert 0 < peak <= est.bytes


def test_a_fallback_is_held_to_the_room_the_estimate_leaves(monkeypatch):
    """``memory_room`` is what the checked estimate leaves for a cut solve's fallback."""
    graph, choice = resolve(load_spec(D_SPEC), 16, 16)
    est = solve_memory(graph, choice.widths, kernel=(3, 3), plan=reduce_module(graph))
    seen = []
    real = sweeps._fallback_update

    def spy(*args, **kwargs):
        seen.append(budget.memory_room())
        return real(*args, **kwargs)

    monkeypatch.setattr(sweeps, "_fallback_update", spy)
    monkeypatch.setattr(sweeps, "solve_cut", lambda *a, **k: None)  # force the fallbacks
    res = morph_filter(rng(3).filter(16, 16, (3, 3)), graph, seed=0, max_memory=est.bytes,
                       advice_seconds=0)
    assert res.residual <= F64
    assert seen and all(room == est.solves for room in seen)


def test_a_rank_deficient_cut_falls_back_to_the_dense_path():
    """Equal filters on D's two branches (F1 = F2, F3 = F4, F5 = F7) make the source cut
    rank-deficient: its Gram matrix has no Cholesky factor, and the dense rank-revealing
    path gives the update."""
    graph, choice = resolve(load_spec(D_SPEC), 8, 8)
    widths = choice.widths
    filters = {e.name: rng(0).filter(widths[e.dst], widths[e.src], e.kernel)
               for e in graph.edges}  # a fresh stream per edge: equal branches
    pre, suf = prefix_filters(graph, filters, 8), suffix_filters(graph, filters, 8)
    residual = pad_to(rng(5).filter(8, 8, (3, 3)), (7, 7)) - pre[graph.sink]
    block = solve_blocks(graph)[1]
    assert solve_cut(cut_of(block, pre, suf, (7, 7)), residual.transpose(0, 1)) is None
    update = sweeps._cut_update(block, filters, residual, pre, suf, (7, 7))
    dense = sweeps._dense_cut_update(block, filters, residual, pre, suf, (7, 7))
    assert update is not None and dense is not None
    assert torch.equal(flat(update.deltas, block), flat(dense, block))
