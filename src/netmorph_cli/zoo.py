"""ResNet descriptions: CIFAR ResNet-(6n+2) (He et al. 2015) and ImageNet ResNet-18/34.

Small helpers build nodes; a private builder per family sits behind thin public factories,
as in torchvision's ``models/resnet.py``. Layer names follow the common PyTorch layouts:
CIFAR ``conv1``, ``layer2.1.conv1``, projection ``layer2.0.shortcut.0/.1``, ``linear``;
ImageNet as torchvision (``downsample.0/.1``, ``fc``). Every block's join is
``layerL.I.add`` with the residual branch first and the shortcut second (``shortcut``: 1).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch

from .errors import NetworkError
from .network import FORMAT, Network, node, param_shapes, validate_description

CIFAR_DEPTHS = (20, 32, 44, 56, 110)
IMAGENET_DEPTHS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
ARCHS = tuple(f"resnet{d}" for d in CIFAR_DEPTHS) + ("resnet18", "resnet34")


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


def _cifar_resnet(depth: int, num_classes: int, shortcut: str) -> dict[str, Any]:
    if (depth - 2) % 6 or depth < 8:
        raise NetworkError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
    if shortcut not in ("A", "B"):
        raise NetworkError(f"shortcut must be A or B, got {shortcut!r}")
    n = (depth - 2) // 6
    nodes: list = []
    h = _conv_bn(nodes, "", "input", 3, 16, 3, 1, "conv1", "bn1")
    nodes.append(node("relu", "relu", [h]))
    h, c_in = "relu", 16
    for stage, width in enumerate((16, 32, 64), start=1):
        for i in range(n):
            stride = 2 if (stage > 1 and i == 0) else 1
            h = _basic_block(nodes, f"layer{stage}.{i}.", h, c_in, width, stride, shortcut)
            c_in = width
    nodes.append(node("pool", "gap", [h]))
    nodes.append(node("linear", "linear", ["pool"], **{"in": 64, "out": num_classes}))
    return {"format": FORMAT, "arch": f"resnet{depth}", "input": [3, 32, 32],
            "num_classes": num_classes, "nodes": nodes, "output": "linear"}


def _imagenet_resnet(depth: int, num_classes: int) -> dict[str, Any]:
    nodes: list = []
    nodes.append(node("conv1", "conv", ["input"], **{"in": 3, "out": 64}, kernel=[7, 7],
                      stride=[2, 2], padding=[3, 3]))
    nodes.append(node("bn1", "bn", ["conv1"], channels=64))
    nodes.append(node("relu", "relu", ["bn1"]))
    nodes.append(node("maxpool", "maxpool", ["relu"], kernel=3, stride=2, padding=1))
    h, c_in = "maxpool", 64
    for stage, (width, blocks) in enumerate(zip((64, 128, 256, 512), IMAGENET_DEPTHS[depth],
                                                strict=True), start=1):
        for i in range(blocks):
            stride = 2 if (stage > 1 and i == 0) else 1
            h = _basic_block(nodes, f"layer{stage}.{i}.", h, c_in, width, stride, "torchvision")
            c_in = width
    nodes.append(node("avgpool", "gap", [h]))
    nodes.append(node("fc", "linear", ["avgpool"], **{"in": 512, "out": num_classes}))
    return {"format": FORMAT, "arch": f"resnet{depth}", "input": [3, 224, 224],
            "num_classes": num_classes, "nodes": nodes, "output": "fc"}


def describe(arch: str, num_classes: int | None = None, shortcut: str = "B") -> dict[str, Any]:
    """The description of a zoo architecture (``resnet20`` … ``resnet110``, ``resnet18/34``)."""
    if arch not in ARCHS:
        raise NetworkError(f"unknown architecture {arch!r} (choose from {', '.join(ARCHS)})")
    depth = int(arch.removeprefix("resnet"))
    if depth in IMAGENET_DEPTHS:
        return _imagenet_resnet(depth, num_classes or 1000)
    return _cifar_resnet(depth, num_classes or 10, shortcut)


def init_tensors(desc: dict[str, Any], seed: int = 0) -> dict[str, torch.Tensor]:
    """Fresh tensors for a description: He (fan-out) init for convs, PyTorch's default for
    linear layers, BN at gamma 1 / beta 0, PReLU at 0.25. Deterministic under ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for n in desc["nodes"]:
        name = n["name"]
        for p, shape in param_shapes(n).items():
            key = f"{name}.{p}"
            if n["op"] == "conv" and p == "weight":
                fan_out = shape[0] * shape[2] * shape[3]
                out[key] = torch.randn(shape, generator=gen) * math.sqrt(2.0 / fan_out)
            elif n["op"] == "linear":
                bound = 1.0 / math.sqrt(n["in"])
                out[key] = (torch.rand(shape, generator=gen) * 2 - 1) * bound
            elif p in ("weight", "running_var"):
                out[key] = torch.full(shape, 0.25 if n["op"] == "prelu" else 1.0)
            elif p == "num_batches_tracked":
                out[key] = torch.zeros((), dtype=torch.long)
            else:
                out[key] = torch.zeros(shape)
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
