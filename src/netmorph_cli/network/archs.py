"""The architecture registry: one record per zoo architecture, without torch.

``ArchSpec``: family (CIFAR or ImageNet: the data its stem and input size are made for),
blocks and widths per stage, input size, default classes. ``zoo.py`` builds the
descriptions (one builder per family); the CLI's help texts and the importer read these
records, and importing this module costs nothing (``netmorph init --help`` lists them).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import NetworkError

# the input normalization of CIFAR networks (zoo, imported state_dicts, the data sets)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)  # CIFAR-10 train set, [0, 1] units
CIFAR_STD = (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True)
class ArchSpec:
    """One zoo architecture: a registry record, read by ``describe`` and by the CLI."""

    name: str  # e.g. "resnet20"
    family: str  # "CIFAR" or "ImageNet": the data its stem and input size are made for
    blocks: tuple[int, ...]  # residual blocks per stage
    widths: tuple[int, ...]  # channels per stage
    input_size: int  # side of its square RGB inputs
    num_classes: int  # classifier width unless one is given
    layout: str = ""  # whose layer names it follows, for help texts (e.g. "torchvision")

    @property
    def depth(self) -> int:
        """Weighted layers: the stem conv, two convs per block and the classifier."""
        return 2 * sum(self.blocks) + 2


def _cifar(depth: int) -> ArchSpec:
    """CIFAR ResNet-(6n+2): n blocks in each of three stages of 16, 32, 64 channels."""
    if (depth - 2) % 6 or depth < 8:
        raise NetworkError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
    n = (depth - 2) // 6
    return ArchSpec(f"resnet{depth}", "CIFAR", (n, n, n), (16, 32, 64), 32, 10)


def _imagenet(depth: int, blocks: tuple[int, ...]) -> ArchSpec:
    return ArchSpec(f"resnet{depth}", "ImageNet", blocks, (64, 128, 256, 512), 224, 1000,
                    layout="torchvision")


# the registry: one record per architecture, in the order help texts list them
ARCHS: dict[str, ArchSpec] = {s.name: s for s in (
    *(_cifar(d) for d in (20, 32, 44, 56, 110)),
    _imagenet(18, (2, 2, 2, 2)),
    _imagenet(34, (3, 4, 6, 3)),
)}
# views of the built-in records (the importer and tests read them)
CIFAR_DEPTHS = tuple(s.depth for s in ARCHS.values() if s.family == "CIFAR")
IMAGENET_DEPTHS = {s.depth: s.blocks for s in ARCHS.values() if s.family == "ImageNet"}


def arch_spec(arch: str) -> ArchSpec:
    """The registry record of architecture ``arch``."""
    try:
        return ARCHS[arch]
    except KeyError:
        raise NetworkError(f"unknown architecture {arch!r} (choose from "
                           f"{', '.join(ARCHS)})") from None
