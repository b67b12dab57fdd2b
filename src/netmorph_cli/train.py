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
import functools
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .calibrate import calibrate, uncalibrated_layers
from .data import CIFAR_MEAN, CIFAR_STD, Dataset, augment, load_dataset, to_tensor
from .errors import DataError, OutputError, TrainingError, UsageError, WriteError
from .network import Network, state_of
from .outputs import (
    append_line,
    check_outputs,
    exclusive,
    probe_directory,
    sha256,
    write_file,
    write_text,
)


@dataclass(frozen=True)
class TrainConfig:
    dataset: str = "cifar10"
    epochs: int = 164
    lr: float = 0.1
    batch_size: int = 128  # global, over all ranks
    momentum: float = 0.9
    weight_decay: float = 1e-4
    # "step": the paper's step decay (lr × gamma at each milestone); "cosine": cosine
    # annealing from lr to 0 over the run (continuing a trained or morphed network)
    schedule: str = "step"
    milestones: tuple[float, ...] = (0.5, 0.75)  # fractions of training (≤ 1) or epochs
    gamma: float = 0.1  # lr factor at each milestone
    warmup: float = 0.0  # epochs of linear warm-up
    seed: int = 0
    # "auto": bf16 autocast on CUDA, float32 elsewhere; "bf16": autocast on any device (on
    # CPUs with bf16 units, ≈ 2× faster than float32); "fp32": float32 everywhere
    precision: str = "auto"
    channels_last: bool = True  # NHWC activations: ~1.35× on these CPUs, faster on GPUs
    compile: bool = False
    # set a morph's uncalibrated new BN layers from training data before the first step
    # (calibrate.py): without it a child starts training far from its parent's function
    calibrate: bool = True

    def __post_init__(self) -> None:
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision must be auto, bf16 or fp32, not {self.precision!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be {' or '.join(SCHEDULES)}, not "
                             f"{self.schedule!r}")

    def lr_at(self, epoch: float, step: float = 0.0) -> float:
        """Learning rate of a step that starts at fractional ``epoch`` and lasts ``step``
        epochs: linear warm-up (to the step's end, so the first step does not go at lr 0),
        then step decay at milestones, or cosine annealing from lr (end of warm-up) to 0 at
        the end of training (taken at the step's start, so the last step is not at lr 0)."""
        if self.warmup > 0 and epoch < self.warmup:
            return self.lr * min(epoch + step, self.warmup) / self.warmup
        if self.schedule == "cosine":
            span = max(self.epochs - self.warmup, 1e-12)
            t = min(max(epoch - self.warmup, 0.0) / span, 1.0)
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * t))
        steps = sum(1 for m in self.milestone_epochs() if epoch >= m)
        return self.lr * self.gamma ** steps

    def milestone_epochs(self) -> list[float]:
        return [m * self.epochs if m <= 1 else m for m in self.milestones]


SCHEDULES = ("step", "cosine")
CALIBRATION_BATCHES = 32  # of 128 images: see README, "Training mode"
# an epoch's mean loss above DIVERGED × ln(classes) (the loss of guessing) draws a warning:
# a trained or training network is far below ln(classes); 10× above it is no learning
DIVERGED = 10.0

# Named recipes: the TrainConfig fields each sets (the CLI's --recipe; options given on the
# command line override them). "paper": training from scratch (He et al. 2015, the paper's
# phases); "continue": a trained parent or a morphed child for a short budget, cosine from a
# moderate lr to 0 as NASH does after each morph (lr 0.02: README, "Training").
RECIPES: dict[str, dict[str, Any]] = {
    "paper": {"schedule": "step", "lr": 0.1, "epochs": 164, "milestones": (0.5, 0.75)},
    "continue": {"schedule": "cosine", "lr": 0.02, "epochs": 10},
}


def recipe_config(recipe: str, *, epochs: int | None = None, lr: float | None = None,
                  schedule: str | None = None, milestones: tuple[float, ...] | None = None,
                  **fixed: Any) -> TrainConfig:
    """A ``TrainConfig`` from a recipe (``RECIPES``) and the options given (None: the
    recipe's value); ``fixed`` are the other fields. Milestones with a cosine schedule are
    refused (``UsageError``)."""
    if recipe not in RECIPES:
        raise UsageError(f"unknown recipe {recipe!r} (choose from {', '.join(RECIPES)})")
    given = {"epochs": epochs, "lr": lr, "schedule": schedule, "milestones": milestones}
    chosen = {**RECIPES[recipe], **{k: v for k, v in given.items() if v is not None}}
    if milestones is not None and chosen["schedule"] != "step":
        raise UsageError(f"--milestones applies to the step schedule, not "
                         f"{chosen['schedule']} (recipe {recipe})")
    return TrainConfig(**fixed, **chosen)


