"""A small zoo of CIFAR-size CNNs in plain PyTorch, for the ``torch.export`` importer's tests.

Every model takes ``(N, 3, 32, 32)`` inputs and returns ``(N, num_classes)`` logits; widths
are reduced by a ``width`` keyword so that export + import + one forward pass stay well under
a second on one CPU core. The topologies follow the real architectures and their module
paths follow torchvision's layouts (``features.0``, ``layer2.0.downsample.0``, ``fc``), so
``--at``/``--after`` paths read as they would on a real checkpoint. No torchvision: it does
not load here.

Factories take keyword arguments only (the importer's ``--model tests.zoo_models:vgg11_bn
--kwargs '{"width": 8}'`` path calls them; under pytest, ``import zoo_models`` works since
``tests/`` has a ``conftest.py`` and no ``__init__.py``). Each factory builds its weights
from ``seed`` (default 0) without touching the global RNG, gives every BatchNorm random
affine parameters and *calibrated* running statistics (two random batches in train mode,
then ``eval()``), so that an eval-mode BatchNorm is no identity and activations stay near
unit scale: a test comparing the imported network with the original can see a dropped or
misfolded BatchNorm. Models are returned in eval mode.

Ops used (the importer's supported set): conv2d (stride, padding, groups incl. depthwise,
with and without bias), batch_norm, relu (module, in-place module, functional, in-place
functional), relu6, silu, gelu, hardswish, sigmoid, add (incl. ``+=``), mul, cat, max_pool2d,
avg_pool2d, adaptive_avg_pool2d (module and functional) to 1×1, flatten, linear, dropout;
in the corpus-only families also channel movements (``chunk``, torchvision's channel shuffle
``view``/``transpose``/``contiguous``/``view`` in ``shufflenetv2``), ``mean([2, 3])`` and
``out.view(out.size(0), -1)`` (``preact_resnet18``). Module re-use without weights occurs
in ``resnext`` (each bottleneck's ``relu`` is called three times, as in torchvision) and
``resnet18`` (twice per BasicBlock); weight sharing occurs only in ``shared_conv`` (a bad
model). ``regnetx`` keeps torchvision's hyphenated module paths (``block1-0``).

``ZOO``: name → factory of the good models. ``CORPUS``: ``ZOO`` plus ``resnet18``,
``preact_resnet18``, ``shufflenetv2``, ``regnetx`` (issue 23's test model corpus).
``SITES``: per ``ZOO`` model, one stride-1, groups-1 conv that a module can replace
(``at``) and one activation module whose output is spatial and called exactly once
(``after``). ``BAD``: name → factory of the tiny models the importer must refuse (see "Bad
models" below); ``build(name, **kwargs)`` reads ``CORPUS`` and ``BAD``.

``torch.export.export`` (torch 2.13, default non-strict training IR, no
``run_decompositions``) gives these targets: ``aten.conv2d.default``,
``aten.batch_norm.default``, ``aten.relu.default`` / ``aten.relu_.default`` (in-place modules
and ``F.relu(inplace=True)``), ``aten.hardtanh_.default`` (ReLU6), ``aten.silu.default``,
``aten.gelu.default``, ``aten.hardswish.default``, ``aten.sigmoid.default``,
``aten.add.Tensor`` / ``aten.add_.Tensor`` (``+=``), ``aten.mul.Tensor``, ``aten.cat.default``,
``aten.max_pool2d.default``, ``aten.avg_pool2d.default``, ``aten.adaptive_avg_pool2d.default``,
``aten.flatten.using_ints``, ``aten.linear.default``, ``aten.dropout.default``; the
corpus-only families add ``aten.chunk.default`` + ``getitem``, ``aten.view.default``,
``aten.transpose.int``, ``aten.contiguous.default``, ``aten.mean.dim`` (``shufflenetv2``)
and ``aten.view.default`` (``preact_resnet18``'s head), with ``aten.sym_size.int`` in a
dynamic-batch export.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ZOO", "CORPUS", "SITES", "BAD", "build", "example_input",
           "vgg11_bn", "densenet", "mobilenetv2", "se_resnet", "resnext",
           "resnet18", "preact_resnet18", "shufflenetv2", "regnetx", "channel_shuffle",
           "uses_lstm", "uses_layer_norm", "uses_sort", "data_dependent", "two_outputs",
           "no_classifier", "shared_conv"]


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------

def example_input(batch: int = 2, input_size: int = 32, *, dtype: torch.dtype = torch.float32,
                  seed: int = 0) -> torch.Tensor:
    """A deterministic ``(batch, 3, input_size, input_size)`` input."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, input_size, input_size, generator=g, dtype=dtype)


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Run the block under ``torch.manual_seed(seed)``, restoring the global RNG after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _finish(model: nn.Module, input_size: int, seed: int) -> nn.Module:
    """Random BN affine parameters, BN running stats calibrated on random data, eval mode."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for bn in bns:
            bn.weight.copy_(torch.empty_like(bn.weight).uniform_(0.5, 1.5, generator=g))
            bn.bias.copy_(0.2 * torch.randn(bn.bias.shape, generator=g))
        if bns:
            momenta = [bn.momentum for bn in bns]
            for bn in bns:
                bn.reset_running_stats()
                bn.momentum = None  # cumulative average over the calibration batches
            model.train()
            for i in range(2):
                model(example_input(16, input_size, seed=seed + 100 + i))
            for bn, m in zip(bns, momenta, strict=True):
                bn.momentum = m
    return model.eval()


# --------------------------------------------------------------------------------------
# 1. VGG-11 with BatchNorm (CIFAR)
# --------------------------------------------------------------------------------------

_VGG11 = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]


class VGG(nn.Module):
    """CIFAR VGG: ``features`` (conv3×3-BN-ReLU(inplace)… / MaxPool2d(2, 2)), flatten,
    ``classifier`` = Dropout(0.5), Linear. Conv biases are kept, as in torchvision."""

    def __init__(self, cfg: list, width: int, num_classes: int, input_size: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        pools = 0
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                pools += 1
            else:
                c_out = max(1, v * width // 64)
                layers += [nn.Conv2d(c_in, c_out, kernel_size=3, padding=1),
                           nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
                c_in = c_out
        side = input_size >> pools
        if side < 1 or input_size % (1 << pools):
            raise ValueError(f"input_size {input_size} is not a multiple of {1 << pools}")
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Linear(c_in * side * side,
                                                                   num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def vgg11_bn(width: int = 8, num_classes: int = 10, input_size: int = 32,
             seed: int = 0) -> nn.Module:
    """CIFAR VGG-11-BN, channels ``cfg × width / 64`` (width 8: 8, 16, 32, 32, 64 ×4).

    ``features`` indices (conv, bn, relu per conv layer; M = MaxPool2d):
    0-2 conv/bn/relu, 3 M, 4-6, 7 M, 8-10, 11-13, 14 M, 15-17, 18-20, 21 M, 22-24, 25-27,
    28 M; ``classifier.0`` Dropout, ``classifier.1`` Linear. All ReLUs are in-place modules.
    Input side must be a multiple of 32 (the Linear sees ``C × (input_size/32)²``).

    Stride-1 groups-1 convs (all 3×3, padding 1): features.0, features.4, features.8,
    features.11, features.15, features.18, features.22, features.25.
    Spatial activations: features.2, .6, .10, .13, .17, .20, .24, .27 (ReLU, inplace).
    """
    with _seeded(seed):
        model = VGG(_VGG11, width, num_classes, input_size)
    return _finish(model, input_size, seed)


# --------------------------------------------------------------------------------------
# 2. DenseNet-BC (CIFAR-style stem)
# --------------------------------------------------------------------------------------

class _DenseLayer(nn.Module):
    """BN-ReLU-conv1×1(bn_size·growth)-BN-ReLU-conv3×3(growth); output ``cat([x, new], 1)``."""

    def __init__(self, c_in: int, growth: int, bn_size: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(c_in)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(c_in, bn_size * growth, kernel_size=1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, kernel_size=3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        new = self.conv1(self.relu1(self.norm1(x)))
        new = self.conv2(self.relu2(self.norm2(new)))
        return torch.cat([x, new], 1)


class _Transition(nn.Sequential):
    """BN-ReLU-conv1×1-AvgPool2d(2)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.add_module("norm", nn.BatchNorm2d(c_in))
        self.add_module("relu", nn.ReLU(inplace=True))
        self.add_module("conv", nn.Conv2d(c_in, c_out, kernel_size=1, bias=False))
        self.add_module("pool", nn.AvgPool2d(kernel_size=2, stride=2))


