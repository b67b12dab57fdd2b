"""The normal equations of Algorithm 2's sink and source cuts, built from their structure.

A sink cut's map (``sweeps._cut_update``) sends one row x_e of every in-edge's filter to
one output row of G̃: x ↦ Σ_e x_e ⊛ P(u_e). Its matrix A holds, for tap v of edge e and
channel l of u_e, the prefix's row P(u_e)[l] placed at offset v, so

    A·Aᵀ = Σ_e Σ_v S_v (P̂ₑᵀ P̂ₑ) S_vᵀ,    P̂ₑ = P(u_e) as a (w_u, C_in·k_p) matrix,

S_v the shift to offset v: one GEMM per edge (its lower half) and shifted additions instead
of the dense (C_in·K) × Σ(w·k) matrix and its product: ~2·K²·k/k_p² times fewer flops
(K the window's taps, k the filter's, k_p the prefix's: ~140 for D's sink cut) and none
of its memory. Aᵀ is a correlation with the prefixes (``conv2d``), A a composition
(``compose``).
A source cut is a sink cut of the channel-transposed module (G̃ᵀ = Σ_e F_eᵀ ⊛ Q(v_e)ᵀ).
The minimum-norm solution of A X = B is X = Aᵀ (A Aᵀ)⁻¹ B through a Cholesky factor
(``solve_cut``); where that fails, ``sweeps`` falls back to the dense path.

Two details keep the window of rows small and the decisions the dense path's. A prefix
is cropped to its numerical support first: after ``sweeps.compact_prefixes`` P(c) of module
D is 5×5 with a ring of ~3e-16 relative, which would grow the Gram window from 5×5 to
7×7 taps (``_crop``). Rows count as zero ("dead") as in ``lsq.dense_min_norm``: a row
norm (√diag of the Gram) ≤ max(m, n)·eps (float64) times the largest, m × n the dense
matrix's shape.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..spec.graph import Kernel, kernel_area
from .algebra import compose, crop_to, kernel_of
from .budget import tick
from .cutcost import GRAM_CHUNK, RHS_CHUNK, CutShape
from .lsq import lsqr

EPS64 = torch.finfo(torch.float64).eps


@dataclass(frozen=True)
class Cut:
    """x ↦ Σ_e x_e ⊛ P_e on the ``window`` of a ``frame`` (both centred kernels), restricted
    to the frame's ``taps`` (a (kh, kw) boolean mask, the same for every channel).

    ``ends``: per edge its prefix P_e (w_e, C, ph, pw) in float64, cropped; ``dropped``
    bounds ‖A − A_cropped‖_F (what the crop left out); ``tol`` is the dense path's
    threshold max(m, n)·eps for a row or singular value that counts as zero."""

    ends: tuple[torch.Tensor, ...]
    kernels: tuple[Kernel, ...]
    frame: Kernel
    window: Kernel
    taps: torch.Tensor
    dropped: float
    tol: float

    @property
    def channels(self) -> int:
        return int(self.ends[0].shape[1])

    @property
    def sizes(self) -> list[int]:
        """Unknowns of each edge per right-hand side: w_e·kh·kw."""
        return [int(p.shape[0]) * k[0] * k[1] for p, k in zip(self.ends, self.kernels,
                                                              strict=True)]

    def reach(self, i: int) -> Kernel:
        kp = kernel_of(self.ends[i])
        return (kp[0] + self.kernels[i][0] - 1, kp[1] + self.kernels[i][1] - 1)

    def shape(self, nrhs: int, what: str = "a cut") -> CutShape:
        """Its sizes for the cost model (``cutcost``), at ``nrhs`` right-hand sides."""
        fh, fw = (self.frame[0] - self.window[0]) // 2, (self.frame[1] - self.window[1]) // 2
        taps = int(self.taps[fh:fh + self.window[0], fw:fw + self.window[1]].sum())
        edges = tuple((int(p.shape[0]), kernel_area(kernel_of(p)), kernel_area(k))
                      for p, k in zip(self.ends, self.kernels, strict=True))
        return CutShape(what, self.channels, kernel_area(self.window),
                        kernel_area(self.frame), taps, nrhs, edges)

    def offset(self, i: int) -> tuple[int, int]:
        """Where edge ``i``'s reach starts in the window (centred)."""
        r = self.reach(i)
        return (self.window[0] - r[0]) // 2, (self.window[1] - r[1]) // 2


