"""Evaluation and the data a network sees: normalization, seeded draws, top-1 error, the
training batches of calibration and train-mode verification."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import DataError
from ..network.description import Network, check_forward
from .data import CIFAR_MEAN, CIFAR_STD, Dataset, load_dataset, to_tensor


def normalization(net: Network) -> tuple[tuple[float, ...], tuple[float, ...]]:
    norm = net.meta.get("normalization") or {}
    return tuple(norm.get("mean", CIFAR_MEAN)), tuple(norm.get("std", CIFAR_STD))


def seeded(*parts: int) -> torch.Generator:
    seed = 0
    for p in parts:
        seed = (seed * 1_000_003 + p) % (2**63 - 1)
    return torch.Generator().manual_seed(seed)


@torch.no_grad()
def top1_error(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
               batch_size: int | None = None, amp: bool = False,
               progress: Callable[[int, int], None] | None = None) -> float:
    """Fraction of ``x`` misclassified by ``model`` (put in eval mode here);
    ``progress(images done, images)`` after each batch."""
    if batch_size is None:
        # CPU: 100 keeps every activation under glibc's 32 MB mmap threshold; at 1000 each
        # op maps fresh pages and page faults make eval 3-5× slower. Logits are the same.
        batch_size = 1000 if x.device.type == "cuda" else 100
    was = model.training
    model.eval()
    wrong = 0
    for i in range(0, len(x), batch_size):
        with torch.autocast(x.device.type, torch.bfloat16, enabled=amp):
            logits = model(x[i:i + batch_size])
        wrong += int((logits.argmax(1) != y[i:i + batch_size]).sum())
        if progress is not None:
            progress(min(i + batch_size, len(x)), len(x))
    model.train(was)
    return wrong / max(len(x), 1)


@dataclass(frozen=True)
class EvalResult:
    top1_error: float
    samples: int
    dataset: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def evaluate(net: Network, dataset: str, data_dir: str | Path | None = None,
             device: torch.device | str = "cpu", batch_size: int | None = None,
             progress: Callable[[int, int], None] | None = None) -> EvalResult:
    """Top-1 error on the test split, with the normalization stored in the checkpoint
    (``progress`` as ``top1_error``'s)."""
    data = load_dataset(dataset, data_dir)
    check_fits(net, data)
    batch = batch_size or (1000 if torch.device(device).type == "cuda" else 100)
    check_forward(net.description, min(batch, len(data.x_test)), torch.float32, "eval",
                  extra=4 * data.x_test.size, device=device)
    mean, std = normalization(net)
    x = to_tensor(data.x_test, mean, std, device)
    y = torch.from_numpy(data.y_test).to(device)
    model = net.module(torch.float32, device)
    return EvalResult(top1_error(model, x, y, batch_size, progress=progress), len(y),
                      data.source)


def check_fits(net: Network, data: Dataset) -> None:
    want = list(net.description["input"])
    have = [3, *data.x_test.shape[1:3]]
    if want != have:
        raise DataError(f"the network takes {want[1]}×{want[2]} inputs, {data.name} has "
                        f"{have[1]}×{have[2]} images")
    if net.description["num_classes"] != data.num_classes:
        raise DataError(f"the network has {net.description['num_classes']} classes, "
                        f"{data.name} has {data.num_classes}")


def training_batches(net: Network, dataset: str, data_dir: str | Path | None = None, *,
                     batches: int, batch_size: int = 128, seed: int = 0, purpose: str = "",
                     device: torch.device | str = "cpu", data: Dataset | None = None
                     ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``batches`` batches of ``batch_size`` training images (a seeded random draw without
    replacement, no augmentation), normalized as the checkpoint says, with their labels: the
    inputs of calibration and of train-mode verification. ``purpose`` ("calibrate",
    "verify") picks an independent draw for each use of one seed, so a verification does
    not reuse the calibration's images. Fewer batches when the set is smaller; a
    ``DataError`` when the data do not fit the network or hold less than one batch."""
    data = data or load_dataset(dataset, data_dir)
    check_fits(net, data)
    n = min(batches, len(data.x_train) // batch_size)
    if n < 1:
        raise DataError(f"{data.name} has {len(data.x_train)} training images, fewer than "
                        f"one batch of {batch_size}")
    mean, std = normalization(net)
    stream = int.from_bytes(purpose.encode()[:7], "little")
    gen = seeded(seed, stream, 1)
    pick = torch.randperm(len(data.x_train), generator=gen)[:n * batch_size].numpy()
    x = to_tensor(data.x_train[pick], mean, std, device)
    y = torch.from_numpy(data.y_train[pick]).to(device)
    return list(zip(x.split(batch_size), y.split(batch_size), strict=True))