class DenseNet(nn.Module):
    """DenseNet-BC: ``features`` = conv0, denseblock1, transition1, …, norm5; then
    ``F.relu(inplace=True)``, ``F.adaptive_avg_pool2d(·, 1)``, flatten, ``classifier``."""

    def __init__(self, growth: int, blocks: tuple[int, ...], num_classes: int,
                 bn_size: int = 4, compression: float = 0.5) -> None:
        super().__init__()
        c = 2 * growth
        feats: OrderedDict[str, nn.Module] = OrderedDict(
            conv0=nn.Conv2d(3, c, kernel_size=3, padding=1, bias=False))
        for i, n in enumerate(blocks, start=1):
            block = nn.Sequential()
            for j in range(1, n + 1):
                block.add_module(f"denselayer{j}", _DenseLayer(c, growth, bn_size))
                c += growth
            feats[f"denseblock{i}"] = block
            if i != len(blocks):
                c_out = max(1, int(c * compression))
                feats[f"transition{i}"] = _Transition(c, c_out)
                c = c_out
        feats["norm5"] = nn.BatchNorm2d(c)
        self.features = nn.Sequential(feats)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.features(x), inplace=True)
        x = F.adaptive_avg_pool2d(x, (1, 1))
        x = torch.flatten(x, 1)
        return self.classifier(x)


def densenet(growth: int = 4, blocks: tuple[int, ...] | list[int] = (2, 2),
             num_classes: int = 10, seed: int = 0) -> nn.Module:
    """DenseNet-BC, growth ``growth``, bottleneck width 4·growth, compression 0.5, stem 3×3
    conv to 2·growth channels, no stem pooling (CIFAR). Defaults: channels 8 → 12 → 16,
    transition to 8 (16×16), → 12 → 16, norm5, head. ``blocks`` may be a JSON list.

    Stride-1 groups-1 convs: features.conv0 (3×3),
    features.denseblock{B}.denselayer{L}.conv1 (1×1), …conv2 (3×3, growth outputs),
    features.transition{T}.conv (1×1, before the AvgPool2d).
    Spatial activations (ReLU modules, inplace): …denselayer{L}.relu1 / .relu2,
    features.transition{T}.relu. The final ReLU is functional (``F.relu``), no module path.
    The concatenations make every dense layer's output a ``cat`` of all earlier ones.
    """
    with _seeded(seed):
        model = DenseNet(growth, tuple(blocks), num_classes)
    return _finish(model, 32, seed)


