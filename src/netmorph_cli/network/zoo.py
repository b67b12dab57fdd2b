"""ResNet descriptions: CIFAR ResNet-(6n+2) (He et al. 2015) and ImageNet ResNet-18/34.

Small helpers build nodes; a private builder per family sits behind thin public factories,
as in torchvision's ``models/resnet.py``. Layer names follow the common PyTorch layouts:
CIFAR ``conv1``, ``layer2.1.conv1``, projection ``layer2.0.shortcut.0/.1``, ``linear``;
ImageNet as torchvision (``downsample.0/.1``, ``fc``). Every block's join is
``layerL.I.add`` with the residual branch first and the shortcut second (``shortcut``: 1).
Every architecture is one record of the registry ``archs.ARCHS`` (family, blocks per stage,
input size, default classes; torch-free, so help texts list it at once), and each family
has a builder here (``BUILDERS``); ``describe`` and ``netmorph init`` read both.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch

from ..errors import NetworkError
from .archs import ARCHS as ARCHS
from .archs import CIFAR_DEPTHS as CIFAR_DEPTHS
from .archs import IMAGENET_DEPTHS as IMAGENET_DEPTHS
from .archs import ArchSpec as ArchSpec
from .archs import arch_spec
from .description import FORMAT, Network, node, validate_description
from .ops import OPS


def _conv_bn(nodes: list, prefix: str, src: str, c_in: int, c_out: int, k: int, stride: int,
             conv: str, bn: str) -> str:
    nodes.append(node(f"{prefix}{conv}", "conv", [src], **{"in": c_in, "out": c_out},
                      kernel=[k, k], stride=[stride, stride], padding=[k // 2, k // 2]))
    nodes.append(node(f"{prefix}{bn}", "bn", [f"{prefix}{conv}"], channels=c_out))
    return f"{prefix}{bn}"


def _basic_block(nodes: list, prefix: str, src: str, c_in: int, c_out: int, stride: int,
                 shortcut: str) -> str:
    """conv3×3 → BN → ReLU → conv3×3 → BN, plus the shortcut, then ReLU."""
    h = _conv_bn(nodes, prefix, src, c_in, c_out, 3, stride, "conv1", "bn1")
    nodes.append(node(f"{prefix}relu1", "relu", [h]))
    h = _conv_bn(nodes, prefix, f"{prefix}relu1", c_out, c_out, 3, 1, "conv2", "bn2")
    if stride == 1 and c_in == c_out:
        short = src
    elif shortcut == "A":
        nodes.append(node(f"{prefix}shortcut", "shortcut_a", [src],
                          **{"in": c_in, "out": c_out}, stride=stride))
        short = f"{prefix}shortcut"
    elif shortcut == "B":
        short = _conv_bn(nodes, prefix, src, c_in, c_out, 1, stride, "shortcut.0", "shortcut.1")
    else:  # torchvision layout
        short = _conv_bn(nodes, prefix, src, c_in, c_out, 1, stride, "downsample.0",
                         "downsample.1")
    nodes.append(node(f"{prefix}add", "add", [h, short], coeffs=[1.0, 1.0], shortcut=1))
    nodes.append(node(f"{prefix}relu2", "relu", [f"{prefix}add"]))
    return f"{prefix}relu2"


def _stages(nodes: list, h: str, c_in: int, spec: ArchSpec, shortcut: str) -> str:
    """The residual stages; the first block of every stage but the first downsamples."""
    for stage, (width, blocks) in enumerate(zip(spec.widths, spec.blocks, strict=True),
                                            start=1):
        for i in range(blocks):
            stride = 2 if (stage > 1 and i == 0) else 1
            h = _basic_block(nodes, f"layer{stage}.{i}.", h, c_in, width, stride, shortcut)
            c_in = width
    return h


def _cifar_resnet(spec: ArchSpec, num_classes: int, shortcut: str) -> dict[str, Any]:
    """He et al.'s CIFAR ResNet: 3×3 stem, no max pool, option A or B shortcuts."""
    if shortcut not in ("A", "B"):
        raise NetworkError(f"shortcut must be A or B, got {shortcut!r}")
    nodes: list = []
    stem = spec.widths[0]
    h = _conv_bn(nodes, "", "input", 3, stem, 3, 1, "conv1", "bn1")
    nodes.append(node("relu", "relu", [h]))
    h = _stages(nodes, "relu", stem, spec, shortcut)
    nodes.append(node("pool", "gap", [h]))
    nodes.append(node("linear", "linear", ["pool"], **{"in": spec.widths[-1],
                                                       "out": num_classes}))
    side = spec.input_size
    return {"format": FORMAT, "arch": spec.name, "input": [3, side, side],
            "num_classes": num_classes, "nodes": nodes, "output": "linear"}


