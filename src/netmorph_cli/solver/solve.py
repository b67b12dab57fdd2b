"""Morphing a filter into a module: the entry point of the solver.

``morph_filter(G, module)`` follows the paper's route — reduce the module (Algorithm 1,
``reduce``), solve the irreducible remainder (Algorithm 2, ``sweeps``), replay the atomic
morphs outward with TYPE-I/TYPE-II splits (``splits``) — and falls back to Algorithm 2 on
the whole module when a split on the way cannot be exact. Every edge's filter comes back
with the method that produced it and the relative residual ‖module(F) − G̃‖ / ‖G̃‖,
computed independently at the end.

Widths. Inner widths may be fixed, relative to the layer ("2.5x") or open ("auto", or no
entry); ``widths.resolve`` fixes them for the layer of ``G`` first (open ones from the
feasibility bound + margin), and the result says which widths were used and how.

Limits. What can be decided before iterating is decided first: the memory the solve needs
(``budget.solve_memory``, refused over a limit before anything is allocated), the
polynomial rank of the module against the layer's (a vertex cut narrower than the
filter's rank can never reproduce it) and whether any block of Algorithm 2 has as many
independent unknowns as equations (``feasibility``; otherwise no sweep can absorb the
residual and the solve is refused at once). A solve runs under a time budget with a
progress heartbeat (``budget``); width advice — the feasibility bound's widening, checked
by one re-solve — is printed only after that re-solve reached the tolerance (``_advise``,
here because it re-enters ``morph_filter``); otherwise the refusal says why none is
proven.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ..errors import InfeasibleError, ResourceLimitError, SolverError, SolverTimeout
from ..spec.graph import ModuleGraph, fits
from ..spec.reduce import ReductionPlan, reduce_module
from . import METHODS
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
    solve_seconds,
)
from .feasibility import MARGIN, Narrow, Widening, channels_text, rank_refusal
from .rng import SeededRng
from .splits import decompose_type1, split_type2, type1_widths
from .sweeps import algorithm2
from .widths import WidthChoice, module_widths, resolve, rule_texts


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
    # the inner widths solved at and how they were chosen (fixed, "Nx", "auto")
    widths: WidthChoice | None = None

    def to_json(self) -> dict:
        out = {"residual": self.residual, "seconds": round(self.seconds, 4),
               "sweeps": self.sweeps, "history": list(self.history),
               "methods": dict(self.methods),
               "conditioning": {k: _finite(v) for k, v in self.conditioning.items()}}
        if self.widths is not None:
            out["widths"] = self.widths.to_json()
            out["width_rules"] = dict(self.widths.rules)
        return out


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


def conditioning(f: torch.Tensor) -> float:
    """Condition number of a filter as a (C_out, C_in·kh·kw) matrix (inf when rank deficient).

    From the eigenvalues of its smaller Gram matrix (float64): λ_min is accurate to about
    eps·λ_max, so the condition number √(λ_max/λ_min) to a relative eps·cond²; where that
    could exceed 1e-6 (cond ≳ 6.7e4, or rank deficient) the singular values are computed
    instead. At 512 channels the Gram route is several times cheaper than an SVD."""
    m = f.detach().reshape(f.shape[0], -1).to(torch.float64).cpu()
    gram = m @ m.T if m.shape[0] <= m.shape[1] else m.T @ m
    lam = torch.linalg.eigvalsh(gram)
    lo, hi = float(lam[0]), float(lam[-1])
    if hi > 0 and lo > 0 and torch.finfo(torch.float64).eps * hi / lo <= 1e-6:
        return math.sqrt(hi / lo)
    s = torch.linalg.svdvals(m)
    return float(s[0] / s[-1]) if s[-1] > 0 else math.inf


def relative_residual(graph: ModuleGraph, filters: Mapping[str, torch.Tensor],
                      target: torch.Tensor) -> float:
    diff = module_function(graph, filters) - pad_to(target, graph.effective_kernel())
    den = float(torch.linalg.vector_norm(target))
    return float(torch.linalg.vector_norm(diff)) / (den if den > 0 else 1.0)


# how ``morph_filter`` solves: ``auto`` is the paper's route with a fallback (below)


def _default_tol(dtype: torch.dtype) -> float:
    return 1e-10 if dtype == torch.float64 else 1e-6


# -- the entry point -------------------------------------------------------------------

def morph_filter(g: torch.Tensor, graph: ModuleGraph, *, inner_width: int | None = None,
                 seed: int = 0, tol: float | None = None, max_sweeps: int = 60,
                 method: str = "auto", max_seconds: float | None = None,
                 max_memory: int | None = None, progress: ProgressFn | None = None,
                 advice_seconds: float = ADVICE_SECONDS, verify_advice: bool = True,
                 rng: SeededRng | None = None) -> SolveResult:
    """Filters for every edge of ``graph`` whose module function equals G exactly.

    Inner widths are fixed for G's layer first (``widths.resolve``: fixed, ``"Nx"`` of
    C_out, or open — the layer's output width, raised to the feasibility bound + margin
    where Algorithm 2 needs it, and 1.5× wider once more where a solve there does not
    finish quickly); the result's ``widths`` says which and how. ``inner_width``: the
    width of open blobs instead.

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
    c_out, c_in = g.shape[:2]
    fixed, choice = resolve(graph, c_in, c_out, inner=inner_width,
                            whole=method == "algorithm2")
    with running(budget):
        try:
            if choice.raised:
                fixed, choice, result = _solve_open(g, fixed, choice, seed=seed, tol=tol,
                                                    max_sweeps=max_sweeps, method=method,
                                                    max_memory=max_memory, rng=rng)
            else:
                result = _morph_filter(g, fixed, seed=seed, tol=tol, max_sweeps=max_sweeps,
                                       method=method, max_memory=max_memory, rng=rng)
            return dataclasses.replace(result, widths=choice)
        except Narrow as exc:
            if not verify_advice:
                raise
            raise InfeasibleError(_advise(exc, g, graph, fixed, seed=seed, tol=tol,
                                          max_sweeps=max_sweeps, method=method,
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


def _solve_open(g: torch.Tensor, fixed: ModuleGraph, choice: WidthChoice, *, seed: int,
                tol: float, max_sweeps: int, method: str, max_memory: int | None,
                rng: SeededRng | None) -> tuple[ModuleGraph, WidthChoice, SolveResult]:
    """Solve at open widths the feasibility bound raised: first within a short share of
    the time (3× the dense solves' estimate + 1 s) and, where that does not reach the
    tolerance (the bound counts unknowns; a module whose paths overlap can have less rank,
    and its sweeps then grind), once more with the raised blobs ``WIDER`` × wider and the
    rest of the time. Returns the widths solved at and the solve."""
    budget = current_budget()
    assert budget is not None
    share = 3 * solve_seconds(fixed, choice.widths, whole=method == "algorithm2",
                              device=g.device) + 1.0
    if budget.remaining() > 2 * share:
        try:
            res = morph_filter(g, fixed, seed=seed, tol=tol, max_sweeps=max_sweeps,
                               method=method, max_seconds=share, max_memory=max_memory,
                               verify_advice=False, rng=rng)
            return fixed, choice, res
        except InfeasibleError:
            raise
        except SolverError as exc:  # a stall or the share's time limit
            if budget.remaining() <= 0:
                raise OutOfTime("time limit reached") from None
            why = "did not solve within " + (f"{share:.2g} s" if isinstance(exc, SolverTimeout)
                                              else "its sweeps (stalled)")
        choice = choice.wider(WIDER, why)
        fixed = dataclasses.replace(fixed, channels=choice.inner)
        budget.note(phase=f"Algorithm 2 at auto widths {choice.line()}")
    return fixed, choice, _morph_filter(g, fixed, seed=seed, tol=tol, max_sweeps=max_sweeps,
                                        method=method, max_memory=max_memory, rng=rng)


WIDER = 1.5  # open widths: the second try, after the bound + margin did not solve


def _morph_filter(g: torch.Tensor, graph: ModuleGraph, *, seed: int, tol: float,
                  max_sweeps: int, method: str, max_memory: int | None,
                  rng: SeededRng | None = None) -> SolveResult:
    """``morph_filter`` at fixed widths (``graph``: every inner width given)."""
    t0 = time.perf_counter()
    c_out, c_in = g.shape[:2]
    k_eff = graph.effective_kernel()
    widths = {b: graph.channels[b] for b in graph.inner_blobs()}
    widths = {**widths, graph.source: c_in, graph.sink: c_out}
    limit = default_memory_limit(g.device) if max_memory is None else max_memory
    name = f"module {graph.name!r}" if graph.name else "the module"
    what = f"morphing a {c_out}×{c_in} filter into {name}"
    plan = reduce_module(graph) if method != "algorithm2" else None
    estimate = solve_memory(graph, widths, kernel=kernel_of(g), whole=plan is None, plan=plan)
    estimate.check(limit, what)
    budget = current_budget()
    if budget is not None:  # what a fallback of a cut solve may take
        budget.allow(estimate, limit)
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
                budget.allow(whole, limit)
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


def _advise(exc: Narrow, g: torch.Tensor, spec: ModuleGraph, fixed: ModuleGraph, *,
            seed: int, tol: float, max_sweeps: int, method: str, max_memory: int | None,
            advice_seconds: float) -> str:
    """``exc``'s reason, then width advice proven by a re-solve, or a plain statement
    that none is proven and why.

    Bound first: the cheapest candidate widening of ``exc`` (the feasibility bound of one
    block of Algorithm 2, + ``MARGIN`` where it comes from counting unknowns; a vertex
    cut's rank or a TYPE-I split's middle width as it is), then a re-solve of ``g`` at
    those widths (same seed) within ``advice_seconds`` and the time left. Near a counted
    bound the sweeps can grind, so, as open widths do (``_solve_open``), the first
    re-solve gets 3× its estimated time + 1 s (at most a third of the time), and a second
    one ``WIDER`` × wider the rest. A re-solve whose estimated time
    (``budget.solve_seconds``) is over what is left is not started: the message gives the
    estimate instead. ``spec`` is the module as given (its "channels" are shown with the
    widened blobs), ``fixed`` the same at this layer's widths (what is solved)."""
    budget = current_budget()
    deadline = time.monotonic() + advice_seconds
    if budget is not None:
        deadline = min(deadline, budget.deadline)
    if not exc.candidates:
        return (f"{exc.reason}. No width advice is proven: widening inner blobs cannot give "
                "any block of Algorithm 2 enough rank (its kernels do not reach the whole "
                "effective kernel); use larger kernels or another module")
    cand = exc.candidates[0].with_margin()
    tries = [(cand.channels, (f"the feasibility bound of {exc.candidates[0].what} + "
                              f"{MARGIN:.0%}" if cand.counted else
                              f"what {cand.what} needs"))]
    if cand.counted:  # near the bound sweeps can grind: then as auto widths do, WIDER ×
        tries.append(({b: math.ceil(WIDER * w) for b, w in cand.channels.items()},
                      f"{WIDER:g}× that"))
    allowed = f"the {advice_seconds:g} s allowed for checking advice"
    if budget is not None and budget.deadline < time.monotonic() + advice_seconds:
        allowed = "the time left of --max-seconds"
    tried = []
    for k, (channels, how) in enumerate(tries):
        last = k == len(tries) - 1
        shown, res, why = _try_advice(g, spec, fixed, channels, deadline, last=last,
                                      cand_kind=cand.kind, seed=seed, tol=tol,
                                      max_sweeps=max_sweeps, method=method,
                                      max_memory=max_memory, allowed=allowed)
        if res is not None:
            return _advice_text(exc.reason, spec, shown, seed, res)
        tried.append(f"{channels_text(shown)}, {how}: {why}")
        if why.startswith(OVER_MEMORY) or why.startswith(NO_TIME):
            break  # wider needs more memory; no time is no time
    return (f"{exc.reason}. No width advice is proven (tried: {'; '.join(tried)}); give "
            "wider fixed widths, or leave these blobs \"auto\" to have them chosen for each "
            "layer")


NO_TIME = "no time was left"  # why a try of advice was not made
OVER_MEMORY = "a re-solve there is over the memory limit"


def _try_advice(g: torch.Tensor, spec: ModuleGraph, fixed: ModuleGraph,
                channels: Mapping[str, int], deadline: float, *, last: bool, cand_kind: str,
                seed: int, tol: float, max_sweeps: int, method: str, max_memory: int | None,
                allowed: str) -> tuple[dict[str, int | str], SolveResult | None, str]:
    """One re-solve of ``g`` at the inner ``channels`` (the spec's channels shown with
    them): within what is left before ``deadline`` (``last``) or, for a first try, within
    3× its estimated time + 1 s and at most a third of it. Returns the shown channels and
    the solve, or None and why not."""
    budget = current_budget()
    order = {b: i for i, b in enumerate(spec.blobs)}
    shown = dict(sorted({**rule_texts(spec), **channels}.items(),
                        key=lambda kv: order.get(kv[0], len(order))))
    wide = dataclasses.replace(fixed, channels={**fixed.channels, **channels})
    c_out, c_in = g.shape[:2]
    widths = {**wide.channels, wide.source: c_in, wide.sink: c_out}
    estimate = solve_seconds(wide, widths, whole=method == "algorithm2", device=g.device,
                             upto="sink" if cand_kind == "sink" else None)
    left = deadline - time.monotonic()
    if left <= 0:
        return shown, None, f"{NO_TIME} ({allowed})"
    if estimate > left:
        return shown, None, (f"a re-solve there would take about {estimate:.0f} s on this "
                             f"machine, more than {allowed}, so it was not run")
    share = left if last else min(3 * estimate + 1.0, left / 3)
    if budget is not None:  # (no tick here: running out of time is handled below)
        budget.phase, budget.sweep, budget.residual = (f"verifying widths "
                                                       f"{channels_text(shown)}", 0, None)
    try:
        res = morph_filter(g, wide, seed=seed, tol=tol, max_sweeps=max_sweeps, method=method,
                           max_seconds=max(share, 1e-3), max_memory=max_memory,
                           verify_advice=False)
    except Narrow as inner:
        return shown, None, f"still too narrow there ({_short(inner.reason, 160)})"
    except SolverTimeout:
        within = allowed if share >= left else f"{share:.2g} s of {allowed}"
        return shown, None, f"a re-solve there did not finish within {within}"
    except ResourceLimitError:
        return shown, None, OVER_MEMORY
    except SolverError as err:
        return shown, None, ("a re-solve there stalled (the bound counts unknowns: it is "
                             f"necessary, not sufficient): {_short(err, 160)}")
    return shown, res, ""


def _advice_text(reason: str, spec: ModuleGraph, channels: Mapping[str, int | str],
                 seed: int, res: SolveResult) -> str:
    new = [b for b, w in channels.items() if rule_texts(spec).get(b) != w]
    blobs = ", ".join(repr(b) for b in new)
    return (f"{reason}. Widen inner blob{'s' if len(new) > 1 else ''} {blobs} (spec "
            f"\"channels\": {channels_text(channels)}): verified, a re-solve of this filter "
            f"at those widths (seed {seed}) reached relative residual {res.residual:.2g} in "
            f"{res.seconds:.2g} s")


def _short(err: Exception | str, limit: int = 80) -> str:
    text = str(err)
    return text if len(text) <= limit else text[:limit - 1] + "…"


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
    widths = module_widths(graph, channels, channels, whole=method == "algorithm2")
    limit = default_memory_limit(device) if max_memory is None else max_memory
    name = f"module {graph.name!r}" if graph.name else "the module"
    solve_memory(graph, widths, kernel=(kernel, kernel), whole=method == "algorithm2").check(
        limit, f"morphing a {channels}→{channels} {kernel}×{kernel} filter into {name}")
    rng = SeededRng(seed + 1_000_003, dtype, device)
    g = rng.filter(channels, channels, (kernel, kernel))
    return morph_filter(g, graph, seed=seed, tol=tol, max_sweeps=max_sweeps, method=method,
                        max_seconds=max_seconds, max_memory=max_memory, progress=progress,
                        advice_seconds=advice_seconds)
