"""Least squares for the linear sub-problems of morphing: matrix-free LSQR and a dense path.

Every sub-problem is "find the correction δ of one filter that best fixes the residual
r", i.e. min ‖A δ − r‖ for a linear map A built from convolutions. ``lsqr`` needs only A
and its adjoint (obtained once from ``torch.func.vjp``, valid everywhere since A is
linear) and runs on whatever device the tensors live on. ``dense_lstsq`` materializes A
column by column with ``vmap`` and solves by SVD, for tiny systems and for the benchmark
baseline.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .budget import tick

LinearMap = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class LsqResult:
    x: torch.Tensor
    iterations: int
    residual: float  # ‖A x − b‖, estimated by LSQR's recurrence


def adjoint(op: LinearMap, like: torch.Tensor) -> LinearMap:
    """The adjoint of the linear map ``op`` at inputs shaped like ``like``."""
    _, vjp = torch.func.vjp(op, torch.zeros_like(like))[:2]
    return lambda r: vjp(r)[0]


def lsqr(op: LinearMap, b: torch.Tensor, like: torch.Tensor, *, rtol: float,
         max_iter: int) -> LsqResult:
    """Minimum-norm least squares by LSQR (Paige & Saunders 1982), matrix-free.

    Stops when ‖A x − b‖ ≤ rtol·‖b‖ (consistent systems), when ‖Aᵀr‖ ≤ rtol·‖A‖·‖r‖
    (the least-squares optimum of an inconsistent system) or after ``max_iter`` steps.
    Starting from x = 0 it converges to the minimum-norm solution, which keeps a corrected
    filter close to its current (random) value.
    """
    op_t = adjoint(op, like)
    x = torch.zeros_like(like)
    u = b.clone()
    beta = float(torch.linalg.vector_norm(u))
    bnorm = beta
    if beta == 0.0:
        return LsqResult(x, 0, 0.0)
    u /= beta
    v = op_t(u)
    alpha = float(torch.linalg.vector_norm(v))
    if alpha == 0.0:
        return LsqResult(x, 0, bnorm)
    v /= alpha
    w = v.clone()
    phibar, rhobar = beta, alpha
    anorm2 = 0.0
    it = 0
    while it < max_iter:
        it += 1
        u = op(v) - alpha * u
        beta = float(torch.linalg.vector_norm(u))
        if beta > 0:
            u /= beta
        anorm2 += alpha * alpha + beta * beta
        v = op_t(u) - beta * v
        alpha = float(torch.linalg.vector_norm(v))
        if alpha > 0:
            v /= alpha
        rho = math.hypot(rhobar, beta)
        c, s = rhobar / rho, beta / rho
        theta = s * alpha
        rhobar = -c * alpha
        phi = c * phibar
        phibar = s * phibar
        x.add_(w, alpha=phi / rho)
        w = v - (theta / rho) * w
        # phibar = ‖r‖; phibar·alpha·|c| = ‖Aᵀ r‖
        if phibar <= rtol * bnorm:
            break
        if phibar * alpha * abs(c) <= rtol * math.sqrt(anorm2) * phibar:
            break
        if alpha == 0.0:  # Krylov space exhausted: x is the least-squares solution
            break
    return LsqResult(x, it, phibar)


def dense_matrix(op: LinearMap, like: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """A as a dense (m, n) matrix: A applied to the n unit vectors, ``chunk`` at a time."""
    n = like.numel()
    cols = []
    batched = torch.func.vmap(op)
    eye = torch.eye(n, dtype=like.dtype, device=like.device)
    for i in range(0, n, chunk):
        block = eye[i:i + chunk].reshape(-1, *like.shape)
        cols.append(batched(block).reshape(block.shape[0], -1))
    return torch.cat(cols).T


def dense_min_norm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Minimum-norm least-squares solution of a X = b for every column of b, in float64.

    Wide systems (m ≤ n, the usual morphing case; rows that are zero to float64 rounding
    left out) go through the Cholesky factor of a aᵀ (x = aᵀ (a aᵀ)⁻¹ b) with one step of
    iterative refinement: a GEMM and an m×m factorization, much faster than an SVD. When
    that factorization fails or leaves a residual (rank-deficient or inconsistent
    systems), a rank-revealing solve takes over
    (``gelsd`` on the CPU, the pseudo-inverse elsewhere). Singular values below
    max(m, n)·eps of the *input* dtype count as zero there: morphing systems often have
    exact null spaces (gauge freedoms of the module), which a float32 matrix resolves only
    to ~1e-7, and inverting that noise would blow the solution up.
    """
    a64, b64 = a.to(torch.float64), b.to(torch.float64)
    m, n = a64.shape
    rcond = max(m, n) * torch.finfo(a.dtype).eps
    # rows that are zero up to float64 rounding (a cut's outer ring that no path reaches
    # from a compact start: 24·C of D's 49·C rows) make a aᵀ singular, so the Cholesky
    # route failed on every such cut and gelsd took 20 s at 64 channels; the least-squares
    # solution cannot use them, so the factorization leaves them out and the residual
    # check below still counts them (bounded: ‖a‖·‖x‖ there)
    norms = torch.linalg.vector_norm(a64, dim=1)
    eps = max(m, n) * torch.finfo(torch.float64).eps
    live = norms > eps * float(norms.max()) if m else norms.bool()
    rows = a64 if bool(live.all()) else a64[live]
    if rows.shape[0] <= n and rows.shape[0] > 0:
        chol, info = torch.linalg.cholesky_ex(_gram(rows))
        if int(info) == 0:
            b_live = b64 if rows is a64 else b64[live]
            x = rows.T @ torch.cholesky_solve(b_live, chol)
            x = x + rows.T @ torch.cholesky_solve(b_live - rows @ x, chol)  # refinement
            if rows is a64:
                res = float(torch.linalg.vector_norm(a64 @ x - b64))
            else:  # the left-out rows: ‖b − a x‖ there ≤ ‖b‖ + ‖a‖·‖x‖ (a is tiny there)
                dead = ~live
                res = math.hypot(float(torch.linalg.vector_norm(rows @ x - b_live)),
                                 float(torch.linalg.vector_norm(b64[dead]))
                                 + float(torch.linalg.vector_norm(norms[dead]))
                                 * float(torch.linalg.vector_norm(x)))
            if res <= 1e-9 * max(float(torch.linalg.vector_norm(b64)), 1e-300):
                return x
    if a.device.type == "cpu":
        # gelsd (SVD): the rank decision must be reliable. gelsy's pivoted-QR estimate
        # is not: on module D's sink cut (rank 720 of 784, gap 1e-2 → 1e-15) MKL's gelsy
        # returned rank 710 or 716 on some runs (it depends on memory alignment), leaving
        # a 1e-3 residual, so the same seed gave different filters.
        return torch.linalg.lstsq(a64, b64, rcond=rcond, driver="gelsd").solution
    return torch.linalg.pinv(a64, rtol=rcond) @ b64


def _gram(a: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """a aᵀ, summed over column blocks so that a solve's time budget is checked between
    them (one block of a 6272 × 6912 cut matrix: about a second on one core)."""
    if a.shape[1] <= chunk:
        return a @ a.T
    out = a.new_zeros(a.shape[0], a.shape[0])
    for i in range(0, a.shape[1], chunk):
        tick()
        part = a[:, i:i + chunk]
        out.addmm_(part, part.T)
    return out


def dense_lstsq(op: LinearMap, b: torch.Tensor, like: torch.Tensor) -> LsqResult:
    """Minimum-norm least squares of op(x) = b with the materialized matrix."""
    a = dense_matrix(op, like)
    rhs = b.reshape(-1, 1)
    x = dense_min_norm(a, rhs).to(like.dtype)
    res = float(torch.linalg.vector_norm(a @ x - rhs))
    return LsqResult(x.reshape(like.shape), 1, res)
