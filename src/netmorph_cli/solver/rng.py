"""SeededRng: the solver's random tensors, reproducible from a seed on every device.

Every random choice of a morph (starting filters, TYPE-II noise, orthogonal factors) is
drawn from a ``SeededRng`` built from the morph's seed, so a seed reproduces a child bit
for bit.
"""

from __future__ import annotations

import math

import torch

from ..spec.graph import Kernel


class SeededRng:
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