def make_cut(ends: Sequence[torch.Tensor], kernels: Sequence[Kernel], frame: Kernel, *,
             taps: torch.Tensor | None = None, crop: bool = True) -> Cut:
    """The cut x ↦ Σ_e x_e ⊛ ends[e] over ``frame`` (rows: the ``taps`` of the frame, all by
    default), its prefixes cropped to their numerical support unless ``crop`` is False."""
    device = ends[0].device
    taps = (torch.ones(frame, dtype=torch.bool, device=device) if taps is None
            else taps.to(device=device, dtype=torch.bool))
    ends64 = [p.to(torch.float64) for p in ends]
    m = ends64[0].shape[1] * int(taps.sum())
    n = sum(int(p.shape[0]) * k[0] * k[1] for p, k in zip(ends64, kernels, strict=True))
    tol = max(m, n) * EPS64
    dropped = [0.0] * len(ends64)
    if crop:  # a column of A is a prefix row: the largest bounds σ_max(A) from below
        column = max(float(torch.linalg.vector_norm(p.flatten(1), dim=1).max()) for p in ends64)
        floor = tol * column / math.sqrt(len(ends64))
        for i, (p, k) in enumerate(zip(ends64, kernels, strict=True)):
            ends64[i], dropped[i] = _crop(p, k[0] * k[1], floor)
    ends64 = [p.contiguous() for p in ends64]  # (a source cut's are transposed views)
    reach = [(kernel_of(p)[0] + k[0] - 1, kernel_of(p)[1] + k[1] - 1)
             for p, k in zip(ends64, kernels, strict=True)]
    window = (min(frame[0], max(r[0] for r in reach)), min(frame[1], max(r[1] for r in reach)))
    if any(r[0] > frame[0] or r[1] > frame[1] for r in reach):
        raise ValueError(f"a cut edge reaches beyond the {frame[0]}×{frame[1]} frame")
    return Cut(tuple(ends64), tuple(kernels), frame, window, taps,
               math.sqrt(sum(d * d for d in dropped)), tol)


def _crop(p: torch.Tensor, taps: int, floor: float) -> tuple[torch.Tensor, float]:
    """``p`` without outer rows / columns of taps as long as what they held, counted once
    per tap of the edge's filter (it appears in A that often: √taps·‖dropped‖), stays
    ≤ ``floor``; and that amount. ``floor`` is ``tol``·(a lower bound of σ_max(A)), the
    level below which the dense path's rank-revealing solve treats singular values as
    zero, so the crop moves no singular value by more than that (Weyl)."""
    dropped2 = 0.0
    while True:
        kh, kw = kernel_of(p)
        best = None
        for dim, size in ((-2, kh), (-1, kw)):
            if size < 3:
                continue
            edge = torch.cat([p.narrow(dim, 0, 1), p.narrow(dim, size - 1, 1)], dim)
            held = taps * float(torch.linalg.vector_norm(edge)) ** 2
            if dropped2 + held <= floor * floor and (best is None or held < best[1]):
                best = (dim, held)
        if best is None:
            return p, math.sqrt(dropped2)
        dim, held = best
        dropped2 += held
        new = (kh - 2, kw) if dim == -2 else (kh, kw - 2)
        p = crop_to(p, new)


def row_norms(cut: Cut) -> torch.Tensor:
    """‖row‖ of A for every row of the window, (C, wh, ww): √diag(A·Aᵀ), from the prefixes'
    column norms shifted to every tap."""
    c, (wh, ww) = cut.channels, cut.window
    sq = cut.ends[0].new_zeros(c, wh, ww)
    for i, (p, k) in enumerate(zip(cut.ends, cut.kernels, strict=True)):
        ph, pw = kernel_of(p)
        oh, ow = cut.offset(i)
        col = p.square().sum(0)  # (C, ph, pw)
        for vh in range(k[0]):
            for vw in range(k[1]):
                sq[:, oh + vh:oh + vh + ph, ow + vw:ow + vw + pw] += col
    return sq.sqrt()


