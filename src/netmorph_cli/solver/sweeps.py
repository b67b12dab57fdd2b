"""Algorithm 2: alternating exact least-squares solves over blocks of a module's filters.

The module function is affine in any set of edges that no s→t path crosses twice, not
only in one filter. Two such sets are special: the edges into t (the "sink cut") and the
edges out of s (the "source cut"). On the sink cut, G̃'s output channels decouple — row j
of G̃ is Σ_e F_e[j] ⊛ P(u_e) — so the cut is solved as C_out small systems sharing one
matrix; on the source cut the input channels decouple likewise. Those are dense and
exact; an edge between two inner blobs couples everything and is solved matrix-free.
The blocks themselves, and the rank bounds that refuse a hopeless solve before its first
sweep, live in ``feasibility``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from ..errors import SolverError
from ..spec.graph import Edge, Kernel, ModuleGraph, fits
from .algebra import (
    compose,
    crop_to,
    identity_filter,
    kernel_of,
    pad_to,
    prefix_filters,
    resize,
    suffix_filters,
    support,
)
from .budget import DENSE_LIMIT, PROBE_SECONDS, OutOfTime, current_budget, solve_seconds, tick
from .feasibility import Block, Narrow, polynomial_rank, solve_blocks, too_narrow
from .lsq import LinearMap, dense_lstsq, dense_min_norm, lsqr
from .rng import SeededRng


def edge_map(pre: torch.Tensor, suf: torch.Tensor, kernel: Kernel) -> LinearMap:
    """X ↦ Q(v) ⊛ X ⊛ P(u): how the module function depends on one edge's filter (eq. 7)."""
    def op(x: torch.Tensor) -> torch.Tensor:
        tick()  # the time budget, once per application
        return pad_to(compose(suf, compose(x, pre)), kernel)
    return op


def solve_linear(op: LinearMap, b: torch.Tensor, like: torch.Tensor, *, rtol: float,
                 max_iter: int = 2000, dense: bool | None = None) -> torch.Tensor:
    """min ‖op(x) − b‖, minimum norm: dense SVD for small systems, LSQR otherwise."""
    if dense is None:
        dense = b.numel() * like.numel() <= DENSE_LIMIT
    if dense:
        return dense_lstsq(op, b, like).x
    return lsqr(op, b, like, rtol=rtol, max_iter=max_iter).x


