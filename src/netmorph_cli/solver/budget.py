"""What a solve may spend: a time budget with a progress heartbeat, and memory, estimated
and checked before anything is allocated.

``morph_filter`` opens a ``Budget`` for each call (``running``); solver code reaches it
through ``tick()`` and ``current_budget()`` (a context variable), so every linear map
checks the deadline on each application and a solve stops within one operator application
of its limit, raising ``OutOfTime``, which ``morph_filter`` turns into ``SolverTimeout``.
``solve_memory`` estimates the peak memory of a solve at given widths from the shapes
alone (float64 working copies, the largest of Algorithm 2's structured cut solves, the
TYPE-I splits' dense solves); a cut solve the estimate does not plan for (a fallback to
the dense matrix, a source cut's Gram matrix) runs only in the memory it leaves
(``memory_room``), else by LSQR.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch

from ..base.limits import format_bytes
from ..errors import ResourceLimitError, SolverError
from ..spec.graph import Kernel, ModuleGraph, kernel_area
from ..spec.reduce import ReductionPlan, reduce_module
from .cutcost import (
    compact_start,
    planned_solves,
    ring_cuts,
    sink_cut,
    source_cut,
    sweep_overhead_flops,
)

DENSE_LIMIT = 4_000_000  # entries of a sub-problem's matrix below which it is solved densely
# entries of a matrix that many right-hand sides share (a TYPE-I deconvolution: one per
# output row or input column) below which it is factored once: LSQR on each of them
# would take thousands of iterations each on these nearly square systems
SHARED_DENSE_LIMIT = 16_000_000

ADVICE_SECONDS = 10.0  # default time for the re-solve that checks width advice
PROBE_SECONDS = 2.0  # estimated time up to which a too narrow module's two cuts are probed
PROGRESS_EVERY = 4.0  # seconds between progress reports (nothing silent for longer)


@dataclass(frozen=True)
class SolveLimits:
    """What a morph's solves may spend, passed whole from the CLI and the API to the solver
    (``morph_filter``'s keywords): ``max_seconds`` for the whole morph (None: no limit),
    Algorithm 2 sweeps at most, ``max_memory`` bytes (None: half the device's memory), the
    relative residual to reach and the route (``solver.METHODS``)."""

    max_seconds: float | None = None
    max_sweeps: int = 60
    max_memory: int | None = None
    tol: float = 1e-10
    method: str = "auto"

    def __post_init__(self) -> None:
        from . import METHODS

        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r} (one of {', '.join(METHODS)})")
        if self.max_sweeps < 1:
            raise ValueError(f"max_sweeps must be ≥ 1, not {self.max_sweeps}")
        if not (self.tol > 0 and math.isfinite(self.tol)):
            raise ValueError(f"tol must be a finite number > 0, not {self.tol}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ValueError(f"max_seconds must be > 0, not {self.max_seconds}")


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


class OutOfTime(SolverError):
    """The time budget ran out (raised from inside a solve, turned into a message at the
    top)."""


class Budget:
    """Deadline and progress of one ``morph_filter`` call. A nested call (verifying width
    advice) keeps its parent's start and heartbeat, reports under its parent's phase and
    never outlives its parent's deadline."""

    def __init__(self, max_seconds: float | None, progress: ProgressFn | None,
                 parent: Budget | None = None, phase: str = "solving"):
        now = time.monotonic()
        own = now + max_seconds if max_seconds is not None else math.inf
        self.root: Budget = self
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
        # bytes one cut solve may allocate: the limit less all else the checked memory
        # estimate counts (``allow``); None: not checked (``memory_room``)
        self.room: int | None = None

    def allow(self, estimate: MemoryEstimate, limit: int) -> None:
        """Note the memory estimate checked against ``limit``: what is left for one cut
        solve (structured, dense or LSQR) is the limit less everything else it counts."""
        self.room = limit - (estimate.bytes - estimate.solves)

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
            raise OutOfTime(f"time limit reached in {self.phase}")
        root = self.root
        if self.progress is not None and now - root.last >= PROGRESS_EVERY:
            root.last = now
            self.progress(SolveProgress(self.label + self.phase, self.sweep, self.residual,
                                        now - self.start, self.max_seconds))


_CURRENT: contextvars.ContextVar[Budget | None] = contextvars.ContextVar(
    "netmorph_budget", default=None)


def current_budget() -> Budget | None:
    """The budget of the innermost running ``morph_filter`` call (None outside one)."""
    return _CURRENT.get()


@contextlib.contextmanager
def running(budget: Budget) -> Iterator[Budget]:
    """Make ``budget`` the current one for the duration of a solve."""
    token = _CURRENT.set(budget)
    try:
        yield budget
    finally:
        _CURRENT.reset(token)


def memory_room(device: torch.device | str = "cpu") -> int:
    """Bytes one cut solve may take (``sweeps._cut_update`` picks the structured path, the
    dense one or LSQR by it): what the current solve's checked estimate leaves for it
    (``Budget.allow``); half the default limit outside a checked solve."""
    budget = _CURRENT.get()
    if budget is not None and budget.room is not None:
        return budget.room
    return default_memory_limit(device) // 2


def tick() -> None:
    """Check the current budget's deadline and send a heartbeat when one is due."""
    budget = _CURRENT.get()
    if budget is not None:
        budget.tick()


# -- time, estimated before solving ------------------------------------------------------

_FLOP_RATE: float | None = None


def flop_rate() -> float:
    """Float64 flops per second of this machine's matrix products (a 512² product, the
    best of three; measured once per process, about 30 ms). A small product runs below
    the speed of the big ones, so estimates from it err on the long side."""
    global _FLOP_RATE
    if _FLOP_RATE is None:
        a = torch.randn(512, 512, dtype=torch.float64)
        best = math.inf
        for _ in range(3):
            t = time.perf_counter()
            a @ a
            best = min(best, time.perf_counter() - t)
        _FLOP_RATE = 2 * 512**3 / max(best, 1e-6)
    return _FLOP_RATE


def _dense_flops(rows: int, cols: int) -> float:
    """Flops of one dense minimum-norm solve of a rows × cols matrix (its Gram product or
    factorization: 2·m·n·min(m, n))."""
    return 2.0 * rows * cols * min(rows, cols)


def _cut_flops(graph: ModuleGraph, widths: Mapping[str, int], *, compact: bool = False,
               upto: str | None = None) -> float:
    """Flops of one solve of Algorithm 2's two cuts on ``graph`` (only the sink cut with
    ``upto="sink"``: the first block of a sweep, where a bound met by the sink cut ends
    it). ``compact``: from Algorithm 2's compact start, structured (``CutShape.flops``):
    its ring corrections, then the cuts with every prefix kept to its blob's own kernel
    (D: a 5×5 window of the 7×7 frame, 25·C of 49·C rows), and the compositions and SVDs
    around them (``cutcost.sweep_overhead_flops``). Otherwise dense, all rows (a
    probe of a too narrow module, whose cuts are tall or rank-deficient: the structured
    path declines and ``lsq.dense_min_norm`` solves them)."""
    s, t = graph.source, graph.sink
    k_eff = graph.effective_kernel()
    if not compact:
        flops = 0.0
        cuts = [("sink", graph.in_edges[t], widths[s])]
        if upto != "sink":
            cuts.append(("source", graph.out_edges[s], widths[t]))
        for kind, edges, c in cuts:
            cols = sum(widths[e.src if kind == "sink" else e.dst] * kernel_area(e.kernel)
                       for e in edges)
            flops += _dense_flops(c * kernel_area(k_eff), cols)
        return flops
    kp, _ = compact_start(graph)
    flops = sweep_overhead_flops(graph, widths)
    flops += sum(ring.flops() for ring in ring_cuts(graph, widths))
    flops += sink_cut(graph, widths, kp).flops()
    if upto != "sink":
        flops += source_cut(graph, widths).flops()
    return flops


def solve_seconds(graph: ModuleGraph, widths: Mapping[str, int], *, whole: bool = False,
                  plan: ReductionPlan | None = None, device: torch.device | str = "cpu",
                  cuts_only: bool = False, upto: str | None = None) -> float:
    """A rough time, in seconds on this machine's CPU, of the big solves of one
    ``morph_filter`` call whose Algorithm 2 part ends within one sweep (what a solve at
    widths with some slack takes; more sweeps take longer): one solve of each cut of the
    irreducible remainder (of the whole module with ``whole``; only the sink cut with
    ``upto="sink"``) from the compact start, with the compositions around them, and the
    TYPE-I splits' shared solves.
    ``cuts_only``: the cuts of ``graph`` itself, once each, all rows (a probe round).
    0 off the CPU (no rate is measured there)."""
    if torch.device(device).type != "cpu":
        return 0.0
    if cuts_only:
        flops = _cut_flops(graph, widths)
    elif whole:
        flops = _cut_flops(graph, widths, compact=True, upto=upto)
    else:
        plan = reduce_module(graph) if plan is None else plan
        flops = 0.0 if plan.simple else _cut_flops(plan.remainder, widths, compact=True,
                                                   upto=upto)
        for _, rows, cols in _dense_type1_systems(plan, widths):
            flops += _dense_flops(rows, cols)
    return flops / flop_rate()


def _dense_type1_systems(plan: ReductionPlan, widths: Mapping[str, int]
                         ) -> Iterator[tuple[str, int, int]]:
    """(blob, rows, cols) of each TYPE-I split's shared deconvolution system that is
    factored densely (at most ``SHARED_DENSE_LIMIT`` entries): what it costs in time and
    memory."""
    for st in plan.steps:
        if st.type != "I" or st.blob is None:
            continue
        a, b = st.into
        kk = (a.kernel[0] + b.kernel[0] - 1, a.kernel[1] + b.kernel[1] - 1)
        rows = max(widths[st.edge.src], widths[st.edge.dst]) * kernel_area(kk)
        cols = widths[st.blob] * max(kernel_area(a.kernel), kernel_area(b.kernel))
        if rows * cols <= SHARED_DENSE_LIMIT:
            yield st.blob, rows, cols


# -- memory ------------------------------------------------------------------------------

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


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak bytes of a solve (float64 working copies), and its largest single piece."""

    bytes: int
    largest: str  # what the largest piece is, e.g. "the Gram matrix of the sink cut (400 rows)"
    solves: int = 0  # bytes of the largest cut solve (freed before any fallback of it)

    def check(self, limit: int, what: str) -> None:
        if self.bytes > limit:
            raise ResourceLimitError(
                f"{what} needs about {format_bytes(self.bytes)} of memory (largest piece: "
                f"{self.largest}), above the limit of {format_bytes(limit)}; use narrower "
                f"inner blobs or a smaller layer, or raise the limit with --max-memory GiB")


def _algorithm2_memory(graph: ModuleGraph, widths: Mapping[str, int]
                       ) -> tuple[list[tuple[int, str]], int]:
    """(entries, what) of the big arrays of Algorithm 2 on ``graph`` (see ``solve_memory``),
    and the entries of its largest cut solve (one of them: they run one after another)."""
    s, t = graph.source, graph.sink
    k_eff = graph.effective_kernel()
    kp, kq = graph.kernel_reach(), graph.kernel_reach(to_sink=True)
    cs, ct, area = widths[s], widths[t], kernel_area(k_eff)
    n_f = sum(widths[e.dst] * widths[e.src] * kernel_area(e.kernel) for e in graph.edges)
    n_pq = sum(widths[v] * (cs * kernel_area(kp[v]) + ct * kernel_area(kq[v]))
               for v in graph.blobs)
    pieces = [(6 * n_f, f"the module's filters ({n_f:,} entries, 6 working copies)"),
              (2 * n_pq, "the prefix and suffix filters of every blob"),
              (8 * ct * cs * area, "the target and residual filters")]
    solves, what = planned_solves(graph, widths)  # one at a time: the largest
    pieces.append((solves, what))
    for e in graph.edges:
        if e.src == s or e.dst == t:
            continue
        n_e = widths[e.dst] * widths[e.src] * kernel_area(e.kernel)
        rows = ct * cs * area
        if rows * n_e <= DENSE_LIMIT:  # dense: the matrix and the identity it is built from
            pieces.append((3 * rows * n_e + n_e * n_e, f"edge {e.name!r}'s dense matrix"))
    return pieces, solves


def solve_memory(graph: ModuleGraph, widths: Mapping[str, int], *, kernel: Kernel,
                 whole: bool = False, plan: ReductionPlan | None = None) -> MemoryEstimate:
    """Peak memory of ``morph_filter`` at these widths (float64: 8 bytes an entry): the
    filters of every edge in several working copies, the blobs' prefix and suffix filters
    and the largest cut solve of Algorithm 2 (``cutcost.planned_solves``; with
    ``whole``, on the whole module; else on the irreducible remainder after Algorithm 1,
    plus the TYPE-I splits' dense solves)."""
    cs, ct = widths[graph.source], widths[graph.sink]
    pieces = [(2 * ct * cs * kernel_area(kernel), "the layer's filter")]
    solves = 0
    if whole:
        more, solves = _algorithm2_memory(graph, widths)
        pieces += more
    else:
        plan = reduce_module(graph) if plan is None else plan
        n_f = sum(widths[e.dst] * widths[e.src] * kernel_area(e.kernel) for e in graph.edges)
        pieces.append((4 * n_f, f"the module's filters ({n_f:,} entries, 4 working copies)"))
        if not plan.simple:
            more, solves = _algorithm2_memory(plan.remainder, widths)
            pieces += more
        for blob, rows, cols in _dense_type1_systems(plan, widths):
            # the matrix, A·Aᵀ, its factor, lstsq copies
            pieces.append((3 * rows * cols + 2 * rows * rows,
                           f"the TYPE-I split at blob {blob!r}"))
    total = sum(n for n, _ in pieces) * 8
    largest = max(pieces, key=lambda p: p[0])[1]
    return MemoryEstimate(total, largest, 8 * solves)