def gram(cut: Cut) -> torch.Tensor:
    """The lower triangle (and some of the upper) of A·Aᵀ over the window's rows (all
    taps, in (C, wh, ww) order): Σ_e Σ_v S_v (P̂ₑᵀP̂ₑ) S_vᵀ, P̂ₑᵀP̂ₑ one channel block at a
    time (only the blocks on or below the diagonal). Exact up to float64 rounding of the
    products (what the dense a·aᵀ has too)."""
    c, (wh, ww) = cut.channels, cut.window
    p0 = cut.ends[0]
    g = torch.zeros(c, wh, ww, c, wh, ww, dtype=torch.float64, device=p0.device)
    for i, (p, k) in enumerate(zip(cut.ends, cut.kernels, strict=True)):
        w, _, ph, pw = p.shape
        oh, ow = cut.offset(i)
        flat = p.reshape(w, c * ph * pw)
        step = max(1, GRAM_CHUNK // (ph * pw * c * ph * pw))
        for i0 in range(0, c, step):
            tick()
            i1 = min(c, i0 + step)
            t = (flat[:, i0 * ph * pw:i1 * ph * pw].T @ flat[:, :i1 * ph * pw])
            t = t.reshape(i1 - i0, ph, pw, i1, ph, pw)
            for vh in range(k[0]):
                for vw in range(k[1]):
                    h, v = slice(oh + vh, oh + vh + ph), slice(ow + vw, ow + vw + pw)
                    g[i0:i1, h, v, :i1, h, v] += t
    return g.reshape(c * wh * ww, c * wh * ww)


def apply(cut: Cut, xs: Sequence[torch.Tensor]) -> torch.Tensor:
    """A x on the window: Σ_e x_e ⊛ P_e, xs[e] (nrhs, w_e, kh, kw) → (nrhs, C, *window)
    (out of place: ``torch.func.vjp`` differentiates it for LSQR)."""
    out: torch.Tensor | None = None
    for i, (p, x) in enumerate(zip(cut.ends, xs, strict=True)):
        tick()
        (oh, ow), (rh, rw) = cut.offset(i), cut.reach(i)
        part = F.pad(compose(x, p), (ow, cut.window[1] - ow - rw, oh, cut.window[0] - oh - rh))
        out = part if out is None else out + part
    assert out is not None
    return out


def adjoint(cut: Cut, y: torch.Tensor) -> list[torch.Tensor]:
    """Aᵀ y: y (nrhs, C, *window) → per edge (nrhs, w_e, kh, kw), the correlation of y with
    P_e (x_e[l, v] = Σ_{i,u} P_e[l, i, u]·y[i, u + v])."""
    xs = []
    for i, p in enumerate(cut.ends):
        tick()
        (oh, ow), (rh, rw) = cut.offset(i), cut.reach(i)
        xs.append(F.conv2d(y[:, :, oh:oh + rh, ow:ow + rw], p))
    return xs


@dataclass(frozen=True)
class CutSolution:
    """The minimum-norm x of A x = b (per right-hand side) and what it leaves."""

    x: tuple[torch.Tensor, ...]  # per edge (nrhs, w_e, kh, kw), float64
    fit: torch.Tensor | None  # A x on the window (nrhs, C, *window), float64, if asked for
    residual: float  # ‖A x − b‖ over the cut's rows of the frame (a bound, see solve_cut)
    rhs: float  # ‖b‖ over those rows


def solve_cut(cut: Cut, b: torch.Tensor, *, fit: bool = False) -> CutSolution | None:
    """min ‖x‖ subject to A x = b on the live rows, for each of b's right-hand sides
    (b: (nrhs, C, *frame)), in float64, and with ``fit`` A x on the window; None when the
    live rows' Gram has no Cholesky factor or one too ill-conditioned to trust (more live
    rows than unknowns, a rank deficiency, eps·cond(A)² > 1e-6): the caller then falls
    back to a rank-revealing path.

    Dead rows (norm ≤ ``cut.tol`` times the largest, or outside the window) are left out,
    as ``lsq.dense_min_norm`` does: the least-squares solution cannot use them. One step
    of iterative refinement follows where the error bound cond(A)·‖A x − b‖/‖b‖ is over
    1e-13 (see ``_solve_chunks``). ``residual`` bounds ‖A x − b‖ with the real (uncropped)
    A: the live rows' residual, ‖b‖ on dead rows plus their norms times ‖x‖, plus
    ``cut.dropped``·‖x‖."""
    c, (wh, ww) = cut.channels, cut.window
    nrhs = b.shape[0]
    b = b.to(torch.float64)
    fh, fw = (cut.frame[0] - wh) // 2, (cut.frame[1] - ww) // 2
    outside = cut.taps.clone()
    outside[fh:fh + wh, fw:fw + ww] = False
    b_out = float(torch.linalg.vector_norm(b[:, :, outside]))
    win_taps = cut.taps[fh:fh + wh, fw:fw + ww].expand(c, wh, ww).reshape(-1)
    idx = None if bool(win_taps.all()) else win_taps.nonzero().flatten()
    b_sel = b[:, :, fh:fh + wh, fw:fw + ww].reshape(nrhs, -1)  # (nrhs, m): the rows solved
    if idx is not None:
        b_sel = b_sel[:, idx]
    norms = row_norms(cut).reshape(-1)
    if idx is not None:
        norms = norms[idx]
    live = norms > cut.tol * float(norms.max()) if norms.numel() else norms.bool()
    if int(live.sum()) > sum(cut.sizes):  # tall: A·Aᵀ is singular
        return None
    g = gram(cut)
    if idx is not None:
        g = g[idx[:, None], idx[None, :]]
    dead = (~live).nonzero().flatten()
    b_dead = b_out + float(torch.linalg.vector_norm(b_sel[:, dead]))
    n_dead = float(torch.linalg.vector_norm(norms[dead]))
    rhs = math.hypot(float(torch.linalg.vector_norm(b_sel)), b_out)
    if dead.numel():  # a dead row: unit diagonal, zero elsewhere, zero right-hand side
        g.index_fill_(0, dead, 0.0).index_fill_(1, dead, 0.0)
        g.diagonal()[dead] = 1.0
        b_sel = b_sel.index_fill(1, dead, 0.0)
    tick()
    info = torch.empty((), dtype=torch.int32, device=g.device)
    chol, _ = torch.linalg.cholesky_ex(g, out=(g, info))  # in place: the factor replaces g
    if int(info) != 0:
        return None
    # cond(A)² ≥ max diag(G) / min pivot², about equal for these matrices: where the Gram
    # route cannot resolve it (eps·cond(A)² > 1e-6) the caller's rank-revealing path must
    pivots = chol.diagonal()[live] if dead.numel() else chol.diagonal()
    kappa2 = (float(norms.max()) ** 2 / max(float(pivots.min()) ** 2, 1e-300)
              if live.any() else 1.0)
    if kappa2 * EPS64 > 1e-6:
        return None
    x = tuple(b.new_empty(nrhs, p.shape[0], *k) for p, k in zip(cut.ends, cut.kernels,
                                                                strict=True))
    fitted = b.new_empty(nrhs, c, wh, ww) if fit else None
    res2 = _solve_chunks(cut, chol, b_sel, idx, dead, math.sqrt(kappa2), x, fitted)
    xnorm = math.sqrt(sum(float(torch.linalg.vector_norm(p)) ** 2 for p in x))
    residual = math.hypot(math.sqrt(res2), b_dead + n_dead * xnorm) + cut.dropped * xnorm
    return CutSolution(x, fitted, residual, rhs)


def _solve_chunks(cut: Cut, chol: torch.Tensor, b_sel: torch.Tensor,
                  idx: torch.Tensor | None, dead: torch.Tensor, kappa: float,
                  x: Sequence[torch.Tensor], fitted: torch.Tensor | None) -> float:
    """x = Aᵀ (L Lᵀ)⁻¹ b for ``RHS_CHUNK`` right-hand sides at a time (b_sel: (nrhs, m), the
    window's selected rows, zero on dead ones), refined once where the error bound
    ``kappa``·‖A x − b‖/‖b‖ (x − x* = A⁺(A x − b), ``kappa`` ≈ cond(A)) is over 1e-13;
    written into ``x`` (and A x into ``fitted``); returns Σ‖A x − b‖² over live rows."""
    c, (wh, ww) = cut.channels, cut.window
    res2 = 0.0

    def lift(y: torch.Tensor) -> torch.Tensor:  # (m, k) selected rows → (k, C, *window)
        if idx is None:
            return y.T.reshape(-1, c, wh, ww)
        full = y.new_zeros(y.shape[1], c * wh * ww)
        full[:, idx] = y.T
        return full.reshape(-1, c, wh, ww)

    def residual(bj: torch.Tensor, fit: torch.Tensor) -> torch.Tensor:  # (m, k)
        flat = fit.reshape(fit.shape[0], -1)
        r = bj.T - (flat if idx is None else flat[:, idx]).T
        return r.index_fill_(0, dead, 0.0) if dead.numel() else r

    for j0 in range(0, b_sel.shape[0], RHS_CHUNK):
        tick()
        bj = b_sel[j0:j0 + RHS_CHUNK]
        xj = adjoint(cut, lift(torch.cholesky_solve(bj.T.contiguous(), chol)))
        fit = apply(cut, xj)
        r = residual(bj, fit)
        if kappa * float(torch.linalg.vector_norm(r)) > 1e-13 * float(
                torch.linalg.vector_norm(bj)):
            step = adjoint(cut, lift(torch.cholesky_solve(r, chol)))
            xj = [a + d for a, d in zip(xj, step, strict=True)]
            del step, fit
            fit = apply(cut, xj)
            r = residual(bj, fit)
        res2 += float(torch.linalg.vector_norm(r)) ** 2
        for out, part in zip(x, xj, strict=True):
            out[j0:j0 + RHS_CHUNK] = part
        if fitted is not None:
            fitted[j0:j0 + RHS_CHUNK] = fit
    return res2


def lsqr_cut(cut: Cut, b: torch.Tensor, *, rtol: float = 1e-12, max_iter: int = 2000
             ) -> tuple[list[torch.Tensor], float, float]:
    """The minimum-norm x of A x = b on the cut's rows by LSQR, matrix-free (all right-hand
    sides of b (nrhs, C, *frame) as one system: they decouple), stopping at relative
    ``rtol`` or after ``max_iter`` steps; with ‖A x − b‖ and ‖b‖ over those rows."""
    wh, ww = cut.window
    nrhs = b.shape[0]
    fh, fw = (cut.frame[0] - wh) // 2, (cut.frame[1] - ww) // 2
    sel = cut.taps[fh:fh + wh, fw:fw + ww]
    outside = cut.taps.clone()
    outside[fh:fh + wh, fw:fw + ww] = False
    b_out = float(torch.linalg.vector_norm(b[:, :, outside]))
    b_in = b[:, :, fh:fh + wh, fw:fw + ww][:, :, sel]  # (nrhs, C, taps in the window)
    shapes = [(nrhs, int(p.shape[0]), *k) for p, k in zip(cut.ends, cut.kernels, strict=True)]

    def op(flat: torch.Tensor) -> torch.Tensor:  # a chunk of right-hand sides at a time
        out = []
        for chunk in flat.split(RHS_CHUNK):
            parts = chunk.split([math.prod(sh[1:]) for sh in shapes], dim=1)
            out.append(apply(cut, [x.reshape(-1, *sh[1:])
                                   for x, sh in zip(parts, shapes, strict=True)])[:, :, sel])
        return torch.cat(out)

    x = lsqr(op, b_in, b.new_zeros(nrhs, sum(cut.sizes)), rtol=rtol, max_iter=max_iter).x
    res = math.hypot(float(torch.linalg.vector_norm(op(x) - b_in)), b_out)
    parts = x.split([math.prod(sh[1:]) for sh in shapes], dim=1)
    bnorm = math.hypot(float(torch.linalg.vector_norm(b_in)), b_out)
    return [p.reshape(sh) for p, sh in zip(parts, shapes, strict=True)], res, bnorm
