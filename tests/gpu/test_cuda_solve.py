"""Algorithm 2 on a CUDA device: module D at C = 16 (inner widths 40 = 2.5·C).

Tolerances: relative residual ≤ 1e-10 in float64, ≤ 1e-6 in float32 (the solver's
defaults, as on the CPU); the CPU run of the same seed must land in the same class.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from netmorph_cli.solver.rng import SeededRng
from netmorph_cli.solver.solve import morph_filter, relative_residual
from netmorph_cli.spec.parse import load_spec

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

D = Path(__file__).resolve().parents[2] / "examples" / "modules" / "D.json"
TOL = {torch.float64: 1e-10, torch.float32: 1e-6}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_morph_filter_d_on_cuda(dtype):
    graph = load_spec(D)
    g_cpu = SeededRng(5, dtype, "cpu").filter(16, 16, (3, 3))
    g_gpu = g_cpu.to("cuda")
    gpu = morph_filter(g_gpu, graph, seed=0)
    assert gpu.residual <= TOL[dtype]
    for f in gpu.filters.values():
        assert f.device.type == "cuda" and f.dtype == dtype
    # recomputed on the CPU from the CUDA filters, independently of the device's DP
    cpu_filters = {k: f.cpu() for k, f in gpu.filters.items()}
    assert relative_residual(graph, cpu_filters, g_cpu) <= TOL[dtype]
    cpu = morph_filter(g_cpu, graph, seed=0)
    assert cpu.residual <= TOL[dtype]  # same residual class on both devices
    assert set(cpu.methods.values()) == set(gpu.methods.values())

