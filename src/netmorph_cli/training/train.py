"""Training and evaluation: the paper's CIFAR recipe, on-device data, resumable, DDP-ready.

The whole data set lives on the training device as normalized float tensors; each step
takes a slice of an epoch permutation and augments it there in one batched op. Every random
draw comes from a generator seeded by (seed, epoch, step), so a run killed anywhere and
resumed from its last state file ends with the same weights as an uninterrupted one.

Under ``torchrun --nproc-per-node N`` the same code runs DistributedDataParallel (nccl on
GPU, gloo on CPU): all ranks draw the same epoch permutation and each takes every N-th
image, with the global batch split evenly; rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..base.runtime import bf16_cpu_warning, cpu_has_bf16
from ..errors import TrainingError, UsageError
from ..io.outputs import append_line, exclusive, sha256, write_text
from ..morph.calibrate import calibrate, uncalibrated_layers
from ..network.description import Network, check_forward, state_of
from ..network.history import TrainRecord
from .data import Dataset, augment, load_dataset, to_tensor
from .evaluation import (
    EvalResult,
    check_fits,
    evaluate,
    normalization,
    seeded,
    top1_error,
    training_batches,
)
from .growth import NEW, carry_momentum, new_parameter_names, param_groups
from .recipes import RECIPES, SCHEDULES, EpochStats, TrainConfig, config_json, recipe_config
from .runfiles import (
    check_run_files,
    load_state,
    probe_run,
    read_parent_state,
    save_state,
    state_path,
)

__all__ = ["CALIBRATION_BATCHES", "RECIPES", "SCHEDULES", "Dist", "EpochStats", "EvalResult",
           "TrainConfig", "TrainHooks", "check_run_files", "evaluate", "init_distributed",
           "normalization", "recipe_config", "state_path", "top1_error", "train",
           "training_batches"]

CALIBRATION_BATCHES = 32  # of 128 images: see README, "Training mode"
# an epoch's mean loss above DIVERGED × ln(classes) (the loss of guessing) draws a warning:
# a trained or training network is far below ln(classes); 10× above it is no learning
DIVERGED = 10.0


@dataclass
class TrainHooks:
    """Callbacks for the CLI's progress display (all optional)."""

    on_step: Callable[[int, int, int, float, float, float], None] | None = None
    on_epoch: Callable[[EpochStats], None] | None = None
    on_start: Callable[[int, int, int], None] | None = None  # start epoch, epochs, steps
    on_warning: Callable[[str], None] | None = None  # e.g. a diverging loss
    # every step's training loss: (0-based global step, loss); costs a device sync a step
    on_loss: Callable[[int, float], None] | None = None
    on_calibrate: Callable[[int, int], None] | None = None  # batches done, of total
    on_groups: Callable[[str], None] | None = None  # the optimizer groups, in words
    on_test: Callable[[int, int], None] | None = None  # epoch's test pass: images done, of


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Dist:
    """Join the process group torchrun set up (WORLD_SIZE > 1), else a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size())

# -- training ----------------------------------------------------------------------------
def train(net: Network, cfg: TrainConfig, out: str | Path, *, data_dir: str | Path | None = None,
          device: torch.device | str = "cpu", resume: bool = False,
          metrics: str | Path | None = None, hooks: TrainHooks | None = None,
          dataset: Dataset | None = None, source: str | Path | None = None,
          force: bool = False, from_state: str | Path | None = None,
          finish: Callable[[Network], Any] | None = None
          ) -> tuple[Network, list[EpochStats]]:
    """Train ``net`` (read from the file ``source``, if any) with ``cfg``; write a state
    file every epoch and return the trained network (the caller saves it to ``out``). The
    files follow ``check_run_files``; the run holds ``OUT.lock``. Raises ``TrainingError``
    on a non-finite loss, weight or BN statistic, keeping the last good state file.

    The parameters a morph added (``growth.new_parameter_names``) get their own optimizer
    group when ``cfg`` sets new-parameter options (``cfg.grows``); ``from_state``: a
    parent's training state whose momentum the child's trained parameters carry
    (``growth.carry_momentum``; a resumed run has it in its own state). ``finish`` is called
    with the trained network inside the run's lock, on the main rank (the CLI saves OUT
    there, so no second run can start between the last state and the checkpoint)."""
    hooks = hooks or TrainHooks()
    device = torch.device(device)
    dist = init_distributed(device)
    digest = sha256(source) if source else None  # recorded in the state, checked on resume
    check_run_files(out, cfg, source=source, metrics=metrics, resume=resume, force=force,
                    source_sha256=digest)
    new = new_groups(net, cfg)
    if hooks.on_groups is not None:
        hooks.on_groups(groups_line(net, cfg, new))
    parent_state = read_parent_state(from_state) if from_state and not resume else None
    if parent_state is not None and cfg.momentum == 0:
        raise UsageError("--from-state carries the parent's momentum, and --momentum 0 "
                         "would not use it")
    # new parameters start at zero momentum whether or not they get their own group
    fresh = (new or new_parameter_names(net)) if parent_state is not None else ()
    if dist.main:
        probe_run(net, out, metrics)
    with exclusive(out) if dist.main else contextlib.nullcontext():
        if dist.main:
            if not resume:
                state_path(out).unlink(missing_ok=True)  # --force: start again
        trained, history = _train(net, cfg, out, data_dir=data_dir, device=device,
                                  resume=resume, metrics=metrics, hooks=hooks, dataset=dataset,
                                  dist=dist, source_sha256=digest, new=new,
                                  parent_state=parent_state, fresh=fresh)
        if finish is not None and dist.main:
            finish(trained)
        return trained, history

def _train(net: Network, cfg: TrainConfig, out: str | Path, *, data_dir: str | Path | None,
           device: torch.device, resume: bool, metrics: str | Path | None, hooks: TrainHooks,
           dataset: Dataset | None, dist: Dist, source_sha256: str | None,
           new: tuple[str, ...], parent_state: tuple[dict[str, Any], dict[str, Any]] | None,
           fresh: tuple[str, ...] = ()) -> tuple[Network, list[EpochStats]]:
    data = dataset or load_dataset(cfg.dataset, data_dir)
    check_fits(net, data)
    # activations, their gradients and autograd's saved tensors, and the set as float32
    # (and the test pass: batches of 1000 on CUDA, 100 on a CPU, without gradients)
    batch = min(cfg.batch_size // dist.world, len(data.x_train))
    test_batch = min(1000 if device.type == "cuda" else 100, len(data.x_test))
    check_forward(net.description, batch, torch.float32, "training",
                  factor=max(3.0, test_batch / max(batch, 1)),
                  extra=4 * (data.x_train.size + data.x_test.size), device=device)
    if cfg.calibrate and uncalibrated_layers(net):  # deterministic: a resumed run repeats it
        batches = training_batches(net, cfg.dataset, batches=CALIBRATION_BATCHES,
                                   batch_size=min(128, len(data.x_train)), seed=cfg.seed,
                                   purpose="calibrate", device=device, data=data)
        net = calibrate(net, [x for x, _ in batches], dataset=data.name, seed=cfg.seed,
                        device=device, progress=hooks.on_calibrate)
    run = _Run(net, cfg, _Loaded(net, data, device), dist, state_path(out), hooks,
               source_sha256, new)
    if resume:
        run.start_epoch, run.start_step, run.history, run.carried = load_state(
            run.spath, run.model, run.opt)
    elif parent_state is not None:
        state, about = parent_state
        run.carried = {**about, **carry_momentum(run.opt, run.model, state, fresh)}
    if metrics and dist.main:  # a fresh run starts a fresh file; a resumed one its history
        if run.history:
            write_text(metrics, "".join(json.dumps(h.to_json()) + "\n" for h in run.history),
                       force=True)
        else:  # created by the first epoch's line: a failed run leaves no empty file
            Path(metrics).unlink(missing_ok=True)
    run.loop(metrics, resume)
    return run.result(), run.history


def new_groups(net: Network, cfg: TrainConfig) -> tuple[str, ...]:
    """The new parameters that get their own group: none unless ``cfg`` sets new-parameter
    options, which on a network with none are a ``UsageError``."""
    if not cfg.grows:
        return ()
    new = new_parameter_names(net)
    if not new:
        raise UsageError("--recipe grow, --new-lr-scale, --new-warmup and --new-weight-decay "
                         "apply to the parameters a morph added since the last training, and "
                         "this network has none (no morph in its history since it was "
                         "trained): train it with --recipe continue")
    return new


def groups_line(net: Network, cfg: TrainConfig, new: tuple[str, ...]) -> str:
    """What the optimizer groups are (``new``: the new group's parameters), in words."""
    model = net.module()
    total = sum(p.numel() for p in model.parameters())
    if not new:
        return f"optimizer: one group, {total:,} parameters at lr {cfg.lr:g}"
    n_new = sum(p.numel() for k, p in model.named_parameters() if k in set(new))
    wd = cfg.weight_decay if cfg.new_weight_decay is None else cfg.new_weight_decay
    ramp = f", ramped from 0 over {cfg.new_warmup} steps" if cfg.new_warmup else ""
    return (f"optimizer: {total - n_new:,} trained parameters at lr {cfg.lr:g} (weight decay "
            f"{cfg.weight_decay:g}); {n_new:,} new in {len(new)} tensors at lr "
            f"{cfg.lr * cfg.new_lr_scale:g} (×{cfg.new_lr_scale:g}{ramp}; weight decay "
            f"{wd:g})")


class _Loaded:
    """A data set normalized with the network's statistics, on the device."""

    def __init__(self, net: Network, data: Dataset, device: torch.device) -> None:
        self.name, self.num_classes = data.name, data.num_classes
        self.mean, self.std = normalization(net)
        self.x_train = to_tensor(data.x_train, self.mean, self.std, device)
        self.y_train = torch.from_numpy(data.y_train).to(device)
        self.x_test = to_tensor(data.x_test, self.mean, self.std, device)
        self.y_test = torch.from_numpy(data.y_test).to(device)
        self.fill = torch.tensor([-m / s for m, s in zip(self.mean, self.std, strict=True)])
        self.augment = data.augment


class _Run:
    """One training run: the model and optimizer, an epoch (``epoch``) and the loop over
    epochs that tests, saves, logs and stops (``loop``)."""

    def __init__(self, net: Network, cfg: TrainConfig, data: _Loaded, dist: Dist, spath: Path,
                 hooks: TrainHooks, source_sha256: str | None, new: tuple[str, ...]) -> None:
        self.net, self.cfg, self.data, self.dist, self.spath, self.hooks = (
            net, cfg, data, dist, spath, hooks)
        self.carried: dict[str, Any] | None = None  # where the momentum came from
        self.device = device = data.x_train.device
        model = net.module(torch.float32, device).train()
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.model = model
        self.opt = torch.optim.SGD(
            param_groups(model, new, cfg.lr, cfg.weight_decay, new_lr_scale=cfg.new_lr_scale,
                         new_weight_decay=cfg.new_weight_decay),
            lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        self.start_epoch, self.start_step = 0, 0
        self.history: list[EpochStats] = []
        step_model: torch.nn.Module = model
        if dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            step_model = DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        if cfg.compile:
            step_model = torch.compile(step_model)  # type: ignore[assignment]
        self.step_model = step_model
        self.n_local = len(data.x_train) // dist.world
        self.b_local = max(cfg.batch_size // dist.world, 1)
        self.steps = math.ceil(self.n_local / self.b_local)
        self.amp = cfg.precision == "bf16" or (cfg.precision == "auto"
                                               and device.type == "cuda")
        if self.amp and device.type == "cpu" and not cpu_has_bf16() and hooks.on_warning:
            hooks.on_warning(bf16_cpu_warning())
        self.check_every = loss_check_interval(device)
        self.ctrl_c = _DeferredInterrupt(
            lambda: "interrupted twice: stopped at once, mid-step; " + (
                f"the last saved state is {spath} (written after every epoch): continue "
                f"with --resume" if spath.exists() else
                "no epoch had finished, so no state was saved"),
            enabled=dist.world == 1)
        self.save = lambda epoch, step, history: save_state(
            spath, model, self.opt, cfg, source_sha256, self.carried, epoch, step, history)

    def loop(self, metrics: str | Path | None, resume: bool) -> None:
        cfg, dist, hooks = self.cfg, self.dist, self.hooks
        if hooks.on_start:
            hooks.on_start(self.start_epoch, cfg.epochs, self.steps)
        warned = False
        with self.ctrl_c:
            for epoch in range(self.start_epoch, cfg.epochs):
                first = self.start_step if epoch == self.start_epoch else 0
                stats = self.epoch(epoch, first, kept=epoch > 0 or resume)
                self.history.append(stats)
                _check_finite(self.model, epoch, self.spath, kept=epoch > 0 or resume)
                if dist.main:
                    self.save(epoch + 1, 0, self.history)
                    if metrics:
                        append_line(metrics, json.dumps(stats.to_json()))
                if hooks.on_epoch:
                    hooks.on_epoch(stats)
                if not warned and (warning := self._diverging(stats)):
                    warned = True
                    if hooks.on_warning:
                        hooks.on_warning(warning)
                if self.ctrl_c.pending and epoch + 1 < cfg.epochs:  # Ctrl-C while testing
                    raise TrainingError(f"interrupted after epoch {epoch + 1}; state saved "
                                        f"to {self.spath}: continue with --resume")

    def epoch(self, epoch: int, first: int, *, kept: bool) -> EpochStats:
        """Steps ``first``… of ``epoch`` and the test pass. Ctrl-C mid-epoch saves the state
        after the step in flight and raises ``TrainingError``."""
        cfg, dist, data, device, opt = self.cfg, self.dist, self.data, self.device, self.opt
        steps, b_local, ctrl_c, spath = self.steps, self.b_local, self.ctrl_c, self.spath
        t0 = time.perf_counter()
        perm = torch.randperm(len(data.x_train), generator=seeded(cfg.seed, epoch))
        mine = perm[dist.rank::dist.world][:self.n_local].to(device)
        loss_sum = torch.zeros((), device=device)
        wrong = torch.zeros((), device=device, dtype=torch.long)
        bad = torch.zeros((), device=device, dtype=torch.bool)
        seen = 0
        done = first  # steps of this epoch whose update is applied (where to resume)
        step, loss = first, torch.zeros((), device=device)  # for an interrupt before any
        try:
            for step in range(first, steps):
                lr = cfg.lr_at(epoch + step / steps, 1 / steps)
                ramp = cfg.new_ramp(epoch * steps + step)
                for group in opt.param_groups:
                    group["lr"] = lr * group.get("lr_scale", 1.0) * (
                        ramp if group.get("name") == NEW else 1.0)
                idx = mine[step * b_local:(step + 1) * b_local]
                xb = augment(data.x_train[idx], seeded(cfg.seed, epoch, step, dist.rank),
                             pad=data.augment.pad, fill=data.fill, flip=data.augment.flip)
                if cfg.channels_last:
                    xb = xb.contiguous(memory_format=torch.channels_last)
                yb = data.y_train[idx]
                with torch.autocast(device.type, torch.bfloat16, enabled=self.amp):
                    logits = self.step_model(xb)
                    loss = F.cross_entropy(logits.float(), yb)
                bad |= ~torch.isfinite(loss.detach())
                if (step + 1) % self.check_every == 0 or step + 1 == steps or ctrl_c.pending:
                    _check_loss(bad, loss, epoch, step, self.check_every, spath, kept=kept)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                done = step + 1
                if self.hooks.on_loss:
                    self.hooks.on_loss(epoch * steps + step, float(loss.detach()))
                loss_sum += loss.detach() * len(idx)
                wrong += (logits.argmax(1) != yb).sum()
                seen += len(idx)
                if self.hooks.on_step and (step % 10 == 0 or step == steps - 1):
                    el = time.perf_counter() - t0
                    self.hooks.on_step(epoch, step + 1, steps, float(loss.detach()), lr,
                                       seen * dist.world / max(el, 1e-9))
                if ctrl_c.pending and step + 1 < steps:  # else: after the epoch
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            # never save weights a bad loss has reached (on CUDA the last check may be
            # a few steps back): that raises instead and keeps the last epoch's state
            _check_loss(bad, loss, epoch, step, self.check_every, spath, kept=kept)
            if done == steps and dist.world == 1:  # every step done: finish the epoch
                ctrl_c.pending = True  # (its test pass and state), then stop
            else:
                if dist.main:
                    _check_finite(self.model, epoch, spath, kept=spath.exists())
                    self.save(epoch, done, self.history)
                raise TrainingError(f"interrupted at epoch {epoch + 1}, step {done + 1}; "
                                    f"state saved to {spath}: continue with --resume"
                                    ) from None
        _sync_buffers(self.model, dist)
        seconds = time.perf_counter() - t0
        return EpochStats(epoch + 1, float(loss_sum) / max(seen, 1),
                          float(wrong) / max(seen, 1),
                          top1_error(self.model, data.x_test, data.y_test, amp=self.amp,
                                     progress=self.hooks.on_test),
                          cfg.lr_at(epoch), seconds, seen * dist.world / seconds)

    def _diverging(self, stats: EpochStats) -> str | None:
        chance = math.log(self.data.num_classes)  # the loss of guessing
        if stats.train_loss <= DIVERGED * chance:
            return None
        return (f"the training loss is {stats.train_loss:.3g} at epoch {stats.epoch}, "
                f"{stats.train_loss / chance:.0f}× that of guessing (ln "
                f"{self.data.num_classes} = {chance:.2f}): the run is diverging; start "
                f"again with a lower --lr or a --warmup")

    def result(self) -> Network:
        """The trained network, with the training in its history."""
        net, history = self.net, self.history
        trained = Network(net.description, {k: v.cpu() for k, v in state_of(self.model).items()},
                          list(net.history), dict(net.meta))
        trained.tensors = {k: v.to(net.tensors[k].dtype) if v.is_floating_point() else v
                           for k, v in trained.tensors.items()}
        trained.meta["normalization"] = {"mean": list(self.data.mean),
                                         "std": list(self.data.std)}
        final = history[-1] if history else None
        trained.history.append(TrainRecord.of(
            op="train", dataset=self.data.name, config=config_json(self.cfg),
            epochs_run=len(history), world_size=self.dist.world,
            test_error=final.test_error if final else None,
            seconds=sum(h.seconds for h in history),
            metrics=tuple(h.to_json() for h in history)).to_json())
        if self.carried is not None:  # recorded beside the config (history keeps extra keys)
            trained.history[-1]["carried_state"] = self.carried
        return trained.check()


def loss_check_interval(device: torch.device) -> int:
    """Steps between checks that the loss is finite. A check waits for the device, so a
    GPU checks every 25 steps; a bad loss still never reaches a saved state, since every
    save (end of epoch, Ctrl-C) checks first."""
    return 25 if device.type == "cuda" else 1


class _DeferredInterrupt:
    """Ctrl-C (SIGINT) during a step is acted on when the step is done, so the state saved
    on an interrupt is never half an update (BN statistics moved by the forward pass but no
    optimizer step, or some parameters stepped and others not). A second Ctrl-C stops at
    once (``TrainingError(message)``). Only in the main thread of a single process: DDP
    ranks would each stop at a different step and leave the others in an all-reduce."""

    def __init__(self, message: Callable[[], str], enabled: bool = True) -> None:
        self.message = message
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.pending = False
        self._old: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.pending:
            raise TrainingError(self.message())
        self.pending = True

    def __enter__(self) -> _DeferredInterrupt:
        if self.enabled and signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
            self.enabled = False  # started with SIGINT ignored (nohup, `&`): keep it so
        if self.enabled:
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:  # None: a handler not set from Python; the default is closest
            signal.signal(signal.SIGINT, self._old if self._old is not None else signal.SIG_DFL)


def _check_loss(bad: torch.Tensor, loss: torch.Tensor, epoch: int, step: int, every: int,
                spath: Path, *, kept: bool) -> None:
    """Raise ``TrainingError`` if any loss since the last check was not finite."""
    if not bool(bad):
        return
    where = (f"step {step + 1}" if every == 1 else
             f"a step up to {step + 1} (checked every {every} steps)")
    raise TrainingError(f"the loss became {float(loss.detach())} at epoch {epoch + 1}, "
                        f"{where}; stopped: {_last_good(spath, epoch, kept)}")


def _check_finite(model: torch.nn.Module, epoch: int, spath: Path, *, kept: bool) -> None:
    """Raise ``TrainingError`` naming the first non-finite weight or BN statistic: a state
    is never saved from one (a finite loss can hide infinite running statistics)."""
    for name, t in list(model.state_dict().items()):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise TrainingError(f"'{name}' became non-finite in epoch {epoch + 1}; stopped: "
                                f"{_last_good(spath, epoch, kept)}")


def _last_good(spath: Path, epoch: int, kept: bool) -> str:
    last = (f"the last good state is {spath} (epoch {epoch}): --resume retries from it with "
            f"the same options; or " if kept else "no epoch finished, so no state was kept; ")
    return f"{last}start again with a lower --lr or a --warmup"


def _sync_buffers(model: torch.nn.Module, dist: Dist) -> None:
    """Give every rank rank 0's BN statistics (DDP keeps parameters, not buffers, equal)."""
    if dist.world > 1:
        import torch.distributed as tdist

        for b in model.buffers():
            tdist.broadcast(b, 0)
