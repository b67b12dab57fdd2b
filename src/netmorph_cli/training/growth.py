"""What a morph added, trained on its own terms: the new parameters, their optimizer groups,
and the parent's optimizer state carried into the child.

A child starts with its parent's function, but its new parameters (solved filters, new BN
layers, PReLU slopes) sit at exact values that no gradient has shaped; trained at the
parent's learning rate they leave those values within tens of steps, and the child leaves
its parent's basin (README, "Growth"). The morph records the tensors it created in its
history entry (``MorphRecord.added``); every morph since the last training counts, so a
child morphed twice before training has both morphs' tensors as new, and a child that has
trained has none.

- ``new_parameter_names(net)``: those names, the parameters among them;
- ``param_groups(model, names, …)``: groups for any ``torch.optim`` optimizer, the trained
  parameters in one, the new ones in another with their own lr scale and weight decay;
- ``carry_momentum(opt, names, state)``: the momentum buffers of a parent's training
  state (``OUT.state.pt``) for the child's parameters that the parent had, zero-padded for a
  grown kernel; new parameters start with none (zero momentum).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from ..errors import UsageError
from ..network.description import Network
from ..network.history import MorphRecord, TrainRecord, parse_history

TRAINED, NEW = "trained", "new"  # the groups' names (``group["name"]``)


def new_tensor_names(net: Network) -> tuple[str, ...]:
    """The tensors the morphs since the last training created (in the network's order),
    buffers included. ``UsageError`` when such a morph's entry predates the record."""
    added: set[str] = set()
    history = parse_history(net.history)
    for i in reversed(range(len(history))):
        entry = history[i]
        if isinstance(entry, TrainRecord):
            break
        if isinstance(entry, MorphRecord):
            if entry.added is None:
                raise UsageError(
                    f"history entry {i + 1} ({entry.name} at {entry.where}) was written by "
                    f"a netmorph that did not record the tensors it added, so the new "
                    f"parameters are not known: morph the parent again with this version")
            added.update(entry.added)
    return tuple(k for k in net.tensors if k in added)


def new_parameter_names(net: Network, model: nn.Module | None = None) -> tuple[str, ...]:
    """The parameters (not BN statistics) among ``new_tensor_names``; ``model``: the
    network's module when the caller has it (its ``named_parameters`` say which are)."""
    model = model if model is not None else net.module()
    params = {k for k, _ in model.named_parameters()}
    return tuple(k for k in new_tensor_names(net) if k in params)


def param_groups(model: nn.Module, new: Iterable[str], lr: float, weight_decay: float, *,
                 new_lr_scale: float = 1.0, new_weight_decay: float | None = None
                 ) -> list[dict[str, Any]]:
    """Parameter groups for ``torch.optim``: the trained parameters at ``lr`` and
    ``weight_decay``, the parameters named in ``new`` at ``lr × new_lr_scale`` and
    ``new_weight_decay`` (default ``weight_decay``). Each group carries ``name``
    ("trained", "new") and ``lr_scale``; with no new parameter there is one group, and
    asking for new-parameter options then is a ``UsageError`` (not a silent no-op)."""
    new = set(new)
    named = list(model.named_parameters())
    unknown = sorted(new - {k for k, _ in named})
    if unknown:
        raise UsageError(f"not a parameter of the network: {unknown[0]!r}"
                         + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""))
    if not (math.isfinite(lr) and lr > 0 and math.isfinite(new_lr_scale) and new_lr_scale >= 0):
        raise UsageError(f"lr must be a positive number and new_lr_scale ≥ 0 (got lr {lr}, "
                         f"new_lr_scale {new_lr_scale})")
    trained = {"params": [p for k, p in named if k not in new], "lr": lr,
               "weight_decay": weight_decay, "name": TRAINED, "lr_scale": 1.0}
    if not new:
        if new_lr_scale != 1.0 or new_weight_decay is not None:
            raise UsageError("the network has no new parameters (no morph since its last "
                             "training), so new-parameter options (lr scale, warm-up, weight "
                             "decay) have nothing to apply to")
        return [trained]
    wd = weight_decay if new_weight_decay is None else new_weight_decay
    fresh = {"params": [p for k, p in named if k in new], "lr": lr * new_lr_scale,
             "weight_decay": wd, "name": NEW, "lr_scale": new_lr_scale}
    return [trained, fresh] if trained["params"] else [fresh]


def group_names(groups: Iterable[Mapping[str, Any]], model: nn.Module) -> list[str]:
    """The parameter names in the optimizer's order (its state_dict indexes them so)."""
    by_id = {id(p): k for k, p in model.named_parameters()}
    return [by_id[id(p)] for g in groups for p in g["params"]]


def carry_momentum(opt: torch.optim.Optimizer, model: nn.Module, state: Mapping[str, Any],
                   new: Iterable[str] = ()) -> dict[str, int]:
    """Set ``opt``'s momentum buffers from a parent's training ``state`` (read by
    ``runfiles.read_state``): a parameter the parent had with the same shape gets its buffer;
    a grown kernel (larger, odd margins) gets it zero-padded at the centre; any other
    parameter (those named in ``new``, whatever the parent had under their names) starts
    without one, i.e. at zero momentum. Returns counts
    {"carried", "padded", "fresh"}. ``UsageError`` if the state does not name its
    parameters (written before netmorph recorded them) or has no momentum."""
    names = state.get("param_names")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise UsageError("the parent's state does not name its parameters (written by an "
                         "older netmorph): train the parent again with this version to "
                         "carry its optimizer state")
    saved = state.get("optimizer", {}).get("state", {})
    buffers = {names[i]: s["momentum_buffer"] for i, s in saved.items()
               if isinstance(i, int) and i < len(names) and isinstance(s, Mapping)
               and isinstance(s.get("momentum_buffer"), torch.Tensor)}
    if not buffers:
        raise UsageError("the parent's state holds no momentum buffers (momentum 0, or no "
                         "step taken): there is no optimizer state to carry")
    counts = {"carried": 0, "padded": 0, "fresh": 0}
    new = set(new)
    for name, p in model.named_parameters():
        buf = None if name in new else buffers.get(name)
        if buf is None:
            counts["fresh"] += 1
            continue
        if buf.shape == p.shape:
            kept = buf
            counts["carried"] += 1
        elif (buf.dim() == p.dim() and buf.shape[:2] == p.shape[:2]
              and all((a - b) % 2 == 0 and a >= b for a, b in zip(p.shape[2:], buf.shape[2:],
                                                                  strict=True))):
            pad = [m for a, b in reversed(list(zip(p.shape[2:], buf.shape[2:], strict=True)))
                   for m in ((a - b) // 2, (a - b) // 2)]
            kept = torch.nn.functional.pad(buf, pad)
            counts["padded"] += 1
        else:
            counts["fresh"] += 1
            continue
        opt.state[p]["momentum_buffer"] = kept.to(p.device, p.dtype).clone()
    return counts