def _imagenet_resnet(spec: ArchSpec, num_classes: int, shortcut: str) -> dict[str, Any]:
    """torchvision's ResNet: 7×7/2 stem and max pool; 1×1 conv + BN downsampling always
    (``shortcut`` does not apply)."""
    nodes: list = []
    stem = spec.widths[0]
    nodes.append(node("conv1", "conv", ["input"], **{"in": 3, "out": stem}, kernel=[7, 7],
                      stride=[2, 2], padding=[3, 3]))
    nodes.append(node("bn1", "bn", ["conv1"], channels=stem))
    nodes.append(node("relu", "relu", ["bn1"]))
    nodes.append(node("maxpool", "maxpool", ["relu"], kernel=3, stride=2, padding=1))
    h = _stages(nodes, "maxpool", stem, spec, "torchvision")
    nodes.append(node("avgpool", "gap", [h]))
    nodes.append(node("fc", "linear", ["avgpool"], **{"in": spec.widths[-1],
                                                      "out": num_classes}))
    side = spec.input_size
    return {"format": FORMAT, "arch": spec.name, "input": [3, side, side],
            "num_classes": num_classes, "nodes": nodes, "output": "fc"}


# the description builder of each family (``ArchSpec.family``)
BUILDERS: dict[str, Callable[[ArchSpec, int, str], dict[str, Any]]] = {
    "CIFAR": _cifar_resnet, "ImageNet": _imagenet_resnet}


def describe(arch: str, num_classes: int | None = None, shortcut: str = "B") -> dict[str, Any]:
    """The description of a zoo architecture (a name in ``ARCHS``); ``num_classes`` defaults
    to the architecture's, ``shortcut`` (A or B) applies to the CIFAR family."""
    spec = arch_spec(arch)
    return BUILDERS[spec.family](spec, num_classes or spec.num_classes, shortcut)


def init_tensors(desc: dict[str, Any], seed: int = 0) -> dict[str, torch.Tensor]:
    """Fresh tensors for a description: He (fan-out) init for convs, PyTorch's default for
    linear layers, BN at gamma 1 / beta 0, PReLU at 0.25 (each op's ``init`` in ``ops.py``),
    drawn node by node from one generator: deterministic under ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for n in desc["nodes"]:
        for p, tensor in OPS[n["op"]].init(n, gen).items():
            out[f"{n['name']}.{p}"] = tensor
    return out


def create(arch: str, num_classes: int | None = None, seed: int = 0,
           shortcut: str = "B") -> Network:
    """A new randomly initialized network of a zoo architecture."""
    desc = describe(arch, num_classes, shortcut)
    validate_description(desc)  # caps (e.g. num_classes) before any tensor is allocated
    net = Network(desc, init_tensors(desc, seed),
                  meta={"created": {"arch": arch, "seed": seed, "shortcut": shortcut}})
    return net.check()


def reinitialize(net: Network, seed: int = 0) -> Network:
    """The same architecture with fresh tensors: a from-scratch control for a morphed child."""
    desc = copy.deepcopy(net.description)
    return Network(desc, init_tensors(desc, seed),
                   meta={"created": {"like": desc.get("arch"), "seed": seed}}).check()
