"""A user's own data as a data set: ``--dataset PATH`` for an ``.npz`` or an image folder.

- ``file.npz`` of ``x_train``, ``y_train``, ``x_test``, ``y_test``: uint8 (N, H, W, 3) images
  and integer labels 0..K-1, read by the same header-checked reader as the registry's sets
  (``readers.read_npz_arrays``); K is the largest label + 1, and every class must have
  training images.
- a folder ``train/<class>/*.png|jpg|jpeg`` and ``test/<class>/…``: the classes are the
  sorted names of ``train/``'s subfolders, ``test/`` must have the same ones; every image is
  read with Pillow as RGB and all must have one size (netmorph does not resize).

Both end in ``readers.checked``, the one validation every reader goes through (dtype, shape,
label range, both splits non-empty and of one image size). Normalization is the network's
(stored in its checkpoint), augmentation the registry's default (pad-4 crop + flip).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..base.limits import MAX_INPUT_SIDE, check_memory
from ..errors import DataError
from .readers import Dataset, checked, read_npz_arrays

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def read_user_data(path: Path) -> Dataset:
    """The data set at ``path``: an ``.npz`` file or an image folder (see the module)."""
    if path.suffix == ".npz":
        if not path.is_file():
            raise DataError(f"no data file {path}")
        arrays = read_npz_arrays(path)
        return checked(str(path), _classes(arrays, path), arrays, str(path))
    if path.is_dir():
        return read_image_folder(path)
    raise DataError(f"{path} is neither an .npz file nor an image folder")


def _classes(arrays: dict[str, np.ndarray], path: Path) -> int:
    """K = the largest label + 1; each of 0..K-1 must have training images. (1-D integer
    labels, one per image, are ``read_npz_arrays``' header checks.)"""
    y_train, y_test = arrays["y_train"], arrays["y_test"]
    for split, y in (("train", y_train), ("test", y_test)):
        if len(y) and y.min() < 0:
            raise DataError(f"{path}: y_{split} has negative labels (class indices are ≥ 0)")
    if len(y_train) == 0:
        raise DataError(f"{path}: the train split has no images")
    k = int(max(y_train.max(), y_test.max() if len(y_test) else 0)) + 1
    counts = np.bincount(y_train, minlength=k)
    empty = [int(c) for c in np.flatnonzero(counts == 0)]
    if empty:
        raise DataError(f"{path}: class{'es' if len(empty) > 1 else ''} "
                        f"{', '.join(map(str, empty[:8]))}{', …' if len(empty) > 8 else ''} "
                        f"of 0..{k - 1} {'have' if len(empty) > 1 else 'has'} no training "
                        f"images (labels must be 0..K-1 with every class present)")
    return k


def read_image_folder(root: Path) -> Dataset:
    """``root/train/<class>/*`` and ``root/test/<class>/*`` as a data set."""
    try:
        from PIL import Image
    except ImportError:
        raise DataError("reading an image folder needs Pillow: pip install 'netmorph[images]' "
                        "(or pip install pillow)") from None
    splits = {}
    for split in ("train", "test"):
        folder = root / split
        if not folder.is_dir():
            raise DataError(f"{root}: no {split}/ folder (an image folder holds train/<class>/ "
                            f"and test/<class>/)")
        splits[split] = sorted(d for d in folder.iterdir() if d.is_dir())
    names = [d.name for d in splits["train"]]
    if not names:
        raise DataError(f"{root / 'train'}: no class folders")
    if [d.name for d in splits["test"]] != names:
        extra = sorted({d.name for d in splits["test"]} ^ set(names))
        raise DataError(f"{root}: train/ and test/ must have the same class folders (differ: "
                        f"{', '.join(extra[:8])})")
    files = {split: [(i, f) for i, d in enumerate(dirs) for f in sorted(d.iterdir())
                     if f.suffix.lower() in IMAGE_SUFFIXES]
             for split, dirs in splits.items()}
    for split, dirs in splits.items():
        have = {i for i, _ in files[split]}
        empty = [d.name for i, d in enumerate(dirs) if i not in have]
        if empty:
            raise DataError(f"{root / split}: class folder{'s' if len(empty) > 1 else ''} "
                            f"{', '.join(empty[:8])} {'hold' if len(empty) > 1 else 'holds'} "
                            f"no .png/.jpg images")
    size = _size(Image, files["train"][0][1])
    n = len(files["train"]) + len(files["test"])
    check_memory(n * size[0] * size[1] * 3 * 5, f"reading {n} images of {root}")  # + float32
    arrays = {}
    for split in ("train", "test"):
        x = np.empty((len(files[split]), size[0], size[1], 3), dtype=np.uint8)
        for j, (_, f) in enumerate(files[split]):
            x[j] = _read(Image, f, size)
        arrays[f"x_{split}"] = x
        arrays[f"y_{split}"] = np.array([i for i, _ in files[split]], dtype=np.int64)
    return checked(str(root), len(names), arrays, f"{root} (image folder: {len(names)} classes "
                                                   f"{', '.join(names[:4])}"
                                                   f"{', …' if len(names) > 4 else ''})")


def _size(image_mod: Any, path: Path) -> tuple[int, int]:
    """(H, W) of the first training image, within netmorph's input limit."""
    image = _open(image_mod, path)
    w, h = image.size
    if max(h, w) > MAX_INPUT_SIDE:
        raise DataError(f"{path}: {w}×{h} pixels, above the {MAX_INPUT_SIDE}-pixel limit")
    return h, w


def _open(image_mod: Any, path: Path) -> Any:
    """``PIL.Image.open``, a decompression bomb refused at netmorph's input limit."""
    image_mod.MAX_IMAGE_PIXELS = MAX_INPUT_SIDE * MAX_INPUT_SIDE
    try:
        return image_mod.open(path)
    except Exception as exc:  # noqa: BLE001 - Pillow's many errors (and bombs) are bad input
        raise DataError(f"cannot read image {path}: {exc}") from None


def _read(image_mod: Any, path: Path, size: tuple[int, int]) -> np.ndarray:
    image = _open(image_mod, path)
    if image.size != (size[1], size[0]):
        raise DataError(f"{path}: {image.size[0]}×{image.size[1]} pixels, but the first "
                        f"training image is {size[1]}×{size[0]}: every image must have one "
                        f"size (netmorph does not resize)")
    try:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"cannot read image {path}: {exc}") from None
