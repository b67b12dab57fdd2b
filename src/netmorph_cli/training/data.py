"""Data sets: CIFAR-10/100 from the official archives or ``.npz`` files, and a synthetic set.

Images are held as uint8 NHWC arrays (what the files hold) and turned into normalized
float tensors on the training device in one go; augmentation then runs there in batches
(``augment``), with no per-sample Python.

Every data set is one record of the registry ``DATASETS`` (name, classes, image size,
normalization, files); ``--dataset`` choices and the loader read it, so a new set is one
entry. Where a set is looked for, under ``--data-dir`` (default ``$NETMORPH_DATA``, else
``~/.cache/netmorph``), in this order: its ``.npz`` (x_train, y_train, x_test, y_test),
the extracted official folder, the official ``*-python.tar.gz`` archive. A missing archive
is downloaded from the official source with its MD5 checked when the network is reachable;
offline the error says which file to put where. The official batches are pickles: they are
read with a restricted unpickler that admits only what they contain (dicts, lists, strings,
bytes, numbers and numpy arrays), never with plain ``pickle.load``.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import os
import pickle
import tarfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from ..errors import DataError
from ..io.outputs import write_file
from ..network.archs import CIFAR_MEAN, CIFAR_STD
from .readers import SPLITS, Augment, Dataset, checked, read_npz_arrays
from .user_data import read_user_data

if TYPE_CHECKING:
    import torch

OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/"  # the CIFAR page, home of both archives


@dataclass(frozen=True)
class OfficialArchive:
    """An official python-version archive: what to fetch, its checksum, what it holds."""

    file: str  # e.g. cifar-10-python.tar.gz
    md5: str
    folder: str  # the folder it extracts to (also looked for, extracted, in the data dir)
    train: tuple[str, ...]  # members of ``folder`` with the training batches
    test: str  # the member with the test batch
    label_key: bytes  # the labels' key in every batch
    site: str | None = None  # where ``file`` is downloaded from [default: OFFICIAL_URL]

    @property
    def url(self) -> str:
        return (self.site or OFFICIAL_URL) + self.file


@dataclass(frozen=True)
class DatasetSpec:
    """One data set netmorph knows: a registry record, read by ``load_dataset`` and by the
    CLI's ``--dataset`` choices."""

    name: str
    classes: int
    image_size: tuple[int, int]  # (H, W)
    mean: tuple[float, float, float]  # per-channel normalization, [0, 1] units
    std: tuple[float, float, float]
    npz: str | None  # file name of its .npz in the data dir; None: not read from files
    official: OfficialArchive | None = None  # the official archive, read or downloaded
    make: Callable[[DatasetSpec], Dataset] | None = None  # made here instead (synthetic)
    augment: Augment = Augment()  # training augmentation: pad-4 crop + flip (CIFAR's)

    def __post_init__(self) -> None:
        if self.npz is None and self.make is None:
            raise ValueError(f"data set {self.name!r} needs an .npz file name or a maker")


_CIFAR10 = OfficialArchive("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a",
                           "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)),
                           "test_batch", b"labels")
_CIFAR100 = OfficialArchive("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85",
                            "cifar-100-python", ("train",), "test", b"fine_labels")
# CIFAR-100 too is normalized with CIFAR-10's training statistics, as training always has
DATASETS: dict[str, DatasetSpec] = {s.name: s for s in (
    DatasetSpec("cifar10", 10, (32, 32), CIFAR_MEAN, CIFAR_STD, "cifar10.npz", _CIFAR10),
    DatasetSpec("cifar100", 100, (32, 32), CIFAR_MEAN, CIFAR_STD, "cifar100.npz", _CIFAR100),
    DatasetSpec("cifar10-mini", 10, (32, 32), CIFAR_MEAN, CIFAR_STD, "cifar10-mini.npz"),
    DatasetSpec("cifar100-mini", 100, (32, 32), CIFAR_MEAN, CIFAR_STD, "cifar100-mini.npz"),
    DatasetSpec("synthetic", 10, (32, 32), CIFAR_MEAN, CIFAR_STD, None,
                make=lambda spec: synthetic(classes=spec.classes)),
)}


