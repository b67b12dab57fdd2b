"""What one structured cut solve of Algorithm 2 costs, from shapes alone: its flops and
peak memory (``cutgram.solve_cut``), those of its LSQR and dense fallbacks, and the
shapes of the cut solves a module meets (the compact start's ring corrections, the sink
and source cuts). ``budget`` turns them into a solve's time and memory estimates;
``sweeps`` checks a fallback against the memory left before allocating it.

Entries are float64 (8 bytes each); counts err on the high side.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..spec.graph import Kernel, ModuleGraph, kernel_area

# entries of P̂ᵀP̂ computed at once (32 MiB, a time check between blocks) and right-hand
# sides solved at once (they bound the vectors next to the Cholesky factor)
GRAM_CHUNK = 2**22
RHS_CHUNK = 64


@dataclass(frozen=True)
class CutShape:
    """The sizes of one cut solve: ``channels`` C of the other side of G̃ (C_in for a sink
    cut), ``window`` and ``frame`` taps, ``taps`` rows solved per channel in the window,
    ``nrhs`` right-hand sides and per edge (w_e, prefix taps, filter taps)."""

    what: str
    channels: int
    window: int
    frame: int
    taps: int
    nrhs: int
    edges: tuple[tuple[int, int, int], ...]

    @property
    def cols(self) -> int:
        """Unknowns per right-hand side."""
        return sum(w * k for w, _, k in self.edges)

    def flops(self) -> float:
        """Of ``cutgram.solve_cut``: the Gram blocks (one GEMM per edge, its lower half),
        the Cholesky factor, two solves with it, two applications of A and of Aᵀ (with
        the refinement)."""
        c, m = self.channels, self.channels * self.taps
        gram = sum(w * (c * kp) ** 2 for w, kp, _ in self.edges)
        maps = sum(2.0 * self.nrhs * k * w * c * kp for w, kp, k in self.edges)
        return gram + m**3 / 3 + 4.0 * m * m * self.nrhs + 4 * maps

    def structured(self) -> int:
        """Peak entries of ``cutgram.solve_cut``: the Gram matrix over the window's rows
        (factored in place; a copy of the rows solved where those are fewer), a block of
        P̂ᵀP̂, the prefixes in float64, the right-hand sides (twice), the solutions and
        A x, and one chunk's vectors and products."""
        c, nrhs = self.channels, self.nrhs
        m_w, m = c * self.window, c * self.taps
        block = max(min((c * kp) ** 2, max(GRAM_CHUNK, kp * c * kp)) for _, kp, _ in self.edges)
        gram = m_w * m_w + (m * m if m < m_w else 0) + block
        return gram + self._ends() + nrhs * (c * self.frame + 3 * m_w + self.cols) + \
            self._chunk()

    def lsqr(self) -> int:
        """Peak entries of ``cutgram.lsqr_cut``: LSQR's five vectors, the right-hand sides,
        the prefixes and one chunk's products (its map runs a chunk at a time)."""
        c, m_w = self.channels, self.channels * self.window
        return self._ends() + self.nrhs * (c * self.frame + 5 * self.cols + 4 * m_w) + \
            self._chunk()

    def dense(self) -> int:
        """Peak entries of the dense path (``sweeps._dense_cut_update``): the matrix over
        the frame, its selected rows and float64 copy, a·aᵀ and its factor, right-hand
        sides and solutions."""
        rows, m = self.channels * self.frame, self.channels * self.taps
        return 3 * rows * self.cols + 2 * m * m + 2 * self.nrhs * (rows + self.cols)

    def _ends(self) -> int:
        return sum(w * self.channels * kp for w, kp, _ in self.edges)

    def _chunk(self) -> int:
        product = max(k * self.channels * kp for _, kp, k in self.edges)  # x_e ⊛ P_e's GEMM
        return min(self.nrhs, RHS_CHUNK) * (6 * self.channels * self.window + 4 * self.cols
                                            + 3 * product)


def compact_start(graph: ModuleGraph) -> tuple[dict[str, Kernel], list[tuple[str, Kernel]]]:
    """The prefix kernels of Algorithm 2's compact start (``sweeps.compact_prefixes``: every
    inner blob's prefix kept to its own in-edges' kernel) and the blobs it corrects, each
    with its frame (the reach of its in-edges)."""
    kp: dict[str, Kernel] = {graph.source: (1, 1)}
    rings = []
    for v in graph.blobs[1:]:
        ins = graph.in_edges[v]
        own = (max(e.kernel[0] for e in ins), max(e.kernel[1] for e in ins))
        full = (max(e.kernel[0] + kp[e.src][0] - 1 for e in ins),
                max(e.kernel[1] + kp[e.src][1] - 1 for e in ins))
        if v != graph.sink and full != own:
            rings.append((v, full))
        kp[v] = own if v != graph.sink else full
    return kp, rings


