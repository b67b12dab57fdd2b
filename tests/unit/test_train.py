"""Training and evaluation in process: lr schedule, learning, lineage, determinism, resume
after an interrupt, NaN losses, refused resumes and data/network mismatches.

Runs are small so the file stays fast on two cores: ResNet-20 on a 256/128-image synthetic
set, batch 64 (4 steps an epoch), 2 epochs. One uninterrupted reference run (module scope)
is what the determinism, resume and NaN tests compare against, with ``torch.equal``.
"""

from __future__ import annotations

import json
import math
import os
import signal
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from netmorph_cli.errors import DataError, TrainingError, UsageError
from netmorph_cli.morph import morphs as morph
from netmorph_cli.network import zoo
from netmorph_cli.network.description import Network
from netmorph_cli.training import data, train

SMALL = dict(n_train=256, n_test=128)


pytestmark = pytest.mark.usefixtures("one_thread")


def config(**kw) -> train.TrainConfig:
    base = dict(dataset="synthetic", epochs=2, batch_size=64, seed=0)
    return train.TrainConfig(**{**base, **kw})


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), f"{k} differs"


@pytest.fixture(scope="module")
def small() -> data.Dataset:
    return data.synthetic(**SMALL)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, small):
    """An uninterrupted 2-epoch run: (input network, trained network, epoch stats, out)."""
    out = tmp_path_factory.mktemp("reference") / "r20.safetensors"
    net = zoo.create("resnet20", seed=0)
    before = {k: v.clone() for k, v in net.tensors.items()}
    trained, history = train.train(net, config(), out, dataset=small,
                                   metrics=f"{out}.metrics.jsonl")
    assert_same_tensors(net.tensors, before)  # the input network is not modified
    return net, trained, history, out


# --------------------------------------------------------------------------------------------
# learning-rate schedule (no training)

def test_lr_steps_at_half_and_three_quarters():
    cfg = train.TrainConfig(epochs=10, lr=0.1)  # the paper's default milestones 0.5, 0.75
    assert cfg.milestone_epochs() == [5.0, 7.5]
    assert cfg.lr_at(0) == 0.1 and cfg.lr_at(4.999) == 0.1
    assert cfg.lr_at(5.0) == pytest.approx(0.01, rel=1e-12)
    assert cfg.lr_at(7.49) == pytest.approx(0.01, rel=1e-12)
    assert cfg.lr_at(7.5) == pytest.approx(0.001, rel=1e-12)
    assert cfg.lr_at(9.99) == pytest.approx(0.001, rel=1e-12)


def test_cosine_schedule_anneals_from_lr_to_zero():
    cfg = train.TrainConfig(epochs=10, lr=0.02, schedule="cosine")
    assert cfg.lr_at(0) == 0.02
    assert cfg.lr_at(5) == pytest.approx(0.01, rel=1e-12)
    assert cfg.lr_at(2.5) == pytest.approx(0.01 * (1 + math.cos(math.pi / 4)), rel=1e-12)
    assert cfg.lr_at(10) == pytest.approx(0.0, abs=1e-18)
    assert cfg.lr_at(12) == pytest.approx(0.0, abs=1e-18)  # never negative or rising
    lrs = [cfg.lr_at(e / 4) for e in range(41)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))  # monotone
    # milestones do not apply to cosine (a ÷10 at epoch 1 would give 0.0019 here)
    assert train.TrainConfig(epochs=10, lr=0.02, schedule="cosine",
                             milestones=(1,)).lr_at(1.5) == cfg.lr_at(1.5)


def test_cosine_after_warmup_starts_at_the_peak():
    cfg = train.TrainConfig(epochs=10, lr=0.1, schedule="cosine", warmup=2)
    assert cfg.lr_at(0, 0.5) == pytest.approx(0.025, rel=1e-12)
    assert cfg.lr_at(2) == pytest.approx(0.1, rel=1e-12)
    assert cfg.lr_at(6) == pytest.approx(0.05, rel=1e-12)  # half-way through 8 epochs


