"""Importers: PyTorch files → netmorph networks.

- ``import_program``: any traceable CNN saved with ``torch.export.save`` (read safely by
  ``program.read_pt2``, converted by ``conversion.py``);
- ``import_factory``: a state_dict plus ``package.module:factory`` that builds the model,
  traced with ``torch.export``;
- ``import_state_dict``: plain state_dicts of known layouts.

Every conversion is checked before it is returned: the netmorph network and the traced
program (its own ATen calls, or the model itself) run on the same seeded random inputs.

State_dict layouts: the common CIFAR ResNet (``conv1``, ``layerL.I.conv1/bn1/conv2/bn2``, option-A
shortcuts without tensors or option-B ``shortcut.0/.1``, ``linear``) and torchvision's
resnet18/34. Files are read by ``checkpoint``'s safe readers (safetensors, or
``torch.load(weights_only=True)``); tensors are checked like any checkpoint's (finite, BN
variances ≥ 0).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, NetmorphError, NetworkError, UsageError, VerificationError
from ..network import zoo
from ..network.archs import CIFAR_MEAN, CIFAR_STD
from ..network.description import Network, check_forward, expected_tensors
from . import conversion, program
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
    obj, sd = _read_state_dict(path, refuse_netmorph=True)
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


def _read_state_dict(path: Path, *, refuse_netmorph: bool = False
                     ) -> tuple[Any, dict[str, torch.Tensor]]:
    """(the file's object, its state_dict without DataParallel/compile prefixes), read
    safely (safetensors, or ``torch.load(weights_only=True)``); a netmorph checkpoint is
    refused where an import of it makes no sense (``refuse_netmorph``)."""
    if sniff(path) == "safetensors":
        metadata, obj = read_safetensors(path)
        ours = metadata.get("format") == "netmorph"
    else:
        obj = torch_load(path)
        ours = isinstance(obj, dict) and "netmorph" in obj
    if ours and refuse_netmorph:
        raise _already(path)
    sd = find_state_dict(obj)
    if sd is None:
        what = (f"a dict with keys {names(list(obj))}" if isinstance(obj, dict)
                else f"a {type(obj).__name__}")
        raise CheckpointError(f"'{path}' holds {what}, not a state_dict of tensors")
    return obj, _strip_prefixes(sd)


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


# -- any traceable CNN ------------------------------------------------------------------------

CHECK_TOL = {torch.float32: 1e-5, torch.float64: 1e-10}  # relative, ‖Δ‖∞ / ‖logits‖∞
CHECK_SAMPLES = 4


def import_program(path: str | Path, *, input_size: tuple[int, int, int] | None = None,
                   mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                   ) -> tuple[Network, float]:
    """A netmorph network from a ``torch.export.save`` file, and the max relative error of
    its logits against the program's own ATen calls on random inputs."""
    path = Path(path)
    prog = program.read_pt2(path)
    _check_input_size(prog, input_size)
    card = prog.card  # a netmorph export's arch and normalization, if it is one
    arch = card["arch"] if isinstance(card.get("arch"), str) else path.stem
    norm = card.get("normalization")
    channels = prog.input_shape[1]
    if (mean is None and std is None and isinstance(norm, dict)  # a malformed card: ignored
            and all(isinstance(norm.get(k), list) and len(norm[k]) == channels
                    for k in ("mean", "std"))):
        mean, std = norm["mean"], norm["std"]
    imported = {"file": path.name, "layout": "torch.export", "sha256": file_sha256(path)}
    net = conversion.to_network(prog, arch=arch, normalization=_norm(prog, mean, std),
                                imported=imported)
    # a program exported with a static batch runs at that batch only (its reshapes name it)
    err = compare(net, lambda x: program.run(prog, x), str(path),
                  batch=prog.input_shape[0] or CHECK_SAMPLES)
    return net, err


def import_factory(weights: str | Path | None, factory: str, *,
                   kwargs: Mapping[str, Any] | None = None,
                   input_size: tuple[int, int, int] = (3, 32, 32),
                   mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                   ) -> tuple[Network, float]:
    """A netmorph network from ``package.module:factory(**kwargs)`` with the weights of
    ``weights`` (a state_dict: safetensors or ``torch.load(weights_only=True)``; None keeps
    the factory's own), traced with ``torch.export`` at ``input_size``; and the max
    relative error of its logits against the model's on random inputs."""
    model = build_model(factory, kwargs or {})
    sha = None
    if weights is not None:
        path = Path(weights)
        _, sd = _read_state_dict(path)
        try:
            model.load_state_dict(sd, strict=True)
        except RuntimeError as exc:
            why = " ".join(ln.strip() for ln in str(exc).splitlines()[1:])
            raise CheckpointError(f"'{path}' does not fit {factory}: {why[:400]}") from None
        sha = file_sha256(path)
    model = model.eval()
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    example = torch.randn(2, *input_size, generator=torch.Generator().manual_seed(0),
                          dtype=dtype)
    prog = program.trace(model, example, factory)
    imported = {"factory": factory, "kwargs": dict(kwargs or {}), "layout": "torch.export",
                **({"file": Path(weights).name, "sha256": sha} if weights is not None else {})}
    net = conversion.to_network(prog, arch=factory.rsplit(":", 1)[-1], imported=imported,
                                normalization=_norm(prog, mean, std))
    with torch.no_grad():
        err = compare(net, model, factory)
    return net, err


def build_model(factory: str, kwargs: Mapping[str, Any]) -> torch.nn.Module:
    """``package.module:callable(**kwargs)``, which must return an nn.Module (the user's own
    code runs here, as in any training script)."""
    import importlib
    import os
    import sys

    if os.getcwd() not in sys.path:  # as `python -m`: the user's own package is importable
        sys.path.insert(0, os.getcwd())
    mod_name, sep, attr = factory.partition(":")
    if not sep or not mod_name or not attr:
        raise UsageError(f"--model {factory!r}: expected package.module:factory")
    try:
        mod = importlib.import_module(mod_name)
    except (Exception, SystemExit) as exc:  # the user's module may raise anything on import
        raise UsageError(f"--model {factory!r}: cannot import {mod_name!r} "
                         f"({type(exc).__name__}: {_first(str(exc))})") from None
    fn = mod
    for part in attr.split("."):
        fn = getattr(fn, part, None)  # type: ignore[assignment]
        if fn is None:
            raise UsageError(f"--model {factory!r}: module {mod_name!r} has no {attr!r}")
    if not callable(fn):
        raise UsageError(f"--model {factory!r}: {attr!r} is not callable")
    try:
        model = fn(**kwargs)
    except (Exception, SystemExit) as exc:  # SystemExit(0) must not exit 0 having written nothing
        raise UsageError(f"--model {factory!r}: calling it with {dict(kwargs)} failed "
                         f"({type(exc).__name__}: {_first(str(exc))})") from None
    if not isinstance(model, torch.nn.Module):
        raise UsageError(f"--model {factory!r} returned a {type(model).__name__}, not an "
                         "nn.Module")
    return model


def _first(text: str) -> str:
    return next((ln for ln in text.splitlines() if ln.strip()), "")[:300]


def _check_input_size(prog: program.Program, size: tuple[int, int, int] | None) -> None:
    have = tuple(prog.input_shape[1:])
    if size is not None and have != tuple(size):
        dims = "×".join("?" if d is None else str(d) for d in have)
        raise CheckpointError(f"'{prog.source}' was exported for {dims} inputs, not "
                              f"{'×'.join(map(str, size))} (--input-size); export the model "
                              "again at that size")


def default_normalization(channels: int) -> dict[str, list[float]]:
    """CIFAR-10's normalization (what ``eval`` and ``train`` assume without one), or 0/1 per
    channel for inputs that are not RGB."""
    if channels == len(CIFAR_MEAN):
        return {"mean": list(CIFAR_MEAN), "std": list(CIFAR_STD)}
    return {"mean": [0.0] * channels, "std": [1.0] * channels}


def _norm(prog: program.Program, mean: Sequence[float] | None,
          std: Sequence[float] | None) -> dict[str, list[float]]:
    """The normalization recorded with the network: the one given, else the default."""
    c = int(prog.input_shape[1] or 0)
    default = default_normalization(c)
    out = {"mean": list(mean) if mean is not None else default["mean"],
           "std": list(std) if std is not None else default["std"]}
    for k, v in out.items():
        if len(v) != c:
            raise UsageError(f"--{k} has {len(v)} values; the model's input has {c} channels")
    return out


def compare(net: Network, reference: Any, source: str, batch: int = CHECK_SAMPLES) -> float:
    """Max relative error of the network's logits against ``reference`` on ``batch`` seeded
    random inputs in the network's dtype; raises VerificationError above ``CHECK_TOL``."""
    dtype = net.dtype
    check_forward(net.description, batch, dtype, "the import check", factor=2.0)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *net.description["input"], generator=gen, dtype=dtype)
    with torch.no_grad():
        ours = net.module()(x)
        ref = reference(x)
    scale = ref.abs().max().item() or 1.0
    err = (ours - ref).abs().max().item() / scale
    tol = CHECK_TOL.get(dtype, 1e-5)
    if not err <= tol:
        raise VerificationError(f"'{source}': the imported network differs from the traced "
                                f"model (max relative error {err:.3g} > {tol:g}); nothing "
                                "written")
    return err
