"""Algorithm 2: alternating exact least-squares solves over blocks of a module's filters.

The module function is affine in any set of edges that no s→t path crosses twice, not
only in one filter. Two such sets are special: the edges into t (the "sink cut") and the
edges out of s (the "source cut"). On the sink cut, G̃'s output channels decouple — row j
of G̃ is Σ_e F_e[j] ⊛ P(u_e) — so the cut is solved as C_out small systems sharing one
matrix; on the source cut the input channels decouple likewise. Those are solved exactly,
through the shared matrix's Gram matrix built from the cut's structure (``cutgram``;
the dense matrix or LSQR where that fails); an edge between two inner blobs couples
everything and is solved matrix-free.
The blocks themselves, and the rank bounds that refuse a hopeless solve before its first
sweep, live in ``feasibility``.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass

import torch

from ..errors import SolverError
from ..spec.graph import Edge, Kernel, ModuleGraph, fits
from .algebra import (
    add,
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
from .budget import (
    DENSE_LIMIT,
    PROBE_SECONDS,
    OutOfTime,
    current_budget,
    memory_room,
    solve_seconds,
    tick,
)
from .cutgram import Cut, lsqr_cut, make_cut, solve_cut
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


@dataclass(frozen=True)
class CutUpdate:
    """Minimum-norm corrections of a cut's filters (``_cut_update``)."""

    deltas: dict[str, torch.Tensor]  # edge → correction of its filter, float64
    fit: torch.Tensor | None  # the change they make on the cut's window (structured path)
    window: Kernel  # the centred part of the frame ``fit`` covers


def _cut_update(block: Block, filters: Mapping[str, torch.Tensor], residual: torch.Tensor,
                pre: Mapping[str, torch.Tensor], suf: Mapping[str, torch.Tensor],
                kernel: Kernel, *, taps: torch.Tensor | None = None, exact: bool = False,
                fit: bool = False) -> CutUpdate | None:
    """Minimum-norm corrections of a sink or source cut: C small systems sharing one matrix,
    solved through its Gram matrix built from the cut's structure (``cutgram``, float64;
    where that fits in the memory left, ``budget.memory_room``); where it does not fit or
    has no reliable Cholesky factor, ``_fallback_update``.

    A "sink" block may be the in-edges of any blob (``residual`` then lives at that blob).
    ``taps`` keeps only those taps of the ``kernel`` frame (a (kh, kw) boolean mask); with
    ``exact``, None unless the corrections meet them exactly (relative 1e-9); with ``fit``
    (a sink block), the change they make on the cut's window where the structured path
    gave them."""
    sink = block.kind == "sink"
    ends = [pre[e.src] if sink else suf[e.dst].transpose(0, 1) for e in block.edges]
    rhs = residual if sink else residual.transpose(0, 1)  # (C_out or C_in, C_other, *kernel)
    cut = make_cut(ends, [e.kernel for e in block.edges], kernel, taps=taps)
    room = memory_room(residual.device)
    shape = cut.shape(rhs.shape[0])
    sol = solve_cut(cut, rhs, fit=fit and sink) if 8 * shape.structured() <= room else None
    if sol is None:
        return _fallback_update(block, cut, ends, filters, residual, pre, suf, exact=exact)
    if exact and sol.residual > 1e-9 * max(sol.rhs, 1e-300):
        return None
    deltas = {e.name: x if sink else x.transpose(0, 1)
              for e, x in zip(block.edges, sol.x, strict=True)}
    return CutUpdate(deltas, sol.fit if sink else None, cut.window)


def _fallback_update(block: Block, cut: Cut, ends: list[torch.Tensor],
                     filters: Mapping[str, torch.Tensor], residual: torch.Tensor,
                     pre: Mapping[str, torch.Tensor], suf: Mapping[str, torch.Tensor], *,
                     exact: bool) -> CutUpdate | None:
    """A cut's update where its Gram matrix has no reliable Cholesky factor (rank-deficient
    or tall) or does not fit: dense and rank-revealing (``lsq.dense_min_norm``) where its
    matrices fit in the memory left to the solve (``budget.memory_room``), else LSQR on the
    cut with its ``ends`` uncropped (relative 1e-12); None where ``exact`` and the residual
    is over 1e-9 relative."""
    nrhs = residual.shape[0 if block.kind == "sink" else 1]
    if 8 * cut.shape(nrhs).dense() <= memory_room(residual.device):
        flat = cut.taps.expand(cut.channels, *cut.frame).reshape(-1)
        deltas = _dense_cut_update(block, filters, residual, pre, suf, cut.frame,
                                   rows=None if bool(cut.taps.all()) else flat, exact=exact)
        return None if deltas is None else CutUpdate(deltas, None, cut.frame)
    whole = make_cut(ends, cut.kernels, cut.frame, taps=cut.taps, crop=False)
    b = residual if block.kind == "sink" else residual.transpose(0, 1)
    xs, res, bnorm = lsqr_cut(whole, b.to(torch.float64))
    if exact and res > 1e-9 * max(bnorm, 1e-300):
        return None
    sink = block.kind == "sink"
    return CutUpdate({e.name: x if sink else x.transpose(0, 1)
                      for e, x in zip(block.edges, xs, strict=True)}, None, cut.frame)


