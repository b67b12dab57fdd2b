"""FLOP and parameter counting in the paper's convention.

FLOPs are multiply-accumulates of conv and linear layers at the data set's input size; BN,
activations, additions, padding and pooling are not counted. Spatial sizes are *logical*:
a conv of a module realized with one input padding (stride 1, no padding of its own) is
counted at its input's size, as if it had "same" padding — which is the size it
contributes to the module's output. With that rule the paper's Tables 1–3 follow exactly.

What the network really executes is more: a module realized with one zero padding at its
input and centre-cropping joins runs its unpadded convs on maps larger than the output, by
the receptive-field margin still ahead of each conv (a 3c3 branch at 8×8 runs its first conv
at 10×10). ``count_executed_macs`` counts every conv at the size it actually outputs; where
every conv is "same"-padded (the zoo's parents) the two counts agree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .description import Network, validate_description
from .ops import OPS, param_shapes


def logical_sizes(desc: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """(H, W) of every spatial node under the same-size convention above (each op's
    ``logical_hw`` in ``ops.py``)."""
    validate_description(desc)
    sizes: dict[str, tuple[int, int]] = {"input": tuple(desc["input"][1:])}  # type: ignore
    for n in desc["nodes"]:
        ins = [sizes[i] for i in n["inputs"] if i in sizes]
        if not ins:
            continue  # flat tensors (after pooling)
        # joins take their largest input's size: equal for a module's adds (same-size
        # convention), the map's for a squeeze-excitation mul ((H, W) · (1, 1))
        hw = OPS[n["op"]].logical_hw(n, (max(h for h, _ in ins), max(w for _, w in ins)))
        if hw is not None:
            sizes[n["name"]] = hw
    return sizes


def count_flops(desc: Mapping[str, Any]) -> int:
    """Multiply-accumulates of all conv and linear layers (the ops with ``macs`` in
    ``ops.py``) for one input image."""
    sizes = logical_sizes(desc)
    total = 0
    for n in desc["nodes"]:
        macs = OPS[n["op"]].macs
        if macs is not None:
            total += macs(n, sizes.get(n["name"]))
    return total


def count_executed_macs(desc: Mapping[str, Any]) -> int:
    """Multiply-accumulates that running the network executes for one input image: every
    conv at the output size it really computes (``validate_description``'s shapes), linear
    layers as in ``count_flops``."""
    shapes = validate_description(desc)
    total = 0
    for n in desc["nodes"]:
        macs = OPS[n["op"]].macs
        if macs is not None:
            shape = shapes[n["name"]]  # (C, H, W), or (F,) once flat
            total += macs(n, (shape[1], shape[2]) if len(shape) == 3 else None)
    return total


@dataclass(frozen=True)
class FlopCount:
    """A network's cost both ways: the paper's logical MACs and the executed ones."""

    logical: int  # count_flops: convs at their logical ("same"-padded) size
    executed: int  # count_executed_macs: convs at the size they really run

    @property
    def overhead(self) -> float:
        """executed / logical (1.0 without padded modules)."""
        return self.executed / self.logical if self.logical else 1.0


def flop_count(desc: Mapping[str, Any]) -> FlopCount:
    """Both counts of one description (what ``summary`` and ``netmorph info`` report)."""
    return FlopCount(count_flops(desc), count_executed_macs(desc))


def count_params(desc: Mapping[str, Any]) -> int:
    """Learnable parameters (BN running statistics are buffers, not counted)."""
    return sum(math.prod(shape) for n in desc["nodes"]
               for p, shape in param_shapes(n).items() if p not in OPS[n["op"]].buffers)


def format_flops(flops: int) -> str:
    """The paper's notation: millions below a billion (40.8M), else billions (1.814G)."""
    return f"{flops / 1e9:.3f}G" if flops >= 1e9 else f"{flops / 1e6:.1f}M"


def summary(net: Network) -> dict[str, Any]:
    """What ``netmorph info`` shows: architecture, size, cost and lineage of a network."""
    desc = net.description
    cost = flop_count(desc)
    flops = cost.logical
    out: dict[str, Any] = {
        "arch": desc.get("arch", "?"), "input": list(desc["input"]),
        "num_classes": desc["num_classes"], "params": count_params(desc), "flops": flops,
        "flops_text": format_flops(flops), "executed_macs": cost.executed,
        "executed_vs_flops": cost.overhead, "dtype": str(net.dtype).removeprefix("torch."),
        "layers": sum(1 for n in desc["nodes"]  # conv and linear: the ops with MACs
                      if OPS[n["op"]].macs is not None),
    }
    for key in ("parent", "root"):
        ref = net.meta.get(key)
        if isinstance(ref, dict) and ref.get("flops"):
            out[f"flops_vs_{key}"] = flops / ref["flops"]
    for key in ("parent", "root", "normalization", "imported", "created"):
        if key in net.meta:
            out[key] = net.meta[key]
    out["history"] = net.history
    return out
