"""morph --calibrate, verify --mode train, train's calibration and --recipe, from the CLI.

Values are checked against the files the commands write (info --json, metrics) and against
a training-mode forward pass run here; the exactness of calibration itself is proven in
tests/unit/test_calibrate.py (float64, 1e-10).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from cli_helpers import assert_one_error_line, run_main, write_mini

from netmorph_cli.io import checkpoint as ck
from netmorph_cli.network import zoo

pytestmark = pytest.mark.usefixtures("one_thread")

MODULES = Path(__file__).resolve().parents[2] / "examples" / "modules"


def ok(capsys, *args: str) -> str:
    code, out, err = run_main(capsys, *args)
    assert code == 0, err
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("calibrate")
    ck.save(zoo.create("resnet20", seed=0), d / "parent.safetensors")
    write_mini(d / "data", 256, 64)
    (d / "empty").mkdir()
    return d


@pytest.fixture(scope="module")
def children(files):
    """An uncalibrated and a calibrated 1c1 child of the parent (synthetic data)."""
    from netmorph_cli.cli.commands import main

    for extra, name in (([], "plain"),
                        (["--calibrate", "synthetic", "--calibrate-batches", "4"], "calibrated")):
        with pytest.raises(SystemExit) as info:
            main(["morph", str(files / "parent.safetensors"), "--module", "1c1", *extra,
                  "-o", str(files / f"{name}.safetensors")])
        assert info.value.code in (0, None)
    return files


def test_morph_calibrate_prints_and_records_it(capsys, files):
    out = ok(capsys, "morph", str(files / "parent.safetensors"), "--module", "1c1_half",
             "--calibrate", "synthetic", "--calibrate-batches", "3", "-o",
             str(files / "half.safetensors"))
    assert "calibrated 6 new BN layers on 384 synthetic training images" in out
    assert "check: 4 random inputs in float32" in out
    info = json.loads(ok(capsys, "info", str(files / "half.safetensors"), "--json"))
    entry = info["history"][-1]
    assert entry["calibration"]["images"] == 384 and entry["calibration"]["batches"] == 3
    assert entry["calibration"]["layers"] == entry["new_bn"] and len(entry["new_bn"]) == 6
    table = ok(capsys, "info", str(files / "half.safetensors"))
    # rich may wrap the cell over rows: drop the box lines and the blank cells between
    assert "BN calibrated on 384 synthetic images" in re.sub(r"[\s│]+", " ", table)


def test_morph_calibrate_shows_progress_per_batch(capsys, files, monkeypatch):
    """Calibration can take minutes on a CPU: a heartbeat line on stderr (every 3 s; here
    every batch), counting the batches it was given."""
    from netmorph_cli.cli import report

    monkeypatch.setattr(report, "PLAIN_PROGRESS_EVERY", 0.0)
    monkeypatch.delenv("NETMORPH_PROGRESS", raising=False)
    code, out, err = run_main(capsys, "morph", str(files / "parent.safetensors"), "--module",
                              "1c1_half", "--calibrate", "synthetic", "--calibrate-batches",
                              "3", "-o", str(files / "beat.safetensors"))
    assert code == 0, err
    beats = re.findall(r"calibrating new BN layers: (\d+) of 3 batches, \d+ s", err)
    assert beats == ["1", "2", "3"], err
    monkeypatch.setenv("NETMORPH_PROGRESS", "off")
    code, out, err = run_main(capsys, "morph", str(files / "parent.safetensors"), "--module",
                              "1c1_half", "--calibrate", "synthetic", "--calibrate-batches",
                              "3", "-o", str(files / "quiet.safetensors"))
    assert code == 0 and "calibrating" not in err


def test_verify_train_mode_json_and_the_calibration_effect(capsys, children):
    reports = {}
    for name in ("plain", "calibrated"):
        code, out, err = run_main(capsys, "verify", str(children / "parent.safetensors"),
                                  str(children / f"{name}.safetensors"), "--mode", "train",
                                  "--dataset", "synthetic", "--batches", "3", "--batch-size",
                                  "32", "--json")
        reports[name] = json.loads(out)
        assert code == (0 if reports[name]["passed"] else 1)
    tm = reports["calibrated"]["train_mode"]
    assert set(tm) >= {"parent_loss", "child_loss", "parent_accuracy", "child_accuracy",
                       "max_rel_err", "batches", "batch_size"}
    assert (tm["batches"], tm["batch_size"]) == (3, 32)
    assert reports["calibrated"]["passed"] is True
    assert tm["child_loss"] <= tm["parent_loss"] * 1.10 + 0.01
    # the same parent loss for both children: same images, parent unchanged
    assert tm["parent_loss"] == reports["plain"]["train_mode"]["parent_loss"]
    # calibration brings the train-mode logits much closer (uncalibrated: BN of (0, 1))
    assert tm["max_rel_err"] < 0.2 * reports["plain"]["train_mode"]["max_rel_err"]


def test_verify_train_mode_loss_is_the_parents_train_mode_loss(capsys, children):
    """parent_loss equals a training-mode forward pass run here on the same images."""
    from netmorph_cli.training.train import training_batches

    out = ok(capsys, "verify", str(children / "parent.safetensors"),
             str(children / "calibrated.safetensors"), "--mode", "train", "--dataset",
             "synthetic", "--batches", "2", "--batch-size", "16", "--json")
    net = ck.load(children / "parent.safetensors")
    batches = training_batches(net, "synthetic", batches=2, batch_size=16, purpose="verify")
    model = net.module(torch.float32).train()
    with torch.no_grad():
        losses = [float(torch.nn.functional.cross_entropy(model(x).double(), y))
                  for x, y in batches]
    assert json.loads(out)["train_mode"]["parent_loss"] == pytest.approx(
        sum(losses) / 2, rel=1e-6)


def test_verify_train_mode_fails_a_child_that_does_not_keep_the_loss(capsys, children):
    net = ck.load(children / "calibrated.safetensors")
    net.tensors["linear.weight"] = -net.tensors["linear.weight"] * 5
    ck.save(net, children / "broken.safetensors", force=True)
    code, out, err = run_main(capsys, "verify", str(children / "parent.safetensors"),
                              str(children / "broken.safetensors"), "--mode", "train",
                              "--dataset", "synthetic", "--batches", "2")
    assert code == 1
    assert "FAILED" in out and "child loss limit" in out


@pytest.mark.parametrize("args, needles", [
    (["--mode", "train"], ["--mode train needs --dataset"]),
    (["--dataset", "synthetic"], ["--dataset applies to --mode train"]),
    (["--data-dir", "EMPTY"], ["--data-dir applies to --mode train"]),
    (["--mode", "train", "--dataset", "synthetic", "--tol", "1e-3"], ["--tol applies"]),
    (["--mode", "train", "--dataset", "cifar10", "--data-dir", "EMPTY"],
     ["data set 'cifar10' not found"]),
    (["--mode", "train", "--dataset", "synthetic", "--batches", "0"], ["--batches"]),
])
def test_verify_train_mode_bad_input(capsys, children, args, needles):
    args = [str(children / "empty") if a == "EMPTY" else a for a in args]
    code, out, err = run_main(capsys, "verify", str(children / "parent.safetensors"),
                              str(children / "calibrated.safetensors"), *args)
    assert_one_error_line(code, out, err, *needles)


def test_morph_calibrate_bad_input_writes_nothing(capsys, files, tmp_path):
    parent = str(files / "parent.safetensors")
    out_path = tmp_path / "out.safetensors"
    ck.save(zoo.create("resnet20", num_classes=100, seed=0), tmp_path / "c100.safetensors")
    ck.save(zoo.create("resnet18", seed=0), tmp_path / "r18.safetensors")
    cases = [
        ([parent, "--module", "1c1", "--calibrate", "cifar10", "--data-dir",
          str(files / "empty")], ["data set 'cifar10' not found"]),
        ([str(tmp_path / "c100.safetensors"), "--module", "1c1", "--calibrate",
          "synthetic"], ["100 classes", "synthetic has 10"]),
        ([str(tmp_path / "r18.safetensors"), "--module", "1c1", "--calibrate",
          "synthetic"], ["224×224 inputs", "32×32"]),
        ([parent, "--module", "1c1", "--calibrate", "synthetic", "--paper-bn"],
         ["choose one"]),
        ([parent, "--module", "1c1", "--data-dir", str(files / "data")],
         ["--data-dir applies to --calibrate"]),
        ([parent, "--module", str(MODULES / "A.json"), "--at", "layer1.0.conv1", "--no-bn",
          "--calibrate", "synthetic"], ["nothing to calibrate"]),
    ]
    for args, needles in cases:
        code, out, err = run_main(capsys, "morph", *args, "-o", str(out_path))
        assert_one_error_line(code, out, err, *needles)
        assert not out_path.exists()


def test_train_calibrates_an_uncalibrated_child_first(capsys, children, tmp_path):
    common = ["--dataset", "cifar10-mini", "--data-dir", str(children / "data"), "--epochs",
              "1", "--batch-size", "64", "--quiet"]
    out = ok(capsys, "train", str(children / "plain.safetensors"), *common,
             "-o", str(tmp_path / "a.safetensors"))
    assert "calibrated 12 new BN layers on 256 cifar10-mini training images before the " \
           "first step" in out
    morph = [h for h in ck.load(tmp_path / "a.safetensors").history if h["op"] == "preset"]
    assert morph[-1]["calibration"]["images"] == 256
    assert morph[-1]["calibration"]["layers"] == morph[-1]["new_bn"]
    out = ok(capsys, "train", str(children / "plain.safetensors"), *common, "--no-calibrate",
             "-o", str(tmp_path / "b.safetensors"))
    assert "calibrated" not in out
    morph = [h for h in ck.load(tmp_path / "b.safetensors").history if h["op"] == "preset"]
    assert "calibration" not in morph[-1]
    # a child calibrated at morph time is trained as it is (no second calibration)
    out = ok(capsys, "train", str(children / "calibrated.safetensors"), *common,
             "-o", str(tmp_path / "c.safetensors"))
    assert "calibrated" not in out
    morph = [h for h in ck.load(tmp_path / "c.safetensors").history if h["op"] == "preset"]
    assert morph[-1]["calibration"]["dataset"] == "synthetic"


def test_train_calibration_shows_progress_unless_quiet(capsys, children, tmp_path,
                                                       monkeypatch):
    from netmorph_cli.cli import report

    monkeypatch.setattr(report, "PLAIN_PROGRESS_EVERY", 0.0)
    monkeypatch.delenv("NETMORPH_PROGRESS", raising=False)
    out = ok(capsys, "train", str(children / "plain.safetensors"), "--dataset", "cifar10-mini",
             "--data-dir", str(children / "data"), "--epochs", "1", "--batch-size", "64",
             "-o", str(tmp_path / "p.safetensors"))
    beats = re.findall(r"calibrating new BN layers: (\d+) of (\d+) batches", out)
    assert beats and beats[-1][0] == beats[-1][1] and int(beats[0][0]) == 1, out
    assert out.index("calibrating new BN layers") < out.index("calibrated 12 new BN layers")


def test_recipe_continue_is_cosine_from_its_lr(capsys, children, tmp_path):
    out_path = tmp_path / "cont.safetensors"
    ok(capsys, "train", str(children / "parent.safetensors"), "--dataset", "cifar10-mini",
       "--data-dir", str(children / "data"), "--recipe", "continue", "--epochs", "2",
       "--batch-size", "64", "--quiet", "-o", str(out_path))
    cfg = ck.load(out_path).history[-1]["config"]
    assert (cfg["schedule"], cfg["lr"], cfg["epochs"]) == ("cosine", 0.02, 2)
    lrs = [json.loads(line)["lr"] for line in
           Path(f"{out_path}.metrics.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([0.02, 0.02 * 0.5 * (1 + math.cos(math.pi / 2))], rel=1e-12)


def test_recipe_bad_input(capsys, children, tmp_path):
    base = ["train", str(children / "parent.safetensors"), "--dataset", "cifar10-mini",
            "--data-dir", str(children / "data"), "-o", str(tmp_path / "x.safetensors")]
    code, out, err = run_main(capsys, *base, "--recipe", "continue", "--milestones", "0.5")
    assert_one_error_line(code, out, err, "--milestones applies to the step schedule")
    code, out, err = run_main(capsys, *base, "--recipe", "fast")
    assert_one_error_line(code, out, err, "--recipe")
    code, out, err = run_main(capsys, *base, "--schedule", "linear")
    assert_one_error_line(code, out, err, "--schedule")
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize("tol", ["-1", "nan", "0", "inf"])
def test_verify_refuses_a_tolerance_that_is_not_positive_and_finite(capsys, children, tol):
    code, out, err = run_main(capsys, "verify", str(children / "parent.safetensors"),
                              str(children / "calibrated.safetensors"), "--tol", tol)
    assert_one_error_line(code, out, err, "--tol", "positive finite")


def test_eval_heartbeat_goes_to_stderr_and_keeps_json_clean(capsys, files, monkeypatch):
    from netmorph_cli.cli import report

    monkeypatch.setattr(report, "PLAIN_PROGRESS_EVERY", 0.0)
    monkeypatch.delenv("NETMORPH_PROGRESS", raising=False)
    code, out, err = run_main(capsys, "eval", str(files / "parent.safetensors"), "--dataset",
                              "cifar10-mini", "--data-dir", str(files / "data"), "--json")
    assert code == 0, err
    assert json.loads(out)["samples"] == 64
    # the test set in batches of 100 on a CPU: one batch, the loop's first call starts it
    assert re.findall(r"evaluating: (\d+) of 64 test images", err) == ["64"], err