@dataclass
class EpochStats:
    epoch: int
    train_loss: float
    train_error: float
    test_error: float
    lr: float
    seconds: float
    images_per_s: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainHooks:
    """Callbacks for the CLI's progress display (all optional)."""

    on_step: Callable[[int, int, int, float, float, float], None] | None = None
    on_epoch: Callable[[EpochStats], None] | None = None
    on_start: Callable[[int, int, int], None] | None = None  # start epoch, epochs, steps
    on_warning: Callable[[str], None] | None = None  # e.g. a diverging loss


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


def normalization(net: Network) -> tuple[tuple[float, ...], tuple[float, ...]]:
    norm = net.meta.get("normalization") or {}
    return tuple(norm.get("mean", CIFAR_MEAN)), tuple(norm.get("std", CIFAR_STD))


def _seeded(*parts: int) -> torch.Generator:
    seed = 0
    for p in parts:
        seed = (seed * 1_000_003 + p) % (2**63 - 1)
    return torch.Generator().manual_seed(seed)


# -- evaluation ------------------------------------------------------------------------

@torch.no_grad()
def top1_error(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
               batch_size: int | None = None, amp: bool = False) -> float:
    """Fraction of ``x`` misclassified by ``model`` (put in eval mode here)."""
    if batch_size is None:
        # CPU: 100 keeps every activation under glibc's 32 MB mmap threshold; at 1000 each
        # op maps fresh pages and page faults make eval 3-5× slower. Logits are the same.
        batch_size = 1000 if x.device.type == "cuda" else 100
    was = model.training
    model.eval()
    wrong = 0
    for i in range(0, len(x), batch_size):
        with torch.autocast(x.device.type, torch.bfloat16, enabled=amp):
            logits = model(x[i:i + batch_size])
        wrong += int((logits.argmax(1) != y[i:i + batch_size]).sum())
    model.train(was)
    return wrong / max(len(x), 1)


@dataclass(frozen=True)
class EvalResult:
    top1_error: float
    samples: int
    dataset: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def evaluate(net: Network, dataset: str, data_dir: str | Path | None = None,
             device: torch.device | str = "cpu", batch_size: int | None = None) -> EvalResult:
    """Top-1 error on the test split, with the normalization stored in the checkpoint."""
    data = load_dataset(dataset, data_dir)
    _check_fits(net, data)
    mean, std = normalization(net)
    x = to_tensor(data.x_test, mean, std, device)
    y = torch.from_numpy(data.y_test).to(device)
    model = net.module(torch.float32, device)
    return EvalResult(top1_error(model, x, y, batch_size), len(y), data.source)


def _check_fits(net: Network, data: Dataset) -> None:
    want = list(net.description["input"])
    have = [3, *data.x_test.shape[1:3]]
    if want != have:
        raise DataError(f"the network takes {want[1]}×{want[2]} inputs, {data.name} has "
                        f"{have[1]}×{have[2]} images")
    if net.description["num_classes"] != data.num_classes:
        raise DataError(f"the network has {net.description['num_classes']} classes, "
                        f"{data.name} has {data.num_classes}")