def test_a_run_can_be_the_later_part_of_a_longer_schedule():
    """E2's B: the parent trains epochs 1–5 of a 15-epoch cosine, the child 6–15: together
    the same lrs as one 15-epoch run (written out: 0.05·(1 + cos(π·e/15)))."""
    whole = train.TrainConfig(epochs=15, lr=0.1, schedule="cosine")
    first = train.TrainConfig(epochs=5, lr=0.1, schedule="cosine", schedule_epochs=15)
    rest = train.TrainConfig(epochs=10, lr=0.1, schedule="cosine", schedule_start=5,
                             schedule_epochs=15)
    for e in (0, 1.5, 4.75):
        assert first.lr_at(e) == pytest.approx(0.05 * (1 + math.cos(math.pi * e / 15)),
                                               rel=1e-12)
    for e in (0, 0.5, 3, 9.99):
        assert rest.lr_at(e) == pytest.approx(whole.lr_at(e + 5), rel=1e-12)
    assert rest.lr_at(0) == pytest.approx(0.05 * (1 + math.cos(math.pi / 3)), rel=1e-12)
    assert rest.total_epochs == 15 and first.total_epochs == 15
    # step milestones are fractions of the whole schedule: 0.5·20 = epoch 10, the run's 4th
    step = train.TrainConfig(epochs=14, lr=0.1, schedule_start=6, schedule_epochs=20)
    assert step.milestone_epochs() == [10.0, 15.0]
    assert step.lr_at(3.99) == 0.1 and step.lr_at(4) == pytest.approx(0.01, rel=1e-12)
    # a warm-up is the schedule's: already over for a run that starts after it
    assert train.TrainConfig(epochs=5, warmup=2, schedule_start=3).lr_at(0) == 0.1
    with pytest.raises(ValueError, match="a run of 11 epochs from epoch 5 does not fit a "
                                         "schedule of 15 epochs"):
        train.TrainConfig(epochs=11, schedule_start=5, schedule_epochs=15)
    with pytest.raises(ValueError, match="schedule_start must be a whole number"):
        train.TrainConfig(schedule_start=-1)
    with pytest.raises(train.UsageError, match=r"--epochs 10 from --schedule-start 6 runs "
                                               r"past the end of --schedule-epochs 15"):
        train.recipe_config("continue", schedule_start=6, schedule_epochs=15)


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="schedule must be step or cosine"):
        train.TrainConfig(schedule="linear")


def test_recipes_set_known_fields():
    for name, fields in train.RECIPES.items():
        cfg = train.TrainConfig(**fields)
        assert cfg.lr > 0 and cfg.epochs >= 1, name
    assert train.TrainConfig(**train.RECIPES["continue"]).schedule == "cosine"
    assert train.TrainConfig(**train.RECIPES["paper"]) == train.TrainConfig()


def test_lr_milestones_above_one_are_epochs_and_gamma_applies():
    cfg = train.TrainConfig(epochs=164, lr=0.2, milestones=(82, 123), gamma=0.5)
    assert cfg.milestone_epochs() == [82, 123]
    assert cfg.lr_at(81.9) == 0.2
    assert cfg.lr_at(82) == pytest.approx(0.1, rel=1e-12)
    assert cfg.lr_at(123) == pytest.approx(0.05, rel=1e-12)
    # 1.0 is a fraction (the end of training), never reached while training
    assert train.TrainConfig(epochs=3, milestones=(1.0,)).lr_at(2.999) == 0.1


def test_lr_linear_warmup_then_steps():
    cfg = train.TrainConfig(epochs=10, lr=0.1, warmup=2.0)
    assert cfg.lr_at(0) == 0.0
    assert cfg.lr_at(0, 0.25) == pytest.approx(0.0125, rel=1e-12)  # ramps to the step's end
    assert cfg.lr_at(1.9, 0.25) == 0.1  # never past the peak
    assert cfg.lr_at(0.5) == pytest.approx(0.025, rel=1e-6)
    assert cfg.lr_at(1.0) == pytest.approx(0.05, rel=1e-6)
    assert cfg.lr_at(2.0) == 0.1 and cfg.lr_at(4.9) == 0.1
    assert cfg.lr_at(6) == pytest.approx(0.01, rel=1e-12)
    lrs = [cfg.lr_at(e / 10) for e in range(21)]
    assert lrs == sorted(lrs)


