"""Importers: plain PyTorch state_dicts of known layouts → netmorph networks.

Layouts: the common CIFAR ResNet (``conv1``, ``layerL.I.conv1/bn1/conv2/bn2``, option-A
shortcuts without tensors or option-B ``shortcut.0/.1``, ``linear``) and torchvision's
resnet18/34. Files are read by ``checkpoint``'s safe readers (safetensors, or
``torch.load(weights_only=True)``); tensors are checked like any checkpoint's (finite, BN
variances ≥ 0).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from . import zoo
from .checkpoint import (
    WRAPPERS,
    check_values,
    file_sha256,
    find_state_dict,
    names,
    read_safetensors,
    sniff,
    torch_load,
)
from .errors import CheckpointError, NetmorphError, NetworkError
from .network import Network, expected_tensors

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DDP, torch.compile
_LIST = 8  # shape mismatches shown in an error before "(and N more)"


def import_state_dict(path: str | Path, arch: str | None = None) -> Network:
    """A netmorph ``Network`` from a plain PyTorch state_dict of a known layout.

    Layouts: the common CIFAR ResNet (``conv1``, ``layerL.I.conv1/bn1/conv2/bn2``, option-A
    shortcuts without tensors or option-B ``shortcut.0/.1``, ``linear``) and torchvision's
    resnet18/34 (``downsample.0/.1``, ``fc``); ``module.`` prefixes and a ``state_dict`` /
    ``model`` wrapper are accepted. Depth, shortcut type and classes come from the tensors;
    ``arch`` (e.g. ``"resnet20"``) asserts the depth. Missing ``num_batches_tracked`` become 0;
    half/bfloat16 tensors become float32.
    """
    path = Path(path)
    kind = sniff(path)
    if kind == "safetensors":
        metadata, obj = read_safetensors(path)
        if metadata.get("format") == "netmorph":
            raise _already(path)
    else:
        obj = torch_load(path)
        if isinstance(obj, dict) and "netmorph" in obj:
            raise _already(path)
    sd = find_state_dict(obj)
    if sd is None:
        what = (f"a dict with keys {names(list(obj))}" if isinstance(obj, dict)
                else f"a {type(obj).__name__}")
        raise CheckpointError(f"'{path}' holds {what}, not a state_dict of tensors")
    sd = _strip_prefixes(sd)
    layout, detected, shortcut, reason = _detect(sd)
    if arch is not None:
        if arch not in zoo.ARCHS:
            raise CheckpointError(f"unknown architecture {arch!r} "
                                  f"(choose from {', '.join(zoo.ARCHS)})")
        want = ("torchvision-resnet" if zoo.arch_spec(arch).family == "ImageNet"
                else "cifar-resnet")
        if layout is not None and layout != want:
            raise CheckpointError(f"'{path}' has the {layout} layout; {arch} is a {want}")
        if detected is not None and detected != arch:
            raise CheckpointError(f"'{path}' holds a {detected} ({reason}), not a {arch}")
        detected, layout = arch, want
    if detected is None or layout is None:
        raise CheckpointError(f"'{path}': {reason}")
    head = "fc.weight" if layout == "torchvision-resnet" else "linear.weight"
    num_classes = int(sd[head].shape[0]) if head in sd and sd[head].dim() == 2 else None
    try:
        desc = zoo.describe(detected, num_classes, shortcut)
    except NetmorphError as exc:
        raise CheckpointError(f"'{path}': {exc}") from None
    what = (f"{layout}, option-{shortcut} shortcuts" if layout == "cifar-resnet" else layout)
    tensors = _map_tensors(path, desc, sd, what)
    extra = {k: v for k, v in obj.items() if k not in WRAPPERS
             and isinstance(v, (int, float, str, bool))} if isinstance(obj, dict) else {}
    imported: dict[str, Any] = {"file": path.name, "layout": layout,
                                "sha256": file_sha256(path)}
    if extra:
        imported["extra"] = extra  # e.g. best_prec1 of the originating training run
    meta = {"normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
            "imported": imported}
    net = Network(desc, tensors, [], meta)
    try:
        return net.check()
    except NetworkError as exc:  # pragma: no cover - _map_tensors already checked
        raise CheckpointError(f"'{path}': {exc}") from None


def _already(path: Path) -> CheckpointError:
    return CheckpointError(f"'{path}' is already a netmorph checkpoint; "
                           f"use it directly, no import needed")


def _strip_prefixes(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if all(k.startswith(p) for k in sd):
                sd = {k[len(p):]: v for k, v in sd.items()}
                changed = True
    return sd


def _blocks(keys: Iterable[str], stage: int) -> int:
    pat = re.compile(rf"^layer{stage}\.(\d+)\.")
    found = {int(m.group(1)) for k in keys if (m := pat.match(k))}
    return len(found)


def _detect(sd: Mapping[str, torch.Tensor]) -> tuple[str | None, str | None, str, str]:
    """(layout, arch, shortcut, reason): what the tensors are, or None and why not."""
    keys = set(sd)
    conv1 = sd.get("conv1.weight")
    if "fc.weight" in keys or (conv1 is not None and tuple(conv1.shape[-2:]) == (7, 7)):
        layout = "torchvision-resnet"
        if any(".conv3." in k for k in keys):
            return layout, None, "B", ("a bottleneck ResNet (resnet50 and deeper), which "
                                       "netmorph does not support; resnet18/34 only")
        counts = tuple(_blocks(keys, s) for s in (1, 2, 3, 4))
        for depth, blocks in zoo.IMAGENET_DEPTHS.items():
            if counts == blocks:
                return layout, f"resnet{depth}", "B", f"blocks per stage {counts}"
        known = "; ".join(f"resnet{d}: {b}" for d, b in zoo.IMAGENET_DEPTHS.items())
        return layout, None, "B", (f"a torchvision-layout ResNet with blocks per stage "
                                   f"{counts}, which matches none netmorph knows ({known})")
    if "linear.weight" in keys or conv1 is not None:
        layout = "cifar-resnet"
        shortcut = "B" if any(".shortcut." in k for k in keys) else "A"
        counts = tuple(_blocks(keys, s) for s in (1, 2, 3))
        n = counts[0]
        depth = 6 * n + 2
        if len(set(counts)) != 1 or n == 0:
            return layout, None, shortcut, (f"a CIFAR-layout ResNet with blocks per stage "
                                            f"{counts}; a CIFAR ResNet has the same number "
                                            f"in each of its three stages")
        reason = f"{n} blocks per stage, option-{shortcut} shortcuts"
        if f"resnet{depth}" not in zoo.ARCHS:
            cifar = ", ".join(f"resnet{d}" for d in zoo.CIFAR_DEPTHS)
            return layout, None, shortcut, (f"a CIFAR ResNet-{depth} ({reason}), not in "
                                            f"netmorph's zoo ({cifar})")
        return layout, f"resnet{depth}", shortcut, reason
    return None, None, "B", ("not a ResNet state_dict of a known layout (expected CIFAR keys "
                             "conv1.weight, layer1.0.conv1.weight, linear.weight or torchvision "
                             f"keys conv1.weight, layer1.0.conv1.weight, fc.weight; it has "
                             f"{names(sorted(keys))})")


def _map_tensors(path: Path, desc: Mapping[str, Any], sd: Mapping[str, torch.Tensor],
                 what: str) -> dict[str, torch.Tensor]:
    expected = expected_tensors(desc)
    arch = desc["arch"]
    fill = {k for k in expected if k.endswith(".num_batches_tracked") and k not in sd}
    missing = [k for k in expected if k not in sd and k not in fill]
    unknown = [k for k in sd if k not in expected]
    if missing or unknown:
        parts = []
        if unknown:
            parts.append(f"unknown keys {names(unknown)}")
        if missing:
            parts.append(f"missing keys {names(missing)}")
        raise CheckpointError(f"'{path}' does not match {arch} ({what}): " + "; ".join(parts))
    wrong = [f"'{k}' is {tuple(sd[k].shape)} in the file, {arch} needs {shape}"
             for k, shape in expected.items() if k in sd and tuple(sd[k].shape) != shape]
    if wrong:
        more = f" (and {len(wrong) - _LIST} more)" if len(wrong) > _LIST else ""
        raise CheckpointError(f"'{path}': shape mismatch: {'; '.join(wrong[:_LIST])}{more}")
    out: dict[str, torch.Tensor] = {}
    for k in expected:
        if k in fill:
            out[k] = torch.zeros((), dtype=torch.long)
            continue
        t = sd[k].detach()
        if t.dtype in (torch.float16, torch.bfloat16):
            t = t.float()
        elif k.endswith(".num_batches_tracked"):
            t = t.long()
        out[k] = t.contiguous()
    check_values(path, desc, out)
    return out
