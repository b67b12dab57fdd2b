"""A CNN of your own, as netmorph sees one: a CIFAR VGG-11 with batch norm, or a CIFAR
MobileNetV2 (depthwise convs).

`python examples/cnn.py vgg.pt2 [--weights vgg_weights.pt] [--width 16] [--arch mobilenetv2]`
builds it (seeded random weights; BN statistics from a few random batches, so they are not
the identity), writes it with `torch.export.save` and, with --weights, its state_dict.
`vgg11_bn` and `mobilenetv2` are also factories for
`netmorph import WEIGHTS --model examples.cnn:vgg11_bn`.
"""

import argparse

import torch
from torch import nn

CFG = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]


class VGG(nn.Module):
    def __init__(self, width: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = 3
        for v in CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                out = max(1, int(v) * width // 64)
                layers += [nn.Conv2d(c, out, 3, padding=1), nn.BatchNorm2d(out),
                           nn.ReLU(inplace=True)]
                c = out
        self.features = nn.Sequential(*layers)  # features.0 conv, .1 BN, .2 ReLU, .3 pool, …
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Linear(c, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def conv_bn(c_in: int, c_out: int, k: int = 1, stride: int = 1, groups: int = 1,
            act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups,
                                         bias=False), nn.BatchNorm2d(c_out)]
    return nn.Sequential(*layers, *([nn.ReLU6(inplace=True)] if act else []))


class InvertedResidual(nn.Module):
    """conv.0 expand 1×1, conv.1 depthwise 3×3 (groups = channels), conv.2 project 1×1;
    ``x + conv(x)`` at stride 1 when the widths agree."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int = 6) -> None:
        super().__init__()
        hidden = c_in * expand
        self.conv = nn.Sequential(conv_bn(c_in, hidden), conv_bn(hidden, hidden, 3, stride,
                                                                 groups=hidden),
                                  conv_bn(hidden, c_out, act=False))
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, width: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(  # features.0 stem, .1–.5 inverted residuals, .6 1×1
            conv_bn(3, w, 3), InvertedResidual(w, w, 1), InvertedResidual(w, 2 * w, 2),
            InvertedResidual(2 * w, 2 * w, 1), InvertedResidual(2 * w, 4 * w, 2),
            InvertedResidual(4 * w, 4 * w, 1), conv_bn(4 * w, 16 * w))
        self.classifier = nn.Linear(16 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(
            self.features(x), 1), 1))


def _settle(model: nn.Module, seed: int) -> nn.Module:
    model.train()
    with torch.no_grad():  # BN statistics of random batches: not the identity
        for _ in range(4):
            model(torch.randn(16, 3, 32, 32))
    return model.eval()


def vgg11_bn(width: int = 16, num_classes: int = 10, seed: int = 0) -> VGG:
    """The factory: a VGG-11-BN whose widths are the paper's × width/64."""
    torch.manual_seed(seed)
    return _settle(VGG(width, num_classes), seed)


def mobilenetv2(width: int = 16, num_classes: int = 10, seed: int = 0) -> MobileNetV2:
    """The factory: a small CIFAR MobileNetV2 (stride-1 stem, channels width → 4·width)."""
    torch.manual_seed(seed)
    return _settle(MobileNetV2(width, num_classes), seed)


ARCHS = {"vgg11_bn": ("VGG-11-BN", vgg11_bn), "mobilenetv2": ("MobileNetV2", mobilenetv2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="the torch.export program to write (.pt2)")
    ap.add_argument("--weights", help="also write the state_dict here")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--arch", choices=sorted(ARCHS), default="vgg11_bn")
    args = ap.parse_args()
    title, factory = ARCHS[args.arch]
    model = factory(args.width)
    program = torch.export.export(model, (torch.randn(2, 3, 32, 32),))
    torch.export.save(program, args.out)
    if args.weights:
        torch.save(model.state_dict(), args.weights)
    params = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.out}: {title}, width {args.width}, {params:,} parameters"
          + (f"; state_dict in {args.weights}" if args.weights else ""))


if __name__ == "__main__":
    main()
