"""Data sets: CIFAR-10/100 from the official archives or ``.npz`` files, and a synthetic set.

Images are held as uint8 NHWC arrays (what the files hold) and turned into normalized
float tensors on the training device in one go; augmentation then runs there in batches
(``augment``), with no per-sample Python.

Where a set is looked for, under ``--data-dir`` (default ``$NETMORPH_DATA``, else
``~/.cache/netmorph``), in this order: ``<name>.npz`` (x_train, y_train, x_test, y_test),
the extracted official folder, the official ``*-python.tar.gz`` archive. A missing archive
is downloaded from the official source with its MD5 checked when the network is reachable;
offline the error says which file to put where. The official batches are pickles: they are
read with a restricted unpickler that admits only what they contain (dicts, lists, strings,
bytes, numbers and numpy arrays), never with plain ``pickle.load``.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import DataError

# name → (classes, archive, extracted folder, train members, test member, label key, md5)
_OFFICIAL = {
    "cifar10": (10, "cifar-10-python.tar.gz", "cifar-10-batches-py",
                [f"data_batch_{i}" for i in range(1, 6)], "test_batch", b"labels",
                "c58f30108f718f92721af3b95e74349a"),
    "cifar100": (100, "cifar-100-python.tar.gz", "cifar-100-python", ["train"], "test",
                 b"fine_labels", "eb9058c3a382ffc7106e4002c42a8d85"),
}
OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/"
DATASETS = ("cifar10", "cifar100", "cifar10-mini", "cifar100-mini", "synthetic")
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)  # CIFAR-10 train set, [0, 1] units
CIFAR_STD = (0.2470, 0.2435, 0.2616)


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


def data_dir(explicit: str | Path | None = None) -> Path:
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("NETMORPH_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "netmorph"


def load_dataset(name: str, root: str | Path | None = None, *, download: bool = True,
                 progress: Callable[[int, int], None] | None = None) -> Dataset:
    """Find (or fetch) data set ``name`` under ``root`` and read it."""
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r} (choose from {', '.join(DATASETS)})")
    if name == "synthetic":
        return synthetic()
    base = data_dir(root)
    npz = base / f"{name}.npz"
    if npz.is_file():
        return _read_npz(name, npz)
    if name not in _OFFICIAL:
        raise DataError(f"data set {name!r} not found: put {name}.npz in {base} "
                        f"(or pass --data-dir)")
    classes, archive, folder, _, _, _, md5 = _OFFICIAL[name]
    if (base / folder).is_dir():
        return _read_official(name, base / folder)
    tar = base / archive
    if not tar.is_file():
        if not download:
            raise _missing(name, base)
        fetch(OFFICIAL_URL + archive, tar, md5, progress=progress,
              offline_error=_missing(name, base))
    return _read_official(name, tar)


def _missing(name: str, base: Path) -> DataError:
    archive = _OFFICIAL[name][1]
    return DataError(f"data set {name!r} not found and cannot be downloaded: put {archive} "
                     f"(from {OFFICIAL_URL}{archive}) or {name}.npz in {base} "
                     f"(or pass --data-dir / set NETMORPH_DATA)")


# -- readers -----------------------------------------------------------------------------

def _read_npz(name: str, path: Path) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    classes = 100 if name.startswith("cifar100") else 10
    return _checked(name, classes, arrays, str(path))


def _checked(name: str, classes: int, a: dict[str, np.ndarray], source: str) -> Dataset:
    for split in ("train", "test"):
        x, y = a[f"x_{split}"], a[f"y_{split}"]
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3 or len(x) != len(y):
            raise DataError(f"{source}: x_{split} must be uint8 (N, H, W, 3) with one label "
                            f"per image, got {x.dtype} {x.shape} and {len(y)} labels")
        if len(y) and (y.min() < 0 or y.max() >= classes):
            raise DataError(f"{source}: labels of {split} outside 0..{classes - 1}")
    return Dataset(name, classes, a["x_train"], a["y_train"].astype(np.int64),
                   a["x_test"], a["y_test"].astype(np.int64), source)


class _BatchUnpickler(pickle.Unpickler):
    """Admits only what the official CIFAR batches contain: builtins and numpy arrays."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray",
                                                            "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("builtins", "bytes"),
                ("_codecs", "encode")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"forbidden object {module}.{name}")


def read_batch(raw: bytes, source: str) -> dict[bytes, Any]:
    """One official CIFAR batch (a Python 2 pickle) through the restricted unpickler."""
    try:
        obj = _BatchUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise DataError(f"{source}: not a CIFAR batch ({exc})") from None
    if not isinstance(obj, dict) or b"data" not in obj:
        raise DataError(f"{source}: not a CIFAR batch (no 'data')")
    return obj


