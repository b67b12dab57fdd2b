"""The write policy (outputs.py) as users meet it: every file a command writes refuses the
inputs, refuses existing files without --force, is created exclusively and atomically; a
training run's state is tied to its input and options; write failures and non-finite
weights end in one ``Error:`` line with the last good files kept (sha256 unchanged).

Each case is one reported in the hardening issue, with the same inputs."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_helpers import assert_one_error_line, run_main, train_args

from netmorph_cli.errors import OutputError, TrainingError, WriteError
from netmorph_cli.io import checkpoint as ck
from netmorph_cli.io import outputs
from netmorph_cli.network import zoo
from netmorph_cli.training import runfiles, train

NETMORPH = Path(sys.executable).with_name("netmorph")

pytestmark = pytest.mark.usefixtures("one_thread")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_args(ckpt: Path, out: Path, data_dir: Path, *extra: str) -> list[str]:
    return train_args(ckpt, out, data_dir, "--epochs", "1", "--quiet", *extra)


# --------------------------------------------------------------------------------------------
# train: the metrics file, the state file, --resume

def test_metrics_onto_the_input_is_refused(capsys, tmp_path, parent, data_dir):
    before = sha(parent)
    code, out, err = run_main(capsys, *run_args(parent, tmp_path / "o.safetensors", data_dir,
                                                  "--metrics", str(parent)))
    assert_one_error_line(code, out, err, "refusing to overwrite the input", str(parent))
    assert sha(parent) == before
    code, out, err = run_main(capsys, *run_args(parent, tmp_path / "o.safetensors", data_dir,
                                                  "--metrics", str(tmp_path / "o.safetensors")))
    assert_one_error_line(code, out, err, "named for two outputs")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r20.safetensors"]


def test_existing_state_or_metrics_need_resume_or_force(capsys, tmp_path, parent, data_dir):
    """A killed run's state is not silently replaced by a fresh start."""
    out = tmp_path / "o.safetensors"
    spath, mpath = train.state_path(out), Path(f"{out}.metrics.jsonl")
    spath.write_bytes(b"an earlier run's state")
    code, stdout, err = run_main(capsys, *run_args(parent, out, data_dir))
    assert_one_error_line(code, stdout, err, f"a training state '{spath}' exists",
                          "pass --resume to continue or --force to start again")
    assert spath.read_bytes() == b"an earlier run's state" and not out.exists()
    spath.unlink()
    mpath.write_text("{}\n")
    code, stdout, err = run_main(capsys, *run_args(parent, out, data_dir))
    assert_one_error_line(code, stdout, err, f"'{mpath}' exists; pass --force")
    assert mpath.read_text() == "{}\n" and not out.exists()
    spath.write_bytes(b"stale")  # --force starts again: fresh metrics, fresh state
    code, stdout, err = run_main(capsys, *run_args(parent, out, data_dir, "--force"))
    assert code == 0, err
    assert [json.loads(x)["epoch"] for x in mpath.read_text().splitlines()] == [1]
    assert torch.load(spath, weights_only=True)["epoch"] == 1
    assert not Path(f"{out}.lock").exists()


def test_resume_with_another_input_is_refused(capsys, tmp_path, parent, data_dir):
    out = tmp_path / "o.safetensors"
    assert run_main(capsys, *run_args(parent, out, data_dir))[0] == 0
    out.unlink()  # as if the run had been killed after its epoch
    other = tmp_path / "w.safetensors"
    ck.save(zoo.create("resnet20", seed=1), other)
    spath = train.state_path(out)
    state_before = sha(spath)
    code, stdout, err = run_main(capsys, *run_args(other, out, data_dir, "--resume"))
    assert_one_error_line(code, stdout, err, "--resume", "another input", str(other))
    assert sha(spath) == state_before and not out.exists()
    code, stdout, err = run_main(capsys, *run_args(parent, out, data_dir, "--resume"))
    assert code == 0, err  # its own input resumes (nothing left to train: writes OUT)
    assert out.exists()
    code, stdout, err = run_main(capsys, *run_args(parent, out, data_dir, "--resume"))
    assert_one_error_line(code, stdout, err, "exists", "had finished")


