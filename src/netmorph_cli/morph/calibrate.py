"""Data-calibrated BN: a morph that keeps the parent's function in training mode too.

A new BN layer of a morph is the identity in eval mode when its running statistics and its
affine parameters agree: running_mean = β = μ and running_var = σ², γ = √(σ² + ε) give
(x − μ)/√(σ² + ε)·γ + β = x for *any* μ, σ² (the paper's eq. 9). Which μ, σ² does not matter
in eval mode; in training mode it does: BN then normalizes by the batch's own mean μ_B and
variance σ²_B, and the layer computes (x − μ_B)·√(σ² + ε)/√(σ²_B + ε) + μ, the identity
only where μ_B ≈ μ and σ²_B ≈ σ². The uncalibrated choice (μ = 0, σ² = 1) is far from a
real feature map's statistics, so a child in training mode is a much worse network than
its parent (train-mode loss 0.13 → 3.8 on a trained ResNet-20 with 1c1).

``calibrate`` runs the child over training batches *in training mode* (the parent's BN
layers on batch statistics, as ``train`` will run them) with its new BN layers in eval mode
(the identity), records at each new BN the average over batches of the per-channel batch
mean and (biased) batch variance of its input — exactly the μ_B and σ²_B that training-mode
BN divides by — and sets μ, σ² to them. Eval mode stays the identity to rounding (≤ 1e-10
in float64); training mode is the identity up to batch-to-batch noise.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence, Sized

import torch

from ..errors import MorphError
from ..network.description import Network
from ..network.history import Calibration, MorphRecord, Record, TrainRecord, parse_history


def uncalibrated_layers(net: Network) -> list[str]:
    """New BN layers of the morphs since the last training that no calibration has set yet
    (a child morphed twice before training has both morphs' layers; training sets them)."""
    nodes = net.nodes
    return [name for _, entry in _pending(parse_history(net.history)) for name in entry.new_bn
            if nodes.get(name, {}).get("op") == "bn"]


def _pending(history: list[Record]) -> list[tuple[int, MorphRecord]]:
    """The morphs after the last training whose new BN layers are uncalibrated, with their
    places in the history."""
    entries: list[tuple[int, MorphRecord]] = []
    for i in reversed(range(len(history))):
        entry = history[i]
        if isinstance(entry, TrainRecord):
            break
        if isinstance(entry, MorphRecord) and entry.new_bn and not entry.calibration:
            entries.insert(0, (i, entry))
    return entries


def calibrate(net: Network, batches: Iterable[torch.Tensor], *, dataset: str, seed: int = 0,
              layers: Sequence[str] | None = None, device: torch.device | str = "cpu",
              progress: Callable[[int, int], None] | None = None) -> Network:
    """A copy of ``net`` whose BN layers ``layers`` (default: ``uncalibrated_layers``) are
    set from the training-mode statistics of their inputs over ``batches`` (normalized
    images, (N, C, H, W)), and the calibration recorded in the history entry of each morph
    whose layers it set; ``progress(done, total)`` after each batch (total 0 when
    ``batches`` has no length). Raises ``MorphError`` when there is nothing to calibrate or
    no batch."""
    names = list(layers) if layers is not None else uncalibrated_layers(net)
    if not names:
        raise MorphError("nothing to calibrate: no morph since the last training added a BN "
                         "layer that is not calibrated already")
    nodes = net.nodes
    for name in names:
        if nodes.get(name, {}).get("op") != "bn":
            raise MorphError(f"cannot calibrate {name!r}: not a BN layer of the network")
    model = net.module(None, device).train()  # a throwaway copy: its running stats may move
    sums = {n: torch.zeros(2, nodes[n]["channels"], dtype=torch.float64) for n in names}
    hooks = []
    for name in names:
        layer = model.get_submodule(name)
        layer.eval()  # the identity while the statistics are gathered

        def record(mod: torch.nn.Module, args: tuple[torch.Tensor, ...], name: str = name
                   ) -> None:
            x = args[0].detach().to(torch.float64)
            var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)  # what train-mode BN uses
            sums[name] += torch.stack([mean, var]).cpu()

        hooks.append(layer.register_forward_pre_hook(record))
    count, size = 0, 0
    total = len(batches) if isinstance(batches, Sized) else 0
    try:
        with torch.no_grad():
            for xb in batches:
                model(xb.to(device=device, dtype=net.dtype))
                count, size = count + 1, max(size, len(xb))
                if progress is not None:
                    progress(count, total)
    finally:
        for h in hooks:
            h.remove()
    if count == 0:
        raise MorphError("no data to calibrate with (0 batches)")
    tensors = dict(net.tensors)
    for name in names:
        mean, var = sums[name] / count
        eps = nodes[name]["eps"]
        values = {"running_mean": mean, "running_var": var,
                  "weight": torch.sqrt(var + eps), "bias": mean}
        for k, v in values.items():
            tensors[f"{name}.{k}"] = v.to(net.tensors[f"{name}.{k}"].dtype).contiguous()
    history = copy.deepcopy(net.history)
    if layers is None:  # each morph's entry records the calibration of its own layers
        for i, entry in _pending(parse_history(history)):
            mine = tuple(n for n in names if n in entry.new_bn)
            cal = Calibration.measured(dataset, count, size, seed, mine)
            history[i] = entry.with_(calibration=cal).to_json()
    return Network(copy.deepcopy(net.description), tensors, history,
                   copy.deepcopy(net.meta)).check()

