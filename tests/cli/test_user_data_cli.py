"""``--dataset PATH`` from the command line: ``eval`` on an image folder, ``train`` on an
``.npz``, and the bad cases as one Error line with nothing written."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cli_helpers import assert_one_error_line, run_main

from netmorph_cli.io import checkpoint as ck
from netmorph_cli.network import zoo

pytestmark = pytest.mark.usefixtures("one_thread")
PIL = pytest.importorskip("PIL.Image")


def cifar_like(n_train: int = 20, n_test: int = 10, k: int = 10) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {"x_train": rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8),
            "y_train": np.arange(n_train) % k,
            "x_test": rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8),
            "y_test": np.arange(n_test) % k}


@pytest.fixture
def net(tmp_path):
    path = tmp_path / "r20.safetensors"
    ck.save(zoo.create("resnet20", seed=0), path)
    return path


def test_eval_on_an_image_folder(capsys, tmp_path, net):
    a = cifar_like()
    for split in ("train", "test"):
        for i, (x, y) in enumerate(zip(a[f"x_{split}"], a[f"y_{split}"], strict=True)):
            d = tmp_path / "imgs" / split / f"class{y}"
            d.mkdir(parents=True, exist_ok=True)
            PIL.fromarray(x).save(d / f"{i}.png")
    code, out, err = run_main(capsys, "eval", str(net), "--dataset", str(tmp_path / "imgs"),
                              "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["samples"] == 10 and 0.0 <= result["top1_error"] <= 1.0
    assert "image folder: 10 classes" in result["dataset"]


def test_train_on_an_npz(capsys, tmp_path, net):
    np.savez(tmp_path / "mine.npz", **cifar_like())
    out_path = tmp_path / "t.safetensors"
    code, out, err = run_main(capsys, "train", str(net), "--dataset", str(tmp_path / "mine.npz"),
                              "--epochs", "1", "--batch-size", "10", "--device", "cpu",
                              "--quiet", "-o", str(out_path))
    assert code == 0, err
    entry = ck.load(out_path).history[-1]
    assert entry["op"] == "train" and entry["dataset"] == str(tmp_path / "mine.npz")


def test_bad_user_data_is_one_error_line(capsys, tmp_path, net):
    code, out, err = run_main(capsys, "eval", str(net), "--dataset", str(tmp_path / "no.npz"))
    assert_one_error_line(code, out, err, "no data file")
    a = cifar_like(k=3)
    np.savez(tmp_path / "three.npz", **a)
    code, out, err = run_main(capsys, "eval", str(net), "--dataset", str(tmp_path / "three.npz"))
    assert_one_error_line(code, out, err, "the network has 10 classes", "has 3")
    before = sorted(p.name for p in tmp_path.iterdir())
    code, out, err = run_main(capsys, "train", str(net), "--dataset",
                              str(tmp_path / "three.npz"), "--epochs", "1", "-o",
                              str(tmp_path / "t.safetensors"))
    assert_one_error_line(code, out, err, "the network has 10 classes")
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    code, out, err = run_main(capsys, "eval", str(net), "--dataset", "cifar11")
    assert_one_error_line(code, out, err, "neither a data set netmorph knows", "FILE.npz")
