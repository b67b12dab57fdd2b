"""Solving the morphism equation: atomic splits, Algorithm 2, and morphing a filter into a module.

``morph_filter(G, module)`` is the one entry point. It follows the paper's route — reduce
the module (Algorithm 1), solve the irreducible remainder (Algorithm 2), replay the atomic
morphs outward with TYPE-I/TYPE-II splits — and falls back to Algorithm 2 on the whole
module when a split on the way cannot be exact. Every edge's filter comes back with the
method that produced it and the relative residual ‖module(F) − G̃‖ / ‖G̃‖, computed
independently at the end.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from .algebra import (
    compose,
    crop_to,
    identity_filter,
    kernel_of,
    module_function,
    pad_to,
    prefix_filters,
    resize,
    suffix_filters,
)
from .errors import InfeasibleError, SolverError
from .graph import Edge, Kernel, ModuleGraph
from .lsq import LinearMap, dense_lstsq, dense_matrix, dense_min_norm, lsqr
from .reduce import reduce_module

DENSE_LIMIT = 4_000_000  # entries of a sub-problem's matrix below which it is solved densely


@dataclass(frozen=True)
class SolveResult:
    """Filters for every edge of a module and how well they reproduce G̃."""

    filters: dict[str, torch.Tensor]  # edge → (C_out, C_in, kh, kw)
    methods: dict[str, str]  # edge → method that produced its filter
    residual: float  # ‖module(F) − G̃‖ / ‖G̃‖
    sweeps: int  # Algorithm 2 sweeps (0 when none ran)
    seconds: float
    history: tuple[float, ...]  # relative residual after each Algorithm 2 sweep
    conditioning: dict[str, float]  # edge → condition number of its (C_out, C_in·kh·kw) matrix

    def to_json(self) -> dict:
        return {"residual": self.residual, "seconds": round(self.seconds, 4),
                "sweeps": self.sweeps, "history": list(self.history),
                "methods": dict(self.methods),
                "conditioning": {k: _finite(v) for k, v in self.conditioning.items()}}


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


# -- helpers ---------------------------------------------------------------------------

class _Rng:
    """Deterministic random tensors: drawn on the CPU from a seed, then moved, so a seed
    gives the same filters on every device."""

    def __init__(self, seed: int, dtype: torch.dtype, device: torch.device | str):
        self.gen = torch.Generator().manual_seed(seed)
        self.dtype, self.device = dtype, torch.device(device)

    def normal(self, *shape: int, std: float = 1.0) -> torch.Tensor:
        x = torch.randn(*shape, generator=self.gen, dtype=torch.float64) * std
        return x.to(self.dtype).to(self.device)

    def orthogonal(self, n: int) -> torch.Tensor:
        q, r = torch.linalg.qr(torch.randn(n, n, generator=self.gen, dtype=torch.float64))
        q = q * torch.sign(torch.diagonal(r))  # Haar-distributed
        return q.to(self.dtype).to(self.device)

    def filter(self, c_out: int, c_in: int, kernel: Kernel) -> torch.Tensor:
        """He-style random filter: variance 1 / fan-in, so compositions stay O(1)."""
        return self.normal(c_out, c_in, *kernel, std=1.0 / math.sqrt(c_in * kernel[0] * kernel[1]))


def support(g: torch.Tensor) -> Kernel:
    """Smallest centred odd kernel that holds every non-zero tap of ``g``."""
    kh, kw = kernel_of(g)
    nz = g.detach().abs().sum(dim=(0, 1)) != 0
    rows = torch.nonzero(nz.any(dim=1)).flatten().tolist()
    cols = torch.nonzero(nz.any(dim=0)).flatten().tolist()
    if not rows:
        return (1, 1)
    rh = max(abs(r - kh // 2) for r in rows)
    rw = max(abs(c - kw // 2) for c in cols)
    return (2 * rh + 1, 2 * rw + 1)


def fits(k: Kernel, outer: Kernel) -> bool:
    return k[0] <= outer[0] and k[1] <= outer[1]


def conditioning(f: torch.Tensor) -> float:
    """Condition number of a filter as a (C_out, C_in·kh·kw) matrix (inf when rank deficient)."""
    s = torch.linalg.svdvals(f.detach().reshape(f.shape[0], -1).to(torch.float64).cpu())
    return float(s[0] / s[-1]) if s[-1] > 0 else math.inf


def relative_residual(graph: ModuleGraph, filters: Mapping[str, torch.Tensor],
                      target: torch.Tensor) -> float:
    diff = module_function(graph, filters) - pad_to(target, graph.effective_kernel())
    den = float(torch.linalg.vector_norm(target))
    return float(torch.linalg.vector_norm(diff)) / (den if den > 0 else 1.0)


def solve_linear(op: LinearMap, b: torch.Tensor, like: torch.Tensor, *, rtol: float,
                 max_iter: int = 2000, dense: bool | None = None) -> torch.Tensor:
    """min ‖op(x) − b‖, minimum norm: dense SVD for small systems, LSQR otherwise."""
    if dense is None:
        dense = b.numel() * like.numel() <= DENSE_LIMIT
    if dense:
        return dense_lstsq(op, b, like).x
    return lsqr(op, b, like, rtol=rtol, max_iter=max_iter).x


def _default_tol(dtype: torch.dtype) -> float:
    return 1e-10 if dtype == torch.float64 else 1e-6


# -- TYPE-II -----------------------------------------------------------------------------

def split_type2(g: torch.Tensor, ka: Kernel, kb: Kernel, rng: _Rng) -> tuple[torch.Tensor,
                                                                           torch.Tensor]:
    """G = F_a + F_b with kernels ``ka`` and ``kb`` (the smaller sits at the centre).

    Where both kernels cover a tap, F_a takes a random value and F_b the rest, so both parts
    are random and non-zero; a tap only one kernel covers goes to that part.
    """
    full = (max(ka[0], kb[0], kernel_of(g)[0]), max(ka[1], kb[1], kernel_of(g)[1]))
    g = pad_to(g, full)
    ga = crop_to(g, ka)
    # Noise only where G itself has taps: the parts then keep G's support, so a later
    # TYPE-I split of either part is no harder than a split of G would have been.
    gk = support(g)
    overlap = (min(ka[0], kb[0], gk[0]), min(ka[1], kb[1], gk[1]))
    std = float(g.std()) if g.numel() > 1 else float(g.abs().mean())
    noise = rng.normal(*g.shape[:2], *overlap, std=std if std > 0 else 1.0)
    fa = ga - pad_to(crop_to(ga, overlap), ka) + pad_to(noise, ka)
    fb = crop_to(g - pad_to(fa, full), kb)
    leftover = g - pad_to(fa, full) - pad_to(fb, full)
    if torch.count_nonzero(leftover):
        raise InfeasibleError(
            f"TYPE-II split impossible: the filter has taps outside both a {ka[0]}×{ka[1]} "
            f"and a {kb[0]}×{kb[1]} kernel")
    return fa, fb


# -- TYPE-I ------------------------------------------------------------------------------

def unimodular_pair(c: int, kernel: Kernel, rng: _Rng) -> tuple[torch.Tensor, torch.Tensor]:
    """V and V⁻¹ as (c, c, kh, kw) filters with V⁻¹ ⊛ V = V ⊛ V⁻¹ = I exactly in exact
    arithmetic: V = P(I + N)Q, V⁻¹ = Qᵀ(I − N)Pᵀ with P, Q orthogonal and N(z) = U M(z) Wᵀ,
    Wᵀ U = 0, so N ⊛ N = 0. Off-centre taps have rank ⌊c/2⌋; the centre tap is invertible."""
    p, q, o = rng.orthogonal(c), rng.orthogonal(c), rng.orthogonal(c)
    r = c // 2
    eye = identity_filter(c, kernel, dtype=rng.dtype, device=rng.device)
    if r == 0:
        n = torch.zeros_like(eye)
    else:
        u, w = o[:, :r], o[:, r:2 * r]
        m = rng.normal(r, r, *kernel, std=1.0 / math.sqrt(r * kernel[0] * kernel[1]))
        n = torch.einsum("ir,rskl,js->ijkl", u, m, w)
    v = torch.einsum("ab,bckl,cd->adkl", p, eye + n, q)
    v_inv = torch.einsum("ba,bckl,dc->adkl", q, eye - n, p)
    return v, v_inv


def decompose_type1(g: torch.Tensor, k1: Kernel, k2: Kernel, mid: int, rng: _Rng, *,
                    tol: float) -> tuple[torch.Tensor, torch.Tensor, tuple[str, str]]:
    """F2 ⊛ F1 = G exactly, F1: (mid, C_in, k1), F2: (C_out, mid, k2).

    Methods, in order of preference: ``unimodular`` when G is 1×1 (scaled identities such
    as ResNet's 0.5·I) and mid ≥ C_in: F1 = E V, F2 = G V⁻¹ Eᵀ, well conditioned at any
    width; ``deconvolution`` when eq. 3 holds (one factor random, the other by least
    squares); ``identity-padding`` when G fits in one factor's kernel and mid is wide
    enough (the other factor is a centred embedding). Otherwise ``InfeasibleError`` states
    eq. 3 and the smallest mid width.
    """
    c_out, c_in = g.shape[:2]
    gk = support(g)
    kk = (k1[0] + k2[0] - 1, k1[1] + k2[1] - 1)
    if not fits(gk, kk):
        raise InfeasibleError(f"a {gk[0]}×{gk[1]} filter cannot be split into {k1[0]}×{k1[1]} "
                              f"then {k2[0]}×{k2[1]} (composed kernel {kk[0]}×{kk[1]})")
    target = resize(g, kk)
    area, a1, a2 = kk[0] * kk[1], k1[0] * k1[1], k2[0] * k2[1]
    gnorm = float(torch.linalg.vector_norm(target)) or 1.0
    if gk == (1, 1) and mid >= c_in:
        # a 1×1 G (ResNet's 0.5·I): unimodular factors first. Deconvolution would draw a
        # random square Gaussian factor and solve the other as its inverse, with condition
        # numbers that grow with the width (7.3e3 at 32 channels: float32 children then
        # miss their 1e-5 check) and a dense solve that takes minutes at 512 channels;
        # V = P(I + N)Q has cond(V) ≤ (1 + ‖N‖)² at any width (measured 2.0–8.7 on ResNet
        # 20–110 and 18/34, benchmarks/presets.py) and costs two einsums.
        return _unimodular_split(g, k1, k2, mid, rng)
    # eq. 3, per output row (F1 random) or per input column (F2 random)
    options = []
    if mid * a2 >= c_in * area:
        options.append(("f1", mid * a2 - c_in * area))
    if mid * a1 >= c_out * area:
        options.append(("f2", mid * a1 - c_out * area))
    for which, _slack in sorted(options, key=lambda o: -o[1]):
        f1, f2 = _deconvolve(target, which, k1, k2, mid, rng, tol)
        err = float(torch.linalg.vector_norm(compose(f2, f1) - target)) / gnorm
        if err <= tol:
            solved = "deconvolution (least squares)"
            drawn = "deconvolution (random factor)"
            return (f1, f2, (drawn, solved)) if which == "f1" else (f1, f2, (solved, drawn))
    if fits(gk, k1) and mid >= c_out:
        e, e_perp = _embedding(mid, c_out, rng)
        f1 = torch.einsum("mo,oikl->mikl", e, resize(target, k1))
        if e_perp is not None:
            f1 = f1 + torch.einsum("mr,rikl->mikl", e_perp, rng.filter(mid - c_out, c_in, k1))
        f2 = pad_to(e.T.reshape(c_out, mid, 1, 1).contiguous(), k2)
        return f1, f2, ("identity-padding (filter)", "identity-padding (embedding)")
    if fits(gk, k2) and mid >= c_in:
        e, e_perp = _embedding(mid, c_in, rng)
        f1 = pad_to(e.reshape(mid, c_in, 1, 1).contiguous(), k1)
        f2 = torch.einsum("oikl,mi->omkl", resize(target, k2), e)
        if e_perp is not None:
            f2 = f2 + torch.einsum("orkl,mr->omkl", rng.filter(c_out, mid - c_in, k2), e_perp)
        return f1, f2, ("identity-padding (embedding)", "identity-padding (filter)")
    need = min(math.ceil(c_in * area / a2), math.ceil(c_out * area / a1))
    # the structured constructions above need only mid ≥ C_in or C_out where they apply
    structured = min([c_in] * (gk == (1, 1) or fits(gk, k2)) + [c_out] * fits(gk, k1),
                     default=need)
    smaller = (f"; an exact structured split (identity padding or unimodular factors) "
               f"needs only a middle width of {structured}" if structured < need else "")
    raise InfeasibleError(
        f"TYPE-I split of a {c_out}×{c_in} filter into {k1[0]}×{k1[1]} then {k2[0]}×{k2[1]} "
        f"through {mid} channels is not exact: eq. 3 needs max(C_l·C_i·K1², C_j·C_l·K2²) ≥ "
        f"C_j·C_i·(K1+K2−1)², i.e. a middle width of at least {need}{smaller}")


def _unimodular_split(g: torch.Tensor, k1: Kernel, k2: Kernel, mid: int, rng: _Rng
                      ) -> tuple[torch.Tensor, torch.Tensor, tuple[str, str]]:
    """F1 = E V, F2 = G V⁻¹ Eᵀ for a 1×1 G and mid ≥ C_in (E: orthonormal columns; the rows
    of F1 beyond C_in are random and F2 ignores them)."""
    c_in = g.shape[1]
    ku = (min(k1[0], k2[0]), min(k1[1], k2[1]))
    v, v_inv = unimodular_pair(c_in, ku, rng)
    e, e_perp = _embedding(mid, c_in, rng)
    f1 = pad_to(torch.einsum("mc,cikl->mikl", e, v), k1)
    if e_perp is not None:
        f1 = f1 + torch.einsum("mr,rikl->mikl", e_perp, rng.filter(mid - c_in, c_in, k1))
    g1 = resize(g, (1, 1))[:, :, 0, 0]
    f2 = pad_to(torch.einsum("oc,cikl,mi->omkl", g1, v_inv, e), k2)
    return f1, f2, ("unimodular", "unimodular")


def _deconvolve(target: torch.Tensor, which: str, k1: Kernel, k2: Kernel, mid: int, rng: _Rng,
                tol: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one factor at random and solve the other by least squares (NetMorph's deconv).

    F2 ⊛ F1 = G splits into independent rows of F2 (or columns of F1) that share one
    matrix, so the dense path solves all of them with a single factorization."""
    c_out, c_in = target.shape[:2]
    if which == "f1":  # F1 random; each row F2[j] solves F2[j] ⊛ F1 = G[j]
        f1 = rng.filter(mid, c_in, k1)
        like = torch.zeros(1, mid, *k2, dtype=target.dtype, device=target.device)
        def then_f2(x: torch.Tensor) -> torch.Tensor:  # x ⊛ F1
            return compose(x, f1)
        rows = [target[j:j + 1] for j in range(c_out)]
        f2 = _solve_shared(then_f2, rows, like, tol).reshape(c_out, mid, *k2)
        return f1, f2
    f2 = rng.filter(c_out, mid, k2)  # F2 random; each column F1[:, i] solves F2 ⊛ F1[:, i]
    like = torch.zeros(mid, 1, *k1, dtype=target.dtype, device=target.device)
    def before_f2(x: torch.Tensor) -> torch.Tensor:  # F2 ⊛ x
        return compose(f2, x)
    cols = [target[:, i:i + 1] for i in range(c_in)]
    f1 = _solve_shared(before_f2, cols, like, tol)  # (c_in, mid, 1, k1)
    return f1.squeeze(2).transpose(0, 1).reshape(mid, c_in, *k1).contiguous(), f2


def _solve_shared(op: LinearMap, rhs: list[torch.Tensor], like: torch.Tensor,
                  tol: float) -> torch.Tensor:
    """Solve op(x_k) = rhs_k for every k with one matrix; returns the stacked x_k."""
    m, n = rhs[0].numel(), like.numel()
    if m * n <= DENSE_LIMIT:
        b = torch.stack([r.reshape(-1) for r in rhs], dim=1)
        x = dense_min_norm(dense_matrix(op, like), b)
        return x.T.reshape(len(rhs), *like.shape).to(like.dtype)
    return torch.stack([lsqr(op, r, like, rtol=tol * 1e-2, max_iter=5000).x for r in rhs])


def _embedding(mid: int, c: int, rng: _Rng) -> tuple[torch.Tensor, torch.Tensor | None]:
    """E (mid, c) with orthonormal columns and its orthogonal complement (mid, mid − c)."""
    o = rng.orthogonal(mid)
    return o[:, :c], (o[:, c:] if mid > c else None)


# -- Algorithm 2 -------------------------------------------------------------------------
#
# The module function is affine in any set of edges that no s→t path crosses twice, not
# only in one filter. Two such sets are special: the edges into t (the "sink cut") and the
# edges out of s (the "source cut"). On the sink cut, G̃'s output channels decouple — row j
# of G̃ is Σ_e F_e[j] ⊛ P(u_e) — so the cut is solved as C_out small systems sharing one
# matrix; on the source cut the input channels decouple likewise. Those are dense and
# exact; an edge between two inner blobs couples everything and is solved matrix-free.


@dataclass(frozen=True)
class _Block:
    kind: str  # "sink", "source" or "edge"
    edges: tuple[Edge, ...]


def solve_blocks(graph: ModuleGraph) -> list[_Block]:
    """The sub-problems of one Algorithm 2 sweep, in visiting order."""
    s, t = graph.source, graph.sink
    blocks = [_Block("sink", tuple(graph.in_edges[t])), _Block("source", tuple(graph.out_edges[s]))]
    blocks += [_Block("edge", (e,)) for e in graph.edges if e.src != s and e.dst != t]
    return blocks


def edge_map(pre: torch.Tensor, suf: torch.Tensor, kernel: Kernel) -> LinearMap:
    """X ↦ Q(v) ⊛ X ⊛ P(u): how the module function depends on one edge's filter (eq. 7)."""
    def op(x: torch.Tensor) -> torch.Tensor:
        return pad_to(compose(suf, compose(x, pre)), kernel)
    return op


def _cut_update(block: _Block, filters: Mapping[str, torch.Tensor], residual: torch.Tensor,
                pre: Mapping[str, torch.Tensor], suf: Mapping[str, torch.Tensor],
                kernel: Kernel, *, rows: torch.Tensor | None = None, exact: bool = False
                ) -> dict[str, torch.Tensor] | None:
    """Minimum-norm corrections of a sink or source cut, one shared dense matrix (float64).

    A "sink" block may be the in-edges of any blob (``residual`` then lives at that blob).
    ``rows`` keeps only those entries of each output row / input column (a boolean mask
    over its C·kh·kw taps); with ``exact``, None unless the corrections meet them exactly
    (relative 1e-9 in float64)."""
    sink = block.kind == "sink"
    c_out, c_in = residual.shape[:2]
    # one output row (sink) / input column (source) of every filter in the cut
    shapes = [(1, filters[e.name].shape[1], *e.kernel) if sink else
              (filters[e.name].shape[0], 1, *e.kernel) for e in block.edges]
    sizes = [math.prod(sh) for sh in shapes]

    def op(flat: torch.Tensor) -> torch.Tensor:
        out = torch.zeros((), dtype=flat.dtype, device=flat.device)
        for e, part, sh in zip(block.edges, flat.split(sizes), shapes, strict=True):
            x = part.reshape(sh)
            term = compose(x, pre[e.src]) if sink else compose(suf[e.dst], x)
            out = out + pad_to(term, kernel)
        return out

    like = residual.new_zeros(sum(sizes))
    a = dense_matrix(op, like)  # (C_in·K or C_out·K, Σ sizes)
    rhs = residual.reshape(c_out, -1).T if sink else residual.transpose(0, 1).reshape(c_in, -1).T
    if rows is not None:
        a, rhs = a[rows], rhs[rows]
    x = dense_min_norm(a, rhs)  # (Σ sizes, C_out or C_in), float64
    if exact:
        b = rhs.to(torch.float64)
        if float(torch.linalg.vector_norm(a.to(torch.float64) @ x - b)) > 1e-9 * max(
                float(torch.linalg.vector_norm(b)), 1e-300):
            return None
    deltas = {}
    for e, part, sh in zip(block.edges, x.split(sizes), shapes, strict=True):
        if sink:  # part: (w_u·kh·kw, C_out) → (C_out, w_u, kh, kw)
            deltas[e.name] = part.T.reshape(-1, *sh[1:])
        else:  # part: (w_v·kh·kw, C_in) → (w_v, C_in, kh, kw)
            deltas[e.name] = part.T.reshape(-1, sh[0], *sh[2:]).transpose(0, 1)
    return deltas


def algorithm2(graph: ModuleGraph, target: torch.Tensor, widths: Mapping[str, int], rng: _Rng,
               *, tol: float, max_sweeps: int, init: Mapping[str, torch.Tensor] | None = None,
               dense_jacobian: bool = False) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Algorithm 2: alternating exact least-squares solves over blocks of filters.

    Starting from random filters, each step fixes all filters but a block in which the
    module function is affine and solves for the block's minimum-norm correction. Blocks:
    the sink cut and the source cut (channel-decoupled, dense) and every inner edge alone
    (matrix-free LSQR on the device). Stops as soon as the relative residual is ≤ ``tol``;
    raises ``SolverError`` with width advice when it stalls. ``dense_jacobian`` solves every
    block with its full dense Jacobian instead (the benchmark's baseline).
    """
    k_eff = graph.effective_kernel()
    target = resize(target, k_eff)
    if init:
        starts = [dict(init)]
    else:
        random = {e.name: rng.filter(widths[e.dst], widths[e.src], e.kernel)
                  for e in graph.edges}
        # (not where the widths already rule exactness out: a second start would only
        # double the time it takes to say so)
        compact = None if width_advice(graph, widths, k_eff) is not None else \
            compact_prefixes(graph, random, widths[graph.source], support(target))
        starts = [compact, random] if compact is not None else [random]
    for i, start in enumerate(starts):
        try:
            return _sweeps(graph, target, start, widths, tol=tol, max_sweeps=max_sweeps,
                           dense_jacobian=dense_jacobian)
        except SolverError:
            if i == len(starts) - 1:
                raise
    raise AssertionError("unreachable")


def compact_prefixes(graph: ModuleGraph, filters: Mapping[str, torch.Tensor], source_channels: int,
                     needed: Kernel) -> dict[str, torch.Tensor] | None:
    """A start for Algorithm 2 in which every inner blob's prefix P(v) keeps to the kernel
    of v's own in-edges (the smallest correction of its in-edge filters, one dense
    minimum-norm solve per blob), or None where that changes nothing or would leave the
    module unable to reach the ``needed`` support.

    Why: from random filters, P(v) spans the sum of its paths' kernels, and whatever G̃
    does not have there must cancel. For module D (G̃ a 3×3 filter in a 7×7 frame) the ring
    of P(c) ⊛ F6 is reached by F6 alone, so every exact solve left F6 a 1×1 filter padded
    to 3×3; with P(c) kept to 3×3, F6 keeps live off-centre taps like every other filter.
    """
    ref = next(iter(filters.values()))
    out = dict(filters)
    pre = {graph.source: identity_filter(source_channels, dtype=ref.dtype, device=ref.device)}
    changed = False
    for v in graph.blobs[1:]:
        ins = graph.in_edges[v]
        own = (max(e.kernel[0] for e in ins), max(e.kernel[1] for e in ins))
        full = (max(e.kernel[0] + kernel_of(pre[e.src])[0] - 1 for e in ins),
                max(e.kernel[1] + kernel_of(pre[e.src])[1] - 1 for e in ins))
        if v == graph.sink:  # what the module can reach from this start
            if not changed or not fits(needed, full):
                return None
            return out
        if not fits(full, own):
            deltas = _ring_correction(ins, out, pre, own, full)
            if deltas is None:
                return None
            for name, d in deltas.items():
                out[name] = out[name] + d.to(out[name].dtype)
            changed = True
        acc = torch.zeros((), dtype=ref.dtype, device=ref.device)
        for e in ins:
            acc = acc + pad_to(compose(out[e.name], pre[e.src]), full)
        pre[v] = crop_to(acc, own)  # exact: zero outside ``own`` (or ``full`` is ``own``)
    raise AssertionError("the sink is the last blob")


def _ring_correction(ins: list[Edge], filters: Mapping[str, torch.Tensor],
                     pre: Mapping[str, torch.Tensor], own: Kernel, full: Kernel
                     ) -> dict[str, torch.Tensor] | None:
    """Minimum-norm corrections of the in-edge filters of one blob that zero its prefix
    outside the centred ``own`` kernel; None when no exact correction exists."""
    ref = filters[ins[0].name]
    current = torch.zeros((), dtype=ref.dtype, device=ref.device)
    for e in ins:
        current = current + pad_to(compose(filters[e.name], pre[e.src]), full)
    ring = torch.ones(full, dtype=torch.bool, device=ref.device)
    dh, dw = (full[0] - own[0]) // 2, (full[1] - own[1]) // 2
    ring[dh:dh + own[0], dw:dw + own[1]] = False
    rows = ring.expand(current.shape[1], *full).reshape(-1)
    return _cut_update(_Block("sink", tuple(ins)), filters, -current, pre, {}, full,
                       rows=rows, exact=True)


def _sweeps(graph: ModuleGraph, target: torch.Tensor, filters: dict[str, torch.Tensor],
            widths: Mapping[str, int], *, tol: float, max_sweeps: int,
            dense_jacobian: bool) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Algorithm 2's sweeps from ``filters`` (see ``algorithm2``)."""
    k_eff = graph.effective_kernel()
    tnorm = float(torch.linalg.vector_norm(target)) or 1.0
    # LSQR cannot go below a few ulps of the working precision; asking more only
    # accumulates rounding.
    inner_rtol = max(tol * 1e-2, 30 * torch.finfo(target.dtype).eps)
    max_iter = 2000
    if width_advice(graph, widths, k_eff) is not None:
        # No block has as many unknowns as G̃ has entries: exactness is not to be expected,
        # so give up after a few sweeps instead of grinding (the message says what to widen).
        max_sweeps, max_iter = min(max_sweeps, 8), 200
    history: list[float] = []
    residual = target - module_function(graph, filters)
    rel = float(torch.linalg.vector_norm(residual)) / tnorm
    for _sweep in range(max_sweeps):
        for block in solve_blocks(graph):
            pre = prefix_filters(graph, filters, widths[graph.source])
            suf = suffix_filters(graph, filters, widths[graph.sink])
            if dense_jacobian:
                deltas = _dense_block_update(block, filters, residual, pre, suf, k_eff)
            elif block.kind == "edge":
                (e,) = block.edges
                op = edge_map(pre[e.src], suf[e.dst], k_eff)
                deltas = {e.name: solve_linear(op, residual, filters[e.name], rtol=inner_rtol,
                                               max_iter=max_iter)}
            else:
                cut = _cut_update(block, filters, residual, pre, suf, k_eff)
                assert cut is not None  # only an ``exact`` update can decline
                deltas = cut
            trial = dict(filters)
            for name, d in deltas.items():
                trial[name] = filters[name] + d.to(filters[name].dtype)
            new_residual = target - module_function(graph, trial)
            new_rel = float(torch.linalg.vector_norm(new_residual)) / tnorm
            if new_rel > rel:  # an exact solve never increases it; rounding can
                continue
            filters, residual, rel = trial, new_residual, new_rel
            if rel <= tol:
                history.append(rel)
                return filters, history
        history.append(rel)
        if len(history) >= 4 and history[-1] > 0.9 * history[-4]:
            break
    raise SolverError(_stall_message(graph, widths, history, tol, k_eff))


def _dense_block_update(block: _Block, filters: Mapping[str, torch.Tensor],
                        residual: torch.Tensor, pre: Mapping[str, torch.Tensor],
                        suf: Mapping[str, torch.Tensor], kernel: Kernel
                        ) -> dict[str, torch.Tensor]:
    """The baseline: the block's full dense Jacobian (|G̃| × |block|), one lstsq."""
    shapes = [filters[e.name].shape for e in block.edges]
    sizes = [math.prod(sh) for sh in shapes]

    def op(flat: torch.Tensor) -> torch.Tensor:
        out = torch.zeros((), dtype=flat.dtype, device=flat.device)
        for e, part, sh in zip(block.edges, flat.split(sizes), shapes, strict=True):
            out = out + edge_map(pre[e.src], suf[e.dst], kernel)(part.reshape(sh))
        return out

    x = dense_lstsq(op, residual, residual.new_zeros(sum(sizes))).x
    return {e.name: part.reshape(sh)
            for e, part, sh in zip(block.edges, x.split(sizes), shapes, strict=True)}


def width_advice(graph: ModuleGraph, widths: Mapping[str, int], k_eff: Kernel
                 ) -> tuple[str, dict[str, int]] | None:
    """The cheapest widening of inner blobs after which some block of Algorithm 2 has at
    least as many unknowns as equations (the paper's |F_j| ≥ |G̃|, per decoupled channel
    for the cuts); None when a block already has."""
    s, t = graph.source, graph.sink
    area = k_eff[0] * k_eff[1]
    options: list[tuple[int, str, dict[str, int]]] = []
    for block in solve_blocks(graph):
        if block.kind == "edge":
            (e,) = block.edges
            need = widths[s] * widths[t] * area
            k = e.kernel[0] * e.kernel[1]
            if widths[e.src] * widths[e.dst] * k >= need:
                return None
            w = math.ceil(math.sqrt(need / k))
            new = {e.src: max(w, widths[e.src])}
            new[e.dst] = max(widths[e.dst], math.ceil(need / (k * new[e.src])))
            what = f"edge {e.name!r}"
        else:
            sink = block.kind == "sink"
            need = (widths[s] if sink else widths[t]) * area
            ends = [(e.src if sink else e.dst, e.kernel[0] * e.kernel[1]) for e in block.edges]
            have = sum(widths[b] * k for b, k in ends)
            if have >= need:
                return None
            fixed = sum(widths[b] * k for b, k in ends if b in (s, t))
            free_k = sum(k for b, k in ends if b not in (s, t))
            if free_k == 0:
                continue
            w = math.ceil((need - fixed) / free_k)
            new = {b: max(w, widths[b]) for b, _ in ends if b not in (s, t)}
            names = ", ".join(e.name for e in block.edges)
            what = f"the {block.kind} cut ({names})"
        options.append((sum(v - widths[b] for b, v in new.items()), what, new))
    if not options:
        return None
    _, what, new = min(options, key=lambda o: o[0])
    return what, new


def _stall_message(graph: ModuleGraph, widths: Mapping[str, int], history: list[float],
                   tol: float, k_eff: Kernel) -> str:
    name = f"module {graph.name!r}" if graph.name else "the module"
    msg = (f"Algorithm 2 stalled at relative residual {history[-1]:.3g} after "
           f"{len(history)} sweeps (tolerance {tol:.0e}) on {name}")
    advice = width_advice(graph, widths, k_eff)
    if advice is None:
        return msg + "; try another --seed or more sweeps"
    what, new = advice
    blobs = ", ".join(repr(b) for b in new)
    chans = ", ".join(f'"{b}": {w}' for b, w in new.items())
    return (f"{msg}: it has fewer unknowns than equations. Widen inner blob"
            f"{'s' if len(new) > 1 else ''} {blobs} (spec \"channels\": {{{chans}}}) so "
            f"that {what} can absorb G̃")


# -- the entry point -------------------------------------------------------------------

def module_widths(graph: ModuleGraph, c_in: int, c_out: int,
                  inner: int | None = None) -> dict[str, int]:
    """Width of every blob: s and t from the layer, inner blobs from the spec or ``inner``
    (default: the layer's output width)."""
    w = {b: graph.channels.get(b, inner or c_out) for b in graph.blobs}
    w[graph.source], w[graph.sink] = c_in, c_out
    return w


def morph_filter(g: torch.Tensor, graph: ModuleGraph, *, inner_width: int | None = None,
                 seed: int = 0, tol: float | None = None, max_sweeps: int = 60,
                 method: str = "auto") -> SolveResult:
    """Filters for every edge of ``graph`` whose module function equals G exactly.

    ``g`` is (C_out, C_in, kh, kw) on any device and dtype; the filters come back on the
    same. ``method``: ``auto`` (reduce, solve the remainder, replay; Algorithm 2 on the
    whole module if a split cannot be exact), ``reduce`` or ``algorithm2`` only.
    """
    t0 = time.perf_counter()
    tol = _default_tol(g.dtype) if tol is None else tol
    c_out, c_in = g.shape[:2]
    k_eff = graph.effective_kernel()
    gk = support(g)
    if not fits(gk, k_eff):
        raise InfeasibleError(f"the module's effective kernel {k_eff[0]}×{k_eff[1]} is smaller "
                              f"than the layer's {gk[0]}×{gk[1]} kernel: use larger kernels")
    widths = module_widths(graph, c_in, c_out, inner_width)
    rng = _Rng(seed, g.dtype, g.device)
    target = resize(g, k_eff)
    history: list[float] = []
    if method not in ("auto", "reduce", "algorithm2"):
        raise ValueError(f"unknown method {method!r}")
    if method == "algorithm2":
        filters, history = algorithm2(graph, target, widths, rng, tol=tol, max_sweeps=max_sweeps)
        methods = {e.name: "algorithm-2" for e in graph.edges}
    else:
        try:
            filters, methods, history = _reduce_route(graph, target, widths, rng, tol,
                                                      max_sweeps)
        except SolverError as first:
            if method == "reduce":
                raise
            try:
                filters, history = algorithm2(graph, target, widths, _Rng(seed, g.dtype,
                                                                          g.device),
                                              tol=tol, max_sweeps=max_sweeps)
            except SolverError as second:
                raise (first if isinstance(first, InfeasibleError)
                       and not isinstance(second, InfeasibleError) else second) from None
            methods = {e.name: "algorithm-2" for e in graph.edges}
    filters = {e.name: filters[e.name] for e in graph.edges}
    residual = relative_residual(graph, filters, target)
    if residual > tol:
        raise SolverError(f"morphing left a relative residual of {residual:.3g}, above the "
                          f"tolerance {tol:.0e}")
    return SolveResult(filters, methods, residual, len(history), time.perf_counter() - t0,
                       tuple(history), {k: conditioning(f) for k, f in filters.items()})


def _reduce_route(graph: ModuleGraph, target: torch.Tensor, widths: dict[str, int], rng: _Rng,
                  tol: float, max_sweeps: int
                  ) -> tuple[dict[str, torch.Tensor], dict[str, str], list[float]]:
    """Paper's route: reduce, solve the remainder, replay the atomic morphs outward."""
    plan = reduce_module(graph)
    rem = plan.remainder
    history: list[float] = []
    if plan.simple:
        (e0,) = rem.edges
        filters = {e0.name: resize(target, e0.kernel)}
        methods = {e0.name: "given"}
    else:
        filters, history = algorithm2(rem, target, widths, rng, tol=tol, max_sweeps=max_sweeps)
        methods = {e.name: "algorithm-2" for e in rem.edges}
    for st in plan.steps:
        g = filters.pop(st.edge.name)
        methods.pop(st.edge.name)
        a, b = st.into
        if st.type == "II":
            filters[a.name], filters[b.name] = split_type2(g, a.kernel, b.kernel, rng)
            methods[a.name], methods[b.name] = "type-II random part", "type-II remainder"
        else:
            assert st.blob is not None
            f1, f2, ways = decompose_type1(g, a.kernel, b.kernel, widths[st.blob], rng, tol=tol)
            filters[a.name], filters[b.name] = f1, f2
            methods[a.name], methods[b.name] = (f"type-I {w}" for w in ways)
    return filters, methods, history


def solve_random(graph: ModuleGraph, *, channels: int = 16, kernel: int = 3,
                 dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu",
                 seed: int = 0, tol: float | None = None, max_sweeps: int = 60) -> SolveResult:
    """Morph a random channels→channels kernel×kernel filter into ``graph`` (``reduce
    --solve``): the filter is drawn from ``seed`` on the CPU, then moved to ``device``."""
    if channels < 1 or kernel < 1 or kernel % 2 == 0:
        raise InfeasibleError(f"need channels ≥ 1 and an odd kernel, got {channels} and {kernel}")
    rng = _Rng(seed + 1_000_003, dtype, device)
    g = rng.filter(channels, channels, (kernel, kernel))
    return morph_filter(g, graph, seed=seed, tol=tol, max_sweeps=max_sweeps)
