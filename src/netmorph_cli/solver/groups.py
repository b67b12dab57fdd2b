"""A grouped or depthwise conv's filter solved group by group, the grouping kept.

A conv with g groups is g independent (C_out/g)×(C_in/g) layers side by side. Its module
keeps the grouping: every module conv gets the same g groups and each inner blob g times the
width one group's module has; group i's filters are the solve of group i's slice of G
(``solve.morph_filter``, all from one seeded stream). The inner widths are chosen for the first
group (``widths.resolve``: fixed, ``"Nx"`` of the group's C_out, or open) and fixed for the
rest, so every group has the same shape. Imports the solver only.
"""

from __future__ import annotations

import dataclasses
import math
import time

import torch

from ..errors import SolverError
from ..spec.graph import ModuleGraph
from .budget import Budget, ProgressFn, SolveLimits, current_budget, running
from .rng import SeededRng
from .solve import SolveResult, morph_filter


def solve_groups(g: torch.Tensor, groups: int, graph: ModuleGraph, *,
                 inner_width: int | None = None, seed: int = 0, rng: SeededRng | None = None,
                 limits: SolveLimits | None = None, progress: ProgressFn | None = None
                 ) -> SolveResult:
    """Filters for every edge of ``graph`` whose grouped module equals the grouped conv G
    ((C_out, C_in/groups, kh, kw), PyTorch's layout) exactly: each edge's filter is
    (groups·w_dst, w_src, k', k'), group i's rows the solve of G's rows
    [i·C_out/groups, (i+1)·C_out/groups). ``limits`` (a ``SolveLimits``) are every group's
    solve's, its ``max_seconds`` all the groups' together.
    The residual is the whole filter's (‖module − G̃‖ / ‖G̃‖ over every group), the condition
    number each edge's block-diagonal operator's."""
    c_out = g.shape[0]
    if groups < 1 or c_out % groups:
        raise ValueError(f"{c_out} output channels do not split into {groups} groups")
    per = c_out // groups
    lim = limits or SolveLimits()
    t0 = time.perf_counter()
    outer = Budget(lim.max_seconds, progress, current_budget(), phase=f"group 1 of {groups}")
    parts: list[SolveResult] = []
    fixed = graph
    with running(outer):
        for i in range(groups):
            outer.note(phase=f"group {i + 1} of {groups}")
            try:
                res = morph_filter(g[i * per:(i + 1) * per], fixed, inner_width=inner_width,
                                   seed=seed, rng=rng, tol=lim.tol, max_sweeps=lim.max_sweeps,
                                   method=lim.method, max_memory=lim.max_memory)
            except SolverError as exc:  # its "layer a→b" is one group's: say so
                raise type(exc)(f"group {i + 1} of {groups} of a grouped conv (each group a "
                                f"{g.shape[1]}→{per} layer; a spec's widths are per group): "
                                f"{exc}") from None
            if i == 0 and res.widths is not None and res.widths.inner:
                fixed = dataclasses.replace(graph, channels={**graph.channels,
                                                             **res.widths.inner})
            parts.append(res)
    filters = {e: torch.cat([p.filters[e] for p in parts]) for e in parts[0].filters}
    norms = [float(torch.linalg.vector_norm(g[i * per:(i + 1) * per])) for i in range(groups)]
    total = math.sqrt(sum(n * n for n in norms)) or 1.0
    residual = math.sqrt(sum((p.residual * n) ** 2 for p, n in zip(parts, norms, strict=True)))
    worst = max(parts, key=lambda p: p.residual)
    return SolveResult(filters, dict(parts[0].methods), residual / total,
                       max(p.sweeps for p in parts), time.perf_counter() - t0, worst.history,
                       {e: block_conditioning([p.filters[e] for p in parts]) for e in filters},
                       parts[0].widths)


def block_conditioning(blocks: list[torch.Tensor]) -> float:
    """Condition number of a grouped conv's block-diagonal operator: the largest singular
    value of any group's (C_out/g, C_in/g·kh·kw) matrix over the smallest (inf when a group
    is rank deficient)."""
    values = torch.cat([torch.linalg.svdvals(b.detach().reshape(b.shape[0], -1)
                                             .to(torch.float64).cpu()) for b in blocks])
    low = float(values.min())
    return float(values.max()) / low if low > 0 else math.inf
