"""Training configurations: ``TrainConfig``, the named recipes, per-epoch statistics."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import UsageError


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
    # this run is epochs schedule_start + 1 … of one longer schedule of schedule_epochs
    # (None: schedule_start + epochs): a child morphed mid-run goes on with its parent's
    # schedule where the parent stopped
    schedule_start: int = 0
    schedule_epochs: int | None = None
    seed: int = 0
    # "auto": bf16 autocast on CUDA, float32 elsewhere; "bf16": autocast on any device (on
    # CPUs with bf16 units, ≈ 2× faster than float32); "fp32": float32 everywhere
    precision: str = "auto"
    channels_last: bool = True  # NHWC activations: ~1.35× on these CPUs, faster on GPUs
    compile: bool = False
    # set a morph's uncalibrated new BN layers from training data before the first step
    # (calibrate.py): without it a child starts training far from its parent's function
    calibrate: bool = True
    # the parameters a morph added since the last training (growth.py): their lr is the
    # schedule's × new_lr_scale, ramped linearly from 0 over new_warmup steps; their weight
    # decay new_weight_decay (None: weight_decay)
    new_lr_scale: float = 1.0
    new_warmup: int = 0
    new_weight_decay: float | None = None

    def __post_init__(self) -> None:
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision must be auto, bf16 or fp32, not {self.precision!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be {' or '.join(SCHEDULES)}, not "
                             f"{self.schedule!r}")
        if not (math.isfinite(self.new_lr_scale) and self.new_lr_scale >= 0):
            raise ValueError(f"new_lr_scale must be a finite number ≥ 0, not "
                             f"{self.new_lr_scale}")
        if type(self.new_warmup) is not int or self.new_warmup < 0:
            raise ValueError(f"new_warmup must be a whole number of steps ≥ 0, not "
                             f"{self.new_warmup!r}")
        if type(self.schedule_start) is not int or self.schedule_start < 0:
            raise ValueError(f"schedule_start must be a whole number of epochs ≥ 0, not "
                             f"{self.schedule_start!r}")
        if self.schedule_epochs is not None and self.schedule_epochs < self.schedule_start \
                + self.epochs:
            raise ValueError(f"a run of {self.epochs} epochs from epoch {self.schedule_start} "
                             f"does not fit a schedule of {self.schedule_epochs} epochs")
        if self.new_weight_decay is not None and not (math.isfinite(self.new_weight_decay)
                                                      and self.new_weight_decay >= 0):
            raise ValueError(f"new_weight_decay must be a finite number ≥ 0, not "
                             f"{self.new_weight_decay}")

    def lr_at(self, epoch: float, step: float = 0.0) -> float:
        """Learning rate of a step that starts at fractional ``epoch`` and lasts ``step``
        epochs: linear warm-up (to the step's end, so the first step does not go at lr 0),
        then step decay at milestones, or cosine annealing from lr (end of warm-up) to 0 at
        the end of training (taken at the step's start, so the last step is not at lr 0).
        ``epoch`` counts from this run's start; the schedule's own epoch is
        ``schedule_start`` later."""
        epoch += self.schedule_start
        if self.warmup > 0 and epoch < self.warmup:
            return self.lr * min(epoch + step, self.warmup) / self.warmup
        if self.schedule == "cosine":
            span = max(self.total_epochs - self.warmup, 1e-12)
            t = min(max(epoch - self.warmup, 0.0) / span, 1.0)
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * t))
        steps = sum(1 for m in self.milestone_epochs() if epoch >= m)
        return self.lr * self.gamma ** steps

    def new_ramp(self, global_step: int) -> float:
        """The new parameters' lr factor at (0-based) ``global_step``: linear from 0 to 1
        over ``new_warmup`` steps, reached at the end of each step as ``lr_at``'s warm-up
        does (step 0 of a 200-step ramp goes at 1/200), then 1."""
        if self.new_warmup <= 0:
            return 1.0
        return min(global_step + 1, self.new_warmup) / self.new_warmup

    @property
    def grows(self) -> bool:
        """Whether the options treat new parameters apart from trained ones."""
        return (self.new_lr_scale != 1.0 or self.new_warmup > 0
                or self.new_weight_decay is not None)

    @property
    def total_epochs(self) -> int:
        """The length of the schedule this run is part of."""
        return self.schedule_epochs or self.schedule_start + self.epochs

    def milestone_epochs(self) -> list[float]:
        """The step schedule's milestones, in the schedule's epochs."""
        return [m * self.total_epochs if m <= 1 else m for m in self.milestones]


SCHEDULES = ("step", "cosine")


# Named recipes: the TrainConfig fields each sets (the CLI's --recipe; options given on the
# command line override them). "paper": training from scratch (He et al. 2015, the paper's
# phases); "continue": a trained parent for a short budget, cosine from a moderate lr to 0
# as NASH does after each morph (lr 0.02: README, "Training"); "grow": a morphed child,
# continue's schedule with the parameters the morph added at lr × 0.1, ramped in from 0
# over 200 steps — the arm of the side-by-side comparison (examples/grow/results/recipes.md,
# README "Growth") chosen by its pre-registered rule (lowest train-mode loss over the last
# 50 steps, 1c1 and D × 2 seeds; within 1% of it, the lower loss over steps 1–50).
RECIPES: dict[str, dict[str, Any]] = {
    "paper": {"schedule": "step", "lr": 0.1, "epochs": 164, "milestones": (0.5, 0.75)},
    "continue": {"schedule": "cosine", "lr": 0.02, "epochs": 10},
    "grow": {"schedule": "cosine", "lr": 0.02, "epochs": 10, "new_lr_scale": 0.1,
             "new_warmup": 200},
}
GROWING = {k for k, v in RECIPES.items() if any(f.startswith("new_") for f in v)}


def recipe_config(recipe: str, *, epochs: int | None = None, lr: float | None = None,
                  schedule: str | None = None, milestones: tuple[float, ...] | None = None,
                  new_lr_scale: float | None = None, new_warmup: int | None = None,
                  new_weight_decay: float | None = None, schedule_start: int = 0,
                  schedule_epochs: int | None = None, **fixed: Any) -> TrainConfig:
    """A ``TrainConfig`` from a recipe (``RECIPES``) and the options given (None: the
    recipe's value); ``fixed`` are the other fields. Milestones with a cosine schedule are
    refused (``UsageError``)."""
    if recipe not in RECIPES:
        raise UsageError(f"unknown recipe {recipe!r} (choose from {', '.join(RECIPES)})")
    given = {"epochs": epochs, "lr": lr, "schedule": schedule, "milestones": milestones,
             "new_lr_scale": new_lr_scale, "new_warmup": new_warmup,
             "new_weight_decay": new_weight_decay}
    chosen = {**RECIPES[recipe], **{k: v for k, v in given.items() if v is not None}}
    if milestones is not None and chosen["schedule"] != "step":
        raise UsageError(f"--milestones applies to the step schedule, not "
                         f"{chosen['schedule']} (recipe {recipe})")
    if schedule_epochs is not None and schedule_start + chosen["epochs"] > schedule_epochs:
        raise UsageError(f"--epochs {chosen['epochs']} from --schedule-start {schedule_start} "
                         f"runs past the end of --schedule-epochs {schedule_epochs}")
    return TrainConfig(**fixed, **chosen, schedule_start=schedule_start,
                       schedule_epochs=schedule_epochs)

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

def config_json(cfg: TrainConfig) -> dict[str, Any]:
    d = asdict(cfg)
    d["milestones"] = list(cfg.milestones)
    return d
