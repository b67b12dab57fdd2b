"""Solving the morphism equation: atomic splits, Algorithm 2, and morphing a filter into a module.

``morph_filter(G, module)`` is the one entry point. It follows the paper's route — reduce
the module (Algorithm 1), solve the irreducible remainder (Algorithm 2), replay the atomic
morphs outward with TYPE-I/TYPE-II splits — and falls back to Algorithm 2 on the whole
module when a split on the way cannot be exact. Every edge's filter comes back with the
method that produced it and the relative residual ‖module(F) − G̃‖ / ‖G̃‖, computed
independently at the end.

Limits. What can be decided before iterating is decided first: the memory the solve needs
(refused over a limit, before anything is allocated), the polynomial rank of the module
against the layer's (a vertex cut narrower than the filter's rank can never reproduce it),
and whether any block of Algorithm 2 has as many independent unknowns as equations
(otherwise no sweep can absorb the residual and the solve is refused at once). A solve runs
under a time budget with a progress heartbeat; width advice is printed only after a
re-solve at the advised widths reached the tolerance.
"""

from __future__ import annotations

import contextvars
import dataclasses
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from .algebra import (
    compose,
    crop_to,
    identity_filter,
    kernel_of,
    module_function,
    pad_to,
    path_kernel,
    prefix_filters,
    resize,
    suffix_filters,
)
from .errors import InfeasibleError, ResourceLimitError, SolverError, SolverTimeout
from .graph import Edge, Kernel, ModuleGraph
from .lsq import LinearMap, dense_lstsq, dense_matrix, dense_min_norm, lsqr
from .reduce import ReductionPlan, reduce_module

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


# -- limits: time budget, progress, memory -----------------------------------------------

ADVICE_SECONDS = 60.0  # default time for re-solves that verify width advice
PROGRESS_EVERY = 4.0  # seconds between progress reports (nothing silent for longer)


@dataclass(frozen=True)
class SolveProgress:
    """A heartbeat of a running solve, at most every ``PROGRESS_EVERY`` seconds."""

    phase: str  # e.g. "Algorithm 2", "verifying widths {'a': 30}"
    sweep: int  # Algorithm 2 sweeps finished in this phase
    residual: float | None  # relative residual so far (None before the first)
    seconds: float  # since the solve began
    max_seconds: float | None  # its time limit

    def line(self) -> str:
        parts = [self.phase]
        if self.sweep:
            parts.append(f"sweep {self.sweep}")
        if self.residual is not None:
            parts.append(f"relative residual {self.residual:.2e}")
        limit = f" of {self.max_seconds:g} s" if self.max_seconds is not None else ""
        parts.append(f"{self.seconds:.0f} s{limit}")
        return ", ".join(parts)


ProgressFn = Callable[[SolveProgress], None]


class _OutOfTime(SolverError):
    """The time budget ran out (raised from inside a solve, turned into a message at the
    top)."""


class _Budget:
    """Deadline and progress of one ``morph_filter`` call. Solver code reaches the current
    budget through ``_tick()`` (a context variable), so the linear maps of every block check
    it on each application: a solve stops within one operator application of its limit."""

    def __init__(self, max_seconds: float | None, progress: ProgressFn | None,
                 parent: _Budget | None = None, phase: str = "solving"):
        now = time.monotonic()
        own = now + max_seconds if max_seconds is not None else math.inf
        self.root: _Budget = self
        self.start: float = now
        self.max_seconds: float | None = max_seconds
        self.deadline: float = own
        self.progress: ProgressFn | None = progress
        self.label: str = ""
        self.phase: str = phase
        if parent is not None:  # a nested solve (verifying width advice)
            self.root, self.start = parent.root, parent.start
            self.max_seconds, self.deadline = parent.max_seconds, min(own, parent.deadline)
            self.progress = progress if progress is not None else parent.progress
            self.label = f"{parent.label}{parent.phase}: "  # reported under its parent
        self.last = now
        self.sweep = 0
        self.residual: float | None = None

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def note(self, *, phase: str | None = None, sweep: int | None = None,
             residual: float | None = None) -> None:
        if phase is not None:
            self.phase, self.sweep, self.residual = phase, 0, None
        if sweep is not None:
            self.sweep = sweep
        if residual is not None:
            self.residual = residual
        self.tick()

    def tick(self) -> None:
        now = time.monotonic()
        if now > self.deadline:
            raise _OutOfTime(f"time limit reached in {self.phase}")
        root = self.root
        if self.progress is not None and now - root.last >= PROGRESS_EVERY:
            root.last = now
            self.progress(SolveProgress(self.label + self.phase, self.sweep, self.residual,
                                        now - self.start, self.max_seconds))


_BUDGET: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("netmorph_budget",
                                                                        default=None)


def _tick() -> None:
    budget = _BUDGET.get()
    if budget is not None:
        budget.tick()