def _cut_update(block: Block, filters: Mapping[str, torch.Tensor], residual: torch.Tensor,
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
    a = _cut_matrix(block, pre if sink else suf, kernel, sum(sizes))
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


def _cut_matrix(block: Block, filters: Mapping[str, torch.Tensor], kernel: Kernel,
                cols: int) -> torch.Tensor:
    """The dense (C_in·K or C_out·K, ``cols``) matrix of x ↦ Σ_e x_e ⊛ P(u_e) (a sink
    block, ``filters`` the prefixes) or Σ_e Q(v_e) ⊛ x_e (a source block, the suffixes),
    rows in the flattened order of the ``kernel`` frame and columns in that of each edge's
    row (column) of filter taps, edge after edge: what ``dense_matrix`` of that map gives,
    built in place from the taps (as ``splits.shift_matrix`` does for one filter) instead
    of composing with every unit vector — at 128 channels that took most of a cut solve."""
    sink = block.kind == "sink"
    ref = filters[block.edges[0].src if sink else block.edges[0].dst]
    other = ref.shape[1] if sink else ref.shape[0]  # C_in (sink) or C_out (source)
    a = ref.new_zeros(other, kernel[0], kernel[1], cols)
    col = 0
    for e in block.edges:
        tick()
        f = filters[e.src] if sink else filters[e.dst]
        kf, kx = kernel_of(f), e.kernel
        # taps: (C_other, kf_h, kf_w, C_l) — C_i of P(u) (sink) or C_j of Q(v) (source)
        taps = f.permute(1, 2, 3, 0) if sink else f.permute(0, 2, 3, 1)
        c_l = taps.shape[3]
        oh, ow = (kernel[0] - kf[0] - kx[0] + 1) // 2, (kernel[1] - kf[1] - kx[1] + 1) // 2
        n = c_l * kx[0] * kx[1]
        part = a[..., col:col + n].unflatten(-1, (c_l, kx[0], kx[1]))
        for vh in range(kx[0]):
            for vw in range(kx[1]):
                part[:, oh + vh:oh + vh + kf[0], ow + vw:ow + vw + kf[1], :, vh, vw] = taps
        col += n
    return a.reshape(other * kernel[0] * kernel[1], cols)


def algorithm2(graph: ModuleGraph, target: torch.Tensor, widths: Mapping[str, int],
               rng: SeededRng, *, tol: float, max_sweeps: int,
               init: Mapping[str, torch.Tensor] | None = None,
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
        assert isinstance(narrow, Narrow)
        # No block can absorb a generic residual, but a special target (0.5·I through a
        # module with 1×1 skips) can still lie in a cut's range; the dense cut solves
        # decide that in moments, so only they run before the refusal — for a target that
        # is special (a 1×1 filter, or of lower rank than its widths) or where they are
        # quick (``PROBE_SECONDS``; up to 4 rounds of SVD solves, each about 3× a Gram
        # product's time): D at widths C = 64 probes for 11 s, at 128 it would for ~90 s.
        seconds = 12 * solve_seconds(graph, widths, cuts_only=True, device=target.device)
        c_out, c_in = target.shape[:2]
        special = (support(target) == (1, 1)
                   or polynomial_rank(target) < min(c_out, c_in))
        if not special and seconds > PROBE_SECONDS:
            raise Narrow(f"{narrow.reason}, so Algorithm 2 was not run (its sweeps would "
                         "only stall)", narrow.candidates)
        start = dict(init) if init else {e.name: rng.filter(widths[e.dst], widths[e.src],
                                                            e.kernel) for e in graph.edges}
        solved, reached = _cut_probe(graph, target, start, widths, tol=tol)
        if solved is not None:
            return solved, reached
        raise Narrow(f"{narrow.reason}; solving its two cuts alone (dense, exact) stalls at "
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
        except OutOfTime:
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
    return _cut_update(Block("sink", tuple(ins)), filters, -current, pre, {}, full,
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
    budget = current_budget()
    history: list[float] = []
    pre = prefix_filters(graph, filters, widths[graph.source])
    residual = target - pad_to(pre[graph.sink], k_eff)
    rel = float(torch.linalg.vector_norm(residual)) / tnorm
    if budget is not None:
        budget.note(sweep=0, residual=rel)
    for sweep in range(max_sweeps):
        for block in solve_blocks(graph):
            # the prefixes of the current filters are kept from the last trial; the
            # suffixes are only needed off the sink cut
            suf = (suffix_filters(graph, filters, widths[graph.sink])
                   if block.kind != "sink" or dense_jacobian else {})
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
            trial, new_residual, new_rel, trial_pre = _tried(graph, target, filters, deltas,
                                                             tnorm, widths[graph.source])
            if new_rel > rel:  # an exact solve never increases it; rounding can
                continue
            filters, residual, rel, pre = trial, new_residual, new_rel, trial_pre
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


def _tried(graph: ModuleGraph, target: torch.Tensor, filters: dict[str, torch.Tensor],
           deltas: Mapping[str, torch.Tensor], tnorm: float, source_channels: int
           ) -> tuple[dict[str, torch.Tensor], torch.Tensor, float, dict[str, torch.Tensor]]:
    """``filters`` plus ``deltas``, the residual they leave, its size relative to the
    target's (``tnorm``) and their prefix filters: a sweep's trial step, kept or dropped
    by the caller."""
    trial = {k: f + deltas[k].to(f.dtype) if k in deltas else f for k, f in filters.items()}
    pre = prefix_filters(graph, trial, source_channels)
    residual = target - pad_to(pre[graph.sink], graph.effective_kernel())
    return trial, residual, float(torch.linalg.vector_norm(residual)) / tnorm, pre


def _cut_probe(graph: ModuleGraph, target: torch.Tensor, filters: dict[str, torch.Tensor],
               widths: Mapping[str, int], *, tol: float, rounds: int = 4
               ) -> tuple[dict[str, torch.Tensor] | None, list[float]]:
    """Alternate the sink-cut and source-cut solves (dense, exact) from ``filters``: (the
    filters, history) once the relative residual is ≤ ``tol``, else (None, history) as
    soon as a round gains less than 2× (or after ``rounds``)."""
    k_eff = graph.effective_kernel()
    tnorm = float(torch.linalg.vector_norm(target)) or 1.0
    budget = current_budget()
    pre = prefix_filters(graph, filters, widths[graph.source])
    residual = target - pad_to(pre[graph.sink], k_eff)
    rel = float(torch.linalg.vector_norm(residual)) / tnorm
    history: list[float] = []
    cuts = [b for b in solve_blocks(graph) if b.kind != "edge"]
    for r in range(rounds):
        if budget is not None:  # not Algorithm 2's sweeps: its progress lines must not say so
            budget.note(phase=f"probing the sink and source cuts (dense), round {r + 1}",
                        residual=rel)
        for block in cuts:
            suf = suffix_filters(graph, filters, widths[graph.sink]) if block.kind != "sink" \
                else {}
            deltas = _cut_update(block, filters, residual, pre, suf, k_eff)
            assert deltas is not None
            trial, new_residual, new_rel, trial_pre = _tried(graph, target, filters, deltas,
                                                             tnorm, widths[graph.source])
            if new_rel <= rel:
                filters, residual, rel, pre = trial, new_residual, new_rel, trial_pre
            if budget is not None:
                budget.note(residual=rel)
            if rel <= tol:
                history.append(rel)
                return filters, history
        gained = history[-1] / rel if history and rel > 0 else math.inf
        history.append(rel)
        if gained < 2:
            break
    return None, history


def _dense_block_update(block: Block, filters: Mapping[str, torch.Tensor],
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


def _stall_message(graph: ModuleGraph, history: list[float], tol: float) -> str:
    name = f"module {graph.name!r}" if graph.name else "the module"
    return (f"Algorithm 2 stalled at relative residual {history[-1]:.3g} after "
            f"{len(history)} sweeps (tolerance {tol:.0e}) on {name}; try another --seed or "
            f"more sweeps (--max-sweeps); no widening of its inner blobs is proven to help")