def _dense_cut_update(block: Block, filters: Mapping[str, torch.Tensor],
                      residual: torch.Tensor, pre: Mapping[str, torch.Tensor],
                      suf: Mapping[str, torch.Tensor], kernel: Kernel, *,
                      rows: torch.Tensor | None = None, exact: bool = False
                      ) -> dict[str, torch.Tensor] | None:
    """``_cut_update`` with the dense matrix (``_cut_matrix``) and ``lsq.dense_min_norm``;
    ``rows``: a boolean mask over each output row's / input column's C·kh·kw entries."""
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
    of v's own in-edges (the smallest correction of its in-edge filters, one minimum-norm
    cut solve per blob, ``_cut_update``), or None where that changes nothing or would
    leave the module unable to reach the ``needed`` support.

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
            corrected = _ring_correction(ins, out, pre, own, full)
            if corrected is None:
                return None
            deltas, pre[v] = corrected
            for name, d in deltas.items():
                out[name] = out[name] + d.to(out[name].dtype)
            changed = True
            continue
        acc = torch.zeros((), dtype=ref.dtype, device=ref.device)
        for e in ins:
            acc = acc + pad_to(compose(out[e.name], pre[e.src]), full)
        pre[v] = acc  # (``full`` is ``own`` here)
    raise AssertionError("the sink is the last blob")


def _ring_correction(ins: list[Edge], filters: Mapping[str, torch.Tensor],
                     pre: Mapping[str, torch.Tensor], own: Kernel, full: Kernel
                     ) -> tuple[dict[str, torch.Tensor], torch.Tensor] | None:
    """Minimum-norm corrections of the in-edge filters of one blob that zero its prefix
    outside the centred ``own`` kernel (relative 1e-9), and the prefix they leave, cropped
    to ``own``; None when no exact correction exists."""
    ref = filters[ins[0].name]
    current = torch.zeros((), dtype=ref.dtype, device=ref.device)
    for e in ins:
        current = current + pad_to(compose(filters[e.name], pre[e.src]), full)
    ring = torch.ones(full, dtype=torch.bool, device=ref.device)
    dh, dw = (full[0] - own[0]) // 2, (full[1] - own[1]) // 2
    ring[dh:dh + own[0], dw:dw + own[1]] = False
    update = _cut_update(Block("sink", tuple(ins)), filters, -current, pre, {}, full,
                         taps=ring, exact=True, fit=True)
    if update is None:
        return None
    if update.fit is not None and fits(own, update.window):  # the new prefix: P + A·δ
        prefix = crop_to(current, own) + crop_to(update.fit, own).to(current.dtype)
    else:
        prefix = torch.zeros((), dtype=ref.dtype, device=ref.device)
        for e in ins:
            f = filters[e.name] + update.deltas[e.name].to(ref.dtype)
            prefix = prefix + pad_to(compose(f, pre[e.src]), full)
        prefix = crop_to(prefix, own)  # exact: zero outside ``own``
    return update.deltas, prefix


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
                deltas = cut.deltas
            trial, new_residual, new_rel, trial_pre = _tried(graph, target, filters, deltas,
                                                             tnorm, pre)
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
           deltas: Mapping[str, torch.Tensor], tnorm: float, pre: Mapping[str, torch.Tensor]
           ) -> tuple[dict[str, torch.Tensor], torch.Tensor, float, dict[str, torch.Tensor]]:
    """``filters`` plus ``deltas``, the residual they leave, its size relative to the
    target's (``tnorm``) and their prefix filters (``pre``, those of ``filters``, with the
    blobs downstream of a changed edge recomputed): a sweep's trial step, kept or dropped
    by the caller."""
    trial = {k: f + deltas[k].to(f.dtype) if k in deltas else f for k, f in filters.items()}
    new_pre = _prefixes_after(graph, trial, pre, deltas.keys())
    residual = target - pad_to(new_pre[graph.sink], graph.effective_kernel())
    return trial, residual, float(torch.linalg.vector_norm(residual)) / tnorm, new_pre


def _prefixes_after(graph: ModuleGraph, filters: Mapping[str, torch.Tensor],
                    pre: Mapping[str, torch.Tensor], changed: Collection[str]
                    ) -> dict[str, torch.Tensor]:
    """``prefix_filters`` of ``filters`` where ``pre`` holds them for filters that differ
    only on the ``changed`` edges: the blobs downstream of those recomputed the same way
    (bit for bit), the others kept (after a sink-cut step, only P(t) is new)."""
    out = dict(pre)
    stale = set()
    for b in graph.blobs[1:]:
        ins = graph.in_edges[b]
        if not any(e.name in changed or e.src in stale for e in ins):
            continue
        tick()
        stale.add(b)
        acc: torch.Tensor | None = None
        for e in ins:
            term = compose(filters[e.name], out[e.src])
            acc = term if acc is None else add(acc, term)
        assert acc is not None
        out[b] = acc
    return out


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
            cut = _cut_update(block, filters, residual, pre, suf, k_eff)
            assert cut is not None
            trial, new_residual, new_rel, trial_pre = _tried(graph, target, filters,
                                                             cut.deltas, tnorm, pre)
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
