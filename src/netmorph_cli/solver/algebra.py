"""Filter algebra on torch tensors: ⊛ (eq. 2), zero padding, and the module function (eq. 5).

Filters are (C_out, C_in, kh, kw) tensors used as PyTorch's ``conv2d`` uses them
(cross-correlation). ``compose(F2, F1)`` is the filter H with
``conv2d(conv2d(x, F1), F2) == conv2d(x, H)`` on interior pixels ("apply F1, then F2"),
which is a full convolution over the spatial taps and a matrix product over channels:
H[j, i, w] = Σ_l Σ_{u+v=w} F2[j, l, v] · F1[l, i, u]. Everything works on any dtype and
device; nothing here leaves the device or loops over pixels.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from ..spec.graph import Kernel, ModuleGraph, sum_kernels
from .budget import tick


def kernel_of(f: torch.Tensor) -> Kernel:
    return (int(f.shape[-2]), int(f.shape[-1]))


def compose(f2: torch.Tensor, f1: torch.Tensor) -> torch.Tensor:
    """F2 ⊛ F1: (C_j, C_l, K2h, K2w) ⊛ (C_l, C_i, K1h, K1w) → (C_j, C_i, K1h+K2h-1, K1w+K2w-1)."""
    if f2.shape[1] != f1.shape[0]:
        raise ValueError(f"cannot compose: F2 takes {f2.shape[1]} channels, F1 gives {f1.shape[0]}")
    k2h, k2w = kernel_of(f2)
    if f2.dim() == 4 and f1.dim() == 4 and f2.shape[0] * f2.shape[1] * f1.shape[1] >= _GEMM_FROM:
        return _compose_gemm(f2, f1)
    # F1 as a batch of C_i images with C_l channels; a full convolution with F2 is a
    # correlation with the flipped F2 over F1 padded by K2-1 on every side.
    h = F.conv2d(f1.transpose(0, 1), f2.flip(-2, -1), padding=(k2h - 1, k2w - 1))
    return h.transpose(0, 1)  # (C_j, C_i, K1+K2-1)


# C_j·C_l·C_i from which ⊛ is one matrix product and a shifted sum rather than a
# convolution: a convolution over F1's few taps pays for every zero of its padding (225
# multiply-adds per channel triple for 3×3 ⊛ 3×3 where 81 are needed) and runs below the
# matrix-product speed; at 128 → 257 channels it was a third of a cut solve
_GEMM_FROM = 2**18


def _compose_gemm(f2: torch.Tensor, f1: torch.Tensor) -> torch.Tensor:
    """F2 ⊛ F1 as (C_j·K2, C_l) @ (C_l, C_i·K1), each of F2's taps v then adding its
    (C_j, C_i, K1) product at offset v (out of place: vmap and autograd see plain ops)."""
    cj, cl, k2h, k2w = f2.shape
    ci, k1h, k1w = f1.shape[1:]
    t = (f2.permute(0, 2, 3, 1).reshape(cj * k2h * k2w, cl) @ f1.reshape(cl, ci * k1h * k1w))
    t = t.reshape(cj, k2h, k2w, ci, k1h, k1w)
    h = None
    for vh in range(k2h):
        for vw in range(k2w):
            part = F.pad(t[:, vh, vw], (vw, k2w - 1 - vw, vh, k2h - 1 - vh))
            h = part if h is None else h + part
    assert h is not None
    return h


def pad_to(f: torch.Tensor, kernel: Kernel) -> torch.Tensor:
    """Zero-pad a filter to a larger odd kernel, keeping it centred (the extended definition)."""
    kh, kw = kernel_of(f)
    dh, dw = kernel[0] - kh, kernel[1] - kw
    if dh < 0 or dw < 0 or dh % 2 or dw % 2:
        raise ValueError(f"cannot pad a {kh}×{kw} filter to {kernel[0]}×{kernel[1]}")
    if dh == dw == 0:
        return f
    return F.pad(f, (dw // 2, dw // 2, dh // 2, dh // 2))


def add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """F1 + F2 in the extended sense: both padded to the larger kernel per dimension."""
    k = sum_kernels(kernel_of(a), kernel_of(b))
    return pad_to(a, k) + pad_to(b, k)


def crop_to(f: torch.Tensor, kernel: Kernel) -> torch.Tensor:
    """The centred ``kernel`` window of ``f`` (the inverse of ``pad_to``)."""
    kh, kw = kernel_of(f)
    dh, dw = kh - kernel[0], kw - kernel[1]
    if dh < 0 or dw < 0 or dh % 2 or dw % 2 or min(kernel) < 1:
        raise ValueError(f"cannot crop a {kh}×{kw} filter to {kernel[0]}×{kernel[1]}")
    oh, ow = dh // 2, dw // 2
    return f[..., oh:oh + kernel[0], ow:ow + kernel[1]]


def resize(f: torch.Tensor, kernel: Kernel) -> torch.Tensor:
    """``f`` padded or cropped (per dimension, centred) to ``kernel``; cropping only drops
    taps when they are non-zero, which callers rule out first."""
    kh, kw = kernel_of(f)
    big = (max(kh, kernel[0]), max(kw, kernel[1]))
    return crop_to(pad_to(f, big), kernel)


def support(g: torch.Tensor) -> Kernel:
    """Smallest centred odd kernel that holds every non-zero tap of ``g``."""
    kh, kw = kernel_of(g)
    nz = g.detach().abs().sum(dim=(0, 1)) != 0
    rows = torch.nonzero(nz.any(dim=1)).flatten().tolist()
    cols = torch.nonzero(nz.any(dim=0)).flatten().tolist()
    if not rows:
        return (1, 1)
    rh = max(abs(r - kh // 2) for r in rows)
    rw = max(abs(c - kw // 2) for c in cols)
    return (2 * rh + 1, 2 * rw + 1)


def identity_filter(channels: int, kernel: Kernel = (1, 1), *, dtype=torch.float64,
                    device=None) -> torch.Tensor:
    """The identity map as a (C, C, kh, kw) filter: I at the centre tap, zero elsewhere."""
    f = torch.zeros(channels, channels, *kernel, dtype=dtype, device=device)
    f[:, :, kernel[0] // 2, kernel[1] // 2] = torch.eye(channels, dtype=dtype, device=device)
    return f


def prefix_filters(graph: ModuleGraph, filters: Mapping[str, torch.Tensor],
                   source_channels: int) -> dict[str, torch.Tensor]:
    """P(v) for every blob v: the filter from s to v, Σ over edges u→v of F ⊛ P(u).

    Dynamic programming over blobs in topological order: one compose per edge, never one
    per path. P(s) is the 1×1 identity.
    """
    ref = next(iter(filters.values()))
    pre: dict[str, torch.Tensor] = {
        graph.source: identity_filter(source_channels, dtype=ref.dtype, device=ref.device)}
    for b in graph.blobs[1:]:
        tick()  # the solve's time budget, once per blob
        acc: torch.Tensor | None = None
        for e in graph.in_edges[b]:
            term = compose(filters[e.name], pre[e.src])
            acc = term if acc is None else add(acc, term)
        assert acc is not None  # every blob but the source has an edge in
        pre[b] = acc
    return pre


def suffix_filters(graph: ModuleGraph, filters: Mapping[str, torch.Tensor],
                   sink_channels: int) -> dict[str, torch.Tensor]:
    """Q(v) for every blob v: the filter from v to t, Σ over edges v→w of Q(w) ⊛ F."""
    ref = next(iter(filters.values()))
    suf: dict[str, torch.Tensor] = {
        graph.sink: identity_filter(sink_channels, dtype=ref.dtype, device=ref.device)}
    for b in reversed(graph.blobs[:-1]):
        tick()
        acc: torch.Tensor | None = None
        for e in graph.out_edges[b]:
            term = compose(suf[e.dst], filters[e.name])
            acc = term if acc is None else add(acc, term)
        assert acc is not None  # every blob but the sink has an edge out
        suf[b] = acc
    return suf


def module_function(graph: ModuleGraph, filters: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """G̃ of eq. 5: the one filter the module computes, at its effective kernel size."""
    src_ch = filters[graph.out_edges[graph.source][0].name].shape[1]
    g = prefix_filters(graph, filters, src_ch)[graph.sink]
    return pad_to(g, graph.effective_kernel())
