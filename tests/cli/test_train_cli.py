"""`netmorph train` and `netmorph eval`: files written, output, refusals and the error
contract, and the issue's resume test: a CPU run killed with SIGKILL mid-epoch, resumed with
--resume, ends with the same weights (torch.equal) as an uninterrupted run.

Data: a tiny ``cifar10-mini.npz`` written to a temporary --data-dir (the real one is
5000 images; these tests need a few hundred at most).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cli_helpers import assert_one_error_line, run_main, train_args, write_mini

from netmorph_cli.io import checkpoint as ck
from netmorph_cli.training import data, train

NETMORPH = Path(sys.executable).with_name("netmorph")
METRIC_KEYS = {"epoch", "train_loss", "train_error", "test_error", "lr", "seconds"}


pytestmark = pytest.mark.usefixtures("one_thread")


def metrics(out: Path) -> list[dict]:
    path = Path(f"{out}.metrics.jsonl")
    text = path.read_text() if path.exists() else ""
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]


# --------------------------------------------------------------------------------------------
# netmorph train

def test_train_writes_checkpoint_state_and_metrics(capsys, tmp_path, parent, data_dir):
    out = tmp_path / "trained.safetensors"
    code, stdout, err = run_main(capsys, *train_args(parent, out, data_dir, "--epochs", "2"))
    assert code == 0, err
    assert "Traceback" not in err
    for path in (out, train.state_path(out), Path(f"{out}.metrics.jsonl")):
        assert path.is_file(), path
    rows = metrics(out)
    assert [r["epoch"] for r in rows] == [1, 2]  # one JSON line per epoch
    for r in rows:
        assert METRIC_KEYS <= set(r)
        assert all(isinstance(r[k], (int, float)) for k in METRIC_KEYS)
    assert rows[0]["lr"] == 0.1 and rows[1]["lr"] == pytest.approx(0.01)
    net = ck.load(out)
    assert net.history[-1]["op"] == "train" and net.history[-1]["epochs_run"] == 2
    assert net.history[-1]["test_error"] == rows[-1]["test_error"]
    assert net.meta["normalization"]["mean"] == list(data.CIFAR_MEAN)
    assert net.description == ck.load(parent).description
    assert "epoch 1/2: train loss" in stdout and "epoch 2/2: train loss" in stdout
    assert f"trained 2 epochs: test error {100 * rows[-1]['test_error']:.2f}%" in stdout
    assert f"wrote {out}" in stdout
    state = torch.load(train.state_path(out), weights_only=True)
    assert state["epoch"] == 2
    for k, v in net.tensors.items():
        assert torch.equal(state["model"][k], v), k


def test_train_quiet_prints_only_the_summary(capsys, tmp_path, parent, data_dir):
    out = tmp_path / "q.safetensors"
    code, stdout, err = run_main(capsys, *train_args(parent, out, data_dir, "--epochs", "1",
                                                     "--quiet"))
    assert code == 0, err
    assert "epoch 1/1" not in stdout
    lines = stdout.splitlines()
    assert len(lines) == 2, stdout
    assert lines[0].startswith("trained 1 epochs: test error ")
    assert lines[1].startswith(f"wrote {out}")
    assert out.is_file()


def test_train_with_force_starts_a_fresh_metrics_file(capsys, tmp_path, parent, data_dir):
    out = tmp_path / "f.safetensors"
    args = train_args(parent, out, data_dir, "--epochs", "1", "--quiet")
    assert run_main(capsys, *args)[0] == 0
    code, stdout, err = run_main(capsys, *args)
    assert_one_error_line(code, stdout, err, f"'{out}' exists; pass --force")
    assert run_main(capsys, *args, "--force")[0] == 0
    assert [r["epoch"] for r in metrics(out)] == [1]  # the first run's line is gone


def test_train_refuses_to_overwrite_its_input(capsys, parent, data_dir):
    before = parent.read_bytes()
    code, out, err = run_main(capsys, *train_args(parent, parent, data_dir, "--force"))
    assert_one_error_line(code, out, err, "refusing to overwrite the input")
    assert parent.read_bytes() == before
    assert not train.state_path(parent).exists()


@pytest.mark.parametrize("milestones", ["0.75,0.5", "a,b", "-1", "0"])
def test_bad_milestones(capsys, tmp_path, parent, data_dir, milestones):
    out = tmp_path / "m.safetensors"
    code, stdout, err = run_main(capsys, *train_args(parent, out, data_dir,
                                                     "--milestones", milestones))
    assert_one_error_line(code, stdout, err, "--milestones", repr(milestones))
    assert not out.exists() and not train.state_path(out).exists()


def test_unknown_precision(capsys, tmp_path, parent, data_dir):
    out = tmp_path / "p.safetensors"
    code, stdout, err = run_main(capsys, *train_args(parent, out, data_dir,
                                                     "--precision", "fp16"))
    assert_one_error_line(code, stdout, err, "--precision", "fp16")
    assert not out.exists() and not train.state_path(out).exists()


def test_no_amp_contradicting_precision(capsys, tmp_path, parent, data_dir):
    out = tmp_path / "p.safetensors"
    code, stdout, err = run_main(capsys, *train_args(parent, out, data_dir, "--no-amp",
                                                     "--precision", "bf16"))
    assert_one_error_line(code, stdout, err, "--no-amp", "--precision bf16")
    assert not out.exists()


@pytest.mark.parametrize("flags, precision", [((), "auto"), (("--precision", "bf16"), "bf16"),
                                              (("--no-amp",), "fp32")])
def test_precision_is_recorded(capsys, tmp_path, parent, data_dir, flags, precision):
    out = tmp_path / "p.safetensors"
    code, _, err = run_main(capsys, *train_args(parent, out, data_dir, "--epochs", "1",
                                                "--quiet", *flags))
    assert code == 0, err
    assert ck.load(out).history[-1]["config"]["precision"] == precision


def test_unknown_dataset(capsys, tmp_path, parent):
    code, out, err = run_main(capsys, "train", str(parent), "--dataset", "mnist",
                              "-o", str(tmp_path / "o.safetensors"))
    assert_one_error_line(code, out, err, "--dataset", "mnist")


def test_failed_train_leaves_stdout_empty(capsys, tmp_path, parent):
    code, stdout, err = run_main(capsys, *train_args(parent, tmp_path / "o.safetensors",
                                                     tmp_path))
    assert_one_error_line(code, stdout, err, "cifar10-mini.npz")


def test_missing_data_is_one_error_line(capsys, tmp_path, parent):
    empty = tmp_path / "nothing"
    empty.mkdir()
    out = tmp_path / "o.safetensors"
    code, stdout, err = run_main(capsys, *train_args(parent, out, empty, "--quiet"))
    assert_one_error_line(code, stdout, err, "cifar10-mini.npz", str(empty))
    assert not out.exists() and not train.state_path(out).exists()


def test_missing_official_set_offline_is_one_error_line(capsys, tmp_path, parent,
                                                        monkeypatch):
    with socket.socket() as sock:  # bound, not listening: the download is refused at once
        sock.bind(("127.0.0.1", 0))
        monkeypatch.setattr(data, "OFFICIAL_URL", f"http://127.0.0.1:{sock.getsockname()[1]}/")
        code, out, err = run_main(capsys, "eval", str(parent), "--dataset", "cifar10",
                                  "--data-dir", str(tmp_path))
    assert_one_error_line(code, out, err, "put cifar-10-python.tar.gz", str(tmp_path))


def test_nan_loss_is_one_error_line(capsys, tmp_path, parent, data_dir):
    out = tmp_path / "nan.safetensors"
    code, stdout, err = run_main(capsys, *train_args(parent, out, data_dir, "--lr", "1e12",
                                                     "--quiet"))
    line = assert_one_error_line(code, stdout, err, "lower --lr", exit_code=1)
    assert "the loss became" in line or "became non-finite" in line, line
    assert not out.exists()


def test_resume_refusals(capsys, tmp_path, parent, data_dir):
    out = tmp_path / "r.safetensors"
    code, stdout, err = run_main(capsys, *train_args(parent, out, data_dir, "--resume",
                                                     "--quiet"))
    assert_one_error_line(code, stdout, err, "no state file", str(train.state_path(out)))
    assert run_main(capsys, *train_args(parent, out, data_dir, "--epochs", "1",
                                        "--quiet"))[0] == 0
    code, stdout, err = run_main(capsys, *train_args(parent, out, data_dir, "--epochs", "1",
                                                     "--lr", "0.05", "--resume", "--quiet"))
    assert_one_error_line(code, stdout, err, "options differ", "lr: 0.1 → 0.05")


# --------------------------------------------------------------------------------------------
# netmorph eval

def test_eval_json(capsys, parent, data_dir):
    code, out, err = run_main(capsys, "eval", str(parent), "--dataset", "cifar10-mini",
                              "--data-dir", str(data_dir), "--json")
    assert code == 0, err
    r = json.loads(out)  # exactly one JSON object on stdout
    assert r["samples"] == 64 and 0 <= r["top1_error"] <= 1
    assert r["top1_error"] == train.evaluate(ck.load(parent), "cifar10-mini",
                                             data_dir).top1_error
    assert r["top1_error"] * 64 == round(r["top1_error"] * 64)


def test_eval_text(capsys, parent, data_dir):
    code, out, err = run_main(capsys, "eval", str(parent), "--dataset", "cifar10-mini",
                              "--data-dir", str(data_dir))
    assert code == 0, err
    assert out.startswith("top-1 error ") and "% on 64 test images" in out


def test_eval_on_a_set_with_other_classes(capsys, tmp_path, parent):
    write_mini(tmp_path / "d", 16, 16, classes=100, name="cifar100-mini")
    code, out, err = run_main(capsys, "eval", str(parent), "--dataset", "cifar100-mini",
                              "--data-dir", str(tmp_path / "d"))
    assert_one_error_line(code, out, err, "10 classes", "100")


# --------------------------------------------------------------------------------------------
# SIGKILL mid-epoch, then --resume

def _run(ckpt: Path, out: Path, data_dir: Path, *extra: str) -> subprocess.Popen:
    # one thread each: the two runs share this machine's cores and stay bit-reproducible
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    return subprocess.Popen([str(NETMORPH), *train_args(ckpt, out, data_dir, "--epochs", "3",
                                                        "--quiet", *extra)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("training subprocess timed out")
    assert proc.returncode == 0, stderr
    return stdout


@pytest.mark.slow  # 11 s (a real process killed mid-epoch); resuming to identical weights is
# tested by default in tests/unit/test_train.py, Ctrl-C in a real process below
def test_sigkill_mid_epoch_then_resume_gives_identical_weights(tmp_path, parent):
    data_dir = write_mini(tmp_path / "data", 384, 64)  # 6 steps of 64 an epoch
    ref_out, out = tmp_path / "ref.safetensors", tmp_path / "killed.safetensors"
    ref = _run(parent, ref_out, data_dir)  # uninterrupted, same seed, alongside
    victim = _run(parent, out, data_dir)
    spath = train.state_path(out)
    try:
        deadline = time.monotonic() + 240
        while not spath.exists():  # the first epoch's state file
            assert victim.poll() is None, victim.communicate()[1]
            assert time.monotonic() < deadline, "no state file after 240 s"
            time.sleep(0.02)
        while not metrics(out):  # its line follows the state file
            time.sleep(0.01)
        epoch_seconds = metrics(out)[0]["seconds"]
        time.sleep(epoch_seconds / 2)  # into the middle of epoch 2
        assert victim.poll() is None, "the run ended before it could be killed"
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=60)
    finally:
        if victim.poll() is None:
            victim.kill()
    assert victim.returncode == -signal.SIGKILL
    assert not out.exists()
    state = torch.load(spath, weights_only=True)
    assert state["epoch"] in (1, 2) and state["step"] == 0  # 1 unless epoch 2 was fast
    assert [r["epoch"] for r in metrics(out)] == list(range(1, state["epoch"] + 1))
    assert not list(tmp_path.glob(".*.tmp")), "a temp file was left behind"

    resumed = _run(parent, out, data_dir, "--resume")
    _finish(resumed)
    _finish(ref)
    a, b = ck.load(out), ck.load(ref_out)
    assert list(a.tensors) == list(b.tensors)
    for k in a.tensors:
        assert torch.equal(a.tensors[k], b.tensors[k]), f"{k} differs after resume"
    assert [r["epoch"] for r in metrics(out)] == [1, 2, 3]
    assert metrics(out)[-1]["test_error"] == metrics(ref_out)[-1]["test_error"]
    assert a.history[-1]["epochs_run"] == 3


def test_ctrl_c_saves_the_state_and_exits_with_one_error_line(tmp_path, parent):
    """SIGINT mid-epoch: exit 1 with one ``Error: interrupted …`` line, the state saved at
    the step reached, and --resume finishes the run. (Bit-identity after an interrupt at a
    step boundary is tested in process: tests/unit/test_train.py.)"""
    data_dir = write_mini(tmp_path / "data", 384, 64)
    out = tmp_path / "int.safetensors"
    proc = _run(parent, out, data_dir)
    spath = train.state_path(out)
    try:
        deadline = time.monotonic() + 240
        while not metrics(out):  # epoch 1 done: its state file exists
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "no epoch finished after 240 s"
            time.sleep(0.02)
        time.sleep(metrics(out)[0]["seconds"] / 2)
        assert proc.poll() is None, "the run ended before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr  # "at epoch E, step S" or, while testing, "after epoch E"
    assert re.match(r"Error: interrupted (at|after) epoch \d", lines[0]), stderr
    assert str(spath) in lines[0] and "--resume" in lines[0]
    assert stdout == ""
    state = torch.load(spath, weights_only=True)
    assert state["epoch"] in (1, 2)
    assert not out.exists()
    _finish(_run(parent, out, data_dir, "--resume"))
    assert ck.load(out).history[-1]["epochs_run"] == 3
    assert [r["epoch"] for r in metrics(out)] == [1, 2, 3]