def _read_official(name: str, path: Path) -> Dataset:
    classes, _, folder, train_members, test_member, label_key, _ = _OFFICIAL[name]

    def members() -> dict[str, bytes]:
        wanted = [*train_members, test_member]
        if path.is_dir():
            out = {}
            for m in wanted:
                f = path / m
                if not f.is_file():
                    raise DataError(f"{path}: missing {m}")
                out[m] = f.read_bytes()
            return out
        try:
            with tarfile.open(path, "r:gz") as tar:
                out = {}
                for m in wanted:
                    try:
                        fh = tar.extractfile(f"{folder}/{m}")
                    except KeyError:
                        fh = None
                    if fh is None:
                        raise DataError(f"{path}: archive has no {folder}/{m}")
                    out[m] = fh.read()
                return out
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise DataError(f"cannot read {path}: {exc} (delete it to download it again)") \
                from None

    raw = members()

    def split(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for m in names:
            b = read_batch(raw[m], f"{path}/{m}")
            try:
                data = np.asarray(b[b"data"], dtype=np.uint8)
                xs.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
                ys.append(np.asarray(b[label_key], dtype=np.int64).reshape(-1))
            except (KeyError, ValueError, TypeError) as exc:
                raise DataError(f"{path}/{m}: not a CIFAR batch (no {label_key.decode()!r}"
                                f" or rows not 3072 bytes: {exc})") from None
        return np.ascontiguousarray(np.concatenate(xs)), np.concatenate(ys)

    x_train, y_train = split(train_members)
    x_test, y_test = split([test_member])
    return _checked(name, classes, {"x_train": x_train, "y_train": y_train, "x_test": x_test,
                                    "y_test": y_test}, str(path))


def synthetic(n_train: int = 4096, n_test: int = 512, classes: int = 10,
              seed: int = 0) -> Dataset:
    """A learnable 32×32 set made here: each class is a fixed random colour pattern plus
    noise, so a network can drive its error well below chance in a few epochs. 4096
    training images (32 steps of 128 an epoch): with 2048, BN's running statistics had not
    settled after the demo's 2 epochs (train error 25%, test error 88%; 0% and 0% now)."""
    rng = np.random.default_rng(seed)
    protos = rng.uniform(0, 255, size=(classes, 8, 8, 3))
    protos = protos.repeat(4, axis=1).repeat(4, axis=2)  # (classes, 32, 32, 3)

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, classes, size=n)
        x = protos[y] * 0.6 + rng.uniform(0, 255, size=(n, 32, 32, 3)) * 0.4
        return x.clip(0, 255).astype(np.uint8), y.astype(np.int64)

    x_train, y_train = make(n_train)
    x_test, y_test = make(n_test)
    return Dataset("synthetic", classes, x_train, y_train, x_test, y_test,
                   f"synthetic (seed {seed})")


# -- download ----------------------------------------------------------------------------

def fetch(url: str, dest: Path, md5: str, *, progress: Callable[[int, int], None] | None = None,
          offline_error: DataError | None = None, timeout: float = 30.0) -> Path:
    """Download ``url`` to ``dest`` atomically, checking its MD5; ``progress(done, total)``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    digest = hashlib.md5()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0)
            done = 0
            while chunk := resp.read(1 << 20):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        tmp.unlink(missing_ok=True)
        if offline_error is not None:
            raise DataError(f"{offline_error} [download failed: {exc}]") from None
        raise DataError(f"download of {url} failed: {exc}") from None
    if digest.hexdigest() != md5:
        tmp.unlink(missing_ok=True)
        raise DataError(f"download of {url} is corrupt: MD5 {digest.hexdigest()}, "
                        f"expected {md5}")
    os.replace(tmp, dest)
    return dest


# -- tensors on the device --------------------------------------------------------------

def to_tensor(x: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...],
              device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
              chunk: int = 10000) -> torch.Tensor:
    """uint8 NHWC → normalized float NCHW on ``device`` (converted in chunks)."""
    m = torch.tensor(mean, dtype=dtype, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=dtype, device=device).view(1, 3, 1, 1)
    out = torch.empty((len(x), x.shape[3], x.shape[1], x.shape[2]), dtype=dtype, device=device)
    for i in range(0, len(x), chunk):
        part = torch.from_numpy(x[i:i + chunk]).to(device).permute(0, 3, 1, 2)
        out[i:i + chunk] = (part.to(dtype) / 255 - m) / s
    return out


def augment(x: torch.Tensor, gen: torch.Generator, pad: int = 4,
            fill: torch.Tensor | None = None) -> torch.Tensor:
    """Pad-``pad`` random crop + random horizontal flip of a whole batch, on its device.

    ``fill`` (C,) is the padding value per channel; pass the normalized value of a black
    pixel (−mean/std) to pad like torchvision's RandomCrop before normalization. Random
    numbers come from ``gen`` on the CPU, so a seed gives the same crops on every device.
    """
    n, _, h, w = x.shape
    dev = x.device
    # the padded batch holds x's values bit for bit ((x - f) + f would round them)
    xp = x.new_zeros((n, x.shape[1], h + 2 * pad, w + 2 * pad))
    if fill is not None:
        xp[:] = fill.to(x).view(1, -1, 1, 1)
    xp[:, :, pad:pad + h, pad:pad + w] = x
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(dev)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(dev)
    flip = (torch.rand(n, generator=gen) < 0.5).to(dev)
    rows = (torch.arange(h, device=dev)[None, :] + dy[:, None])  # (n, h)
    cols = torch.arange(w, device=dev)[None, :]
    cols = torch.where(flip[:, None], w - 1 - cols, cols) + dx[:, None]  # (n, w)
    idx_n = torch.arange(n, device=dev)[:, None, None, None]
    idx_c = torch.arange(x.shape[1], device=dev)[None, :, None, None]
    return xp[idx_n, idx_c, rows[:, None, :, None], cols[:, None, None, :]]