def test_recorded_lr_follows_the_schedule(reference):
    _, _, history, out = reference
    # 2 epochs, milestones at 1.0 and 1.5 epochs: epoch 1 starts at 0.1, epoch 2 at 0.01
    assert [h.lr for h in history] == [0.1, pytest.approx(0.01, rel=1e-12)]


# --------------------------------------------------------------------------------------------
# a real (small) run

def test_training_lowers_the_training_loss(reference):
    _, _, history, _ = reference
    assert len(history) == 2
    # measured 2.47 → 2.35 (ln 10 = 2.30 is chance); deterministic under the seed
    assert history[1].train_loss < history[0].train_loss - 0.05
    for h in history:
        assert math.isfinite(h.train_loss) and 0 <= h.train_error <= 1
        assert 0 <= h.test_error <= 1 and h.seconds > 0 and h.images_per_s > 0


def test_trained_network_keeps_description_history_and_normalization(reference, small):
    net, trained, history, _ = reference
    assert trained.description == net.description
    assert trained.history[:-1] == net.history
    entry = trained.history[-1]
    assert entry["op"] == "train" and entry["dataset"] == "synthetic"
    assert entry["epochs_run"] == 2 and entry["world_size"] == 1
    assert entry["config"]["epochs"] == 2 and entry["config"]["milestones"] == [0.5, 0.75]
    assert entry["test_error"] == history[-1].test_error
    json.dumps(trained.history)  # JSON-serializable: it goes into the checkpoint
    assert trained.meta["normalization"] == {"mean": list(data.CIFAR_MEAN),
                                             "std": list(data.CIFAR_STD)}
    assert trained.meta["created"] == net.meta["created"]
    assert list(trained.tensors) == list(net.tensors)
    for k, v in trained.tensors.items():
        assert v.dtype == net.tensors[k].dtype and v.device.type == "cpu"
    changed = [k for k in net.tensors if not torch.equal(net.tensors[k], trained.tensors[k])]
    assert "conv1.weight" in changed and "linear.bias" in changed
    assert trained.tensors["bn1.num_batches_tracked"].item() == 8  # 2 epochs × 4 steps
    # the test error it reports is the trained network's, in eval mode
    x = data.to_tensor(small.x_test, data.CIFAR_MEAN, data.CIFAR_STD)
    err = train.top1_error(trained.module(), x, torch.from_numpy(small.y_test))
    assert err == history[-1].test_error


