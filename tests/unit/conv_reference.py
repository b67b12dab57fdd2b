"""An independent reference for module functions: run the module as real convolutions.

Every edge is an unpadded ``conv2d`` of its source blob; at a join, each incoming branch is
cropped (centred) to the smallest one before the sum. Blobs are evaluated by memoized
recursion from the sink, so nothing here shares code with ``algebra.py``'s dynamic
program over prefix filters. With all kernels odd and centred, the sink then holds
``conv2d(x, G̃)`` with G̃ the module's filter at its effective kernel (unpadded too).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from netmorph_cli.spec.graph import ModuleGraph


def center_crop(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The centred (h, w) window of a (N, C, H, W) map; H − h and W − w are even."""
    dh, dw = x.shape[-2] - h, x.shape[-1] - w
    assert dh >= 0 and dw >= 0 and dh % 2 == 0 and dw % 2 == 0, (x.shape, h, w)
    return x[..., dh // 2:x.shape[-2] - dh // 2, dw // 2:x.shape[-1] - dw // 2]


def run_module(graph: ModuleGraph, filters: Mapping[str, torch.Tensor],
               x: torch.Tensor) -> torch.Tensor:
    """The sink blob for input ``x`` (N, C_s, H, W): convolutions one after another."""
    into: dict[str, list] = {}
    for e in graph.edges:
        into.setdefault(e.dst, []).append(e)
    memo: dict[str, torch.Tensor] = {graph.source: x}

    def blob(b: str) -> torch.Tensor:
        if b not in memo:
            branches = [F.conv2d(blob(e.src), filters[e.name]) for e in into[b]]
            h = min(y.shape[-2] for y in branches)
            w = min(y.shape[-1] for y in branches)
            memo[b] = sum(center_crop(y, h, w) for y in branches)
        return memo[b]

    return blob(graph.sink)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ (b ≠ 0)."""
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))
