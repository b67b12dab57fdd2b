"""Benchmark: images/s of netmorph's training loop against a plain PyTorch DataLoader loop.

Run with ``make bench`` or ``.venv/bin/python benchmarks/train.py [--device cuda]
[--steps 20] [--batch 128] [--workers 0,2] [--rounds 3] [--threads N] [--variants]``.

Both sides train the same ResNet-20 (``Network.module()``, He init, seed 0) with the same
batch size and SGD (momentum 0.9, weight decay 1e-4, lr 0.1), in one process:

- **netmorph**: ``train.train`` on a synthetic set of ``steps × batch`` training images
  (data resident on the device, batched pad-4 crop + flip there), two epochs; the figure is
  the second (warm) epoch's images/s, which excludes the test pass and the state file.
- **baseline**: a ``torch.utils.data.DataLoader`` over a ``Dataset`` whose ``__getitem__``
  pads 4, crops 32×32 at random, flips at random, scales to [0, 1] and normalizes one
  uint8 HWC image at a time (numpy; torchvision-free), shuffled, ``--workers`` processes,
  then ``.to(device)``, forward, cross-entropy, backward, step. Timed over ``steps`` steps
  after 3 warm-up steps, once per worker count.
- **model only** (context, not a target): the same step on one fixed batch already on the
  device: no data pipeline at all, the ceiling for any loader at this precision.

``--variants`` adds netmorph with ``--precision bf16`` and model-only steps with
channels_last and with bf16 autocast (CPU or CUDA), to show where CPU time goes. Rounds
alternate the sides to spread machine noise; ratios are taken within a round and their
median is reported. Targets (issue 5): ≥ 1.5×
the baseline on the 2-core CPU machine; ≥ 30,000 images/s for ResNet-20 on one H100
(``--device cuda``).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from machine import machine_line  # noqa: E402  (benchmarks/machine.py)

from netmorph_cli.network import zoo
from netmorph_cli.training import data, train


class PerSampleCifar(torch.utils.data.Dataset):
    """uint8 NHWC images, augmented one at a time the usual way (RandomCrop(32, padding=4),
    RandomHorizontalFlip, ToTensor, Normalize), with numpy instead of torchvision."""

    def __init__(self, x: np.ndarray, y: np.ndarray, mean, std, pad: int = 4):
        self.x, self.y, self.pad = x, y, pad
        self.mean = np.asarray(mean, np.float32).reshape(3, 1, 1)
        self.std = np.asarray(std, np.float32).reshape(3, 1, 1)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img, p = self.x[i], self.pad  # (H, W, 3) uint8
        h, w = img.shape[:2]
        padded = np.pad(img, ((p, p), (p, p), (0, 0)))  # black border, before normalizing
        dy, dx = np.random.randint(0, 2 * p + 1, size=2)
        crop = padded[dy:dy + h, dx:dx + w]
        if np.random.rand() < 0.5:
            crop = crop[:, ::-1]
        chw = crop.transpose(2, 0, 1).astype(np.float32) / 255  # ToTensor
        return torch.from_numpy((chw - self.mean) / self.std), int(self.y[i])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _model_and_opt(device: torch.device, channels_last: bool = False):
    model = zoo.create("resnet20", seed=0).module(torch.float32, device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    return model, opt


def _step(model, opt, xb, yb, amp: bool, device: torch.device) -> None:
    with torch.autocast(device.type, torch.bfloat16, enabled=amp):
        loss = F.cross_entropy(model(xb).float(), yb)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def run_netmorph(ds: data.Dataset, batch: int, device: torch.device, compile_: bool,
                 precision: str = "auto") -> float:
    cfg = train.TrainConfig(dataset="synthetic", epochs=2, batch_size=batch, seed=0,
                            compile=compile_, precision=precision)
    with tempfile.TemporaryDirectory() as tmp:
        _, history = train.train(zoo.create("resnet20", seed=0), cfg, Path(tmp) / "b.st",
                                 device=device, dataset=ds)
    return history[-1].images_per_s


def run_baseline(ds: data.Dataset, batch: int, steps: int, workers: int,
                 device: torch.device) -> float:
    np.random.seed(0)
    torch.manual_seed(0)
    model, opt = _model_and_opt(device)
    loader = torch.utils.data.DataLoader(
        PerSampleCifar(ds.x_train, ds.y_train, data.CIFAR_MEAN, data.CIFAR_STD),
        batch_size=batch, shuffle=True, drop_last=True, num_workers=workers,
        pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    warmup, done, t0 = 3, 0, 0.0
    while done < warmup + steps:
        for xb, yb in loader:
            if done == warmup:
                _sync(device)
                t0 = time.perf_counter()
            xb = xb.to(device, non_blocking=True)
            yb = yb.to(device, non_blocking=True)
            _step(model, opt, xb, yb, False, device)
            done += 1
            if done == warmup + steps:
                break
    _sync(device)
    return steps * batch / (time.perf_counter() - t0)


def run_model_only(batch: int, steps: int, device: torch.device, channels_last: bool = False,
                   amp: bool = False) -> float:
    model, opt = _model_and_opt(device, channels_last)
    gen = torch.Generator().manual_seed(0)
    xb = torch.randn(batch, 3, 32, 32, generator=gen).to(device)
    if channels_last:
        xb = xb.contiguous(memory_format=torch.channels_last)
    yb = torch.randint(0, 10, (batch,), generator=gen).to(device)
    for _ in range(3):
        _step(model, opt, xb, yb, amp, device)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        _step(model, opt, xb, yb, amp, device)
    _sync(device)
    return steps * batch / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=None,
                    help="timed steps (netmorph: steps per epoch) [20 on CPU, 390 on CUDA]")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--workers", default=None,
                    help="baseline DataLoader worker counts [0,2 on CPU, 4,8 on CUDA]")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--compile", action="store_true", help="netmorph side: torch.compile")
    ap.add_argument("--variants", action="store_true",
                    help="also time model-only steps with channels_last and bf16 autocast")
    args = ap.parse_args()
    print(machine_line(), flush=True)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    steps = args.steps or (390 if cuda else 20)
    workers = [int(w) for w in (args.workers or ("4,8" if cuda else "0,2")).split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)
    what = torch.cuda.get_device_name(device) if cuda else \
        (platform.processor() or platform.machine())
    print(f"# ResNet-20 training, batch {args.batch}, {steps} timed steps; {what}, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads; load average {os.getloadavg()[0]:.1f}")
    ds = data.synthetic(n_train=steps * args.batch, n_test=args.batch)

    results: dict[str, list[float]] = {}

    def record(name: str, value: float) -> None:
        results.setdefault(name, []).append(value)
        print(f"  {name:<32} {value:10,.0f} images/s", flush=True)

    for r in range(args.rounds):
        print(f"round {r + 1}/{args.rounds}")
        record("netmorph train.train", run_netmorph(ds, args.batch, device, args.compile))
        for w in workers:
            record(f"baseline DataLoader, {w} workers",
                   run_baseline(ds, args.batch, steps, w, device))
        record("model only (fp32)", run_model_only(args.batch, steps, device))
        if args.variants:
            record("netmorph --precision bf16",
                   run_netmorph(ds, args.batch, device, args.compile, "bf16"))
            record("model only, channels_last", run_model_only(args.batch, steps, device,
                                                               channels_last=True))
            record("model only, bf16 autocast", run_model_only(args.batch, steps, device,
                                                               amp=True))
            record("model only, channels_last+bf16",
                   run_model_only(args.batch, steps, device, channels_last=True, amp=True))

    ours = results["netmorph train.train"]
    print(f"\n{args.rounds} rounds (load average now {os.getloadavg()[0]:.1f}); ratios are "
          f"taken within each round, then the median:")
    print(f"  {'':<32} {'best':>10} {'median':>10}   netmorph ÷ it (per round)")
    for k, v in results.items():
        ratios = [a / b for a, b in zip(ours, v, strict=True)]
        print(f"  {k:<32} {max(v):10,.0f} {statistics.median(v):10,.0f}   "
              f"{statistics.median(ratios):5.2f}×  ({', '.join(f'{r:.2f}' for r in ratios)})")
    base = [max(v[r] for k, v in results.items() if k.startswith("baseline"))
            for r in range(args.rounds)]
    ratio = statistics.median(a / b for a, b in zip(ours, base, strict=True))
    target = "≥ 30,000 images/s" if cuda else "≥ 1.5× the best baseline"
    print(f"netmorph / best baseline: {ratio:.2f}× (median over rounds); netmorph "
          f"{statistics.median(ours):,.0f} images/s (target {target})")
    if "netmorph --precision bf16" in results:
        bf16 = results["netmorph --precision bf16"]
        r16 = statistics.median(a / b for a, b in zip(bf16, base, strict=True))
        print(f"netmorph --precision bf16 / best (float32) baseline: {r16:.2f}×; "
              f"{statistics.median(bf16):,.0f} images/s")

if __name__ == "__main__":
    main()