def test_state_file_and_metrics_after_a_run(reference):
    _, trained, history, out = reference
    state = torch.load(train.state_path(out), weights_only=True)
    assert state["epoch"] == 2 and state["step"] == 0
    assert_same_tensors(state["model"], trained.tensors)
    lines = Path(f"{out}.metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows == [h.to_json() for h in history]
    assert {"epoch", "train_loss", "train_error", "test_error", "lr", "seconds"} <= set(rows[0])


def test_imported_normalization_is_used_and_kept(tmp_path, small):
    net = zoo.create("resnet20", seed=1)
    net.meta["normalization"] = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    seen = []
    real = data.to_tensor

    def spy(x, mean, std, *a, **k):
        seen.append((tuple(mean), tuple(std)))
        return real(x, mean, std, *a, **k)

    mp = pytest.MonkeyPatch()
    mp.setattr(train, "to_tensor", spy)
    try:
        trained, _ = train.train(net, config(epochs=1), tmp_path / "o.safetensors",
                                 dataset=data.synthetic(n_train=64, n_test=32))
    finally:
        mp.undo()
    assert set(seen) == {((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}
    assert trained.meta["normalization"] == net.meta["normalization"]


def test_a_morphed_child_trains(tmp_path, small):
    parent = zoo.create("resnet20")
    child, _ = morph.morph_network(parent, morph.Preset.parse("1c1"))
    trained, history = train.train(child, config(epochs=1), tmp_path / "child.safetensors",
                                   dataset=small)
    assert trained.description == child.description
    # the morph entry gains the calibration that train did before the first step
    calibration = trained.history[0].pop("calibration")
    assert calibration["layers"] == child.history[0]["new_bn"]
    assert calibration["dataset"] == "synthetic"
    assert trained.history[:-1] == child.history
    assert [h["op"] for h in trained.history] == ["preset", "train"]
    assert trained.meta["parent"] == child.meta["parent"]
    assert math.isfinite(history[0].train_loss)
    branch = [k for k in child.tensors if k not in parent.tensors and k.endswith(".weight")]
    assert "layer1.1.morph1.conv1.weight" in branch
    for k in branch:  # the new branch's filters and BN/PReLU weights are trained too
        assert not torch.equal(child.tensors[k], trained.tensors[k]), k
    trained.check()


# --------------------------------------------------------------------------------------------
# determinism and resume

def test_same_seed_gives_bit_identical_weights(tmp_path, reference, small):
    _, ref, _, _ = reference
    again, _ = train.train(zoo.create("resnet20", seed=0), config(), tmp_path / "o.st",
                           dataset=small)
    assert_same_tensors(again.tensors, ref.tensors)


def test_another_seed_gives_other_weights(tmp_path, reference, small):
    _, ref, _, _ = reference
    other, _ = train.train(zoo.create("resnet20", seed=0), config(seed=1, epochs=1),
                           tmp_path / "o.st", dataset=small)
    assert not torch.equal(other.tensors["conv1.weight"], ref.tensors["conv1.weight"])


def test_interrupted_run_resumes_to_identical_weights(tmp_path, reference, small):
    """Ctrl-C (KeyboardInterrupt) in the middle of epoch 1 saves the state; --resume ends
    with the uninterrupted run's weights, bit for bit."""
    _, ref, ref_history, _ = reference
    out = tmp_path / "r.safetensors"

    def interrupt(epoch, step, steps, loss, lr, ips):
        if epoch == 0 and step == 1:  # after the first of 4 steps of epoch 1
            raise KeyboardInterrupt

    with pytest.raises(TrainingError, match="interrupted at epoch 1.*--resume") as info:
        train.train(zoo.create("resnet20", seed=0), config(), out, dataset=small,
                    hooks=train.TrainHooks(on_step=interrupt))
    assert str(train.state_path(out)) in str(info.value)
    state = torch.load(train.state_path(out), weights_only=True)
    assert state["epoch"] == 0
    resumed, history = train.train(zoo.create("resnet20", seed=0), config(), out,
                                   dataset=small, resume=True)
    assert_same_tensors(resumed.tensors, ref.tensors)
    assert [h.epoch for h in history] == [1, 2]
    assert history[-1].test_error == ref_history[-1].test_error


def sigint_after_forward(monkeypatch, *, at_call: int, times: int = 1) -> list[int]:
    """Send SIGINT to this process from inside the training loss (after the forward pass
    moved the BN statistics, before backward and the optimizer step) at the at_call-th
    loss; ``times`` signals in a row. Returns the call counter."""
    calls = [0]
    real = F.cross_entropy

    def loss(*a, **kw):
        calls[0] += 1
        if calls[0] == at_call:
            for _ in range(times):
                os.kill(os.getpid(), signal.SIGINT)
        return real(*a, **kw)

    monkeypatch.setattr(train.F, "cross_entropy", loss)
    return calls


def test_ctrl_c_mid_step_finishes_the_step_then_saves(tmp_path, reference, small,
                                                      monkeypatch):
    """SIGINT between forward and optimizer step: the step is finished before the state is
    saved, so --resume ends bit-identical to the uninterrupted run (saving at once would
    keep the forward's BN statistics without the step, and resume would redo the forward)."""
    _, ref, _, _ = reference
    out = tmp_path / "r.safetensors"
    sigint_after_forward(monkeypatch, at_call=2)  # the second of 4 steps of epoch 1
    with pytest.raises(TrainingError, match=r"interrupted at epoch 1, step 3;.*--resume"):
        train.train(zoo.create("resnet20", seed=0), config(), out, dataset=small)
    state = torch.load(train.state_path(out), weights_only=True)
    assert (state["epoch"], state["step"]) == (0, 2)  # two whole steps applied
    monkeypatch.undo()
    resumed, _ = train.train(zoo.create("resnet20", seed=0), config(), out, dataset=small,
                             resume=True)
    assert_same_tensors(resumed.tensors, ref.tensors)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored


def test_second_ctrl_c_stops_at_once_and_keeps_the_last_epoch_state(tmp_path, small,
                                                                    monkeypatch):
    out = tmp_path / "r.safetensors"
    sigint_after_forward(monkeypatch, at_call=6, times=2)  # epoch 2, second step (4 a epoch)
    with pytest.raises(TrainingError, match="interrupted twice: stopped at once"):
        train.train(zoo.create("resnet20", seed=0), config(), out, dataset=small)
    state = torch.load(train.state_path(out), weights_only=True)
    assert (state["epoch"], state["step"]) == (1, 0)  # the end of epoch 1, untouched
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_while_testing_stops_after_the_epoch(tmp_path, small, monkeypatch):
    out = tmp_path / "r.safetensors"
    real = train.top1_error

    def top1(*a, **kw):
        os.kill(os.getpid(), signal.SIGINT)
        return real(*a, **kw)

    monkeypatch.setattr(train, "top1_error", top1)
    with pytest.raises(TrainingError, match=r"interrupted after epoch 1; state saved to "):
        train.train(zoo.create("resnet20", seed=0), config(), out, dataset=small,
                    metrics=f"{out}.metrics.jsonl")
    state = torch.load(train.state_path(out), weights_only=True)
    assert (state["epoch"], state["step"]) == (1, 0)
    assert len(Path(f"{out}.metrics.jsonl").read_text().splitlines()) == 1


def test_resume_a_finished_run_trains_no_more(reference, small):
    _, ref, ref_history, out = reference
    again, history = train.train(zoo.create("resnet20", seed=0), config(), out,
                                 dataset=small, resume=True)
    assert_same_tensors(again.tensors, ref.tensors)
    assert [h.to_json() for h in history] == [h.to_json() for h in ref_history]


def test_bf16_precision_trains_in_bf16_on_cpu_too(tmp_path, monkeypatch):
    """--precision bf16 autocasts on the CPU: one epoch ends with other weights than the
    float32 run from the same start (and the same weights on a second run)."""
    one_step = data.synthetic(64, 16)  # bf16 is emulated (10× slower) on CPUs without it
    warnings: list[list[str]] = [[], []]
    runs = []
    for i, has_bf16 in enumerate((False, True)):  # a CPU without bf16 units, then one with
        monkeypatch.setattr(train, "cpu_has_bf16", lambda has=has_bf16: has)
        runs.append(train.train(zoo.create("resnet20", seed=0),
                                config(epochs=1, precision="bf16"),
                                tmp_path / f"b{i}.safetensors", dataset=one_step,
                                hooks=train.TrainHooks(on_warning=warnings[i].append)))
    (a, ha), (b, _) = runs
    assert len(warnings[0]) == 1 and not warnings[1]  # said once, only where it is slow
    assert "10× slower than float32" in warnings[0][0]
    assert "--precision auto" in warnings[0][0]
    fp32, _ = train.train(zoo.create("resnet20", seed=0), config(epochs=1, precision="fp32"),
                          tmp_path / "f.safetensors", dataset=one_step)
    assert not torch.equal(a.tensors["conv1.weight"], fp32.tensors["conv1.weight"])
    assert_same_tensors(a.tensors, b.tensors)
    assert a.history[-1]["config"]["precision"] == "bf16"
    assert math.isfinite(ha[-1].train_loss) and 0 <= ha[-1].test_error <= 1


def test_auto_precision_is_float32_on_cpu(tmp_path, reference, small):
    _, ref, _, _ = reference  # trained with the default, "auto"
    fp32, _ = train.train(zoo.create("resnet20", seed=0), config(precision="fp32"),
                          tmp_path / "f.safetensors", dataset=small)
    assert_same_tensors(fp32.tensors, ref.tensors)


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision must be auto, bf16 or fp32, not 'fp16'"):
        config(precision="fp16")


@pytest.mark.parametrize("change, needle", [
    (dict(lr=0.05), "lr: 0.1 → 0.05"),
    (dict(epochs=3), "epochs: 2 → 3"),
    (dict(seed=7), "seed: 0 → 7"),
])
def test_resume_with_other_options_is_refused(reference, small, change, needle):
    _, _, _, out = reference
    with pytest.raises(UsageError, match="options differ") as info:
        train.train(zoo.create("resnet20"), config(**change), out, dataset=small, resume=True)
    assert needle in str(info.value)


def test_resume_without_a_state_file(tmp_path, small):
    out = tmp_path / "never.safetensors"
    with pytest.raises(UsageError, match="no state file") as info:
        train.train(zoo.create("resnet20"), config(), out, dataset=small, resume=True)
    assert str(train.state_path(out)) in str(info.value)


def test_resume_from_a_corrupt_state_file(tmp_path, small):
    out = tmp_path / "bad.safetensors"
    train.state_path(out).write_bytes(b"not a torch file")
    with pytest.raises(UsageError, match="cannot read"):
        train.train(zoo.create("resnet20"), config(), out, dataset=small, resume=True)


# --------------------------------------------------------------------------------------------
# non-finite losses

def test_nan_loss_stops_and_keeps_the_last_good_state(tmp_path, reference, small):
    """The loss turns NaN in epoch 2: TrainingError, epoch 1's state file untouched (and
    resuming from it with a finite loss reaches the reference weights)."""
    _, ref, _, _ = reference
    out = tmp_path / "n.safetensors"
    spath = train.state_path(out)
    saved: dict[str, bytes] = {}
    poisoned = {"on": False}

    def cross_entropy(logits, y):
        loss = F.cross_entropy(logits, y)
        return loss * float("nan") if poisoned["on"] else loss

    def after_epoch(stats):
        saved["bytes"] = spath.read_bytes()
        poisoned["on"] = True

    mp = pytest.MonkeyPatch()
    mp.setattr(train, "F", types.SimpleNamespace(cross_entropy=cross_entropy))
    try:
        with pytest.raises(TrainingError, match=r"loss became nan at epoch 2, step 1") as info:
            train.train(zoo.create("resnet20", seed=0), config(), out, dataset=small,
                        hooks=train.TrainHooks(on_epoch=after_epoch))
    finally:
        mp.undo()
    assert "--resume" in str(info.value) and str(spath) in str(info.value)
    assert spath.read_bytes() == saved["bytes"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [spath.name]  # no temp files
    resumed, _ = train.train(zoo.create("resnet20", seed=0), config(), out, dataset=small,
                             resume=True)
    assert_same_tensors(resumed.tensors, ref.tensors)


def test_ctrl_c_never_saves_weights_a_bad_loss_reached(tmp_path, small, monkeypatch):
    """With the loss checked every 25 steps (as on a GPU), a NaN at step 1 and Ctrl-C at
    step 2 stop with the NaN error and write no state: the save checks first."""
    monkeypatch.setattr(train, "loss_check_interval", lambda device: 25)
    out = tmp_path / "n.safetensors"
    calls = [0]

    def cross_entropy(logits, y):
        calls[0] += 1
        if calls[0] == 2:
            os.kill(os.getpid(), signal.SIGINT)
        loss = F.cross_entropy(logits, y)
        return loss * float("nan") if calls[0] == 1 else loss

    monkeypatch.setattr(train, "F", types.SimpleNamespace(cross_entropy=cross_entropy))
    with pytest.raises(TrainingError, match=r"loss became nan at epoch 1, a step up to 2 "
                                            r"\(checked every 25 steps\).*no state was kept"):
        train.train(zoo.create("resnet20", seed=0), config(), out, dataset=small)
    assert list(tmp_path.iterdir()) == []


def test_nan_between_checks_is_caught_at_the_end_of_the_epoch(tmp_path, small, monkeypatch):
    monkeypatch.setattr(train, "loss_check_interval", lambda device: 25)  # > 4 steps
    calls = [0]

    def cross_entropy(logits, y):
        calls[0] += 1
        loss = F.cross_entropy(logits, y)
        return loss * float("nan") if calls[0] == 2 else loss

    monkeypatch.setattr(train, "F", types.SimpleNamespace(cross_entropy=cross_entropy))
    with pytest.raises(TrainingError, match=r"at epoch 1, a step up to 4 \(checked every 25"):
        train.train(zoo.create("resnet20", seed=0), config(), tmp_path / "n.safetensors",
                    dataset=small)
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_in_the_last_step_stops_after_the_epoch(tmp_path, small, monkeypatch):
    out = tmp_path / "r.safetensors"
    sigint_after_forward(monkeypatch, at_call=4)  # the last of epoch 1's 4 steps
    with pytest.raises(TrainingError, match=r"interrupted after epoch 1; state saved"):
        train.train(zoo.create("resnet20", seed=0), config(), out, dataset=small)
    state = torch.load(train.state_path(out), weights_only=True)
    assert (state["epoch"], state["step"]) == (1, 0)


def test_keyboard_interrupt_after_the_last_step_finishes_the_epoch(tmp_path, small):
    """A KeyboardInterrupt raised after an epoch's last step (here by a progress hook) ends
    the epoch properly instead of saving "step 4 of 4", which a resume would record as an
    epoch with no training statistics."""
    out = tmp_path / "r.safetensors"

    def interrupt(epoch, step, steps, loss, lr, ips):
        if epoch == 0 and step == steps:
            raise KeyboardInterrupt

    with pytest.raises(TrainingError, match=r"interrupted after epoch 1; state saved"):
        train.train(zoo.create("resnet20", seed=0), config(), out, dataset=small,
                    hooks=train.TrainHooks(on_step=interrupt),
                    metrics=f"{out}.metrics.jsonl")
    state = torch.load(train.state_path(out), weights_only=True)
    assert (state["epoch"], state["step"]) == (1, 0)
    rows = [json.loads(x) for x in Path(f"{out}.metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["train_loss"] > 0


def test_sigint_ignored_stays_ignored(tmp_path, small, monkeypatch):
    """A run started with SIGINT ignored (nohup, a shell's `&`) is not made interruptible,
    and the ignore is still in place afterwards."""
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        sigint_after_forward(monkeypatch, at_call=2)
        trained, history = train.train(zoo.create("resnet20", seed=0), config(epochs=1),
                                       tmp_path / "r.safetensors", dataset=small)
        assert len(history) == 1
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


def test_divergence_from_a_huge_lr_is_a_training_error(tmp_path):
    with pytest.raises(TrainingError, match=r"loss became (nan|inf) at epoch 1"):
        train.train(zoo.create("resnet20"), config(lr=1e12, epochs=1),
                    tmp_path / "x.safetensors",
                    dataset=data.synthetic(n_train=512, n_test=32))


# --------------------------------------------------------------------------------------------
# evaluation and mismatches

def _npz(root: Path, name: str, n_train: int, n_test: int, classes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    np.savez(root / f"{name}.npz",
             x_train=rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8),
             y_train=rng.integers(0, classes, n_train),
             x_test=rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8),
             y_test=rng.integers(0, classes, n_test))


def test_evaluate_counts_mistakes_with_the_stored_normalization(tmp_path):
    _npz(tmp_path, "cifar10-mini", 4, 50, 10)
    net = zoo.create("resnet20", seed=3)
    net.meta["normalization"] = {"mean": [0.4, 0.5, 0.6], "std": [0.2, 0.3, 0.4]}
    r = train.evaluate(net, "cifar10-mini", tmp_path)
    assert r.samples == 50 and r.dataset == str(tmp_path / "cifar10-mini.npz")
    with np.load(tmp_path / "cifar10-mini.npz") as z:
        x = torch.from_numpy(z["x_test"]).permute(0, 3, 1, 2).double() / 255
        y = torch.from_numpy(z["y_test"])
    x = (x - torch.tensor([0.4, 0.5, 0.6], dtype=torch.float64).view(1, 3, 1, 1)) \
        / torch.tensor([0.2, 0.3, 0.4], dtype=torch.float64).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = net.module(torch.float64)(x)
    top2 = logits.topk(2, dim=1).values
    assert (top2[:, 0] - top2[:, 1]).min() > 1e-4  # no near-ties: float32 agrees with float64
    wrong = int((logits.argmax(1) != y).sum())
    assert r.top1_error == wrong / 50
    assert r.to_json() == {"top1_error": wrong / 50, "samples": 50, "dataset": r.dataset}


def test_eval_on_a_set_with_other_classes_is_a_data_error(tmp_path):
    _npz(tmp_path, "cifar100-mini", 4, 4, 100)
    with pytest.raises(DataError, match="the network has 10 classes, cifar100-mini has 100"):
        train.evaluate(zoo.create("resnet20"), "cifar100-mini", tmp_path)
    with pytest.raises(DataError, match="10 classes"):
        train.train(zoo.create("resnet20"), config(dataset="cifar100-mini"),
                    tmp_path / "o.st", data_dir=tmp_path)
    assert not train.state_path(tmp_path / "o.st").exists()


def test_eval_on_images_of_another_size_is_a_data_error(tmp_path):
    _npz(tmp_path, "cifar10-mini", 4, 4, 10)
    net = Network(zoo.describe("resnet18", num_classes=10), {})  # only the description is read
    with pytest.raises(DataError, match="224×224 inputs, cifar10-mini has 32×32 images"):
        train.evaluate(net, "cifar10-mini", tmp_path)


# --------------------------------------------------------------------------------------------
# batches for calibration and train-mode verification

def test_training_batches_are_normalized_training_images_without_replacement(small):
    net = zoo.create("resnet20")
    got = train.training_batches(net, "synthetic", batches=3, batch_size=16, seed=1,
                                 purpose="verify", data=small)
    assert [tuple(x.shape) for x, _ in got] == [(16, 3, 32, 32)] * 3
    x = torch.cat([b[0] for b in got])
    y = torch.cat([b[1] for b in got])
    mean, std = train.normalization(net)
    ref = data.to_tensor(small.x_train, mean, std)
    # every image is a training image with its label, none twice
    idx = [int(((ref - xi).abs().flatten(1).amax(1) == 0).nonzero()[0]) for xi in x]
    assert len(set(idx)) == 48
    assert torch.equal(y, torch.from_numpy(small.y_train[idx]))
    again = train.training_batches(net, "synthetic", batches=3, batch_size=16, seed=1,
                                   purpose="verify", data=small)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(got, again, strict=True))
    other = train.training_batches(net, "synthetic", batches=3, batch_size=16, seed=1,
                                   purpose="calibrate", data=small)
    assert not torch.equal(other[0][0], got[0][0])  # an independent draw per purpose


def test_training_batches_are_capped_by_the_set_and_refuse_less_than_one(small):
    net = zoo.create("resnet20")
    n = len(small.x_train)
    got = train.training_batches(net, "synthetic", batches=1000, batch_size=n // 2, data=small)
    assert len(got) == 2
    with pytest.raises(DataError, match="fewer than one batch"):
        train.training_batches(net, "synthetic", batches=1, batch_size=n + 1, data=small)
    with pytest.raises(DataError, match="100 classes"):
        train.training_batches(zoo.create("resnet20", num_classes=100), "synthetic",
                               batches=1, data=small)
