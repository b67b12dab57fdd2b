"""The held-out validation split a search selects on (issue 21): a fixed, seeded part of
the *training* set (never the test set), the same on every resume, recorded by its seed,
size and a digest of its indices so that a resumed run can prove it holds out the same
images."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

import numpy as np

from ..errors import DataError
from ..training.readers import Dataset


@dataclass(frozen=True)
class Split:
    """Training and validation sets cut from one data set's training images."""

    train: Dataset  # the rest of the training images (its test split: the validation set)
    val_indices: np.ndarray  # into the original training set, sorted
    seed: int
    digest: str  # sha256 of the validation indices (int64, little-endian)

    def record(self) -> dict[str, object]:
        return {"seed": self.seed, "size": int(len(self.val_indices)), "sha256": self.digest}


def validation_split(data: Dataset, fraction: float = 0.1, seed: int = 0) -> Split:
    """Hold out ``fraction`` of ``data``'s training images (a seeded uniform draw, not
    stratified by class). The returned set trains on the rest and its
    "test" split is the held-out part, so the train loop's per-epoch test error is the
    validation error; ``data``'s own test images are not in it."""
    n = len(data.y_train)
    k = int(round(fraction * n))
    if not 0 < fraction < 1 or k < 1 or k >= n:
        raise DataError(f"a validation fraction of {fraction} of {n} training images leaves "
                        f"no validation or no training images")
    order = np.random.default_rng(seed).permutation(n)
    val = np.sort(order[:k])
    keep = np.ones(n, dtype=bool)
    keep[val] = False
    train = replace(data, name=f"{data.name} (train minus validation)",
                    x_train=data.x_train[keep], y_train=data.y_train[keep],
                    x_test=data.x_train[val], y_test=data.y_train[val],
                    source=f"{data.source}, validation split seed {seed} ({k} images)")
    digest = hashlib.sha256(val.astype("<i8").tobytes()).hexdigest()
    return Split(train, val, seed, digest)
