"""Data sets: .npz and official-archive readers, the restricted unpickler, downloads against a
local HTTP server, the synthetic set, batched augmentation and normalization.

The official CIFAR "python version" files are rebuilt here in miniature: protocol-2 pickles
of dicts with bytes keys (b"data" a uint8 (N, 3072) array, b"labels" / b"fine_labels" lists),
the numpy globals spelled ``numpy.core.multiarray`` as in the published files, in a
``cifar-10-batches-py`` / ``cifar-100-python`` folder or the ``*-python.tar.gz`` archive.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import io
import os
import pickle
import socket
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from netmorph_cli.errors import DataError
from netmorph_cli.training import data

CIFAR10_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]


# --------------------------------------------------------------------------------------------
# official-layout builders

def images(n: int, seed: int) -> np.ndarray:
    """(n, 32, 32, 3) uint8 NHWC, random."""
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def batch_bytes(x: np.ndarray, labels: np.ndarray, label_key: bytes = b"labels",
                extra: dict | None = None) -> bytes:
    """One official batch: rows of 3072 bytes = 1024 red, 1024 green, 1024 blue, each
    row-major 32×32; a protocol-2 pickle as Python 2 wrote it (numpy 1.x globals)."""
    rows = np.ascontiguousarray(x.transpose(0, 3, 1, 2).reshape(len(x), 3072))
    d = {b"batch_label": b"training batch 1 of 5", label_key: [int(v) for v in labels],
         b"data": rows, b"filenames": [b"img_%05d.png" % i for i in range(len(x))]}
    d.update(extra or {})
    raw = pickle.dumps(d, protocol=2)
    return raw.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def meta_bytes(cifar100: bool) -> bytes:
    if cifar100:
        d = {b"fine_label_names": [b"class%d" % i for i in range(100)],
             b"coarse_label_names": [b"super%d" % i for i in range(20)]}
    else:
        d = {b"label_names": [b"class%d" % i for i in range(10)], b"num_cases_per_batch": 3,
             b"num_vis": 3072}
    return pickle.dumps(d, protocol=2)


def cifar10_members(per_batch: int = 3, n_test: int = 4
                    ) -> tuple[dict[str, bytes], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    members, xs, ys = {}, [], []
    for i, name in enumerate(CIFAR10_TRAIN):
        x = images(per_batch, seed=i)
        y = (np.arange(per_batch) + i) % 10
        members[name] = batch_bytes(x, y)
        xs.append(x)
        ys.append(y)
    x_test, y_test = images(n_test, seed=99), np.arange(n_test) % 10
    members["test_batch"] = batch_bytes(x_test, y_test)
    members["batches.meta"] = meta_bytes(False)
    return members, np.concatenate(xs), np.concatenate(ys), x_test, y_test


def cifar100_members(n_train: int = 7, n_test: int = 5):
    x_train, y_train = images(n_train, seed=1), np.array([0, 99, 5, 42, 17, 63, 8][:n_train])
    x_test, y_test = images(n_test, seed=2), np.array([99, 1, 50, 2, 98][:n_test])
    members = {
        "train": batch_bytes(x_train, y_train, b"fine_labels",
                             {b"coarse_labels": [int(v) // 5 for v in y_train]}),
        "test": batch_bytes(x_test, y_test, b"fine_labels",
                            {b"coarse_labels": [int(v) // 5 for v in y_test]}),
        "meta": meta_bytes(True),
    }
    return members, x_train, y_train, x_test, y_test


def write_folder(root: Path, folder: str, members: dict[str, bytes]) -> Path:
    d = root / folder
    d.mkdir(parents=True)
    for name, raw in members.items():
        (d / name).write_bytes(raw)
    return d


def archive_bytes(folder: str, members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, raw in members.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return buf.getvalue()


def write_official(root: Path, form: str, archive: str, folder: str,
                   members: dict[str, bytes]) -> None:
    """The official python-version files as the ``archive`` (.tar.gz) or its ``folder``."""
    if form == "archive":
        (root / archive).write_bytes(archive_bytes(folder, members))
    else:
        write_folder(root, folder, members)


def write_npz(path: Path, x_train, y_train, x_test, y_test, **extra) -> Path:
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, **extra)
    return path


# --------------------------------------------------------------------------------------------
# .npz

def test_npz_is_read_as_is(tmp_path):
    x_tr, x_te = images(6, 0), images(3, 1)
    y_tr, y_te = np.array([0, 1, 2, 9, 3, 4]), np.array([5, 6, 7])
    write_npz(tmp_path / "cifar10.npz", x_tr, y_tr, x_te, y_te)
    ds = data.load_dataset("cifar10", tmp_path, download=False)
    assert ds.name == "cifar10" and ds.num_classes == 10
    assert np.array_equal(ds.x_train, x_tr) and np.array_equal(ds.x_test, x_te)
    assert np.array_equal(ds.y_train, y_tr) and ds.y_train.dtype == np.int64
    assert np.array_equal(ds.y_test, y_te)
    assert ds.source == str(tmp_path / "cifar10.npz")


def test_npz_cifar100_mini_has_100_classes(tmp_path):
    write_npz(tmp_path / "cifar100-mini.npz", images(2, 0), np.array([0, 99]), images(1, 1),
              np.array([57]))
    ds = data.load_dataset("cifar100-mini", tmp_path, download=False)
    assert ds.num_classes == 100 and list(ds.y_train) == [0, 99]


def test_npz_is_preferred_to_the_archive(tmp_path):
    write_npz(tmp_path / "cifar10.npz", images(2, 0), np.array([0, 1]), images(1, 1),
              np.array([2]))
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"not an archive")
    assert len(data.load_dataset("cifar10", tmp_path, download=False).x_train) == 2


def test_data_dir_default_env_and_explicit(tmp_path, monkeypatch):
    monkeypatch.delenv("NETMORPH_DATA", raising=False)
    assert data.data_dir() == Path.home() / ".cache" / "netmorph"
    monkeypatch.setenv("NETMORPH_DATA", str(tmp_path / "env"))
    assert data.data_dir() == tmp_path / "env"
    assert data.data_dir(tmp_path / "x") == tmp_path / "x"  # --data-dir wins


@pytest.mark.parametrize("case, needle", [
    ("float images", "must be uint8 (N, H, W, 3)"),
    ("label count", "one label per image"),
    ("label range", "labels of train outside 0..9"),
    ("missing key", "cannot read"),
    ("not a zip", "cannot read"),
    ("truncated", "cannot read"),
])
def test_bad_npz_is_a_data_error(tmp_path, case, needle):
    path = tmp_path / "cifar10.npz"
    x, y = images(4, 0), np.arange(4)
    if case == "float images":
        write_npz(path, x.astype(np.float32), y, x, y)
    elif case == "label count":
        write_npz(path, x, y[:3], x, y)
    elif case == "label range":
        write_npz(path, x, np.array([0, 1, 10, 2]), x, y)
    elif case == "missing key":
        np.savez(path, x_train=x, y_train=y, x_test=x)
    elif case == "not a zip":
        path.write_bytes(b"PK\x03\x04 not a zip")
    else:
        write_npz(path, x, y, x, y)
        path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DataError, match=needle.replace("(", r"\(").replace(")", r"\)")
                       .replace(".", r"\.")):
        data.load_dataset("cifar10", tmp_path, download=False)


def test_npz_with_pickled_objects_is_refused_without_unpickling(tmp_path):
    marker = tmp_path / "pwned"
    x = images(2, 0)
    np.savez(tmp_path / "cifar10.npz", x_train=x, y_train=np.array([0, 1]), x_test=x,
             y_test=np.array([Payload(marker), 1], dtype=object))
    with pytest.raises(DataError, match="cannot read"):
        data.load_dataset("cifar10", tmp_path, download=False)
    assert not marker.exists()


# --------------------------------------------------------------------------------------------
# official python-version layout

def test_official_row_layout_is_channel_planes_row_major(tmp_path):
    """Independent of the builder's inverse: byte 1 is red at (row 0, col 1); byte
    1024 + 32·2 + 3 is green at (row 2, col 3); byte 2048 + 32·31 + 31 is blue at (31, 31)."""
    rows = np.zeros((1, 3072), np.uint8)
    rows[0, 1], rows[0, 1024 + 32 * 2 + 3], rows[0, 2048 + 32 * 31 + 31] = 11, 22, 33
    raw = pickle.dumps({b"data": rows, b"labels": [7]}, protocol=2)
    members = {m: raw for m in [*CIFAR10_TRAIN, "test_batch"]}
    write_folder(tmp_path, "cifar-10-batches-py", members)
    ds = data.load_dataset("cifar10", tmp_path, download=False)
    img = ds.x_test[0]  # (32, 32, 3)
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    assert img[0, 1, 0] == 11 and img[2, 3, 1] == 22 and img[31, 31, 2] == 33
    assert int(img.astype(np.int64).sum()) == 66
    assert ds.y_test.tolist() == [7] and len(ds.x_train) == 5


@pytest.mark.parametrize("form", ["archive", "folder"])
def test_cifar10_official_files(tmp_path, form):
    members, x_tr, y_tr, x_te, y_te = cifar10_members()
    write_official(tmp_path, form, "cifar-10-python.tar.gz", "cifar-10-batches-py", members)
    ds = data.load_dataset("cifar10", tmp_path, download=False)
    assert ds.num_classes == 10
    assert np.array_equal(ds.x_train, x_tr)  # data_batch_1 … 5 in order, NHWC
    assert np.array_equal(ds.y_train, y_tr) and ds.y_train.dtype == np.int64
    assert np.array_equal(ds.x_test, x_te) and np.array_equal(ds.y_test, y_te)
    assert ds.x_train.flags.c_contiguous


def test_numpy2_written_batches_are_read_too(tmp_path):
    """Batches re-pickled with numpy ≥ 2 name numpy._core.multiarray."""
    x = images(2, 0)
    raw = pickle.dumps({b"data": np.ascontiguousarray(x.transpose(0, 3, 1, 2).reshape(2, -1)),
                        b"labels": [3, 4]}, protocol=2)
    assert b"numpy._core.multiarray" in raw
    write_folder(tmp_path, "cifar-10-batches-py", {m: raw for m in [*CIFAR10_TRAIN, "test_batch"]})
    ds = data.load_dataset("cifar10", tmp_path, download=False)
    assert np.array_equal(ds.x_test, x) and ds.y_test.tolist() == [3, 4]


@pytest.mark.parametrize("form", ["archive", "folder"])
def test_cifar100_official_files_use_fine_labels(tmp_path, form):
    members, x_tr, y_tr, x_te, y_te = cifar100_members()
    write_official(tmp_path, form, "cifar-100-python.tar.gz", "cifar-100-python", members)
    ds = data.load_dataset("cifar100", tmp_path, download=False)
    assert ds.num_classes == 100
    assert np.array_equal(ds.x_train, x_tr) and np.array_equal(ds.x_test, x_te)
    assert ds.y_train.tolist() == y_tr.tolist()  # fine, not coarse (coarse would be v // 5)
    assert ds.y_test.tolist() == y_te.tolist()


def test_folder_missing_a_batch(tmp_path):
    members, *_ = cifar10_members()
    del members["data_batch_3"]
    write_folder(tmp_path, "cifar-10-batches-py", members)
    with pytest.raises(DataError, match="missing data_batch_3"):
        data.load_dataset("cifar10", tmp_path, download=False)


def test_archive_missing_a_batch(tmp_path):
    members, *_ = cifar10_members()
    del members["test_batch"]
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(
        archive_bytes("cifar-10-batches-py", members))
    with pytest.raises(DataError, match="archive has no cifar-10-batches-py/test_batch"):
        data.load_dataset("cifar10", tmp_path, download=False)


@pytest.mark.parametrize("damage", ["truncated", "flipped bytes", "garbage", "empty"])
def test_corrupt_archive_is_a_data_error(tmp_path, damage):
    members, *_ = cifar10_members()
    good = archive_bytes("cifar-10-batches-py", members)
    bad = {"truncated": good[:len(good) // 2],
           "flipped bytes": good[:200] + bytes(b ^ 0xFF for b in good[200:400]) + good[400:],
           "garbage": os.urandom(600),
           "empty": b""}[damage]
    path = tmp_path / "cifar-10-python.tar.gz"
    path.write_bytes(bad)
    with pytest.raises(DataError) as info:
        data.load_dataset("cifar10", tmp_path, download=False)
    assert str(path) in str(info.value) and "delete it" in str(info.value)


@pytest.mark.parametrize("case, needle", [
    ("wrong label key", "not a CIFAR batch"),  # a CIFAR-100 batch where CIFAR-10 belongs
    ("ragged rows", "not a CIFAR batch"),
    ("not a dict", "not a CIFAR batch"),
    ("not a pickle", "not a CIFAR batch"),
])
def test_foreign_batches_are_a_data_error(tmp_path, case, needle):
    members, *_ = cifar10_members()
    x = images(2, 0)
    members["data_batch_2"] = {
        "wrong label key": batch_bytes(x, np.array([1, 2]), b"fine_labels"),
        "ragged rows": pickle.dumps({b"data": np.zeros((2, 3000), np.uint8),
                                     b"labels": [1, 2]}, protocol=2),
        "not a dict": pickle.dumps([b"data", 1, 2], protocol=2),
        "not a pickle": b"\x00\x01 nothing here",
    }[case]
    write_folder(tmp_path, "cifar-10-batches-py", members)
    with pytest.raises(DataError, match=needle) as info:
        data.load_dataset("cifar10", tmp_path, download=False)
    assert "data_batch_2" in str(info.value)


class Payload:
    """Unpickling this runs ``Path(marker).touch()``-equivalent code via os.system."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def test_the_payload_would_run_under_plain_pickle(tmp_path):
    """Shows the malicious batch below is live: plain pickle.loads runs it."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps({b"data": Payload(marker)}, protocol=2))  # noqa: S301
    assert marker.exists()


@pytest.mark.parametrize("form", ["archive", "folder"])
def test_restricted_unpickler_refuses_a_malicious_batch(tmp_path, form):
    marker = tmp_path / "pwned"
    members, *_ = cifar10_members()
    members["data_batch_1"] = pickle.dumps(
        {b"data": Payload(marker), b"labels": [0]}, protocol=2)
    root = tmp_path / "data"
    root.mkdir()
    write_official(root, form, "cifar-10-python.tar.gz", "cifar-10-batches-py", members)
    with pytest.raises(DataError, match=r"data_batch_1: not a CIFAR batch \(.*forbidden"):
        data.load_dataset("cifar10", root, download=False)
    assert not marker.exists()


@pytest.mark.parametrize("obj", [
    functools.partial(print, "x"),  # functools.partial / builtins.print
    {b"data": bytearray(b"x")},  # builtins.bytearray: harmless, but not in official batches
])
def test_read_batch_admits_only_what_official_batches_hold(obj):
    with pytest.raises(DataError, match="forbidden object"):
        data.read_batch(pickle.dumps(obj, protocol=2), "batch")


# --------------------------------------------------------------------------------------------
# missing data and downloads

def test_missing_official_set_offline_names_file_and_directory(tmp_path):
    with pytest.raises(DataError) as info:
        data.load_dataset("cifar10", tmp_path, download=False)
    msg = str(info.value)
    assert "cifar-10-python.tar.gz" in msg and str(tmp_path) in msg
    assert "\n" not in msg


def test_missing_mini_set_names_the_npz_and_directory(tmp_path):
    with pytest.raises(DataError) as info:
        data.load_dataset("cifar10-mini", tmp_path)  # no download for mini sets
    assert "cifar10-mini.npz" in str(info.value) and str(tmp_path) in str(info.value)


def test_unknown_dataset(tmp_path):
    with pytest.raises(DataError, match="unknown data set 'mnist'"):
        data.load_dataset("mnist", tmp_path)


@pytest.fixture
def http_server(tmp_path):
    """A static HTTP server on 127.0.0.1 serving ``tmp_path/served``: yields (dir, url)."""
    served = tmp_path / "served"
    served.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    try:
        server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Quiet, directory=str(served)))
    except OSError as exc:
        pytest.skip(f"no loopback HTTP server here: {exc}")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def _official(monkeypatch, url: str, md5: str) -> None:
    monkeypatch.setattr(data, "OFFICIAL_URL", url)
    spec = data.DATASETS["cifar10"]
    assert spec.official is not None
    monkeypatch.setitem(data.DATASETS, "cifar10", dataclasses.replace(
        spec, official=dataclasses.replace(spec.official, md5=md5)))


def test_download_from_local_server(tmp_path, http_server, monkeypatch):
    served, url = http_server
    members, x_tr, y_tr, x_te, y_te = cifar10_members(per_batch=80)
    archive = archive_bytes("cifar-10-batches-py", members)
    assert len(archive) > 1 << 20  # more than one read chunk: progress is called repeatedly
    (served / "cifar-10-python.tar.gz").write_bytes(archive)
    _official(monkeypatch, url, hashlib.md5(archive).hexdigest())
    calls = []
    root = tmp_path / "cache"  # created by the download
    ds = data.load_dataset("cifar10", root, progress=lambda done, total: calls.append(
        (done, total)))
    assert (root / "cifar-10-python.tar.gz").read_bytes() == archive
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-python.tar.gz"]  # no .part
    assert np.array_equal(ds.x_train, x_tr) and np.array_equal(ds.y_test, y_te)
    assert len(calls) >= 2 and calls[-1] == (len(archive), len(archive))
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    # found locally the second time: the server is not asked again
    (served / "cifar-10-python.tar.gz").unlink()
    assert np.array_equal(data.load_dataset("cifar10", root).x_test, x_te)


def test_download_with_wrong_md5_leaves_no_file(tmp_path, http_server, monkeypatch):
    served, url = http_server
    members, *_ = cifar10_members()
    archive = archive_bytes("cifar-10-batches-py", members)
    (served / "cifar-10-python.tar.gz").write_bytes(archive)
    _official(monkeypatch, url, hashlib.md5(b"something else").hexdigest())
    root = tmp_path / "cache"
    with pytest.raises(DataError, match="corrupt: MD5 " + hashlib.md5(archive).hexdigest()):
        data.load_dataset("cifar10", root)
    assert list(root.iterdir()) == []


def test_download_of_a_missing_url_is_the_offline_error(tmp_path, http_server, monkeypatch):
    _, url = http_server  # serves nothing: 404
    _official(monkeypatch, url, "0" * 32)
    with pytest.raises(DataError) as info:
        data.load_dataset("cifar10", tmp_path / "cache")
    assert "cifar-10-python.tar.gz" in str(info.value) and "404" in str(info.value)
    assert list((tmp_path / "cache").iterdir()) == []


class _Response:
    """A urlopen response that sends ``body`` in chunks, then fails with ``error`` if given."""

    def __init__(self, body: bytes, error: Exception | None = None):
        self.parts = [body[i:i + (1 << 20)] for i in range(0, len(body), 1 << 20)]
        self.error = error
        self.headers = {"Content-Length": str(len(body) + (1 if error else 0))}

    def read(self, n: int) -> bytes:
        if self.parts:
            return self.parts.pop(0)
        if self.error is not None:
            raise self.error
        return b""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_a_download_cut_off_midway_is_a_data_error_and_leaves_nothing(tmp_path, monkeypatch):
    body = bytes(range(256)) * 8192  # 2 MiB: two chunks, then the connection drops
    monkeypatch.setattr(data.urllib.request, "urlopen",
                        lambda url, timeout: _Response(body, ConnectionResetError("reset")))
    with pytest.raises(DataError, match=r"download of http://x/a.tar.gz failed: reset"):
        data.fetch("http://x/a.tar.gz", tmp_path / "a.tar.gz", hashlib.md5(body).hexdigest())
    assert list(tmp_path.iterdir()) == []


def test_download_is_written_under_the_output_policy(tmp_path, monkeypatch):
    """The bytes go through ``outputs.write_file``: a temp file beside the target, fsynced
    before the rename, no ``.part`` or temp file left; a failing disk is a ``WriteError``
    (exit 1), not a download error, and leaves nothing."""
    from netmorph_cli.errors import WriteError
    from netmorph_cli.io import outputs

    body = b"archive bytes" * 1000
    md5 = hashlib.md5(body).hexdigest()
    monkeypatch.setattr(data.urllib.request, "urlopen", lambda url, timeout: _Response(body))
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync")
        real_fsync(fd)

    def replace(src, dst) -> None:
        events.append(f"replace {Path(src).name} → {Path(dst).name}")
        real_replace(src, dst)

    monkeypatch.setattr(outputs.os, "fsync", fsync)
    monkeypatch.setattr(outputs.os, "replace", replace)
    dest = tmp_path / "a.tar.gz"
    assert data.fetch("http://x/a.tar.gz", dest, md5) == dest
    assert dest.read_bytes() == body and list(tmp_path.iterdir()) == [dest]
    # the temp file fsynced, renamed onto the target, then the directory fsynced
    assert [e.split(" ")[0] for e in events] == ["fsync", "replace", "fsync"], events
    assert events[1].startswith("replace .a.tar.gz.") and events[1].endswith(".tmp → a.tar.gz")
    monkeypatch.setattr(outputs.os, "replace", real_replace)

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(outputs.os, "fsync", full)
    other = tmp_path / "b.tar.gz"
    with pytest.raises(WriteError, match="cannot write .*b.tar.gz.*No space left on device"):
        data.fetch("http://x/b.tar.gz", other, md5)
    assert sorted(tmp_path.iterdir()) == [dest]


def test_unreachable_server_is_the_offline_error(tmp_path, monkeypatch):
    with socket.socket() as sock:  # bound, never listening: connections are refused
        sock.bind(("127.0.0.1", 0))
        _official(monkeypatch, f"http://127.0.0.1:{sock.getsockname()[1]}/", "0" * 32)
        root = tmp_path / "cache"
        with pytest.raises(DataError) as info:
            data.load_dataset("cifar10", root)
    msg = str(info.value)
    assert "cannot be downloaded: put cifar-10-python.tar.gz" in msg
    assert str(root) in msg and "download failed" in msg and "\n" not in msg
    assert list(root.iterdir()) == []


# --------------------------------------------------------------------------------------------
# synthetic

def test_synthetic_is_deterministic_and_well_formed():
    a, b = data.synthetic(64, 32, seed=3), data.synthetic(64, 32, seed=3)
    for k in ("x_train", "y_train", "x_test", "y_test"):
        assert np.array_equal(getattr(a, k), getattr(b, k))
    assert a.x_train.shape == (64, 32, 32, 3) and a.x_train.dtype == np.uint8
    assert a.x_test.shape == (32, 32, 32, 3) and a.y_train.dtype == np.int64
    assert a.num_classes == 10 and 0 <= a.y_train.min() and a.y_train.max() <= 9
    c = data.synthetic(64, 32, seed=4)
    assert not np.array_equal(a.x_train, c.x_train)
    assert data.load_dataset("synthetic").x_train.shape == (4096, 32, 32, 3)


def test_synthetic_classes_are_separable_by_their_prototype():
    """Nearest class mean (from the train split) classifies most test images."""
    ds = data.synthetic(1000, 200, seed=0)
    xt = ds.x_train.reshape(len(ds.x_train), -1).astype(np.float64)
    means = np.stack([xt[ds.y_train == c].mean(0) for c in range(10)])
    xe = ds.x_test.reshape(len(ds.x_test), -1).astype(np.float64)
    pred = ((xe[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    assert (pred == ds.y_test).mean() > 0.9


# --------------------------------------------------------------------------------------------
# tensors and augmentation

def test_to_tensor_normalizes_to_nchw():
    x = np.zeros((7, 4, 5, 3), np.uint8)
    x[:, :, :, 1] = 255
    x[2, 3, 4, 2] = 51  # 0.2
    mean, std = (0.5, 0.25, 0.125), (0.5, 0.25, 2.0)
    t = data.to_tensor(x, mean, std, chunk=3)  # chunks of 3, 3, 1
    assert t.shape == (7, 3, 4, 5) and t.dtype == torch.float32
    assert torch.all(t[:, 0] == -1.0)  # (0 - 0.5) / 0.5
    assert torch.all(t[:, 1] == 3.0)  # (1 - 0.25) / 0.25
    assert t[2, 2, 3, 4].item() == pytest.approx((0.2 - 0.125) / 2.0, abs=1e-7)
    assert t[2, 2, 0, 0].item() == pytest.approx(-0.0625, abs=1e-7)
    t64 = data.to_tensor(x, mean, std, dtype=torch.float64)
    assert t64.dtype == torch.float64 and torch.allclose(t64.float(), t, atol=1e-6)


def _reference_augment(x: torch.Tensor, pad: int, fill: torch.Tensor, dy: int, dx: int,
                       flip: bool, i: int) -> torch.Tensor:
    """Sample ``i`` padded with ``fill``, cropped at (dy, dx), then flipped: explicit loops."""
    _, c, h, w = x.shape
    out = torch.empty(c, h, w, dtype=x.dtype)
    for ch in range(c):
        for r in range(h):
            for col in range(w):
                src_c = w - 1 - col if flip else col  # flip after the crop
                pr, pc = r + dy - pad, src_c + dx - pad  # position in the unpadded image
                inside = 0 <= pr < h and 0 <= pc < w
                out[ch, r, col] = x[i, ch, pr, pc] if inside else fill[ch]
    return out


def _which_crop(x, y, i, pad, fill):
    """Every (dy, dx, flip) whose reference output equals sample ``i`` of ``y`` exactly."""
    return [(dy, dx, f) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
            for f in (False, True)
            if torch.equal(_reference_augment(x, pad, fill, dy, dx, f, i), y[i])]


def test_augment_is_a_padded_crop_and_flip_of_each_sample():
    """Non-square (5×6) two-channel images with distinct values: every output is exactly
    one pad-2 crop (+ optional flip) of its own input, padded with the per-channel fill."""
    n, c, h, w, pad = 24, 2, 5, 6, 2
    x = torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(0))
    fill = torch.tensor([-1.75, 0.5])
    y = data.augment(x, torch.Generator().manual_seed(1), pad=pad, fill=fill)
    assert y.shape == x.shape and y.dtype == x.dtype
    found = [_which_crop(x, y, i, pad, fill) for i in range(n)]
    assert all(len(f) == 1 for f in found), found
    crops = [f[0] for f in found]
    assert len({(dy, dx) for dy, dx, _ in crops}) > 5  # really random offsets
    assert {f for _, _, f in crops} == {False, True}


def test_augment_pads_with_fill_and_zero_by_default():
    x = torch.full((400, 3, 4, 4), 7.0)
    fill = torch.tensor([-1.0, -2.0, -3.0])
    y = data.augment(x, torch.Generator().manual_seed(0), pad=4, fill=fill)
    values = {ch: set(y[:, ch].unique().tolist()) for ch in range(3)}
    assert values == {0: {7.0, -1.0}, 1: {7.0, -2.0}, 2: {7.0, -3.0}}
    z = data.augment(x, torch.Generator().manual_seed(0), pad=4)
    assert set(z.unique().tolist()) == {0.0, 7.0}
    # a pad-4 crop of a 4×4 image can be all padding, all image, or anything between
    inside = (y[:, 0] == 7.0).flatten(1).sum(1)
    assert inside.min() == 0 and inside.max() == 16


def test_augment_is_deterministic_under_its_generator_and_covers_all_offsets():
    x = torch.arange(1, 2000 * 1 * 3 * 3 + 1, dtype=torch.float32).view(2000, 1, 3, 3)
    a = data.augment(x, torch.Generator().manual_seed(5), pad=1)
    b = data.augment(x, torch.Generator().manual_seed(5), pad=1)
    c = data.augment(x, torch.Generator().manual_seed(6), pad=1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # global RNG untouched: augment draws only from its generator
    torch.manual_seed(0)
    before = torch.rand(3)
    torch.manual_seed(0)
    data.augment(x, torch.Generator().manual_seed(5), pad=1)
    assert torch.equal(torch.rand(3), before)
    # pad 1: 3 × 3 offsets × 2 flips = 18 outcomes, each about 1/18 of 2000 = 111
    fill = torch.tensor([0.0])  # no fill: zeros (x has no zeros, so crops stay unambiguous)
    xs = x[:200]
    outcomes = [_which_crop(xs, a, i, 1, fill)[0] for i in range(len(xs))]
    counts = {o: outcomes.count(o) for o in set(outcomes)}
    assert len(counts) == 18


def test_augmentation_is_the_data_sets_and_flip_only_mirrors():
    """``Augment`` travels with the data set: pad 0 without flip is the identity; without
    flip the crops are the same as with it (the same numbers are drawn), and with it each
    image is its crop or the crop mirrored."""
    import torch

    from netmorph_cli.training.data import DATASETS, augment
    from netmorph_cli.training.readers import Augment

    assert all(s.augment == Augment(4, True) for s in DATASETS.values())
    x = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(augment(x, torch.Generator().manual_seed(1), pad=0, flip=False), x)
    flipped = augment(x, torch.Generator().manual_seed(2), pad=2)
    plain = augment(x, torch.Generator().manual_seed(2), pad=2, flip=False)
    for a, b in zip(flipped, plain, strict=True):
        assert torch.equal(a, b) or torch.equal(a, b.flip(-1))
    assert any(not torch.equal(a, b) for a, b in zip(flipped, plain, strict=True))


def test_training_uses_the_data_sets_augmentation(monkeypatch, tmp_path):
    import dataclasses

    from netmorph_cli.network import zoo
    from netmorph_cli.training import train as train_mod
    from netmorph_cli.training.data import synthetic
    from netmorph_cli.training.readers import Augment

    seen = []
    real = train_mod.augment

    def spy(x, gen, pad=4, fill=None, flip=True):
        seen.append((pad, flip))
        return real(x, gen, pad=pad, fill=fill, flip=flip)

    monkeypatch.setattr(train_mod, "augment", spy)
    data = dataclasses.replace(synthetic(n_train=64, n_test=16), augment=Augment(2, False))
    cfg = train_mod.TrainConfig(dataset="synthetic", epochs=1, batch_size=32, lr=0.01)
    train_mod.train(zoo.create("resnet20"), cfg, tmp_path / "t.safetensors", dataset=data)
    assert seen == [(2, False), (2, False)]
