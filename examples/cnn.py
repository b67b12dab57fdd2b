"""A CNN of your own, as netmorph sees one: a CIFAR VGG-11 with batch norm.

`python examples/cnn.py vgg.pt2 [--weights vgg_weights.pt] [--width 16]` builds it (seeded
random weights; BN statistics from a few random batches, so they are not the identity),
writes it with `torch.export.save` and, with --weights, its state_dict. `vgg11_bn` is also
a factory for `netmorph import WEIGHTS --model examples.cnn:vgg11_bn`.
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


def vgg11_bn(width: int = 16, num_classes: int = 10, seed: int = 0) -> VGG:
    """The factory: a VGG-11-BN whose widths are the paper's × width/64."""
    torch.manual_seed(seed)
    model = VGG(width, num_classes)
    model.train()
    with torch.no_grad():  # BN statistics of random batches: not the identity
        for _ in range(4):
            model(torch.randn(16, 3, 32, 32))
    return model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="the torch.export program to write (.pt2)")
    ap.add_argument("--weights", help="also write the state_dict here")
    ap.add_argument("--width", type=int, default=16)
    args = ap.parse_args()
    model = vgg11_bn(args.width)
    program = torch.export.export(model, (torch.randn(2, 3, 32, 32),))
    torch.export.save(program, args.out)
    if args.weights:
        torch.save(model.state_dict(), args.weights)
    params = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.out}: VGG-11-BN, width {args.width}, {params:,} parameters"
          + (f"; state_dict in {args.weights}" if args.weights else ""))


if __name__ == "__main__":
    main()