def test_unwritable_output_directory_fails_before_training(capsys, parent, data_dir,
                                                           monkeypatch):
    """/sys refuses new files even for root; the probe says so before an epoch runs."""
    code, stdout, err = run_main(capsys, *run_args(parent, Path("/sys/o.safetensors"),
                                                     data_dir))
    assert_one_error_line(code, stdout, err, "cannot write in '/sys'", exit_code=1)


def test_full_disk_is_found_before_training(capsys, tmp_path, parent, data_dir, monkeypatch):
    import shutil

    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage",
                        lambda p: real(p)._replace(free=1 << 20))  # 1 MiB left
    out = tmp_path / "o.safetensors"
    code, stdout, err = run_main(capsys, *run_args(parent, out, data_dir))
    assert_one_error_line(code, stdout, err, "not enough space", "1 MiB free", exit_code=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r20.safetensors"]


def test_disk_full_mid_run_keeps_the_last_state(capsys, tmp_path, parent, data_dir,
                                                monkeypatch):
    """The second epoch's state cannot be written: one Error line (exit 1), epoch 1's state
    intact (sha256), no temp file, no OUT."""
    out = tmp_path / "o.safetensors"
    spath = train.state_path(out)
    real, saved = outputs.write_file, {}

    def write_file(path, write, **kw):
        if Path(path) == spath and spath.exists():
            saved["sha"] = sha(spath)
            raise WriteError(f"cannot write '{path}': No space left on device")
        return real(path, write, **kw)

    monkeypatch.setattr(runfiles, "write_file", write_file)
    code, stdout, err = run_main(capsys, *run_args(parent, out, data_dir)[:-3],
                                 "--epochs", "2", "--quiet")
    assert_one_error_line(code, stdout, err, "No space left", "earlier epoch", str(spath),
                          "--resume", exit_code=1)
    assert sha(spath) == saved["sha"] and torch.load(spath, weights_only=True)["epoch"] == 1
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))


# --------------------------------------------------------------------------------------------
# non-finite weights and a diverging loss

def test_non_finite_bn_statistics_stop_and_are_never_saved(tmp_path, data_dir, monkeypatch):
    """A finite loss can hide an infinite running variance (as at --lr 100): the run stops
    naming the tensor, and the kept state (epoch 1) is finite."""
    net = zoo.create("resnet20", seed=0)
    out = tmp_path / "o.safetensors"
    spath = train.state_path(out)
    real = train.EpochStats

    def poison_after_first(*args, **kw):
        stats = real(*args, **kw)
        if stats.epoch == 2:
            model = poison_after_first.model  # type: ignore[attr-defined]
            model.get_submodule("layer2.0.bn1").running_var[3] = float("inf")
        return stats

    real_module = net.module

    def module(*a, **kw):
        m = real_module(*a, **kw)
        poison_after_first.model = m  # type: ignore[attr-defined]
        return m

    monkeypatch.setattr(net, "module", module)
    monkeypatch.setattr(train, "EpochStats", poison_after_first)
    cfg = train.TrainConfig(dataset="cifar10-mini", epochs=3, batch_size=64, lr=0.05)
    with pytest.raises(TrainingError, match=r"'layer2\.0\.bn1\.running_var' became "
                                            r"non-finite in epoch 2") as info:
        train.train(net, cfg, out, data_dir=data_dir)
    assert "the last good state" in str(info.value)
    state = torch.load(spath, weights_only=True)
    assert state["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in state["model"].values()
               if t.is_floating_point())