def training_batches(net: Network, dataset: str, data_dir: str | Path | None = None, *,
                     batches: int, batch_size: int = 128, seed: int = 0, purpose: str = "",
                     device: torch.device | str = "cpu", data: Dataset | None = None
                     ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``batches`` batches of ``batch_size`` training images (a seeded random draw without
    replacement, no augmentation), normalized as the checkpoint says, with their labels: the
    inputs of calibration and of train-mode verification. ``purpose`` ("calibrate",
    "verify") picks an independent draw for each use of one seed, so a verification does
    not reuse the calibration's images. Fewer batches when the set is smaller; a
    ``DataError`` when the data do not fit the network or hold less than one batch."""
    data = data or load_dataset(dataset, data_dir)
    _check_fits(net, data)
    n = min(batches, len(data.x_train) // batch_size)
    if n < 1:
        raise DataError(f"{data.name} has {len(data.x_train)} training images, fewer than "
                        f"one batch of {batch_size}")
    mean, std = normalization(net)
    stream = int.from_bytes(purpose.encode()[:7], "little")
    gen = _seeded(seed, stream, 1)
    pick = torch.randperm(len(data.x_train), generator=gen)[:n * batch_size].numpy()
    x = to_tensor(data.x_train[pick], mean, std, device)
    y = torch.from_numpy(data.y_train[pick]).to(device)
    return list(zip(x.split(batch_size), y.split(batch_size), strict=True))


# -- training ----------------------------------------------------------------------------

def state_path(out: str | Path) -> Path:
    return Path(f"{out}.state.pt")


def check_run_files(out: str | Path, cfg: TrainConfig, *, source: str | Path | None = None,
                    metrics: str | Path | None = None, resume: bool = False,
                    force: bool = False) -> None:
    """Refuse, before any work, what this run's files would refuse (``outputs.py``'s policy):
    OUT, OUT.state.pt and the metrics file must not be the input ``source`` or each other;
    without ``resume`` an existing state is refused ("pass --resume … or --force …"), with
    it the state must exist and come from the same input and options; an existing OUT or
    metrics file needs ``force`` (a resumed run rewrites its own metrics)."""
    spath = state_path(out)
    files = [out, spath] + ([metrics] if metrics else [])
    check_outputs(files, inputs=[source], force=True)  # inputs, duplicates, directories
    if resume:
        if not spath.is_file():
            raise UsageError(f"--resume: no state file {spath} (was the run started with "
                             "this -o?)")
        _check_same_run(_read_state(spath), cfg, source)
    if Path(out).exists() and not force:
        raise OutputError(f"'{out}' exists; pass --force to overwrite"
                          + (" (the run it resumes had finished)" if resume else ""))
    if not resume and spath.exists() and not force:
        raise OutputError(f"a training state '{spath}' exists from an earlier run: pass "
                          f"--resume to continue or --force to start again")
    if not resume and metrics and Path(metrics).exists() and not force:
        raise OutputError(f"'{metrics}' exists; pass --force to overwrite")


def train(net: Network, cfg: TrainConfig, out: str | Path, *, data_dir: str | Path | None = None,
          device: torch.device | str = "cpu", resume: bool = False,
          metrics: str | Path | None = None, hooks: TrainHooks | None = None,
          dataset: Dataset | None = None, source: str | Path | None = None,
          force: bool = False) -> tuple[Network, list[EpochStats]]:
    """Train ``net`` (read from the file ``source``, if any) with ``cfg``; write a state
    file every epoch and return the trained network (the caller saves it to ``out``). The
    files follow ``check_run_files``; the run holds ``OUT.lock``. Raises ``TrainingError``
    on a non-finite loss, weight or BN statistic, keeping the last good state file."""
    hooks = hooks or TrainHooks()
    device = torch.device(device)
    dist = init_distributed(device)
    check_run_files(out, cfg, source=source, metrics=metrics, resume=resume, force=force)
    if dist.main:
        _probe(net, out, metrics)
    with exclusive(out) if dist.main else contextlib.nullcontext():
        if dist.main:
            if not resume:
                state_path(out).unlink(missing_ok=True)  # --force: start again
        return _train(net, cfg, out, data_dir=data_dir, device=device, resume=resume,
                      metrics=metrics, hooks=hooks, dataset=dataset, dist=dist,
                      source_sha256=sha256(source) if source else None)


def _probe(net: Network, out: str | Path, metrics: str | Path | None) -> None:
    """A read-only directory, a missing permission or a full disk fails now, not after an
    epoch: the state holds the weights, BN statistics and momentum (2× the tensors, in
    float32) and is written beside the old one; the checkpoint holds the tensors once."""
    size = sum(t.numel() for t in net.tensors.values()) * 4
    probe_directory(Path(out).parent, need_bytes=5 * size)
    if metrics and Path(metrics).parent.resolve() != Path(out).parent.resolve():
        probe_directory(Path(metrics).parent)


def _train(net: Network, cfg: TrainConfig, out: str | Path, *, data_dir: str | Path | None,
           device: torch.device, resume: bool, metrics: str | Path | None, hooks: TrainHooks,
           dataset: Dataset | None, dist: Dist, source_sha256: str | None
           ) -> tuple[Network, list[EpochStats]]:
    data = dataset or load_dataset(cfg.dataset, data_dir)
    _check_fits(net, data)
    if cfg.calibrate and uncalibrated_layers(net):  # deterministic: a resumed run repeats it
        batches = training_batches(net, cfg.dataset, batches=CALIBRATION_BATCHES,
                                   batch_size=min(128, len(data.x_train)), seed=cfg.seed,
                                   purpose="calibrate", device=device, data=data)
        net = calibrate(net, [x for x, _ in batches], dataset=data.name, seed=cfg.seed,
                        device=device)
    run = _Run(net, cfg, _Loaded(net, data, device), dist, state_path(out), hooks,
               source_sha256)
    if resume:
        run.start_epoch, run.start_step, run.history = _load_state(run.spath, run.model,
                                                                    run.opt)
    if metrics and dist.main:  # a fresh run starts a fresh file; a resumed one its history
        write_text(metrics, "".join(json.dumps(h.to_json()) + "\n" for h in run.history),
                   force=True)
    run.loop(metrics, resume)
    return run.result(), run.history


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


class _Run:
    """One training run: the model and optimizer, an epoch (``epoch``) and the loop over
    epochs that tests, saves, logs and stops (``loop``)."""

    def __init__(self, net: Network, cfg: TrainConfig, data: _Loaded, dist: Dist, spath: Path,
                 hooks: TrainHooks, source_sha256: str | None) -> None:
        self.net, self.cfg, self.data, self.dist, self.spath, self.hooks = (
            net, cfg, data, dist, spath, hooks)
        self.device = device = data.x_train.device
        model = net.module(torch.float32, device).train()
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.model = model
        self.opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                   weight_decay=cfg.weight_decay)
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
        self.check_every = loss_check_interval(device)
        self.ctrl_c = _DeferredInterrupt(
            lambda: "interrupted twice: stopped at once, mid-step; " + (
                f"the last saved state is {spath} (written after every epoch): continue "
                f"with --resume" if spath.exists() else
                "no epoch had finished, so no state was saved"),
            enabled=dist.world == 1)
        self.save = functools.partial(_save_state, spath, model, self.opt, cfg, source_sha256)

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
        perm = torch.randperm(len(data.x_train), generator=_seeded(cfg.seed, epoch))
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
                for group in opt.param_groups:
                    group["lr"] = lr
                idx = mine[step * b_local:(step + 1) * b_local]
                xb = augment(data.x_train[idx], _seeded(cfg.seed, epoch, step, dist.rank),
                             fill=data.fill)
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
                          top1_error(self.model, data.x_test, data.y_test, amp=self.amp),
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
        trained.history.append({
            "op": "train", "dataset": self.data.name, "config": _config_json(self.cfg),
            "epochs_run": len(history), "world_size": self.dist.world,
            "test_error": final.test_error if final else None,
            "seconds": sum(h.seconds for h in history),
            "metrics": [h.to_json() for h in history]})
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


def _config_json(cfg: TrainConfig) -> dict[str, Any]:
    d = asdict(cfg)
    d["milestones"] = list(cfg.milestones)
    return d


def _save_state(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer,
                cfg: TrainConfig, source_sha256: str | None, epoch: int, step: int,
                history: list[EpochStats]) -> None:
    """Atomic and durable (``outputs.write_file``); a failed write keeps the last state."""
    state = {"netmorph_train_state": 1, "epoch": epoch, "step": step,
             "model": state_of(model), "optimizer": opt.state_dict(),
             "config": json.dumps(_config_json(cfg)), "input_sha256": source_sha256 or "",
             "history": json.dumps([h.to_json() for h in history]),
             "torch_rng": torch.get_rng_state()}
    try:
        write_file(path, lambda f: torch.save(state, f), force=True)
    except WriteError as exc:
        kept = (f"the state of an earlier epoch in {path} is kept: make room and continue "
                f"with --resume" if path.exists() else "no state was kept")
        raise WriteError(f"{exc}; {kept}") from None


def _read_state(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            state = torch.load(fh, map_location="cpu", weights_only=True)
        state["config"] = json.loads(state["config"])
        return state
    except Exception as exc:  # noqa: BLE001 - any failure here is a bad state file
        raise UsageError(f"--resume: cannot read {path}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _check_same_run(state: dict[str, Any], cfg: TrainConfig, source: str | Path | None) -> None:
    """``--resume`` continues the run that wrote the state: same input, same options."""
    saved, mine = state["config"], _config_json(cfg)
    defaults = _config_json(TrainConfig())  # states written before a field existed
    diff = [k for k in mine if k not in ("compile", "precision", "channels_last", "calibrate")
            and saved.get(k, defaults[k]) != mine[k]]
    if diff:
        raise UsageError(f"--resume: options differ from the interrupted run "
                         f"({', '.join(f'{k}: {saved.get(k)} → {mine[k]}' for k in diff)})")
    was = state.get("input_sha256")
    if source is not None and was and was != sha256(source):
        raise UsageError(f"--resume: the state was written by a run on another input "
                         f"(sha256 {was[:12]}…), not '{source}' (sha256 "
                         f"{sha256(source)[:12]}…); resume with that input, or start again "
                         f"with --force")


def _load_state(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer
                ) -> tuple[int, int, list[EpochStats]]:
    state = _read_state(path)
    try:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        history = [EpochStats(**h) for h in json.loads(state["history"])]
    except Exception as exc:  # noqa: BLE001 - any failure here is a bad state file
        raise UsageError(f"--resume: cannot read {path}: {_first_line(exc)}") from None
    torch.set_rng_state(state["torch_rng"])
    return int(state["epoch"]), int(state["step"]), history