# --------------------------------------------------------------------------------------
# 3. MobileNetV2
# --------------------------------------------------------------------------------------

class ConvBNReLU6(nn.Sequential):
    """torchvision's Conv2dNormActivation: ``.0`` conv (no bias), ``.1`` BN, ``.2`` ReLU6."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int = 3, stride: int = 1,
                 groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, kernel_size, stride, (kernel_size - 1) // 2,
                      groups=groups, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    """``conv`` = [expand ConvBNReLU6 1×1 (if t ≠ 1)], depthwise ConvBNReLU6 3×3
    (groups = hidden), project conv 1×1, BN; ``x + conv(x)`` when stride 1 and c_in = c_out."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = c_in * expand_ratio
        self.use_res_connect = stride == 1 and c_in == c_out
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(c_in, hidden, kernel_size=1))
        layers += [ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
                   nn.Conv2d(hidden, c_out, 1, 1, 0, bias=False),
                   nn.BatchNorm2d(c_out)]
        self.conv = nn.Sequential(*layers)
        self.out_channels = c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """``features`` = stem ConvBNReLU6, inverted residual blocks, last ConvBNReLU6 1×1;
    ``avgpool`` AdaptiveAvgPool2d(1), flatten, ``classifier`` = Dropout(0.2), Linear."""

    def __init__(self, width: int, num_classes: int,
                 setting: tuple[tuple[int, int, int, int], ...]) -> None:
        super().__init__()
        c = width
        layers: list[nn.Module] = [ConvBNReLU6(3, c, stride=1)]  # CIFAR: stride-1 stem
        for t, mult, n, s in setting:
            c_out = width * mult
            for i in range(n):
                layers.append(InvertedResidual(c, c_out, s if i == 0 else 1, t))
                c = c_out
        last = 8 * width
        layers.append(ConvBNReLU6(c, last, kernel_size=1))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        x = torch.flatten(x, 1)
        return self.classifier(x)


# (expand ratio t, channels as a multiple of width, blocks n, first stride s)
_MBV2_SETTING = ((1, 1, 1, 1), (6, 2, 2, 2), (6, 4, 2, 2))


def mobilenetv2(width: int = 8, num_classes: int = 10, seed: int = 0) -> nn.Module:
    """MobileNetV2 (CIFAR stem, stride 1), width 8: channels 8 → 16 → 32, last 64.

    features.0 stem ConvBNReLU6 3×3; features.1 t=1 block (no expand; depthwise + project,
    residual add); features.2 t=6 stride 2 (8→16, no add); features.3 t=6 (16→16, add);
    features.4 t=6 stride 2 (16→32, no add); features.5 t=6 (32→32, add);
    features.6 ConvBNReLU6 1×1 (32→64). Three residual adds: features.1, .3, .5.

    Stride-1 groups-1 convs: features.0.0 (3×3 stem), features.1.conv.1 (1×1 project),
    features.{2,3,4,5}.conv.0.0 (1×1 expand), features.{2,3,4,5}.conv.2 (1×1 project),
    features.6.0 (1×1). Depthwise (groups = channels): features.1.conv.0.0 (s1),
    features.{2,3,4,5}.conv.1.0 (s2 in blocks 2 and 4).
    Spatial activations (ReLU6 modules, inplace): features.0.2, features.1.conv.0.2,
    features.{2..5}.conv.0.2 / .conv.1.2, features.6.2.
    """
    with _seeded(seed):
        model = MobileNetV2(width, num_classes, _MBV2_SETTING)
    return _finish(model, 32, seed)


# --------------------------------------------------------------------------------------
# 4. SE-ResNet (basic blocks)
# --------------------------------------------------------------------------------------

_ACTS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True), "silu": nn.SiLU, "gelu": nn.GELU,
    "hardswish": nn.Hardswish, "relu6": nn.ReLU6}


