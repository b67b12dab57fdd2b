"""`netmorph export` as users meet it: what it prints after a checked export, and for each
bad input one ``Error:`` line, the right exit code, no traceback and nothing written."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from cli_helpers import assert_one_error_line, run_main

from netmorph_cli.io import checkpoint as ck
from netmorph_cli.io import export, outputs
from netmorph_cli.network import zoo

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, one_thread) -> Path:
    """A ResNet-20 checkpoint alone in its directory."""
    path = tmp_path_factory.mktemp("ckpt") / "r20.safetensors"
    ck.save(zoo.create("resnet20", seed=0), path)
    return path


@pytest.fixture
def out_dir(tmp_path) -> Path:
    return tmp_path


def nothing_written(ckpt: Path, out_dir: Path, before: str) -> None:
    assert outputs.sha256(ckpt) == before
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["r20.safetensors"]
    assert list(out_dir.iterdir()) == []


def test_export_prints_what_it_wrote_and_the_check(capsys, ckpt, out_dir):
    out = out_dir / "child.pt2"
    code, stdout, err = run_main(capsys, "export", str(ckpt), "-o", str(out))
    assert code == 0, err
    assert err == ""
    check, wrote = stdout.splitlines()
    assert re.fullmatch(r"checked on 8 random inputs against netmorph's module: max relative "
                        r"error \d\.\de[+-]\d\d \(≤ 1e-05\), max absolute error "
                        r"\d\.\de[+-]\d\d", check), check
    sha = outputs.sha256(out)
    assert wrote == (f"wrote {out} (torch.export program, float32, dynamic batch; "
                     f"sha256 {sha[:16]}…)")
    # an existing output needs --force; with it, --json reports the same file
    code, stdout, err = run_main(capsys, "export", str(ckpt), "-o", str(out))
    assert_one_error_line(code, stdout, err, f"'{out}' exists; pass --force to overwrite")
    assert outputs.sha256(out) == sha
    code, stdout, err = run_main(capsys, "export", str(ckpt), "-o", str(out), "--force",
                                 "--json")
    assert code == 0, err
    report = json.loads(stdout)
    assert report["format"] == "pt2" and report["dynamic_batch"] is True
    assert report["sha256"] == outputs.sha256(out)
    assert report["max_rel_err"] <= 1e-5 and report["samples"] == 8


def test_help_says_inputs_are_normalized(capsys):
    code, stdout, _ = run_main(capsys, "export", "--help")
    assert code == 0
    text = " ".join(stdout.split())
    assert "normalization (mean, std) is not part of it" in text
    assert "netmorph export morph20_1c1.safetensors -o morph20_1c1.pt2" in stdout


def test_missing_checkpoint(capsys, out_dir):
    code, stdout, err = run_main(capsys, "export", str(out_dir / "nope.safetensors"),
                                 "-o", str(out_dir / "c.pt2"))
    assert_one_error_line(code, stdout, err, "nope.safetensors' does not exist")
    assert list(out_dir.iterdir()) == []


def test_corrupt_checkpoint(capsys, out_dir):
    bad = out_dir / "bad.safetensors"
    bad.write_bytes(b"garbage, not a checkpoint")
    code, stdout, err = run_main(capsys, "export", str(bad), "-o", str(out_dir / "c.pt2"))
    assert_one_error_line(code, stdout, err, "is not a checkpoint")
    assert [p.name for p in out_dir.iterdir()] == ["bad.safetensors"]


@pytest.mark.parametrize("case", ["input", "missing-dir", "format", "no-extra", "onnx64"])
def test_bad_inputs_write_nothing(capsys, ckpt, out_dir, monkeypatch, case):
    before = outputs.sha256(ckpt)
    out = str(out_dir / "c.pt2")
    args, needles = {
        "input": (["-o", str(ckpt)], ["refusing to overwrite the input"]),
        "missing-dir": (["-o", str(out_dir / "no" / "c.pt2")],
                        [f"output directory '{out_dir / 'no'}' does not exist"]),
        "format": (["-o", out, "--format", "tflite"],
                   ["Invalid value for '--format'", "see 'netmorph export --help'"]),
        "no-extra": (["-o", str(out_dir / "c.onnx")], []),
        "onnx64": (["-o", str(out_dir / "c.onnx"), "--dtype", "float64"],
                   ["no float64 convolution"]),
    }[case]
    if case == "no-extra":  # as if the onnx extra were not installed
        monkeypatch.setitem(sys.modules, "onnxruntime", None)
    elif case == "onnx64":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnxscript")
    code, stdout, err = run_main(capsys, "export", str(ckpt), *args)
    line = assert_one_error_line(code, stdout, err, *needles)
    if case == "no-extra":
        assert line == "Error: --format onnx needs the onnx extra: pip install 'netmorph[onnx]'"
    nothing_written(ckpt, out_dir, before)


def test_failed_check_exits_1_and_removes_the_file(capsys, ckpt, out_dir, monkeypatch):
    """A written file that cannot be run back is a failed check (exit 1), not bad input."""
    monkeypatch.setattr(export, "_pt2", lambda module, example, extra: (
        lambda f: f.write(b"not a program"), True, ""))
    before = outputs.sha256(ckpt)
    code, stdout, err = run_main(capsys, "export", str(ckpt), "-o", str(out_dir / "c.pt2"))
    assert_one_error_line(code, stdout, err, "cannot be run back", "removed", exit_code=1)
    nothing_written(ckpt, out_dir, before)