def dataset_spec(name: str) -> DatasetSpec:
    """The registry record of data set ``name``."""
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(f"unknown data set {name!r} (choose from {', '.join(DATASETS)}, or "
                        f"give a path: an .npz of {', '.join(SPLITS)}, or an image folder "
                        f"with train/<class>/ and test/<class>/)") from None


def is_user_data(name: str) -> bool:
    """``--dataset PATH``: a user's own ``.npz`` or image folder, not a registry name."""
    return name not in DATASETS and (name.endswith(".npz") or Path(name).expanduser().is_dir())


def data_dir(explicit: str | Path | None = None) -> Path:
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("NETMORPH_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "netmorph"


def load_dataset(name: str, root: str | Path | None = None, *, download: bool = True,
                 progress: Callable[[int, int], None] | None = None) -> Dataset:
    """Find (or fetch) data set ``name`` under ``root`` and read it; a path (``is_user_data``)
    is read as the user's own ``.npz`` or image folder (``user_data.py``)."""
    if is_user_data(name):
        return read_user_data(Path(name).expanduser())
    spec = dataset_spec(name)
    if spec.make is not None:
        return spec.make(spec)
    assert spec.npz is not None  # a set that is not made here is read from files
    base = data_dir(root)
    npz = base / spec.npz
    if npz.is_file():
        return _read_npz(spec, npz)
    official = spec.official
    if official is None:
        raise DataError(f"data set {name!r} not found: put {spec.npz} in {base} "
                        f"(or pass --data-dir)")
    if (base / official.folder).is_dir():
        return _read_official(spec, official, base / official.folder)
    tar = base / official.file
    if not tar.is_file():
        if not download:
            raise _missing(spec, official, base)
        fetch(official.url, tar, official.md5, progress=progress,
              offline_error=_missing(spec, official, base))
    return _read_official(spec, official, tar)


def _missing(spec: DatasetSpec, official: OfficialArchive, base: Path) -> DataError:
    return DataError(f"data set {spec.name!r} not found and cannot be downloaded: put "
                     f"{official.file} (from {official.url}) or {spec.npz} in {base} "
                     f"(or pass --data-dir / set NETMORPH_DATA)")


# -- readers -----------------------------------------------------------------------------

def _read_npz(spec: DatasetSpec, path: Path) -> Dataset:
    """A registry set's ``.npz`` (``read_npz_arrays``), checked against its classes."""
    return checked(spec.name, spec.classes, read_npz_arrays(path), str(path), spec.augment)



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


def _read_official(spec: DatasetSpec, official: OfficialArchive, path: Path) -> Dataset:
    folder, label_key = official.folder, official.label_key
    h, w = spec.image_size

    def members() -> dict[str, bytes]:
        wanted = [*official.train, official.test]
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
                xs.append(data.reshape(-1, 3, h, w).transpose(0, 2, 3, 1))
                ys.append(np.asarray(b[label_key], dtype=np.int64).reshape(-1))
            except (KeyError, ValueError, TypeError) as exc:
                raise DataError(f"{path}/{m}: not a CIFAR batch (no {label_key.decode()!r}"
                                f" or rows not {3 * h * w} bytes: {exc})") from None
        return np.ascontiguousarray(np.concatenate(xs)), np.concatenate(ys)

    x_train, y_train = split(list(official.train))
    x_test, y_test = split([official.test])
    return checked(spec.name, spec.classes, {"x_train": x_train, "y_train": y_train,
                                              "x_test": x_test, "y_test": y_test}, str(path),
                   spec.augment)


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
    """Download ``url`` to ``dest``, checking its MD5; ``progress(done, total)``.

    The bytes stream into ``outputs.write_file``'s temp file beside ``dest`` (fsynced, then
    renamed into place, the directory fsynced), so ``dest`` appears only complete and
    checked; a failed or corrupt download leaves nothing. A network failure is a
    ``DataError`` (``offline_error`` with the reason appended, when given); a failing disk
    is the policy's ``WriteError``.
    """
    def failed(exc: BaseException) -> DataError:
        if offline_error is not None:
            return DataError(f"{offline_error} [download failed: {exc}]")
        return DataError(f"download of {url} failed: {exc}")

    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        resp = urllib.request.urlopen(url, timeout=timeout)
    except (OSError, TimeoutError, http.client.HTTPException) as exc:  # URLError is an OSError
        raise failed(exc) from None

    def download(out: IO[bytes]) -> None:  # into the policy's temp file
        digest, done = hashlib.md5(), 0
        total = int(resp.headers.get("Content-Length") or 0)
        while True:
            try:
                chunk = resp.read(1 << 20)
            except (OSError, TimeoutError, http.client.HTTPException) as exc:
                raise failed(exc) from None  # the network, not the disk: not a WriteError
            if not chunk:
                break
            out.write(chunk)
            digest.update(chunk)
            done += len(chunk)
            if progress:
                progress(done, total)
        if digest.hexdigest() != md5:  # raised before the rename: nothing is published
            raise DataError(f"download of {url} is corrupt: MD5 {digest.hexdigest()}, "
                            f"expected {md5}")

    with resp:
        write_file(dest, download, force=True)
    return dest


# -- tensors on the device --------------------------------------------------------------

def to_tensor(x: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...],
              device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
              chunk: int = 10000) -> torch.Tensor:
    """uint8 NHWC → normalized float NCHW on ``device`` (converted in chunks); ``dtype``
    float32 unless given."""
    import torch  # here, not at the top: the CLI reads the registry without torch

    dtype = dtype or torch.float32
    m = torch.tensor(mean, dtype=dtype, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=dtype, device=device).view(1, 3, 1, 1)
    out = torch.empty((len(x), x.shape[3], x.shape[1], x.shape[2]), dtype=dtype, device=device)
    for i in range(0, len(x), chunk):
        part = torch.from_numpy(x[i:i + chunk]).to(device).permute(0, 3, 1, 2)
        out[i:i + chunk] = (part.to(dtype) / 255 - m) / s
    return out