def ring_cuts(graph: ModuleGraph, widths: Mapping[str, int]) -> list[CutShape]:
    """The compact start's ring corrections as cut solves (rows: the frame less ``own``)."""
    kp, rings = compact_start(graph)
    out = []
    for v, full in rings:
        edges = tuple((widths[e.src], kernel_area(kp[e.src]), kernel_area(e.kernel))
                      for e in graph.in_edges[v])
        out.append(CutShape(f"the ring correction at blob {v!r}", widths[graph.source],
                            kernel_area(full), kernel_area(full),
                            kernel_area(full) - kernel_area(kp[v]), widths[v], edges))
    return out


def sink_cut(graph: ModuleGraph, widths: Mapping[str, int],
             kp: Mapping[str, Kernel]) -> CutShape:
    """The sink cut with prefix kernels ``kp`` (its window: their reach within the frame)."""
    k_eff, ins = graph.effective_kernel(), graph.in_edges[graph.sink]
    window = (min(k_eff[0], max(kp[e.src][0] + e.kernel[0] - 1 for e in ins)),
              min(k_eff[1], max(kp[e.src][1] + e.kernel[1] - 1 for e in ins)))
    edges = tuple((widths[e.src], kernel_area(kp[e.src]), kernel_area(e.kernel)) for e in ins)
    return CutShape("the sink cut", widths[graph.source], kernel_area(window),
                    kernel_area(k_eff), kernel_area(window), widths[graph.sink], edges)


def source_cut(graph: ModuleGraph, widths: Mapping[str, int]) -> CutShape:
    """The source cut: a sink cut of the channel-transposed module (suffixes for prefixes)."""
    k_eff, outs = graph.effective_kernel(), graph.out_edges[graph.source]
    kq = graph.kernel_reach(to_sink=True)
    window = (min(k_eff[0], max(kq[e.dst][0] + e.kernel[0] - 1 for e in outs)),
              min(k_eff[1], max(kq[e.dst][1] + e.kernel[1] - 1 for e in outs)))
    edges = tuple((widths[e.dst], kernel_area(kq[e.dst]), kernel_area(e.kernel))
                  for e in outs)
    return CutShape("the source cut", widths[graph.sink], kernel_area(window),
                    kernel_area(k_eff), kernel_area(window), widths[graph.source], edges)


def sweep_overhead_flops(graph: ModuleGraph, widths: Mapping[str, int]) -> float:
    """Flops around the cut solves of a solve that ends in its first sweep: the prefix
    filters composed three times (the start, the trial step, the final residual; a
    composition is one GEMM, 2·C_j·k_2·C_l·C_i·k_1) and every filter's condition number
    (an SVD, ~4·m²·n for an m × n matrix, m ≤ n)."""
    kp = graph.kernel_reach()
    cs = widths[graph.source]
    compose = sum(2.0 * widths[e.dst] * kernel_area(e.kernel) * widths[e.src] * cs
                  * kernel_area(kp[e.src]) for e in graph.edges)
    svd = 0.0
    for e in graph.edges:
        m, n = sorted((widths[e.dst], widths[e.src] * kernel_area(e.kernel)))
        svd += 4.0 * m * m * n
    return 3 * compose + svd


def planned_solves(graph: ModuleGraph, widths: Mapping[str, int]) -> tuple[int, str]:
    """Peak entries of the cut solves Algorithm 2 plans on ``graph`` (one at a time, so the
    largest) and what that one is: structured, the compact start's ring corrections and
    sink cut; the LSQR fallback of any cut, the source cut's and the plain random start's
    included. Those two run structured (or dense) only where that fits in the memory the
    solve has left (``budget.memory_room``), so they never raise the peak past the limit."""
    kp, _ = compact_start(graph)
    planned = ring_cuts(graph, widths) + [sink_cut(graph, widths, kp)]
    others = [sink_cut(graph, widths, graph.kernel_reach()), source_cut(graph, widths)]
    options = [(c.structured(), f"the Gram matrix of {c.what} ({c.channels * c.window:,} rows)")
               for c in planned]
    options += [(c.lsqr(), f"the LSQR fallback of {c.what}") for c in planned + others]
    return max(options, key=lambda o: o[0])
