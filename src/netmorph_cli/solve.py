"""Morphing a filter into a module: the entry point of the solver.

``morph_filter(G, module)`` follows the paper's route — reduce the module (Algorithm 1,
``reduce``), solve the irreducible remainder (Algorithm 2, ``sweeps``), replay the atomic
morphs outward with TYPE-I/TYPE-II splits (``splits``) — and falls back to Algorithm 2 on
the whole module when a split on the way cannot be exact. Every edge's filter comes back
with the method that produced it and the relative residual ‖module(F) − G̃‖ / ‖G̃‖,
computed independently at the end.

Limits. What can be decided before iterating is decided first: the memory the solve needs
(``budget.solve_memory``, refused over a limit before anything is allocated), the
polynomial rank of the module against the layer's (a vertex cut narrower than the
filter's rank can never reproduce it) and whether any block of Algorithm 2 has as many
independent unknowns as equations (``feasibility``; otherwise no sweep can absorb the
residual and the solve is refused at once). A solve runs under a time budget with a
progress heartbeat (``budget``); width advice is printed only after a re-solve at the
advised widths reached the tolerance (``_advise``, here because it re-enters
``morph_filter``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from .algebra import kernel_of, module_function, pad_to, resize, support
from .budget import (
    ADVICE_SECONDS,
    Budget,
    OutOfTime,
    ProgressFn,
    current_budget,
    default_memory_limit,
    running,
    solve_memory,
)
from .errors import InfeasibleError, ResourceLimitError, SolverError, SolverTimeout
from .feasibility import Narrow, Widening, channels_text, rank_refusal
from .graph import ModuleGraph, fits
from .reduce import ReductionPlan, reduce_module
from .rng import SeededRng
from .splits import decompose_type1, split_type2, type1_widths
from .sweeps import algorithm2


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


def conditioning(f: torch.Tensor) -> float:
    """Condition number of a filter as a (C_out, C_in·kh·kw) matrix (inf when rank deficient)."""
    s = torch.linalg.svdvals(f.detach().reshape(f.shape[0], -1).to(torch.float64).cpu())
    return float(s[0] / s[-1]) if s[-1] > 0 else math.inf


def relative_residual(graph: ModuleGraph, filters: Mapping[str, torch.Tensor],
                      target: torch.Tensor) -> float:
    diff = module_function(graph, filters) - pad_to(target, graph.effective_kernel())
    den = float(torch.linalg.vector_norm(target))
    return float(torch.linalg.vector_norm(diff)) / (den if den > 0 else 1.0)


# how ``morph_filter`` solves: ``auto`` is the paper's route with a fallback (below)
METHODS = ("auto", "algorithm2", "reduce")


def _default_tol(dtype: torch.dtype) -> float:
    return 1e-10 if dtype == torch.float64 else 1e-6


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
                 advice_seconds: float = ADVICE_SECONDS, verify_advice: bool = True,
                 rng: SeededRng | None = None) -> SolveResult:
    """Filters for every edge of ``graph`` whose module function equals G exactly.

    ``g`` is (C_out, C_in, kh, kw) on any device and dtype; the filters come back on the
    same. ``method`` (one of ``METHODS``): ``auto`` reduces, solves the remainder and
    replays the atomic morphs, falling back to Algorithm 2 on the whole module if a split
    cannot be exact; ``reduce`` is that route without the fallback; ``algorithm2`` solves
    the whole module with Algorithm 2. The routes give different, equally exact filters:
    the reduction can leave an edge a zero outer ring (a 5×5 edge holding a 3×3 filter
    when a TYPE-I split pads by identity) where Algorithm 2 fills its whole kernel.

    Limits: the memory estimate (``solve_memory``) is checked against ``max_memory`` bytes
    (default: half the physical memory) before anything is allocated
    (``ResourceLimitError``); a module that is provably too narrow, or too narrow for any
    block of Algorithm 2, is refused at once (``InfeasibleError``); ``max_seconds`` bounds
    the whole call (``SolverTimeout``) and ``progress`` receives a ``SolveProgress`` at most
    every ``PROGRESS_EVERY`` seconds. A refusal advises wider inner blobs only when a
    re-solve of ``g`` at them (same seed, within ``advice_seconds`` and the time left)
    reached the tolerance; otherwise it says that no advice is proven.

    ``rng``: the stream the solve draws from (default: a new one from ``seed``); a morph
    that solves several sites (a preset's blocks) passes one stream to all of them.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r} (one of {', '.join(METHODS)})")
    budget = Budget(max_seconds, progress, current_budget())
    tol = _default_tol(g.dtype) if tol is None else tol
    with running(budget):
        try:
            return _morph_filter(g, graph, inner_width=inner_width, seed=seed, tol=tol,
                                 max_sweeps=max_sweeps, method=method, max_memory=max_memory,
                                 rng=rng)
        except Narrow as exc:
            if not verify_advice:
                raise
            raise InfeasibleError(_advise(exc, g, graph, inner_width=inner_width, seed=seed,
                                          tol=tol, max_sweeps=max_sweeps, method=method,
                                          max_memory=max_memory,
                                          advice_seconds=advice_seconds)) from None
        except OutOfTime:
            name = f"module {graph.name!r}" if graph.name else "the module"
            where = f"{budget.phase}" + (f", sweep {budget.sweep}" if budget.sweep else "")
            reached = (f", relative residual {budget.residual:.3g}"
                       if budget.residual is not None else "")
            limit = max_seconds if max_seconds is not None else budget.max_seconds or 0.0
            raise SolverTimeout(
                f"no exact solution for {name} within the time limit of {limit:g} s "
                f"(stopped in {where}{reached}; tolerance {tol:.0e}); allow more time with "
                f"--max-seconds") from None


def _morph_filter(g: torch.Tensor, graph: ModuleGraph, *, inner_width: int | None, seed: int,
                  tol: float, max_sweeps: int, method: str, max_memory: int | None,
                  rng: SeededRng | None = None) -> SolveResult:
    t0 = time.perf_counter()
    c_out, c_in = g.shape[:2]
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
    refusal = rank_refusal(g, graph, widths)
    if refusal is not None:
        raise refusal
    rng = SeededRng(seed, g.dtype, g.device) if rng is None else rng
    target = resize(g, k_eff)
    history: list[float] = []
    budget = current_budget()
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
        except OutOfTime:
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
                filters, history = algorithm2(graph, target, widths,
                                              SeededRng(seed, g.dtype, g.device),
                                              tol=tol, max_sweeps=max_sweeps)
            except OutOfTime:
                raise
            except SolverError as second:
                if isinstance(first, Narrow) and isinstance(second, Narrow):
                    raise Narrow(second.reason, sorted(second.candidates + first.candidates,
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


def _advise(exc: Narrow, g: torch.Tensor, graph: ModuleGraph, *, inner_width: int | None,
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
    budget = current_budget()
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
        text = channels_text(channels)
        if text in tried:  # the last pass: keep what the first attempt found
            text = f"{text}, again"
        if budget is not None:  # (no tick here: running out of time ends the loop below)
            budget.phase, budget.sweep, budget.residual = f"verifying widths {text}", 0, None
        wide = dataclasses.replace(graph, channels=channels)
        try:
            return morph_filter(g, wide, inner_width=inner_width, seed=seed, tol=tol,
                                max_sweeps=sweeps, method=method, max_seconds=share,
                                max_memory=max_memory, verify_advice=False)
        except Narrow as inner:  # still too narrow elsewhere: widen both at once
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
            f"\"channels\": {channels_text(channels)}): verified, a re-solve of this filter "
            f"at those widths (seed {seed}) reached relative residual {res.residual:.2g} in "
            f"{res.seconds:.2g} s")


def _short(err: Exception) -> str:
    text = str(err)
    return text if len(text) <= 80 else text[:77] + "…"


def _reduce_route(plan: ReductionPlan, target: torch.Tensor, widths: dict[str, int],
                  rng: SeededRng, tol: float, max_sweeps: int
                  ) -> tuple[dict[str, torch.Tensor], dict[str, str], list[float]]:
    """Paper's route: reduce, solve the remainder, replay the atomic morphs outward."""
    rem = plan.remainder
    history: list[float] = []
    budget = current_budget()
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
    split_again = {st.edge.name for st in plan.steps}  # intermediate filters of the replay
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
                f1, f2, ways = decompose_type1(
                    g, a.kernel, b.kernel, widths[st.blob], rng, tol=tol,
                    later=(a.name in split_again, b.name in split_again))
            except OutOfTime:
                raise
            except InfeasibleError as exc:
                need, structured = type1_widths(g.shape[0], g.shape[1], support(g), a.kernel,
                                                b.kernel)
                w = min(need, structured)
                cands = ([Widening(f"the TYPE-I split at blob {st.blob!r}", {st.blob: w},
                                   w - widths[st.blob])] if w > widths[st.blob] else [])
                raise Narrow(str(exc), cands) from None
            filters[a.name], filters[b.name] = f1, f2
            methods[a.name], methods[b.name] = (f"type-I {w}" for w in ways)
    return filters, methods, history


def solve_random(graph: ModuleGraph, *, channels: int = 16, kernel: int = 3,
                 dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu",
                 seed: int = 0, tol: float | None = None, max_sweeps: int = 60,
                 method: str = "auto", max_seconds: float | None = None,
                 max_memory: int | None = None, progress: ProgressFn | None = None,
                 advice_seconds: float = ADVICE_SECONDS) -> SolveResult:
    """Morph a random channels→channels kernel×kernel filter into ``graph`` (``reduce
    --solve``) by ``method`` (see ``morph_filter``): the filter is drawn from ``seed`` on
    the CPU, then moved to ``device``. The memory estimate is checked before the filter is
    drawn (see ``morph_filter``)."""
    if channels < 1 or kernel < 1 or kernel % 2 == 0:
        raise InfeasibleError(f"need channels ≥ 1 and an odd kernel, got {channels} and {kernel}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r} (one of {', '.join(METHODS)})")
    widths = module_widths(graph, channels, channels)
    limit = default_memory_limit(device) if max_memory is None else max_memory
    name = f"module {graph.name!r}" if graph.name else "the module"
    solve_memory(graph, widths, kernel=(kernel, kernel), whole=method == "algorithm2").check(
        limit, f"morphing a {channels}→{channels} {kernel}×{kernel} filter into {name}")
    rng = SeededRng(seed + 1_000_003, dtype, device)
    g = rng.filter(channels, channels, (kernel, kernel))
    return morph_filter(g, graph, seed=seed, tol=tol, max_sweeps=max_sweeps, method=method,
                        max_seconds=max_seconds, max_memory=max_memory, progress=progress,
                        advice_seconds=advice_seconds)