def augment(x: torch.Tensor, gen: torch.Generator, pad: int = 4,
            fill: torch.Tensor | None = None, flip: bool = True) -> torch.Tensor:
    """Pad-``pad`` random crop + random horizontal flip (``flip``) of a whole batch, on its
    device (a data set's ``Augment``). The same numbers are drawn with or without ``flip``,
    so turning it off changes only the mirroring.

    ``fill`` (C,) is the padding value per channel; pass the normalized value of a black
    pixel (−mean/std) to pad like torchvision's RandomCrop before normalization. Random
    numbers come from ``gen`` on the CPU, so a seed gives the same crops on every device.
    """
    import torch

    n, _, h, w = x.shape
    dev = x.device
    # the padded batch holds x's values bit for bit ((x - f) + f would round them)
    xp = x.new_zeros((n, x.shape[1], h + 2 * pad, w + 2 * pad))
    if fill is not None:
        xp[:] = fill.to(x).view(1, -1, 1, 1)
    xp[:, :, pad:pad + h, pad:pad + w] = x
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(dev)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(dev)
    mirror = (torch.rand(n, generator=gen) < 0.5).to(dev) & flip
    rows = (torch.arange(h, device=dev)[None, :] + dy[:, None])  # (n, h)
    cols = torch.arange(w, device=dev)[None, :]
    cols = torch.where(mirror[:, None], w - 1 - cols, cols) + dx[:, None]  # (n, w)
    idx_n = torch.arange(n, device=dev)[:, None, None, None]
    idx_c = torch.arange(x.shape[1], device=dev)[None, :, None, None]
    return xp[idx_n, idx_c, rows[:, None, :, None], cols[:, None, None, :]]
