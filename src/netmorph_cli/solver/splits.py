"""The atomic morphs: TYPE-II splits (G = F_a + F_b) and TYPE-I splits (G = F2 ⊛ F1).

Algorithm 1 (``reduce``) turns a module into a chain of atomic steps; replaying them
outward needs, for each step, filters that reproduce its parent filter exactly. A TYPE-II
split divides the taps between two kernels; a TYPE-I split factors a filter through a
middle blob, by unimodular factors, deconvolution (one factor random, the other by least
squares, when eq. 3 leaves enough unknowns) or identity padding, in that order of
preference — identity padding before deconvolution when a factor is split again later,
so that factor stays a 1×1 embedding. All random choices come from the ``SeededRng``
passed in.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..errors import InfeasibleError
from ..spec.graph import Kernel, fits, kernel_area
from .algebra import compose, crop_to, identity_filter, kernel_of, pad_to, resize, support
from .budget import SHARED_DENSE_LIMIT, tick
from .lsq import LinearMap, dense_min_norm, lsqr
from .rng import SeededRng

# -- TYPE-II -----------------------------------------------------------------------------

def split_type2(g: torch.Tensor, ka: Kernel, kb: Kernel, rng: SeededRng
                ) -> tuple[torch.Tensor, torch.Tensor]:
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

def unimodular_pair(c: int, kernel: Kernel, rng: SeededRng) -> tuple[torch.Tensor, torch.Tensor]:
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


def decompose_type1(g: torch.Tensor, k1: Kernel, k2: Kernel, mid: int, rng: SeededRng, *,
                    tol: float, later: tuple[bool, bool] = (False, False)
                    ) -> tuple[torch.Tensor, torch.Tensor, tuple[str, str]]:
    """F2 ⊛ F1 = G exactly, F1: (mid, C_in, k1), F2: (C_out, mid, k2).

    Methods, in order of preference: ``unimodular`` when G is 1×1 (scaled identities such
    as ResNet's 0.5·I) and mid ≥ C_in: F1 = E V, F2 = G V⁻¹ Eᵀ, well conditioned at any
    width; ``deconvolution`` when eq. 3 holds (one factor random, the other by least
    squares); ``identity-padding`` when G fits in one factor's kernel and mid is wide
    enough (the other factor is a centred embedding). Otherwise ``InfeasibleError`` states
    eq. 3 and the smallest mid width.

    ``later``: whether F1, F2 are split again by a later atomic morph (intermediate
    filters of Algorithm 1's replay). Then identity padding comes before deconvolution,
    the variant that makes such a factor the 1×1 embedding first: deconvolution fills
    both factors' whole kernels, and a later TYPE-I split of a full-kernel factor needs
    eq. 3's middle width (⌈C·25/9⌉ for 3×3 ⊛ 3×3) where a 1×1 one needs only C. (At a
    widening layer eq. 3 holds for the first split of module C at the default widths,
    C_out·25 ≥ C_in·49 once C_out ≥ 2·C_in, and the full 5×5 intermediate it left made
    every later split infeasible.)
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
    padding = []  # identity padding: G in F1 (F2 the embedding), or G in F2
    if fits(gk, k1) and mid >= c_out:
        padding.append("filter first")
    if fits(gk, k2) and mid >= c_in:
        padding.append("embedding first")
    if any(later):
        # the factor split again is the 1×1 embedding: F2 in "filter first", F1 in the other
        keep_small = "filter first" if later[1] else "embedding first"
        padding.sort(key=lambda way: way != keep_small)
        if padding:
            return _identity_padding(target, padding[0], k1, k2, mid, rng)
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
    if padding:
        return _identity_padding(target, padding[0], k1, k2, mid, rng)
    need, structured = type1_widths(c_out, c_in, gk, k1, k2)
    smaller = (f"; an exact structured split (identity padding or unimodular factors) "
               f"needs only a middle width of {structured}" if structured < need else "")
    raise InfeasibleError(
        f"TYPE-I split of a {c_out}×{c_in} filter into {k1[0]}×{k1[1]} then {k2[0]}×{k2[1]} "
        f"through {mid} channels is not exact: eq. 3 needs max(C_l·C_i·K1², C_j·C_l·K2²) ≥ "
        f"C_j·C_i·(K1+K2−1)², i.e. a middle width of at least {need}{smaller}")


def _identity_padding(target: torch.Tensor, way: str, k1: Kernel, k2: Kernel, mid: int,
                      rng: SeededRng) -> tuple[torch.Tensor, torch.Tensor, tuple[str, str]]:
    """F2 ⊛ F1 = G with one factor a centred 1×1 embedding E (orthonormal columns) and the
    other G through E: ``filter first`` F1 = E G (rows beyond C_out random, F2 = Eᵀ ignores
    them), needs mid ≥ C_out and G within k1; ``embedding first`` F1 = E, F2 = G Eᵀ (plus
    random columns that F1's range never feeds), needs mid ≥ C_in and G within k2."""
    c_out, c_in = target.shape[:2]
    if way == "filter first":
        e, e_perp = _embedding(mid, c_out, rng)
        f1 = torch.einsum("mo,oikl->mikl", e, resize(target, k1))
        if e_perp is not None:
            f1 = f1 + torch.einsum("mr,rikl->mikl", e_perp, rng.filter(mid - c_out, c_in, k1))
        f2 = pad_to(e.T.reshape(c_out, mid, 1, 1).contiguous(), k2)
        return f1, f2, ("identity-padding (filter)", "identity-padding (embedding)")
    e, e_perp = _embedding(mid, c_in, rng)
    f1 = pad_to(e.reshape(mid, c_in, 1, 1).contiguous(), k1)
    f2 = torch.einsum("oikl,mi->omkl", resize(target, k2), e)
    if e_perp is not None:
        f2 = f2 + torch.einsum("orkl,mr->omkl", rng.filter(c_out, mid - c_in, k2), e_perp)
    return f1, f2, ("identity-padding (embedding)", "identity-padding (filter)")


def type1_widths(c_out: int, c_in: int, gk: Kernel, k1: Kernel, k2: Kernel) -> tuple[int, int]:
    """(eq. 3's smallest middle width, the smallest width of a structured split — identity
    padding or unimodular factors — or eq. 3's where none applies) for a TYPE-I split of a
    (c_out, c_in) filter with support ``gk`` into ``k1`` then ``k2``."""
    area = (k1[0] + k2[0] - 1) * (k1[1] + k2[1] - 1)
    need = min(math.ceil(c_in * area / kernel_area(k2)), math.ceil(c_out * area / kernel_area(k1)))
    # the structured constructions need only mid ≥ C_in or C_out where they apply
    structured = min([c_in] * (gk == (1, 1) or fits(gk, k2)) + [c_out] * fits(gk, k1),
                     default=need)
    return need, structured


def _unimodular_split(g: torch.Tensor, k1: Kernel, k2: Kernel, mid: int, rng: SeededRng
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


def _deconvolve(target: torch.Tensor, which: str, k1: Kernel, k2: Kernel, mid: int,
                rng: SeededRng, tol: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one factor at random and solve the other by least squares (NetMorph's deconv).

    F2 ⊛ F1 = G splits into independent rows of F2 (or columns of F1) that share one
    matrix, so the dense path solves all of them with a single factorization."""
    c_out, c_in = target.shape[:2]
    if which == "f1":  # F1 random; each row F2[j] solves F2[j] ⊛ F1 = G[j]
        f1 = rng.filter(mid, c_in, k1)
        like = torch.zeros(1, mid, *k2, dtype=target.dtype, device=target.device)
        def then_f2(x: torch.Tensor) -> torch.Tensor:  # x ⊛ F1
            tick()
            return compose(x, f1)
        rows = [target[j:j + 1] for j in range(c_out)]
        f2 = _solve_shared(then_f2, lambda: shift_matrix(f1, k2, after=True), rows, like,
                           tol).reshape(c_out, mid, *k2)
        return f1, f2
    f2 = rng.filter(c_out, mid, k2)  # F2 random; each column F1[:, i] solves F2 ⊛ F1[:, i]
    like = torch.zeros(mid, 1, *k1, dtype=target.dtype, device=target.device)
    def before_f2(x: torch.Tensor) -> torch.Tensor:  # F2 ⊛ x
        tick()
        return compose(f2, x)
    cols = [target[:, i:i + 1] for i in range(c_in)]
    f1 = _solve_shared(before_f2, lambda: shift_matrix(f2, k1, after=False), cols, like,
                       tol)  # (c_in, mid, 1, k1)
    return f1.squeeze(2).transpose(0, 1).reshape(mid, c_in, *k1).contiguous(), f2


def shift_matrix(f: torch.Tensor, kx: Kernel, *, after: bool) -> torch.Tensor:
    """The dense matrix of x ↦ x ⊛ F (``after``: x (1, C_l, kx) then F (C_l, C_i, k)) or of
    x ↦ F ⊛ x (x (C_l, 1, kx), F (C_j, C_l, k)), rows and columns in the flattened order of
    the output and of x — what ``dense_matrix`` of that map gives, built by placing F's
    taps at each of x's offsets instead of composing F with every unit vector (one
    convolution each: 7 s of the 11 s of a 128-channel deconvolution).

    ⊛ is H[j, i, w] = Σ_l Σ_{u+v=w} F2[j, l, v] F1[l, i, u], so column (l, v) of x ⊛ F1 holds
    F1[l, :, u] at w = u + v, and column (l, u) of F2 ⊛ x holds F2[:, l, v] at w = u + v."""
    kf = kernel_of(f)
    kk = (kf[0] + kx[0] - 1, kf[1] + kx[1] - 1)
    # taps: (C_other, kf_h, kf_w, C_l) — C_i of F1 (after) or C_j of F2 (before)
    taps = f.permute(1, 2, 3, 0) if after else f.permute(0, 2, 3, 1)
    other, c_l = taps.shape[0], taps.shape[3]
    a = f.new_zeros(other, *kk, c_l, *kx)
    for vh in range(kx[0]):
        for vw in range(kx[1]):
            a[:, vh:vh + kf[0], vw:vw + kf[1], :, vh, vw] = taps
    return a.reshape(other * kk[0] * kk[1], c_l * kx[0] * kx[1])


def _solve_shared(op: LinearMap, matrix: Callable[[], torch.Tensor], rhs: list[torch.Tensor],
                  like: torch.Tensor, tol: float) -> torch.Tensor:
    """Solve op(x_k) = rhs_k for every k with one matrix (``matrix()``: op's dense matrix,
    built only for the dense path); returns the stacked x_k."""
    m, n = rhs[0].numel(), like.numel()
    if m * n <= SHARED_DENSE_LIMIT:
        tick()
        b = torch.stack([r.reshape(-1) for r in rhs], dim=1)
        x = dense_min_norm(matrix(), b)
        tick()
        return x.T.reshape(len(rhs), *like.shape).to(like.dtype)
    return torch.stack([lsqr(op, r, like, rtol=tol * 1e-2, max_iter=5000).x for r in rhs])


def _embedding(mid: int, c: int, rng: SeededRng) -> tuple[torch.Tensor, torch.Tensor | None]:
    """E (mid, c) with orthonormal columns and its orthogonal complement (mid, mid − c)."""
    o = rng.orthogonal(mid)
    return o[:, :c], (o[:, c:] if mid > c else None)
