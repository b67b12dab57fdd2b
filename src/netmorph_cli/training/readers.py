"""The arrays of a data set and their one validation: ``Dataset``, the ``.npz`` reader that
checks every member's header before numpy allocates, and ``checked``, which every reader's
arrays go through (dtype, shape, labels, both splits of one image size)."""

from __future__ import annotations

import math
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..base.limits import MAX_INPUT_SIDE, check_memory, format_bytes
from ..errors import DataError


@dataclass(frozen=True)
class Augment:
    """A data set's training augmentation (``data.augment``): a random crop of the image
    padded by ``pad`` pixels (0: none) and, with ``flip``, a random horizontal mirror."""

    pad: int = 4
    flip: bool = True


@dataclass(frozen=True)
class Dataset:
    """A labelled image set as uint8 NHWC arrays."""

    name: str
    num_classes: int
    x_train: np.ndarray  # (N, H, W, 3) uint8
    y_train: np.ndarray  # (N,) int64
    x_test: np.ndarray
    y_test: np.ndarray
    source: str  # where it came from, for messages and metrics
    augment: Augment = Augment()  # its training augmentation


SPLITS = ("x_train", "y_train", "x_test", "y_test")


def read_npz_arrays(path: Path) -> dict[str, np.ndarray]:
    """An ``.npz`` of ``SPLITS``: every member's ``.npy`` header is read and checked (dtype,
    shape, the bytes it declares against the member's size and the memory available) before
    numpy allocates anything."""
    try:
        with zipfile.ZipFile(path) as z:
            headers = {k: _npy_header(z, k, path) for k in SPLITS}
            _check_headers(headers, path)
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in SPLITS}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error,
            RuntimeError, NotImplementedError) as exc:  # damaged, encrypted, unsupported
        raise DataError(f"cannot read {path}: {exc}") from None
    except MemoryError:
        raise DataError(f"cannot read {path}: not enough memory") from None
    return arrays


def _npy_header(z: zipfile.ZipFile, key: str, path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of member ``key.npy``, read from its header alone."""
    try:
        info = z.getinfo(f"{key}.npy")
    except KeyError:
        raise DataError(f"cannot read {path}: no array {key!r} (an .npz of "
                        f"{', '.join(SPLITS)} is expected)") from None
    with z.open(info) as f:
        try:
            version = np.lib.format.read_magic(f)
            read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                    else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read(f, max_header_size=10_000)
        except (ValueError, SyntaxError, TypeError) as exc:
            raise DataError(f"cannot read {path}: {key} is not a .npy array ({exc})") from None
        offset = f.tell()
    if dtype.hasobject:
        raise DataError(f"cannot read {path}: {key} holds Python objects ({dtype}); netmorph reads "
                        f"numeric arrays only")
    need = math.prod(shape) * dtype.itemsize
    if offset + need != info.file_size:
        held = format_bytes(max(info.file_size - offset, 0))
        raise DataError(f"cannot read {path}: {key} declares {shape} {dtype} "
                        f"({format_bytes(need)}) but its member holds {held}: truncated or "
                        f"corrupt")
    return tuple(shape), dtype


def _check_headers(h: dict[str, tuple[tuple[int, ...], np.dtype]], path: Path) -> None:
    """What can be refused from the headers: image dtype and shape, label shape and kind,
    the same image size in both splits, and the memory all four arrays need."""
    for split in ("train", "test"):
        (xs, xd), (ys, yd) = h[f"x_{split}"], h[f"y_{split}"]
        if xd != np.uint8 or len(xs) != 4 or xs[-1] != 3:
            raise DataError(f"{path}: x_{split} must be uint8 (N, H, W, 3), got {xd} {xs}")
        if max(xs[1:3]) > MAX_INPUT_SIDE:
            raise DataError(f"{path}: x_{split} images are {xs[1]}×{xs[2]}, above the "
                            f"{MAX_INPUT_SIDE}-pixel limit")
        _check_labels_header(ys, yd, xs[0], split, path)
    if h["x_train"][0][1:] != h["x_test"][0][1:]:
        raise DataError(f"{path}: training images are {_hw(h['x_train'][0])} and test images "
                        f"{_hw(h['x_test'][0])}: both splits must have one image size")
    need = sum(math.prod(s) * d.itemsize for s, d in h.values())
    # read once, then normalized to float32 for training: 4 bytes per pixel on top
    pixels = sum(math.prod(h[k][0]) for k in ("x_train", "x_test"))
    check_memory(need + 4 * pixels, f"reading {path}")


def _hw(shape: tuple[int, ...]) -> str:
    return f"{shape[1]}×{shape[2]}×{shape[3]}"


def _check_labels_header(shape: tuple[int, ...], dtype: np.dtype, n: int, split: str,
                         source: str | Path) -> None:
    if len(shape) != 1:
        raise DataError(f"{source}: y_{split} must be 1-D (one label per image), got shape "
                        f"{shape}")
    if dtype.kind not in "iu":
        raise DataError(f"{source}: y_{split} must hold integer class indices, got {dtype}"
                        + (" (float labels would be truncated)" if dtype.kind == "f" else ""))
    if shape[0] != n:
        raise DataError(f"{source}: {shape[0]} labels for {n} {split} images (one label per "
                        f"image is needed)")


def checked(name: str, classes: int, a: dict[str, np.ndarray], source: str,
            augment: Augment = Augment()) -> Dataset:
    """Every reader's data, checked alike: uint8 (N, H, W, 3) images of one size in both
    splits, 1-D integer labels (one per image) in 0..classes-1, images in both splits."""
    for split in ("train", "test"):
        x, y = a[f"x_{split}"], a[f"y_{split}"]
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
            raise DataError(f"{source}: x_{split} must be uint8 (N, H, W, 3), got {x.dtype} "
                            f"{x.shape}")
        _check_labels_header(y.shape, y.dtype, len(x), split, source)
        if len(x) == 0:
            raise DataError(f"{source}: the {split} split has no images")
        if y.min() < 0 or y.max() >= classes:
            raise DataError(f"{source}: labels of {split} outside 0..{classes - 1} "
                            f"(found {y.min()}..{y.max()})")
    if a["x_train"].shape[1:] != a["x_test"].shape[1:]:
        raise DataError(f"{source}: training images are {_hw(a['x_train'].shape)} and test "
                        f"images {_hw(a['x_test'].shape)}: both splits must have one image size")
    return Dataset(name, classes, a["x_train"], a["y_train"].astype(np.int64),
                   a["x_test"], a["y_test"].astype(np.int64), source, augment)