def test_a_diverging_loss_warns(tmp_path, data_dir, monkeypatch):
    import torch.nn.functional as F

    real = F.cross_entropy
    monkeypatch.setattr(train.F, "cross_entropy", lambda *a, **k: real(*a, **k) * 1e4)
    warnings: list[str] = []
    cfg = train.TrainConfig(dataset="cifar10-mini", epochs=1, batch_size=64, lr=1e-6)
    train.train(zoo.create("resnet20", seed=0), cfg, tmp_path / "o.safetensors",
                data_dir=data_dir, hooks=train.TrainHooks(on_warning=warnings.append))
    assert len(warnings) == 1 and "diverging" in warnings[0] and "ln 10" in warnings[0]
    warnings.clear()
    monkeypatch.setattr(train.F, "cross_entropy", real)
    train.train(zoo.create("resnet20", seed=0), cfg, tmp_path / "p.safetensors",
                data_dir=data_dir, hooks=train.TrainHooks(on_warning=warnings.append))
    assert warnings == []  # a sane run does not warn


# --------------------------------------------------------------------------------------------
# concurrent writers

def test_exclusive_publish_lets_exactly_one_writer_win(tmp_path):
    path = tmp_path / "x.bin"
    outputs.write_file(path, lambda f: f.write(b"first"))
    with pytest.raises(OutputError, match="exists; pass --force"):
        outputs.write_file(path, lambda f: f.write(b"second"))
    assert path.read_bytes() == b"first" and [p.name for p in tmp_path.iterdir()] == ["x.bin"]


def test_publish_refuses_a_file_that_appeared_after_the_check(tmp_path, monkeypatch):
    """The race itself: the name is free when checked, taken when published."""
    path = tmp_path / "x.bin"
    real = outputs.check_outputs

    def check_then_lose_the_race(*a, **kw):
        real(*a, **kw)
        path.write_bytes(b"the other writer")

    monkeypatch.setattr(outputs, "check_outputs", check_then_lose_the_race)
    with pytest.raises(OutputError, match="exists; pass --force"):
        outputs.write_file(path, lambda f: f.write(b"mine"))
    assert path.read_bytes() == b"the other writer"
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]


def test_two_morphs_to_one_output_at_once(tmp_path, parent):
    """Both start before either writes; exactly one exits 0, the other says the file
    exists (exit 2); the file is a complete checkpoint."""
    out = tmp_path / "same.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([str(NETMORPH), "morph", str(parent), "--module", "1c1",
                               "--seed", str(seed), "-o", str(out)], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for seed in (0, 1)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    codes = sorted(r[0] for r in results)
    assert codes == [0, 2], results
    loser = next(r for r in results if r[0] == 2)
    assert loser[2].strip().startswith("Error: ") and "exists; pass --force" in loser[2]
    winner = next(r for r in results if r[0] == 0)
    assert f"wrote {out}" in winner[1]
    assert ck.load(out).history[-1]["op"] == "preset"


def test_second_training_on_one_output_is_refused_while_the_first_runs(tmp_path, parent,
                                                                       data_dir):
    out = tmp_path / "o.safetensors"
    with outputs.exclusive(out):
        with pytest.raises(OutputError, match="another netmorph command is writing"):
            train.train(ck.load(parent), train.TrainConfig(dataset="cifar10-mini", epochs=1,
                                                           batch_size=64), out,
                        data_dir=data_dir)
    assert not train.state_path(out).exists() and not Path(f"{out}.lock").exists()


@pytest.mark.parametrize("epochs_done", [0, 1])
def test_double_ctrl_c_says_whether_a_state_was_saved(tmp_path, parent, data_dir, epochs_done):
    """Two SIGINTs in one step (sent from the step hook, so they land mid-epoch): stopped at
    once; the message names the saved state only when an epoch has finished."""
    out = tmp_path / "o.safetensors"

    def on_step(epoch, step, *rest):
        if epoch == epochs_done and step > 1:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)

    cfg = train.TrainConfig(dataset="cifar10-mini", epochs=2, batch_size=16)
    with pytest.raises(TrainingError, match="interrupted twice") as info:
        train.train(ck.load(parent), cfg, out, data_dir=data_dir,
                    hooks=train.TrainHooks(on_step=on_step))
    spath = train.state_path(out)
    if epochs_done:
        assert f"the last saved state is {spath}" in str(info.value) and spath.exists()
    else:
        assert "no epoch had finished, so no state was saved" in str(info.value)
        assert not spath.exists()
    assert not Path(f"{out}.lock").exists()