def default_memory_limit(device: torch.device | str = "cpu") -> int:
    """Half the physical memory (4 GiB where it cannot be read); on a CUDA device also at
    most 90% of the device's memory."""
    try:
        limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        limit = 4 * 2**30
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        total = torch.cuda.get_device_properties(dev).total_memory
        limit = min(limit, int(0.9 * total))
    return int(limit)


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak bytes of a solve (float64 working copies), and its largest single piece."""

    bytes: int
    largest: str  # what the largest piece is, e.g. "the sink cut's dense matrix (784 × 810)"

    def check(self, limit: int, what: str) -> None:
        if self.bytes > limit:
            raise ResourceLimitError(
                f"{what} needs about {format_bytes(self.bytes)} of memory (largest piece: "
                f"{self.largest}), above the limit of {format_bytes(limit)}; use narrower "
                f"inner blobs or a smaller layer, or raise the limit with --max-memory GiB")


def _area(k: Kernel) -> int:
    return k[0] * k[1]


def _kernels_to_sink(graph: ModuleGraph) -> dict[str, Kernel]:
    """Kernel of Q(v) for every blob (longest path to t per dimension)."""
    k: dict[str, Kernel] = {graph.sink: (1, 1)}
    for b in reversed(graph.blobs[:-1]):
        kh = max(e.kernel[0] + k[e.dst][0] - 1 for e in graph.out_edges[b])
        kw = max(e.kernel[1] + k[e.dst][1] - 1 for e in graph.out_edges[b])
        k[b] = (kh, kw)
    return k


def _algorithm2_memory(graph: ModuleGraph, widths: Mapping[str, int]) -> list[tuple[int, str]]:
    """(entries, what) of the big arrays of Algorithm 2 on ``graph`` (see ``solve_memory``)."""
    s, t = graph.source, graph.sink
    k_eff = graph.effective_kernel()
    kp, kq = path_kernel(graph), _kernels_to_sink(graph)
    cs, ct, area = widths[s], widths[t], _area(k_eff)
    n_f = sum(widths[e.dst] * widths[e.src] * _area(e.kernel) for e in graph.edges)
    n_pq = sum(widths[v] * (cs * _area(kp[v]) + ct * _area(kq[v])) for v in graph.blobs)
    pieces = [(6 * n_f, f"the module's filters ({n_f:,} entries, 6 working copies)"),
              (2 * n_pq, "the prefix and suffix filters of every blob"),
              (8 * ct * cs * area, "the target and residual filters")]
    for kind, edges, rows in (("sink", graph.in_edges[t], cs * area),
                              ("source", graph.out_edges[s], ct * area)):
        cols = sum(widths[e.src if kind == "sink" else e.dst] * _area(e.kernel) for e in edges)
        c = ct if kind == "sink" else cs
        # matrix in its dtype and float64, the identity it is built from, A·Aᵀ and its
        # Cholesky factor, right-hand sides and solutions
        n = 3 * rows * cols + cols * cols + 2 * rows * rows + 2 * c * (rows + cols)
        pieces.append((n, f"the {kind} cut's dense matrix ({rows:,} × {cols:,})"))
    for e in graph.edges:
        if e.src == s or e.dst == t:
            continue
        n_e = widths[e.dst] * widths[e.src] * _area(e.kernel)
        rows = ct * cs * area
        if rows * n_e <= DENSE_LIMIT:  # dense: the matrix and the identity it is built from
            pieces.append((3 * rows * n_e + n_e * n_e, f"edge {e.name!r}'s dense matrix"))
    return pieces


def solve_memory(graph: ModuleGraph, widths: Mapping[str, int], *, kernel: Kernel,
                 whole: bool = False, plan: ReductionPlan | None = None) -> MemoryEstimate:
    """Peak memory of ``morph_filter`` at these widths (float64: 8 bytes an entry): the
    filters of every edge in several working copies, the blobs' prefix and suffix filters
    and the dense cut matrices of Algorithm 2 (with ``whole``, on the whole module; else on
    the irreducible remainder after Algorithm 1, plus the TYPE-I splits' dense solves)."""
    cs, ct = widths[graph.source], widths[graph.sink]
    pieces = [(2 * ct * cs * _area(kernel), "the layer's filter")]
    if whole:
        pieces += _algorithm2_memory(graph, widths)
    else:
        plan = reduce_module(graph) if plan is None else plan
        n_f = sum(widths[e.dst] * widths[e.src] * _area(e.kernel) for e in graph.edges)
        pieces.append((4 * n_f, f"the module's filters ({n_f:,} entries, 4 working copies)"))
        if not plan.simple:
            pieces += _algorithm2_memory(plan.remainder, widths)
        for st in plan.steps:
            if st.type != "I" or st.blob is None:
                continue
            a, b = st.into
            kk = (a.kernel[0] + b.kernel[0] - 1, a.kernel[1] + b.kernel[1] - 1)
            rows = max(widths[st.edge.src], widths[st.edge.dst]) * _area(kk)
            cols = widths[st.blob] * max(_area(a.kernel), _area(b.kernel))
            if rows * cols <= DENSE_LIMIT:
                pieces.append((3 * rows * cols + cols * cols,
                               f"the TYPE-I split at blob {st.blob!r}"))
    total = sum(n for n, _ in pieces) * 8
    largest = max(pieces, key=lambda p: p[0])[1]
    return MemoryEstimate(total, largest)


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
    need, structured = type1_widths(c_out, c_in, gk, k1, k2)
    smaller = (f"; an exact structured split (identity padding or unimodular factors) "
               f"needs only a middle width of {structured}" if structured < need else "")
    raise InfeasibleError(
        f"TYPE-I split of a {c_out}×{c_in} filter into {k1[0]}×{k1[1]} then {k2[0]}×{k2[1]} "
        f"through {mid} channels is not exact: eq. 3 needs max(C_l·C_i·K1², C_j·C_l·K2²) ≥ "
        f"C_j·C_i·(K1+K2−1)², i.e. a middle width of at least {need}{smaller}")


def type1_widths(c_out: int, c_in: int, gk: Kernel, k1: Kernel, k2: Kernel) -> tuple[int, int]:
    """(eq. 3's smallest middle width, the smallest width of a structured split — identity
    padding or unimodular factors — or eq. 3's where none applies) for a TYPE-I split of a
    (c_out, c_in) filter with support ``gk`` into ``k1`` then ``k2``."""
    area = (k1[0] + k2[0] - 1) * (k1[1] + k2[1] - 1)
    need = min(math.ceil(c_in * area / _area(k2)), math.ceil(c_out * area / _area(k1)))
    # the structured constructions need only mid ≥ C_in or C_out where they apply
    structured = min([c_in] * (gk == (1, 1) or fits(gk, k2)) + [c_out] * fits(gk, k1),
                     default=need)
    return need, structured


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
            _tick()
            return compose(x, f1)
        rows = [target[j:j + 1] for j in range(c_out)]
        f2 = _solve_shared(then_f2, rows, like, tol).reshape(c_out, mid, *k2)
        return f1, f2
    f2 = rng.filter(c_out, mid, k2)  # F2 random; each column F1[:, i] solves F2 ⊛ F1[:, i]
    like = torch.zeros(mid, 1, *k1, dtype=target.dtype, device=target.device)
    def before_f2(x: torch.Tensor) -> torch.Tensor:  # F2 ⊛ x
        _tick()
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
        _tick()  # the time budget, once per application
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
        _tick()
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
    raises ``SolverError`` when it stalls. Refuses at once (``InfeasibleError``, before
    drawing a filter) when no block can absorb a generic residual at these widths
    (``too_narrow``). ``dense_jacobian`` solves every block with its full dense Jacobian
    instead (the benchmark's baseline).
    """
    k_eff = graph.effective_kernel()
    target = resize(target, k_eff)
    narrow = too_narrow(graph, widths)
    if narrow is not None:
        # No block can absorb a generic residual, but a special target (0.5·I through a
        # module with 1×1 skips) can still lie in a cut's range; the dense cut solves
        # decide that in moments, so only they run before the refusal.
        start = dict(init) if init else {e.name: rng.filter(widths[e.dst], widths[e.src],
                                                            e.kernel) for e in graph.edges}
        solved, reached = _cut_probe(graph, target, start, widths, tol=tol)
        if solved is not None:
            return solved, reached
        assert isinstance(narrow, _Narrow)
        raise _Narrow(f"{narrow.reason}; solving its two cuts alone (dense, exact) stalls at "
                      f"relative residual {reached[-1]:.3g}, so Algorithm 2 was not run "
                      "(its sweeps would only stall)", narrow.candidates)
    if init:
        starts = [dict(init)]
    else:
        random = {e.name: rng.filter(widths[e.dst], widths[e.src], e.kernel)
                  for e in graph.edges}
        compact = compact_prefixes(graph, random, widths[graph.source], support(target))
        starts = [compact, random] if compact is not None else [random]
    for i, start in enumerate(starts):
        try:
            return _sweeps(graph, target, start, widths, tol=tol, max_sweeps=max_sweeps,
                           dense_jacobian=dense_jacobian)
        except _OutOfTime:
            raise
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
    budget = _BUDGET.get()
    history: list[float] = []
    residual = target - module_function(graph, filters)
    rel = float(torch.linalg.vector_norm(residual)) / tnorm
    if budget is not None:
        budget.note(sweep=0, residual=rel)
    for sweep in range(max_sweeps):
        for block in solve_blocks(graph):
            pre = prefix_filters(graph, filters, widths[graph.source])
            suf = suffix_filters(graph, filters, widths[graph.sink])
            if dense_jacobian:
                deltas = _dense_block_update(block, filters, residual, pre, suf, k_eff)
            elif block.kind == "edge":
                (e,) = block.edges
                op = edge_map(pre[e.src], suf[e.dst], k_eff)
                deltas = {e.name: solve_linear(op, residual, filters[e.name], rtol=inner_rtol)}
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
            if budget is not None:
                budget.note(residual=rel)
            if rel <= tol:
                history.append(rel)
                return filters, history
        history.append(rel)
        if budget is not None:
            budget.note(sweep=sweep + 1, residual=rel)
        if len(history) >= 4 and history[-1] > 0.9 * history[-4]:
            break
    raise SolverError(_stall_message(graph, history, tol))


def _cut_probe(graph: ModuleGraph, target: torch.Tensor, filters: dict[str, torch.Tensor],
               widths: Mapping[str, int], *, tol: float, rounds: int = 4
               ) -> tuple[dict[str, torch.Tensor] | None, list[float]]:
    """Alternate the sink-cut and source-cut solves (dense, exact) from ``filters``: (the
    filters, history) once the relative residual is ≤ ``tol``, else (None, history) as
    soon as a round gains less than 2× (or after ``rounds``)."""
    k_eff = graph.effective_kernel()
    tnorm = float(torch.linalg.vector_norm(target)) or 1.0
    budget = _BUDGET.get()
    residual = target - module_function(graph, filters)
    rel = float(torch.linalg.vector_norm(residual)) / tnorm
    history: list[float] = []
    cuts = [b for b in solve_blocks(graph) if b.kind != "edge"]
    for r in range(rounds):
        for block in cuts:
            pre = prefix_filters(graph, filters, widths[graph.source])
            suf = suffix_filters(graph, filters, widths[graph.sink])
            deltas = _cut_update(block, filters, residual, pre, suf, k_eff)
            assert deltas is not None
            trial = {k: f + deltas[k].to(f.dtype) if k in deltas else f
                     for k, f in filters.items()}
            new_residual = target - module_function(graph, trial)
            new_rel = float(torch.linalg.vector_norm(new_residual)) / tnorm
            if new_rel <= rel:
                filters, residual, rel = trial, new_residual, new_rel
            if budget is not None:
                budget.note(residual=rel)
            if rel <= tol:
                history.append(rel)
                return filters, history
        gained = history[-1] / rel if history and rel > 0 else math.inf
        history.append(rel)
        if budget is not None:
            budget.note(sweep=r + 1)
        if gained < 2:
            break
    return None, history


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


# -- what can be decided before iterating: rank bounds, block capacities, width advice --------
#
# Two facts bound what a module can do, whatever its filters.
# 1. Its function G̃(z) = Σ_paths F_k(z)⋯F_1(z), read as a matrix of polynomials in the
#    spatial shift z, factors through any set of blobs that every s→t path crosses (sum the
#    paths by the first such blob they reach: G̃ = Σ_x Q(x) P_x), so its rank is at most the
#    total width of that set: the minimum vertex cut. A layer whose filter has a larger
#    rank cannot be reproduced — proven, refused at once.
# 2. Each block of Algorithm 2 is a linear map; its rank is at most its number of unknowns
#    and, through the prefix / suffix filters it is composed with, at most what those can
#    carry at the kernel sizes involved (``_Capacity``). A block whose rank bound is below
#    the number of equations cannot absorb a generic residual; when no block can, the
#    sweeps can only stall (measured: D with widths = C stalls near 1e-2 at every C tried,
#    28–390 s before these checks), so the solve is refused before iterating.
# Neither bound is a guarantee of success, so width advice is only printed after a
# re-solve at the advised widths has reached the tolerance (``_advise``).


@dataclass(frozen=True)
class Widening:
    """Wider inner blobs after which a block of Algorithm 2 (or the module) is no longer
    ruled out by the rank bounds."""

    what: str  # "the sink cut (F5, F6, F7)", "edge 'F3'", "the vertex cut 'a'", …
    channels: dict[str, int]  # blob → new width (only the widened blobs)
    cost: int  # channels added in all


class _Narrow(InfeasibleError):
    """Too narrow, decided before iterating: ``reason`` and the candidate widenings that
    ``morph_filter`` verifies by re-solving before it advises any."""

    def __init__(self, reason: str, candidates: list[Widening]):
        hint = ""
        if candidates:
            best = min(candidates, key=lambda c: c.cost)
            hint = f" (unverified candidate: widen to {_channels_text(best.channels)})"
        super().__init__(reason + hint)
        self.reason, self.candidates = reason, candidates


def _channels_text(channels: Mapping[str, int]) -> str:
    return "{" + ", ".join(f'"{b}": {w}' for b, w in channels.items()) + "}"


class _Capacity:
    """Upper bounds on the rank of Algorithm 2's block maps at given widths.

    ``right(u, k)`` bounds dim{x ⊛ P(u)} over one output row x (1, w_u, k): at most the
    unknowns w_u·|k|, the entries C_s·|k + K_P(u) − 1| it can reach, and — since
    x ⊛ P(u) = Σ over u's in-edges (x ⊛ F_e) ⊛ P(src e) — the sum of the same bound one
    blob upstream. ``left(v, k)`` is the mirror image through the suffix filters Q(v)."""

    def __init__(self, graph: ModuleGraph, widths: Mapping[str, int]):
        self.graph, self.widths = graph, widths
        self.kp, self.kq = path_kernel(graph), _kernels_to_sink(graph)
        self.k_eff = graph.effective_kernel()
        self._memo: dict[tuple[str, str, Kernel], int] = {}

    def right(self, u: str, k: Kernel) -> int:
        g, w = self.graph, self.widths
        if u == g.source:
            return w[u] * _area(k)
        key = ("r", u, k)
        if key not in self._memo:
            reach = (k[0] + self.kp[u][0] - 1, k[1] + self.kp[u][1] - 1)
            up = sum(self.right(e.src, (k[0] + e.kernel[0] - 1, k[1] + e.kernel[1] - 1))
                     for e in g.in_edges[u])
            self._memo[key] = min(w[u] * _area(k), w[g.source] * _area(reach), up)
        return self._memo[key]

    def left(self, v: str, k: Kernel) -> int:
        g, w = self.graph, self.widths
        if v == g.sink:
            return w[v] * _area(k)
        key = ("l", v, k)
        if key not in self._memo:
            reach = (k[0] + self.kq[v][0] - 1, k[1] + self.kq[v][1] - 1)
            down = sum(self.left(e.dst, (k[0] + e.kernel[0] - 1, k[1] + e.kernel[1] - 1))
                       for e in g.out_edges[v])
            self._memo[key] = min(w[v] * _area(k), w[g.sink] * _area(reach), down)
        return self._memo[key]

    def block(self, block: _Block) -> tuple[int, int, str]:
        """(rank bound, equations, what one system is) of one block."""
        g, w = self.graph, self.widths
        cs, ct, area = w[g.source], w[g.sink], _area(self.k_eff)
        if block.kind == "sink":  # one system per output channel
            cap = sum(self.right(e.src, e.kernel) for e in block.edges)
            return min(cap, cs * area), cs * area, "each output channel"
        if block.kind == "source":  # one per input channel
            cap = sum(self.left(e.dst, e.kernel) for e in block.edges)
            return min(cap, ct * area), ct * area, "each input channel"
        (e,) = block.edges
        u, v, k = e.src, e.dst, e.kernel
        reach = (min(self.kp[u][0] + k[0] + self.kq[v][0] - 2, self.k_eff[0]),
                 min(self.kp[u][1] + k[1] + self.kq[v][1] - 2, self.k_eff[1]))
        cap = min(w[u] * w[v] * _area(k), w[v] * self.right(u, k), w[u] * self.left(v, k),
                  ct * cs * _area(reach))
        return cap, ct * cs * area, "the whole filter"


def _block_name(block: _Block) -> str:
    if block.kind == "edge":
        return f"edge {block.edges[0].name!r}"
    return f"the {block.kind} cut ({', '.join(e.name for e in block.edges)})"


def _widen_block(graph: ModuleGraph, widths: Mapping[str, int], block: _Block
                 ) -> Widening | None:
    """The cheapest widening (found by bisection: the bounds grow with every width) after
    which ``block``'s rank bound reaches its equations; None when no width suffices (the
    block's kernels cannot reach the whole effective kernel)."""
    s, t = graph.source, graph.sink
    _, need, _ = _Capacity(graph, widths).block(block)

    def ok(new: Mapping[str, int]) -> bool:
        cap, _, _ = _Capacity(graph, {**widths, **new}).block(block)
        return cap >= need

    ends = [b for e in block.edges for b in (e.src, e.dst) if b not in (s, t)]
    inner = [b for b in graph.blobs if b not in (s, t)]
    for free in (list(dict.fromkeys(ends)), inner):
        if not free:
            continue
        hi = max(need, *(widths[b] for b in free))
        if not ok({b: hi for b in free}):
            continue
        lo = max(widths[b] for b in free)  # uniform width first …
        while lo < hi:
            mid = (lo + hi) // 2
            if ok({b: max(widths[b], mid) for b in free}):
                hi = mid
            else:
                lo = mid + 1
        new = {b: max(widths[b], lo) for b in free}
        for b in reversed(free):  # … then each blob as narrow as the others allow
            lo, hi = widths[b], new[b]
            while lo < hi:
                mid = (lo + hi) // 2
                if ok({**new, b: mid}):
                    hi = mid
                else:
                    lo = mid + 1
            new[b] = lo
        new = {b: v for b, v in new.items() if v > widths[b]}
        return Widening(_block_name(block), new, sum(v - widths[b] for b, v in new.items()))
    return None


def too_narrow(graph: ModuleGraph, widths: Mapping[str, int]) -> InfeasibleError | None:
    """The refusal (an ``InfeasibleError`` carrying candidate widenings) when no block of
    Algorithm 2 can absorb a generic residual at these widths; None when one can."""
    cap = _Capacity(graph, widths)
    closest: tuple[float, str, int, int, str] | None = None
    for block in solve_blocks(graph):
        c, need, unit = cap.block(block)
        if c >= need:
            return None
        if closest is None or c / need > closest[0]:
            closest = (c / need, _block_name(block), c, need, unit)
    if closest is None:  # no block at all (cannot happen for a checked module)
        return None
    _, what, c, need, unit = closest
    name = f"module {graph.name!r}" if graph.name else "the module"
    inner = ", ".join(f"{b}: {widths[b]}" for b in graph.blobs
                      if b not in (graph.source, graph.sink))
    reason = (f"{name} is too narrow for Algorithm 2 at these widths ({inner}; layer "
              f"{widths[graph.source]}→{widths[graph.sink]}): no block of its filters has as "
              f"many independent unknowns as equations — the closest, {what}, has at most "
              f"{c:,} for the {need:,} equations of {unit}")
    candidates = [w for b in solve_blocks(graph)
                  if (w := _widen_block(graph, widths, b)) is not None]
    return _Narrow(reason, sorted(candidates, key=lambda w: w.cost))


def width_advice(graph: ModuleGraph, widths: Mapping[str, int], k_eff: Kernel | None = None
                 ) -> tuple[str, dict[str, int]] | None:
    """The cheapest candidate widening of inner blobs after which some block of Algorithm 2
    is no longer ruled out by its rank bound; None when a block already is not. A
    candidate, not a guarantee: ``morph_filter`` verifies it by re-solving before advising."""
    narrow = too_narrow(graph, widths)
    if not isinstance(narrow, _Narrow) or not narrow.candidates:
        return None
    best = narrow.candidates[0]
    return best.what, dict(best.channels)


def polynomial_rank(g: torch.Tensor) -> int:
    """Rank of a filter as a matrix of polynomials in the spatial shift: the rank of
    G(z) = Σ_taps G[:, :, p, q]·z₁^p·z₂^q at random points on the unit torus (the largest of
    two; singular values below 1e-9 of the largest count as zero, so it never
    over-counts)."""
    kh, kw = kernel_of(g)
    m = g.detach().to("cpu", torch.complex128)
    gen = torch.Generator().manual_seed(20240613)
    best = 0
    for _ in range(2):
        th = torch.rand(2, generator=gen, dtype=torch.float64) * 2 * math.pi
        zh = torch.exp(1j * th[0] * torch.arange(kh, dtype=torch.float64))
        zw = torch.exp(1j * th[1] * torch.arange(kw, dtype=torch.float64))
        sv = torch.linalg.svdvals(torch.einsum("oipq,p,q->oi", m, zh, zw))
        if sv.numel() and float(sv[0]) > 0:
            best = max(best, int((sv > 1e-9 * sv[0]).sum()))
    return best


def min_vertex_cut(graph: ModuleGraph, widths: Mapping[str, int]) -> tuple[int, list[str]]:
    """(capacity, blobs) of a minimum set of blobs, weighted by width, that every s→t path
    crosses (s and t included): max-flow with each blob split into in → out."""
    inf = sum(widths[b] for b in graph.blobs) + 1
    cap: dict[tuple[str, str], dict[tuple[str, str], int]] = {}

    def arc(a: tuple[str, str], b: tuple[str, str], c: int) -> None:
        cap.setdefault(a, {}).setdefault(b, 0)
        cap[a][b] += c
        cap.setdefault(b, {}).setdefault(a, 0)

    for b in graph.blobs:
        arc((b, "in"), (b, "out"), widths[b])
    for e in graph.edges:
        arc((e.src, "out"), (e.dst, "in"), inf)
    src, dst = (graph.source, "in"), (graph.sink, "out")
    flow = 0
    while True:
        parent: dict[tuple[str, str], tuple[str, str]] = {src: src}
        queue = [src]
        for x in queue:  # breadth first (Edmonds–Karp)
            for y, c in cap[x].items():
                if c > 0 and y not in parent:
                    parent[y] = x
                    queue.append(y)
        if dst not in parent:
            break
        path: list[tuple[tuple[str, str], tuple[str, str]]] = []
        node = dst
        while node != src:
            path.append((parent[node], node))
            node = parent[node]
        push = min(cap[u][v] for u, v in path)
        for u, v in path:
            cap[u][v] -= push
            cap[v][u] += push
        flow += push
    cut = [b for b in graph.blobs if (b, "in") in parent and (b, "out") not in parent]
    return flow, cut


def _rank_refusal(g: torch.Tensor, graph: ModuleGraph, widths: Mapping[str, int]
                  ) -> _Narrow | None:
    """The proven refusal of fact 1 (see above), with the widening of the cut's blobs that
    lifts every vertex cut to the filter's rank as the candidate."""
    if len(graph.edges) > 2000:  # a bound, not a necessity: skip it on huge modules
        return None
    flow, cut = min_vertex_cut(graph, widths)
    if flow >= min(widths[graph.source], widths[graph.sink]):
        return None  # no cut below the layer's widths: nothing to check
    r = polynomial_rank(g)
    if flow >= r:
        return None
    s, t = graph.source, graph.sink
    new: dict[str, int] = {}
    for _ in range(100):
        f, c = min_vertex_cut(graph, {**widths, **new})
        inner = [b for b in c if b not in (s, t)]
        if f >= r or not inner:
            break
        step = math.ceil((r - f) / len(inner))
        for b in inner:
            new[b] = new.get(b, widths[b]) + step
    names = ", ".join(repr(b) for b in cut)
    name = f"module {graph.name!r}" if graph.name else "the module"
    reason = (f"every path from {s!r} to {t!r} in {name} passes through blob"
              f"{'s' if len(cut) > 1 else ''} {names} of total width {flow}, so the "
              f"module's function has rank at most {flow} (as a matrix of polynomials); the "
              f"layer's filter has rank {r}, so no filters can reproduce it")
    cands = [Widening(f"the vertex cut {names}", new, sum(v - widths[b] for b, v in new.items()))]
    return _Narrow(reason, cands)


def _stall_message(graph: ModuleGraph, history: list[float], tol: float) -> str:
    name = f"module {graph.name!r}" if graph.name else "the module"
    return (f"Algorithm 2 stalled at relative residual {history[-1]:.3g} after "
            f"{len(history)} sweeps (tolerance {tol:.0e}) on {name}; try another --seed or "
            f"more sweeps (--max-sweeps); no widening of its inner blobs is proven to help")


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
                 method: str = "auto", max_seconds: float | None = None,
                 max_memory: int | None = None, progress: ProgressFn | None = None,
                 advice_seconds: float = ADVICE_SECONDS, verify_advice: bool = True
                 ) -> SolveResult:
    """Filters for every edge of ``graph`` whose module function equals G exactly.

    ``g`` is (C_out, C_in, kh, kw) on any device and dtype; the filters come back on the
    same. ``method``: ``auto`` (reduce, solve the remainder, replay; Algorithm 2 on the
    whole module if a split cannot be exact), ``reduce`` or ``algorithm2`` only.

    Limits: the memory estimate (``solve_memory``) is checked against ``max_memory`` bytes
    (default: half the physical memory) before anything is allocated
    (``ResourceLimitError``); a module that is provably too narrow, or too narrow for any
    block of Algorithm 2, is refused at once (``InfeasibleError``); ``max_seconds`` bounds
    the whole call (``SolverTimeout``) and ``progress`` receives a ``SolveProgress`` at most
    every ``PROGRESS_EVERY`` seconds. A refusal advises wider inner blobs only when a
    re-solve of ``g`` at them (same seed, within ``advice_seconds`` and the time left)
    reached the tolerance; otherwise it says that no advice is proven.
    """
    parent = _BUDGET.get()
    budget = _Budget(max_seconds, progress, parent)
    token = _BUDGET.set(budget)
    tol = _default_tol(g.dtype) if tol is None else tol
    try:
        try:
            return _morph_filter(g, graph, inner_width=inner_width, seed=seed, tol=tol,
                                 max_sweeps=max_sweeps, method=method, max_memory=max_memory)
        except _Narrow as exc:
            if not verify_advice:
                raise
            raise InfeasibleError(_advise(exc, g, graph, inner_width=inner_width, seed=seed,
                                          tol=tol, max_sweeps=max_sweeps, method=method,
                                          max_memory=max_memory,
                                          advice_seconds=advice_seconds)) from None
        except _OutOfTime:
            name = f"module {graph.name!r}" if graph.name else "the module"
            where = f"{budget.phase}" + (f", sweep {budget.sweep}" if budget.sweep else "")
            reached = (f", relative residual {budget.residual:.3g}"
                       if budget.residual is not None else "")
            limit = max_seconds if max_seconds is not None else budget.max_seconds or 0.0
            raise SolverTimeout(
                f"no exact solution for {name} within the time limit of {limit:g} s "
                f"(stopped in {where}{reached}; tolerance {tol:.0e}); allow more time with "
                f"--max-seconds") from None
    finally:
        _BUDGET.reset(token)


def _morph_filter(g: torch.Tensor, graph: ModuleGraph, *, inner_width: int | None, seed: int,
                  tol: float, max_sweeps: int, method: str, max_memory: int | None
                  ) -> SolveResult:
    t0 = time.perf_counter()
    c_out, c_in = g.shape[:2]
    if method not in ("auto", "reduce", "algorithm2"):
        raise ValueError(f"unknown method {method!r}")
    k_eff = graph.effective_kernel()
    widths = module_widths(graph, c_in, c_out, inner_width)
    limit = default_memory_limit(g.device) if max_memory is None else max_memory
    name = f"module {graph.name!r}" if graph.name else "the module"
    what = f"morphing a {c_out}×{c_in} filter into {name}"
    plan = reduce_module(graph) if method != "algorithm2" else None
    solve_memory(graph, widths, kernel=kernel_of(g), whole=plan is None, plan=plan
                 ).check(limit, what)
    gk = support(g)
    if not fits(gk, k_eff):
        raise InfeasibleError(f"the module's effective kernel {k_eff[0]}×{k_eff[1]} is smaller "
                              f"than the layer's {gk[0]}×{gk[1]} kernel: use larger kernels")
    refusal = _rank_refusal(g, graph, widths)
    if refusal is not None:
        raise refusal
    rng = _Rng(seed, g.dtype, g.device)
    target = resize(g, k_eff)
    history: list[float] = []
    budget = _BUDGET.get()
    if method == "algorithm2":
        if budget is not None:
            budget.note(phase="Algorithm 2")
        filters, history = algorithm2(graph, target, widths, rng, tol=tol, max_sweeps=max_sweeps)
        methods = {e.name: "algorithm-2" for e in graph.edges}
    else:
        assert plan is not None
        try:
            filters, methods, history = _reduce_route(plan, target, widths, rng, tol,
                                                      max_sweeps)
        except _OutOfTime:
            raise
        except SolverError as first:
            if method == "reduce" or not plan.steps:  # (irreducible: the same solve again)
                raise
            whole = solve_memory(graph, widths, kernel=kernel_of(g), whole=True)
            if whole.bytes > limit:
                raise first from None  # the fallback would not fit: say why the route failed
            if budget is not None:
                budget.note(phase="Algorithm 2 on the whole module")
            try:
                filters, history = algorithm2(graph, target, widths, _Rng(seed, g.dtype,
                                                                          g.device),
                                              tol=tol, max_sweeps=max_sweeps)
            except _OutOfTime:
                raise
            except SolverError as second:
                if isinstance(first, _Narrow) and isinstance(second, _Narrow):
                    raise _Narrow(second.reason, sorted(second.candidates + first.candidates,
                                                        key=lambda w: w.cost)) from None
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


def _advise(exc: _Narrow, g: torch.Tensor, graph: ModuleGraph, *, inner_width: int | None,
            seed: int, tol: float, max_sweeps: int, method: str, max_memory: int | None,
            advice_seconds: float) -> str:
    """``exc``'s reason, followed by the cheapest candidate widening that a re-solve of
    ``g`` (same seed, bounded time) has shown to reach ``tol``, or by a plain statement
    that no advice is proven and what was tried.

    Candidates are tried cheapest first, each with a fair share of the time left and two
    sweeps (a block that can absorb the residual does so in the first); one that is still
    too narrow elsewhere is merged with that block's widening, one that stalls is retried
    1.5× wider. Whatever time is left then goes to the cheapest candidate with all sweeps.
    """
    budget = _BUDGET.get()
    deadline = time.monotonic() + advice_seconds
    if budget is not None:
        deadline = min(deadline, budget.deadline)
    order = {b: i for i, b in enumerate(graph.blobs)}

    def full(cand: Widening) -> dict[str, int]:
        merged = {**graph.channels, **cand.channels}
        return dict(sorted(merged.items(), key=lambda kv: order.get(kv[0], len(order))))

    queue = list(exc.candidates)
    seen: list[dict[str, int]] = []
    tried: dict[str, str] = {}
    attempts = 0

    def attempt(cand: Widening, sweeps: int, share: float) -> SolveResult | None:
        channels = full(cand)
        text = _channels_text(channels)
        if text in tried:  # the last pass: keep what the first attempt found
            text = f"{text}, again"
        if budget is not None:  # (no tick here: running out of time ends the loop below)
            budget.phase, budget.sweep, budget.residual = f"verifying widths {text}", 0, None
        wide = dataclasses.replace(graph, channels=channels)
        try:
            return morph_filter(g, wide, inner_width=inner_width, seed=seed, tol=tol,
                                max_sweeps=sweeps, method=method, max_seconds=share,
                                max_memory=max_memory, verify_advice=False)
        except _Narrow as inner:  # still too narrow elsewhere: widen both at once
            tried[text] = "still too narrow"
            queue[:0] = [Widening(f"{cand.what} and {w.what}", {**cand.channels, **{
                b: max(v, cand.channels.get(b, 0)) for b, v in w.channels.items()}},
                cand.cost + w.cost) for w in inner.candidates[:2]]
        except SolverTimeout:
            tried[text] = f"no exact solution within {share:.0f} s"
            queue.append(_wider(cand))
        except SolverError as err:
            tried[text] = "stalled" if "stalled" in str(err) else _short(err)
            queue.append(_wider(cand))
        except ResourceLimitError:
            tried[text] = "over the memory limit"
        return None

    while queue and attempts < 6:
        cand = queue.pop(0)
        if full(cand) in seen:
            continue
        seen.append(full(cand))
        left = deadline - time.monotonic()
        if left <= 0:
            break
        attempts += 1
        # half of what is left while other candidates wait (the cheapest gets the most)
        res = attempt(cand, min(2, max_sweeps), left / 2 if queue else left)
        if res is not None:
            return _advice_text(exc.reason, graph, full(cand), seed, res)
    if exc.candidates and deadline - time.monotonic() > 1.0 and max_sweeps > 2:
        cand = exc.candidates[0]  # the rest of the time: the cheapest, with every sweep
        res = attempt(cand, max_sweeps, deadline - time.monotonic())
        if res is not None:
            return _advice_text(exc.reason, graph, full(cand), seed, res)
    if not exc.candidates:
        return (f"{exc.reason}. No width advice is proven: widening inner blobs cannot give "
                "any block of Algorithm 2 enough rank (its kernels do not reach the whole "
                "effective kernel); use larger kernels or another module")
    what = "; ".join(f"{c} ({why})" for c, why in tried.items()) or "nothing, out of time"
    return (f"{exc.reason}. No width advice is proven: no re-solve at candidate widths "
            f"reached the tolerance {tol:.0e} within {advice_seconds:g} s (tried: {what})")


def _wider(cand: Widening) -> Widening:
    """``cand`` with its widened blobs 1.5× wider."""
    new = {b: math.ceil(1.5 * w) for b, w in cand.channels.items()}
    return Widening(f"{cand.what} (1.5× wider)", new,
                    cand.cost + sum(new[b] - w for b, w in cand.channels.items()))


def _advice_text(reason: str, graph: ModuleGraph, channels: dict[str, int], seed: int,
                 res: SolveResult) -> str:
    new = [b for b, w in channels.items() if graph.channels.get(b) != w]
    blobs = ", ".join(repr(b) for b in new)
    return (f"{reason}. Widen inner blob{'s' if len(new) > 1 else ''} {blobs} (spec "
            f"\"channels\": {_channels_text(channels)}): verified, a re-solve of this filter "
            f"at those widths (seed {seed}) reached relative residual {res.residual:.2g} in "
            f"{res.seconds:.2g} s")


def _short(err: Exception) -> str:
    text = str(err)
    return text if len(text) <= 80 else text[:77] + "…"


def _reduce_route(plan: ReductionPlan, target: torch.Tensor, widths: dict[str, int],
                  rng: _Rng, tol: float, max_sweeps: int
                  ) -> tuple[dict[str, torch.Tensor], dict[str, str], list[float]]:
    """Paper's route: reduce, solve the remainder, replay the atomic morphs outward."""
    rem = plan.remainder
    history: list[float] = []
    budget = _BUDGET.get()
    if plan.simple:
        (e0,) = rem.edges
        filters = {e0.name: resize(target, e0.kernel)}
        methods = {e0.name: "given"}
    else:
        if budget is not None:
            budget.note(phase="Algorithm 2")
        filters, history = algorithm2(rem, target, widths, rng, tol=tol, max_sweeps=max_sweeps)
        methods = {e.name: "algorithm-2" for e in rem.edges}
    if budget is not None and plan.steps:
        budget.note(phase="TYPE-I/TYPE-II splits")
    for st in plan.steps:
        g = filters.pop(st.edge.name)
        methods.pop(st.edge.name)
        a, b = st.into
        if st.type == "II":
            filters[a.name], filters[b.name] = split_type2(g, a.kernel, b.kernel, rng)
            methods[a.name], methods[b.name] = "type-II random part", "type-II remainder"
        else:
            assert st.blob is not None
            try:
                f1, f2, ways = decompose_type1(g, a.kernel, b.kernel, widths[st.blob], rng,
                                               tol=tol)
            except _OutOfTime:
                raise
            except InfeasibleError as exc:
                need, structured = type1_widths(g.shape[0], g.shape[1], support(g), a.kernel,
                                                b.kernel)
                w = min(need, structured)
                cands = ([Widening(f"the TYPE-I split at blob {st.blob!r}", {st.blob: w},
                                   w - widths[st.blob])] if w > widths[st.blob] else [])
                raise _Narrow(str(exc), cands) from None
            filters[a.name], filters[b.name] = f1, f2
            methods[a.name], methods[b.name] = (f"type-I {w}" for w in ways)
    return filters, methods, history


def solve_random(graph: ModuleGraph, *, channels: int = 16, kernel: int = 3,
                 dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu",
                 seed: int = 0, tol: float | None = None, max_sweeps: int = 60,
                 max_seconds: float | None = None, max_memory: int | None = None,
                 progress: ProgressFn | None = None,
                 advice_seconds: float = ADVICE_SECONDS) -> SolveResult:
    """Morph a random channels→channels kernel×kernel filter into ``graph`` (``reduce
    --solve``): the filter is drawn from ``seed`` on the CPU, then moved to ``device``.
    The memory estimate is checked before the filter is drawn (see ``morph_filter``)."""
    if channels < 1 or kernel < 1 or kernel % 2 == 0:
        raise InfeasibleError(f"need channels ≥ 1 and an odd kernel, got {channels} and {kernel}")
    widths = module_widths(graph, channels, channels)
    limit = default_memory_limit(device) if max_memory is None else max_memory
    name = f"module {graph.name!r}" if graph.name else "the module"
    solve_memory(graph, widths, kernel=(kernel, kernel)).check(
        limit, f"morphing a {channels}→{channels} {kernel}×{kernel} filter into {name}")
    rng = _Rng(seed + 1_000_003, dtype, device)
    g = rng.filter(channels, channels, (kernel, kernel))
    return morph_filter(g, graph, seed=seed, tol=tol, max_sweeps=max_sweeps,
                        max_seconds=max_seconds, max_memory=max_memory, progress=progress,
                        advice_seconds=advice_seconds)