class SqueezeExcitation(nn.Module):
    """``avgpool`` AdaptiveAvgPool2d(1) → ``fc1`` conv1×1 (bias) → ``act`` → ``fc2`` conv1×1
    (bias) → ``gate`` Sigmoid; returns ``x * s``."""

    def __init__(self, channels: int, reduction: int, act: str) -> None:
        super().__init__()
        squeezed = max(1, channels // reduction)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeezed, 1)
        self.act = _ACTS[act]()
        self.fc2 = nn.Conv2d(squeezed, channels, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.gate(self.fc2(self.act(self.fc1(self.avgpool(x)))))
        return x * s


class SEBasicBlock(nn.Module):
    """conv1 3×3 (stride) - bn1 - relu - conv2 3×3 - bn2 - se; ``+ identity`` (or
    ``downsample`` = conv1×1(stride)-BN); functional ``F.relu`` after the add."""

    def __init__(self, c_in: int, c_out: int, stride: int, se_act: str,
                 reduction: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.se = SqueezeExcitation(c_out, reduction, se_act)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                            nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.se(self.bn2(self.conv2(out)))
        return F.relu(out + identity)


class SEResNet(nn.Module):
    """``stem`` = conv3×3-BN-Hardswish; ``layer1``… of SE basic blocks; ``avgpool``,
    flatten, ``fc``."""

    def __init__(self, width: int, num_classes: int, blocks: tuple[int, ...],
                 se_acts: tuple[str, ...]) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(width), nn.Hardswish())
        c = width
        for i, n in enumerate(blocks):
            c_out = width << i
            stage = nn.Sequential(*[
                SEBasicBlock(c if j == 0 else c_out, c_out, (1 if i == 0 else 2) if j == 0
                             else 1, se_acts[i % len(se_acts)]) for j in range(n)])
            self.add_module(f"layer{i + 1}", stage)
            c = c_out
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for name, child in self.named_children():
            if name.startswith("layer"):
                x = child(x)
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def se_resnet(width: int = 8, num_classes: int = 10, blocks: tuple[int, ...] | list[int]
              = (1, 1, 1), se_acts: tuple[str, ...] | list[str] = ("relu", "silu", "gelu"),
              seed: int = 0) -> nn.Module:
    """SE-ResNet with basic blocks: stem (conv 3×3 3→w, BN, Hardswish), stages of widths
    w, 2w, 4w (first block of stages 2+ has stride 2 and a ``downsample`` projection);
    the SE excitation activation of stage i is ``se_acts[i]`` (default ReLU, SiLU, GELU).
    Block output = ``F.relu(se(bn2(conv2(relu(bn1(conv1 x))))) + identity)`` (functional).

    Stride-1 groups-1 convs: stem.0 (3×3), layer1.0.conv1, layer1.0.conv2 (3×3, w→w),
    layer{2,3}.0.conv2 (3×3), and the SE 1×1 convs layerS.B.se.fc1/.fc2 (on 1×1 maps).
    Stride 2: layer{2,3}.0.conv1, layer{2,3}.0.downsample.0 (1×1).
    Spatial activations: stem.2 (Hardswish), layerS.B.relu (ReLU inplace, once per block).
    The SE activations (layerS.B.se.act, .gate) act on 1×1 maps.
    """
    with _seeded(seed):
        model = SEResNet(width, num_classes, tuple(blocks), tuple(se_acts))
    return _finish(model, 32, seed)


# --------------------------------------------------------------------------------------
# 5. ResNeXt (bottleneck blocks)
# --------------------------------------------------------------------------------------

class ResNeXtBottleneck(nn.Module):
    """torchvision Bottleneck with groups: conv1 1×1 - bn1 - relu - conv2 3×3 (stride,
    groups = cardinality) - bn2 - relu - conv3 1×1 - bn3; ``out += identity`` (or
    ``downsample``), relu. The single ``relu`` module is called three times, as in
    torchvision."""

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int, cardinality: int,
                 group_width: int) -> None:
        super().__init__()
        inner = cardinality * group_width
        c_out = planes * self.expansion
        self.conv1 = nn.Conv2d(c_in, inner, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, inner, 3, stride, 1, groups=cardinality, bias=False)
        self.bn2 = nn.BatchNorm2d(inner)
        self.conv3 = nn.Conv2d(inner, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                            nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNeXt(nn.Module):
    """torchvision ResNet layout with a CIFAR stem: conv1 3×3 - bn1 - relu; layer1…;
    avgpool, flatten, fc."""

    def __init__(self, width: int, cardinality: int, num_classes: int,
                 blocks: tuple[int, ...]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        c = width
        for i, n in enumerate(blocks):
            planes = width << i
            group_width = max(1, 2 * planes // cardinality)  # inner width ≈ 2·planes
            layers = []
            for j in range(n):
                layers.append(ResNeXtBottleneck(c, planes, (1 if i == 0 else 2) if j == 0
                                                else 1, cardinality, group_width))
                c = planes * ResNeXtBottleneck.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*layers))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(c, num_classes)
        self.num_stages = len(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


def resnext(width: int = 8, cardinality: int = 4, num_classes: int = 10,
            blocks: tuple[int, ...] | list[int] = (1, 2), seed: int = 0) -> nn.Module:
    """ResNeXt with bottleneck blocks, ``cardinality`` groups in each 3×3 conv. Width 8,
    cardinality 4: stem 3→8; layer1.0 (8 → inner 16 → 32, 1×1 projection at stride 1);
    layer2.0 (32 → inner 32 (stride 2) → 64, projection stride 2); layer2.1 (64 → 32 → 64,
    identity).

    Stride-1 groups-1 convs: conv1 (3×3 stem), layerS.B.conv1 (1×1), layerS.B.conv3 (1×1),
    layer1.0.downsample.0 (1×1, stride 1). Grouped (groups = cardinality): layerS.B.conv2
    (stride 2 in layer2.0). Stride 2: layer2.0.conv2, layer2.0.downsample.0.
    Spatial activations: ``relu`` (top-level, called once). Each block's ``relu`` is called
    three times (after bn1, bn2 and the add): not a valid single ``--after`` target.
    """
    with _seeded(seed):
        model = ResNeXt(width, cardinality, num_classes, tuple(blocks))
    return _finish(model, 32, seed)


# --------------------------------------------------------------------------------------
# 6. ResNet-18 (torchvision BasicBlock layout, CIFAR stem)
# --------------------------------------------------------------------------------------

class BasicBlock(nn.Module):
    """torchvision BasicBlock: conv1 3×3 (stride) - bn1 - relu - conv2 3×3 - bn2;
    ``out += identity`` (or ``downsample`` = conv1×1(stride)-BN), relu. The single ``relu``
    module is called twice, as in torchvision."""

    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or c_in != planes:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, planes, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    """torchvision ResNet with a CIFAR stem (conv1 3×3 stride 1, no max-pool): conv1 - bn1 -
    relu; layer1…layer4 of BasicBlocks; avgpool AdaptiveAvgPool2d((1, 1)), flatten, fc."""

    def __init__(self, width: int, num_classes: int, blocks: tuple[int, ...]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        c = width
        for i, n in enumerate(blocks):
            planes = width << i
            self.add_module(f"layer{i + 1}", nn.Sequential(*[
                BasicBlock(c if j == 0 else planes, planes,
                           (1 if i == 0 else 2) if j == 0 else 1) for j in range(n)]))
            c = planes
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(c, num_classes)
        self.num_stages = len(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


def resnet18(width: int = 4, num_classes: int = 10,
             blocks: tuple[int, ...] | list[int] = (2, 2, 2, 2), seed: int = 0) -> nn.Module:
    """ResNet-18 (torchvision layout, CIFAR stem): stages of widths w, 2w, 4w, 8w (width 4:
    4, 8, 16, 32 at 32², 16², 8², 4²), two BasicBlocks each; the first block of stages 2-4
    has stride 2 and a ``downsample`` 1×1 projection (conv, BN).

    Stride-1 groups-1 convs: conv1 (3×3 stem), layer1.{0,1}.conv{1,2}, layerS.0.conv2,
    layerS.1.conv{1,2} (S = 2, 3, 4; all 3×3). Stride 2: layerS.0.conv1,
    layerS.0.downsample.0 (1×1). Spatial activations: ``relu`` (top level, called once);
    each block's ``relu`` is called twice (after bn1 and after the add).
    """
    with _seeded(seed):
        model = ResNet(width, num_classes, tuple(blocks))
    return _finish(model, 32, seed)


# --------------------------------------------------------------------------------------
# 7. PreActResNet-18 (pre-activation blocks, the CIFAR zoos' layout)
# --------------------------------------------------------------------------------------

class PreActBlock(nn.Module):
    """BN-ReLU before each conv: ``out = relu(bn1(x))``; ``shortcut`` = conv1×1(stride) on
    ``out`` (no BN) when the shape changes, else ``x``; ``conv2(relu(bn2(conv1(out))))
    + shortcut``. Functional ReLUs, no module path."""

    def __init__(self, c_in: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        if stride != 1 or c_in != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, planes, 1, stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if hasattr(self, "shortcut") else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        out += shortcut
        return out


class PreActResNet(nn.Module):
    """``conv1`` 3×3 (no BN after it), layer1…layer4 of PreActBlocks, ``bn`` + ReLU (the
    final pre-activation of He et al. 2016), ``F.avg_pool2d(·, 4)``,
    ``out.view(out.size(0), -1)``, ``linear``."""

    def __init__(self, width: int, num_classes: int, blocks: tuple[int, ...]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        c = width
        for i, n in enumerate(blocks):
            planes = width << i
            self.add_module(f"layer{i + 1}", nn.Sequential(*[
                PreActBlock(c if j == 0 else planes, planes,
                            (1 if i == 0 else 2) if j == 0 else 1) for j in range(n)]))
            c = planes
        self.bn = nn.BatchNorm2d(c)
        self.linear = nn.Linear(c, num_classes)
        self.num_stages = len(blocks)
        self.pool = 32 >> (len(blocks) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        for i in range(self.num_stages):
            out = getattr(self, f"layer{i + 1}")(out)
        out = F.avg_pool2d(F.relu(self.bn(out)), self.pool)
        out = out.view(out.size(0), -1)  # the head that static-batch exports name N in
        return self.linear(out)


def preact_resnet18(width: int = 4, num_classes: int = 10,
                    blocks: tuple[int, ...] | list[int] = (2, 2, 2, 2),
                    seed: int = 0) -> nn.Module:
    """PreActResNet-18: stem conv 3×3 3→w, stages w, 2w, 4w, 8w of two PreActBlocks (the
    first of stages 2-4 with stride 2 and a 1×1 ``shortcut`` conv on the pre-activated
    input), final BN-ReLU, 4×4 average pool (for 4 stages), ``view(N, -1)`` head.

    Stride-1 groups-1 convs: conv1 (3×3 stem, feeds an add directly), layer1.{0,1}.conv1,
    layer1.{0,1}.conv2, layerS.0.conv2, layerS.1.conv{1,2} (S = 2, 3, 4; 3×3). Stride 2:
    layerS.0.conv1, layerS.0.shortcut.0 (1×1). No activation module: every ReLU is
    functional.
    """
    with _seeded(seed):
        model = PreActResNet(width, num_classes, tuple(blocks))
    return _finish(model, 32, seed)


# --------------------------------------------------------------------------------------
# 8. ShuffleNetV2 (torchvision layout, CIFAR stem)
# --------------------------------------------------------------------------------------

def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """torchvision's: ``view(N, g, C/g, H, W)``, ``transpose(1, 2)``, ``contiguous()``,
    ``view(N, C, H, W)``."""
    batchsize, num_channels, height, width = x.size()
    channels_per_group = num_channels // groups
    x = x.view(batchsize, groups, channels_per_group, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(batchsize, num_channels, height, width)


def _conv_bn(c_in: int, c_out: int, kernel_size: int, stride: int = 1, groups: int = 1,
             act: Callable[[], nn.Module] | None = None) -> nn.Sequential:
    """torchvision's Conv2dNormActivation: ``.0`` conv (no bias), ``.1`` BN, [``.2`` act]."""
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel_size, stride, (kernel_size - 1) // 2, groups=groups,
                  bias=False),
        nn.BatchNorm2d(c_out)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class ShuffleUnit(nn.Module):
    """torchvision's ShuffleNetV2 InvertedResidual. Stride 1: ``x1, x2 = x.chunk(2, 1)``,
    ``cat(x1, branch2(x2))``; stride 2: ``cat(branch1(x), branch2(x))``; then
    ``channel_shuffle(·, 2)``. ``branch1`` = depthwise 3×3 (stride) - BN - conv1×1 - BN -
    ReLU; ``branch2`` = conv1×1 - BN - ReLU - depthwise 3×3 (stride) - BN - conv1×1 - BN -
    ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        half = c_out // 2
        if stride == 1 and c_in != 2 * half:
            raise ValueError("a stride-1 unit needs c_in == c_out")
        if stride > 1:
            self.branch1 = nn.Sequential(
                nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in, bias=False),
                nn.BatchNorm2d(c_in),
                nn.Conv2d(c_in, half, 1, 1, 0, bias=False),
                nn.BatchNorm2d(half),
                nn.ReLU(inplace=True))
        else:
            self.branch1 = nn.Sequential()
        b_in = c_in if stride > 1 else half
        self.branch2 = nn.Sequential(
            nn.Conv2d(b_in, half, 1, 1, 0, bias=False),
            nn.BatchNorm2d(half),
            nn.ReLU(inplace=True),
            nn.Conv2d(half, half, 3, stride, 1, groups=half, bias=False),
            nn.BatchNorm2d(half),
            nn.Conv2d(half, half, 1, 1, 0, bias=False),
            nn.BatchNorm2d(half),
            nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    """``conv1`` = conv3×3-BN-ReLU (stride 1: CIFAR, no max-pool); ``stage2``…``stage4``
    (a stride-2 unit, then stride-1 units); ``conv5`` = conv1×1-BN-ReLU; ``x.mean([2, 3])``
    (torchvision's global pool); ``fc``."""

    def __init__(self, repeats: tuple[int, ...], channels: tuple[int, ...],
                 num_classes: int) -> None:
        super().__init__()
        if len(channels) != len(repeats) + 2:
            raise ValueError("channels: stem, one per stage, conv5")
        relu = lambda: nn.ReLU(inplace=True)  # noqa: E731
        self.conv1 = _conv_bn(3, channels[0], 3, 1, act=relu)
        c = channels[0]
        for i, (n, c_out) in enumerate(zip(repeats, channels[1:-1], strict=True)):
            units = [ShuffleUnit(c, c_out, 2)] + [ShuffleUnit(c_out, c_out, 1)
                                                  for _ in range(n - 1)]
            self.add_module(f"stage{i + 2}", nn.Sequential(*units))
            c = c_out
        self.conv5 = _conv_bn(c, channels[-1], 1, act=relu)
        self.fc = nn.Linear(channels[-1], num_classes)
        self.num_stages = len(repeats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        for i in range(self.num_stages):
            x = getattr(self, f"stage{i + 2}")(x)
        x = self.conv5(x)
        x = x.mean([2, 3])
        return self.fc(x)


def shufflenetv2(width: int = 4, num_classes: int = 10,
                 repeats: tuple[int, ...] | list[int] = (2, 2, 2), seed: int = 0) -> nn.Module:
    """ShuffleNetV2 (torchvision layout, CIFAR stem): channels w (stem), 2w, 4w, 8w (stages
    2-4 at 16², 8², 4²), 16w (conv5); each stage is a stride-2 unit (two branches, both
    halves new) and ``repeats - 1`` stride-1 units (split, one branch, cat); every unit ends
    in a channel shuffle (view/transpose/view, groups 2).

    Stride-1 groups-1 convs: conv1.0 (3×3 stem), stageS.U.branch2.0 (1×1; in a stride-1
    unit it reads the second ``chunk`` half), stageS.U.branch2.5 (1×1), stageS.0.branch1.2
    (1×1, after the stride-2 depthwise conv), conv5.0 (1×1, reads a shuffle). Depthwise:
    stageS.U.branch2.3, stageS.0.branch1.0 (stride 2 in the first unit of each stage).
    Spatial activations (ReLU modules, inplace, called once): conv1.2, conv5.2,
    stageS.U.branch2.{2,7}, stageS.0.branch1.4.
    """
    with _seeded(seed):
        model = ShuffleNetV2(tuple(repeats), (width, 2 * width, 4 * width, 8 * width,
                                              16 * width), num_classes)
    return _finish(model, 32, seed)


# --------------------------------------------------------------------------------------
# 9. RegNetX (torchvision layout, CIFAR stem)
# --------------------------------------------------------------------------------------

class BottleneckTransform(nn.Sequential):
    """torchvision's: ``a`` conv1×1-BN-ReLU, ``b`` conv3×3 (stride, groups = w_b /
    group_width)-BN-ReLU, ``c`` conv1×1-BN (bottleneck multiplier 1: w_b = w_out)."""

    def __init__(self, c_in: int, c_out: int, stride: int, group_width: int) -> None:
        relu = lambda: nn.ReLU(inplace=True)  # noqa: E731
        groups = c_out // group_width
        super().__init__(OrderedDict(
            a=_conv_bn(c_in, c_out, 1, act=relu),
            b=_conv_bn(c_out, c_out, 3, stride, groups=groups, act=relu),
            c=_conv_bn(c_out, c_out, 1)))


class ResBottleneckBlock(nn.Module):
    """torchvision's: ``x = proj(x) + f(x)`` (``proj`` = conv1×1(stride)-BN when the shape
    changes) or ``x + f(x)``; ``activation`` ReLU(inplace)."""

    def __init__(self, c_in: int, c_out: int, stride: int, group_width: int) -> None:
        super().__init__()
        self.proj = None
        if c_in != c_out or stride != 1:
            self.proj = _conv_bn(c_in, c_out, 1, stride)
        self.f = BottleneckTransform(c_in, c_out, stride, group_width)
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.proj is not None:
            x = self.proj(x) + self.f(x)
        else:
            x = x + self.f(x)
        return self.activation(x)


class AnyStage(nn.Sequential):
    """torchvision's: blocks named ``block{stage}-{i}`` (a hyphen in every module path)."""

    def __init__(self, c_in: int, c_out: int, stride: int, depth: int, group_width: int,
                 stage_index: int) -> None:
        super().__init__()
        for i in range(depth):
            self.add_module(f"block{stage_index}-{i}",
                            ResBottleneckBlock(c_in if i == 0 else c_out, c_out,
                                               stride if i == 0 else 1, group_width))


class RegNet(nn.Module):
    """``stem`` conv3×3-BN-ReLU (stride 1: CIFAR), ``trunk_output`` = block1… (AnyStage,
    stride 2 each), ``avgpool`` AdaptiveAvgPool2d((1, 1)), flatten, ``fc``."""

    def __init__(self, stem: int, widths: tuple[int, ...], depths: tuple[int, ...],
                 group_width: int, num_classes: int) -> None:
        super().__init__()
        self.stem = _conv_bn(3, stem, 3, 1, act=lambda: nn.ReLU(inplace=True))
        stages: OrderedDict[str, nn.Module] = OrderedDict()
        c = stem
        for i, (w, d) in enumerate(zip(widths, depths, strict=True)):
            stages[f"block{i + 1}"] = AnyStage(c, w, 2, d, group_width, i + 1)
            c = w
        self.trunk_output = nn.Sequential(stages)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.trunk_output(x)
        x = self.avgpool(x)
        x = x.flatten(start_dim=1)
        return self.fc(x)


def regnetx(width: int = 8, group_width: int = 4, num_classes: int = 10,
            depths: tuple[int, ...] | list[int] = (1, 2, 1), seed: int = 0) -> nn.Module:
    """RegNetX (no SE; torchvision layout, CIFAR stem): stem w, stages of widths w, 2w, 4w
    (width 8: 8, 16, 32 at 16², 8², 4²) and ``depths`` blocks, groups = stage width /
    ``group_width`` (width 8, group width 4: 2, 4, 8 groups).

    Stride-1 groups-1 convs: stem.0 (3×3), trunk_output.blockS.blockS-B.f.a.0 (1×1),
    …f.c.0 (1×1). Grouped: …f.b.0 (3×3, stride 2 in blockS-0). Stride 2:
    trunk_output.blockS.blockS-0.proj.0 (1×1). Spatial activations (ReLU modules, inplace,
    called once): stem.2, …f.a.2, …f.b.2, …blockS-B.activation.
    """
    with _seeded(seed):
        model = RegNet(width, tuple(width << i for i in range(len(depths))), tuple(depths),
                       group_width, num_classes)
    return _finish(model, 32, seed)


# --------------------------------------------------------------------------------------
# registries
# --------------------------------------------------------------------------------------

ZOO: dict[str, Callable[..., nn.Module]] = {
    "vgg11_bn": vgg11_bn,
    "densenet": densenet,
    "mobilenetv2": mobilenetv2,
    "se_resnet": se_resnet,
    "resnext": resnext,
}

# Per good model (default kwargs): ``at``, a stride-1 groups-1 conv inside the body whose
# input and output are spatial (a module may replace it); ``after``, an activation module
# called exactly once whose output is spatial.
SITES: dict[str, dict[str, str]] = {
    "vgg11_bn": {"at": "features.4", "after": "features.2"},
    "densenet": {"at": "features.denseblock1.denselayer1.conv2",
                 "after": "features.denseblock1.denselayer1.relu2"},
    "mobilenetv2": {"at": "features.3.conv.0.0", "after": "features.3.conv.0.2"},
    "se_resnet": {"at": "layer1.0.conv2", "after": "layer1.0.relu"},
    "resnext": {"at": "layer1.0.conv1", "after": "relu"},
}


# The test model corpus of issue 23 (tests/cli/test_model_corpus.py): the peer models of a
# public CIFAR zoo — VGG, ResNet-18, PreActResNet-18, MobileNetV2, DenseNet, SE-ResNet,
# ShuffleNetV2, RegNetX — and ResNeXt. ``ZOO`` ⊂ ``CORPUS``; the four families that only
# the corpus has are kept out of ``ZOO`` so that the tests iterating ``ZOO``
# (tests/unit/test_program.py, tests/cli/test_import_traced.py) keep their run time.
CORPUS: dict[str, Callable[..., nn.Module]] = {
    **ZOO,
    "resnet18": resnet18,
    "preact_resnet18": preact_resnet18,
    "shufflenetv2": shufflenetv2,
    "regnetx": regnetx,
}


def build(name: str, **kwargs) -> nn.Module:
    """The model ``name`` of ``CORPUS`` (``ZOO`` included) or ``BAD`` with ``kwargs``
    (eval mode)."""
    table = CORPUS if name in CORPUS else BAD
    return table[name](**kwargs)


# --------------------------------------------------------------------------------------
# Bad models: each uses one thing the importer must refuse
# --------------------------------------------------------------------------------------

class _Unsupported(nn.Module):
    def __init__(self, width: int, num_classes: int, op: str) -> None:
        super().__init__()
        if op not in ("lstm", "layer_norm", "sort"):
            raise ValueError(f"op must be 'lstm', 'layer_norm' or 'sort', not {op!r}")
        self.op = op
        self.conv = nn.Conv2d(3, width, 3, 2, 1)
        self.relu = nn.ReLU()
        if op == "lstm":
            self.lstm = nn.LSTM(width, width, batch_first=True)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv(x))                      # (N, C, 16, 16)
        if self.op == "lstm":
            seq = torch.flatten(x, 2).transpose(1, 2)    # (N, 256, C)
            out, _ = self.lstm(seq)
            return self.fc(out[:, -1])
        if self.op == "layer_norm":
            x = F.layer_norm(x, x.shape[1:])
        else:
            x = torch.sort(x, dim=1).values
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def uses_lstm(width: int = 4, num_classes: int = 10, op: str = "lstm",
              seed: int = 0) -> nn.Module:
    """One unsupported op after a conv-ReLU, chosen by ``op``:

    ``"lstm"`` (default): an ``nn.LSTM`` over the 16×16 positions (``aten.lstm.input`` plus
    ``transpose``/``select``/``zeros``/``getitem``; export takes ~1 s and warns about
    ``_flat_weights``); ``"layer_norm"``: ``F.layer_norm`` (``aten.layer_norm.default``,
    fast); ``"sort"``: ``torch.sort`` over channels (``aten.sort.default`` + ``getitem``).
    All export fine and run eagerly; the importer must refuse each naming the op.
    """
    with _seeded(seed):
        return _Unsupported(width, num_classes, op).eval()


def uses_layer_norm(width: int = 4, num_classes: int = 10, seed: int = 0) -> nn.Module:
    """``uses_lstm(op="layer_norm")``: ``aten.layer_norm.default``; exports in ~0.03 s."""
    return uses_lstm(width=width, num_classes=num_classes, op="layer_norm", seed=seed)


def uses_sort(width: int = 4, num_classes: int = 10, seed: int = 0) -> nn.Module:
    """``uses_lstm(op="sort")``: ``aten.sort.default`` (+ ``getitem``); exports in ~0.02 s."""
    return uses_lstm(width=width, num_classes=num_classes, op="sort", seed=seed)


class _DataDependent(nn.Module):
    def __init__(self, width: int, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, 1, 1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv(x))
        if x.sum() > 0:  # data-dependent Python branch: torch.export cannot trace it
            x = x * 2
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


def data_dependent(width: int = 4, num_classes: int = 10, seed: int = 0) -> nn.Module:
    """A Python ``if x.sum() > 0:`` branch on activations. Eager forward works;
    ``torch.export.export`` raises (a data-dependent guard, ``torch._dynamo.exc.UserError``
    / ``GuardOnDataDependentSymNode``); the importer must report that cleanly."""
    with _seeded(seed):
        return _DataDependent(width, num_classes).eval()


class _TwoOutputs(nn.Module):
    def __init__(self, width: int, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, 1, 1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = torch.flatten(F.adaptive_avg_pool2d(self.relu(self.conv(x)), 1), 1)
        return self.fc(feats), feats


def two_outputs(width: int = 4, num_classes: int = 10, seed: int = 0) -> nn.Module:
    """Returns ``(logits, features)``: two graph outputs. Exports fine; must be refused."""
    with _seeded(seed):
        return _TwoOutputs(width, num_classes).eval()


class _NoClassifier(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.relu(self.conv1(x)))


def no_classifier(width: int = 4, num_classes: int = 10, seed: int = 0) -> nn.Module:
    """Returns the ``(N, width, 32, 32)`` feature map, not a logit vector (``num_classes``
    is ignored). Exports fine; must be refused (no classifier head)."""
    with _seeded(seed):
        return _NoClassifier(width).eval()


class _SharedConv(nn.Module):
    def __init__(self, width: int, num_classes: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, 1, 1)
        self.conv = nn.Conv2d(width, width, 3, 1, 1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        x = F.relu(self.conv(x))
        x = F.relu(self.conv(x))  # the same weights again: weight sharing
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


def shared_conv(width: int = 4, num_classes: int = 10, seed: int = 0) -> nn.Module:
    """``conv`` (one module, one weight) applied twice in a row: weight sharing. Exports
    fine (two ``aten.conv2d`` nodes reading the same parameter); must be refused."""
    with _seeded(seed):
        return _SharedConv(width, num_classes).eval()


BAD: dict[str, Callable[..., nn.Module]] = {
    "uses_lstm": uses_lstm,
    "uses_layer_norm": uses_layer_norm,
    "uses_sort": uses_sort,
    "data_dependent": data_dependent,
    "two_outputs": two_outputs,
    "no_classifier": no_classifier,
    "shared_conv": shared_conv,
}
