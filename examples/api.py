"""netmorph's Python API in a training script: grow your own CNN, check it, keep training.

Run: .venv/bin/python examples/api.py   (CPU, a few seconds, no download)
"""

import copy

import torch
from torch import nn

import netmorph


class SmallNet(nn.Module):
    """Any traceable CNN: here conv-BN-ReLU features, a squeeze-excitation gate, a classifier."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            nn.MaxPool2d(2))
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(16, 16, 1), nn.Sigmoid())
        self.head = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = x * self.gate(x)
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


torch.manual_seed(0)
parent = SmallNet()
x = torch.randn(8, 3, 32, 32)  # one batch: what the model is traced on

images, labels = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))  # "training data"

# the conv `features.3` becomes module D (examples/modules/D.json), and a 1c1-style module
# goes in after the ReLU `features.2`, where there was no layer (the paper's deepening);
# `calibrate` sets the new BN layers from training batches, so that the child also starts
# where the parent is in training mode (BN on batch statistics), not only in eval mode
child = netmorph.morph(parent, "examples/modules/D.json", at="features.3", example_input=x,
                       calibrate=[images])
child = netmorph.morph(child, "examples/modules/morph_1c1.json", after="features.2",
                       calibrate=[images])

report = netmorph.verify(parent, child, example_input=x)
print(f"parent {sum(p.numel() for p in parent.parameters()):,} parameters, child "
      f"{sum(p.numel() for p in child.parameters()):,}")
print(f"verify: passed={report.passed}, max relative error {report.max_rel_err:.1e} "
      f"({report.dtype}, {report.samples} inputs)")
for site in report.sites:
    print(f"  {site.parent_node} → {site.child_node}: {site.max_rel_err:.1e}")

with torch.no_grad():  # training mode: a copy, so the running statistics stay as they are
    losses = [nn.functional.cross_entropy(copy.deepcopy(m).train()(images), labels).item()
              for m in (parent, child)]
print(f"training-mode loss on the batch: parent {losses[0]:.4f}, child {losses[1]:.4f}")

# the child's parameters go straight into an optimizer
optimizer = torch.optim.SGD(child.parameters(), lr=0.05, momentum=0.9)
child.train()
for step in range(3):
    loss = nn.functional.cross_entropy(child(images), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    print(f"step {step}: loss {loss.item():.4f}")

netmorph.save(child, "/tmp/netmorph_api_child.safetensors", force=True)
again = netmorph.load("/tmp/netmorph_api_child.safetensors")
print("saved and loaded back:", torch.equal(again(x), child.eval()(x)))
