"""Issue 20, item 3: a user's own data as ``--dataset PATH``: an ``.npz`` and an image folder.

Every reference is the data the test itself wrote (PNG is lossless: the pixels read back
must be the ones written); each bad input is one ``DataError`` naming what is wrong.
"""

from __future__ import annotations

import numpy as np
import pytest

from netmorph_cli.errors import DataError
from netmorph_cli.training.data import is_user_data, load_dataset

PIL = pytest.importorskip("PIL.Image")


def arrays(n_train: int = 12, n_test: int = 6, k: int = 3, hw: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    return {"x_train": rng.integers(0, 256, (n_train, hw, hw, 3), dtype=np.uint8),
            "y_train": np.arange(n_train) % k,
            "x_test": rng.integers(0, 256, (n_test, hw, hw, 3), dtype=np.uint8),
            "y_test": np.arange(n_test) % k}


def test_an_npz_is_read_with_its_classes_from_the_labels(tmp_path):
    a = arrays(k=3)
    np.savez(tmp_path / "mine.npz", **a)
    path = str(tmp_path / "mine.npz")
    assert is_user_data(path) and not is_user_data("cifar10")
    d = load_dataset(path)
    assert d.num_classes == 3 and d.name == path and d.source == path
    for k in a:
        assert np.array_equal(getattr(d, k), a[k])
    assert d.y_train.dtype == np.int64


@pytest.mark.parametrize("change,match", [
    (lambda a: a.update(y_train=a["y_train"].astype(np.float32)), "integer class indices"),
    (lambda a: a.update(y_train=a["y_train"].reshape(-1, 1)), "1-D"),
    (lambda a: a.update(y_train=a["y_train"] * 2), r"class(es)? 1.* no training images"),
    (lambda a: a.update(y_test=-a["y_test"] - 1), "negative labels"),
    (lambda a: a.update(x_test=a["x_test"][:, :4]), "both splits must have one image size"),
    (lambda a: a.update(x_train=a["x_train"][..., :1]), r"uint8 \(N, H, W, 3\)"),
])
def test_a_bad_npz_is_one_clear_error(tmp_path, change, match):
    a = arrays()
    change(a)
    np.savez(tmp_path / "bad.npz", **a)
    with pytest.raises(DataError, match=match):
        load_dataset(str(tmp_path / "bad.npz"))


def test_a_missing_npz_is_an_error(tmp_path):
    with pytest.raises(DataError, match="no data file"):
        load_dataset(str(tmp_path / "nope.npz"))


def write_folder(root, a, names=("cat", "dog", "eel")):
    for split in ("train", "test"):
        for i, (x, y) in enumerate(zip(a[f"x_{split}"], a[f"y_{split}"], strict=True)):
            d = root / split / names[y]
            d.mkdir(parents=True, exist_ok=True)
            PIL.fromarray(x).save(d / f"{i:03d}.png")
    return root


def test_an_image_folder_is_read_pixel_for_pixel(tmp_path):
    a = arrays(k=3)
    root = write_folder(tmp_path / "imgs", a)
    (root / "train" / "cat" / "notes.txt").write_text("not an image: skipped")
    d = load_dataset(str(root))
    assert d.num_classes == 3 and "cat, dog, eel" in d.source
    for split in ("train", "test"):
        x, y = a[f"x_{split}"], a[f"y_{split}"]
        order = np.argsort(y, kind="stable")  # the reader goes class by class, file by file
        assert np.array_equal(getattr(d, f"x_{split}"), x[order])
        assert np.array_equal(getattr(d, f"y_{split}"), y[order])


def test_jpeg_and_greyscale_images_come_in_as_rgb(tmp_path):
    root = tmp_path / "jpg"
    for split in ("train", "test"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            PIL.fromarray(np.full((8, 8), 200 if c == "a" else 50, np.uint8)).save(
                root / split / c / "x.jpg")
    d = load_dataset(str(root))
    assert d.x_train.shape == (2, 8, 8, 3) and list(d.y_train) == [0, 1]
    assert abs(int(d.x_train[0].mean()) - 200) <= 2 and abs(int(d.x_train[1].mean()) - 50) <= 2


@pytest.mark.parametrize("damage,match", [
    (lambda r: (r / "test" / "eel").rename(r / "test" / "fish"), "same class folders"),
    (lambda r: [f.unlink() for f in (r / "test" / "dog").iterdir()], "dog holds no .png"),
    (lambda r: PIL.fromarray(np.zeros((9, 8, 3), np.uint8)).save(r / "train" / "dog" / "z.png"),
     "every image must have one size"),
    (lambda r: (r / "train" / "dog" / "zz.png").write_bytes(b"not a png"), "cannot read image"),
    (lambda r: __import__("shutil").rmtree(r / "test"), "no test/ folder"),
])
def test_a_bad_image_folder_is_one_clear_error(tmp_path, damage, match):
    root = write_folder(tmp_path / "imgs", arrays(k=3))
    damage(root)
    with pytest.raises(DataError, match=match):
        load_dataset(str(root))
