"""Commands that train and report: ``eval``, ``train``, ``plot``, ``report``."""

from __future__ import annotations

from typing import Any

import click

from ..base.limits import MAX_BATCH
from ..errors import NetmorphError
from ..training.recipes import RECIPES
from .common import (
    _FORCE,
    _JSON,
    _OUT,
    _console,
    _data_options,
    _emit_json,
    _finite,
    _wrote,
    cli,
)


@cli.command(name="eval")
@click.argument("ckpt", metavar="CKPT")
@_data_options
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@_JSON
def eval_cmd(ckpt: str, dataset: str, data_dir: str | None, device: str, as_json: bool) -> None:
    """Top-1 error of a checkpoint on a data set's test split.

    Uses the input normalization stored in the checkpoint.

    \b
    Example:
      netmorph eval resnet20.safetensors --dataset cifar10
    """
    from ..base.runtime import resolve_device
    from ..io.checkpoint import load
    from ..training.train import evaluate
    from .report import heartbeat

    r = evaluate(load(ckpt), dataset, data_dir, resolve_device(device),
                 progress=heartbeat(lambda line: click.echo(line, err=True), "evaluating",
                                    "test images"))
    if as_json:
        _emit_json(r.to_json())
    else:
        click.echo(f"top-1 error {100 * r.top1_error:.2f}% on {r.samples} test images "
                   f"({r.dataset})")


@cli.command(name="train")
@click.argument("ckpt", metavar="CKPT")
@_data_options
@_OUT
@click.option("--recipe", type=click.Choice(list(RECIPES)), default="paper",
              show_default=True,
              help="paper: from scratch, 164 epochs, lr 0.1 ÷10 at 50%/75%; continue: a "
                   "trained network, 10 epochs, cosine from lr 0.02 to 0; grow: a morphed "
                   "child, continue with the parameters the morph added at lr ×0.1, ramped "
                   "in over 200 steps (README, 'Growth'). Options below override the "
                   "recipe's values.")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Epochs [recipe: 164 paper, 10 continue and grow].")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Peak learning rate per global batch [recipe: 0.1 paper, 0.02 continue "
                   "and grow].")
@click.option("--schedule", type=click.Choice(["step", "cosine"]), default=None,
              help="step: lr ÷10 at --milestones; cosine: from --lr to 0 [recipe's].")
@click.option("--batch-size", type=click.IntRange(min=1, max=MAX_BATCH), default=128,
              show_default=True,
              help="Global batch size (split over torchrun ranks).")
@click.option("--milestones", default=None,
              help="Step schedule's lr ÷10 points: fractions of training (≤ 1) or epochs "
                   "[0.5,0.75].")
@click.option("--warmup", type=click.FloatRange(min=0), default=0.0, show_default=True,
              callback=_finite,
              help="Epochs of linear lr warm-up.")
@click.option("--schedule-start", type=click.IntRange(min=0, max=10**6), default=0,
              show_default=True, metavar="EPOCH",
              help="This run is epochs EPOCH+1 … of a longer schedule (--schedule-epochs): a "
                   "child morphed mid-run goes on where its parent's schedule stopped.")
@click.option("--schedule-epochs", type=click.IntRange(min=1, max=10**6), default=None,
              metavar="N", help="Length of that schedule [default: --schedule-start + "
                                "--epochs].")
@click.option("--momentum", type=click.FloatRange(min=0, max=1), default=0.9,
              show_default=True, help="SGD momentum.")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=1e-4, show_default=True,
              callback=_finite, help="SGD weight decay (L2) of every parameter.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seeds the batch order, the augmentation and calibration's images.")
@click.option("--device", default=None,
              help="cpu, cuda or cuda:N [default: cuda if present: training is the one "
                   "command where a GPU pays; the others default to cpu].")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the model.")
@click.option("--precision", type=click.Choice(("auto", "bf16", "fp32")), default="auto",
              show_default=True,
              help="auto: bf16 autocast on CUDA, float32 on CPU; bf16: autocast on any "
                   "device (≈ 2× faster on CPUs with AVX-512 BF16/AMX, ≈ 10× slower on "
                   "others: a warning says so); fp32: float32 everywhere.")
@click.option("--no-amp", is_flag=True, hidden=True, help="Same as --precision fp32.")
@click.option("--no-calibrate", is_flag=True,
              help="Train a morphed child as it is: do not set its uncalibrated new BN "
                   "layers from training data before the first step.")
@click.option("--new-lr-scale", type=click.FloatRange(min=0, max=1e6), default=None,
              callback=_finite,
              help="The parameters a morph added since the last training (solved filters, "
                   "new BN, PReLU slopes) train at the schedule's lr × this [recipe's; 1].")
@click.option("--new-warmup", type=click.IntRange(min=0, max=10**9), default=None,
              metavar="STEPS",
              help="Ramp the new parameters' lr linearly from 0 over STEPS optimizer steps "
                   "[recipe's; 0].")
@click.option("--new-weight-decay", type=click.FloatRange(min=0, max=1), default=None,
              callback=_finite,
              help="Weight decay of the new parameters [default: --weight-decay].")
@click.option("--from-state", type=click.Path(dir_okay=False), default=None, metavar="STATE",
              help="A parent's training state (PARENT_OUT.state.pt): the child's parameters "
                   "that the parent had keep its momentum, new ones start at zero.")
@click.option("--resume", is_flag=True, help="Continue the run that writes OUT from its state.")
@click.option("--metrics", default=None, metavar="FILE",
              help="JSONL of per-epoch metrics [default: OUT.metrics.jsonl].")
@click.option("--quiet", is_flag=True, help="No progress bar; only the summary.")
@_FORCE
def train_cmd(ckpt: str, dataset: str, data_dir: str | None, out: str, recipe: str,
              epochs: int | None, lr: float | None, schedule: str | None, batch_size: int,
              milestones: str | None, warmup: float, schedule_start: int,
              schedule_epochs: int | None, momentum: float, weight_decay: float, seed: int,
              device: str | None, compile_: bool,
              precision: str, no_amp: bool, no_calibrate: bool, new_lr_scale: float | None,
              new_warmup: int | None, new_weight_decay: float | None,
              from_state: str | None, resume: bool, metrics: str | None, quiet: bool,
              force: bool) -> None:
    """Train a checkpoint (a parent or a morphed child).

    SGD (momentum 0.9, weight decay 1e-4), batch 128, pad-4 random crop + flip, a fresh
    optimizer. --recipe paper (default) is the paper's CIFAR schedule for training from
    scratch: 164 epochs, lr 0.1 divided by 10 at 50% and 75%. --recipe continue is for a
    trained parent: 10 epochs of cosine annealing from lr 0.02 to 0 (restarting at 0.1
    throws away much of what the network knew). --recipe grow is for a morphed child:
    continue's schedule, with the parameters the morph added at lr ×0.1, ramped in from 0
    over 200 steps, so that the child does not leave its parent's basin in its first steps
    (README, "Growth": the recipe comparison it was chosen from). A child morphed without
    --calibrate has its new BN layers set from 32 batches of training images first (as
    morph --calibrate does), so it starts training from its parent's function; --no-calibrate
    trains it as it is. Writes OUT at the end,
    OUT.state.pt every epoch (for --resume) and OUT.metrics.jsonl. Runs under
    torchrun --nproc-per-node N as DistributedDataParallel.

    \b
    Examples:
      netmorph train morph20_1c1.safetensors --dataset cifar10 --recipe grow \\
          -o trained.safetensors
      torchrun --nproc-per-node 2 -m netmorph_cli train r20.safetensors \\
          --dataset cifar10 -o r20_trained.safetensors
    """
    from ..base.runtime import default_device, parse_milestones, resolve_device
    from ..io.checkpoint import load
    from ..morph.calibrate import uncalibrated_layers
    from ..training.train import init_distributed, recipe_config, train
    from .report import TrainProgress

    if no_amp and precision != "auto":
        raise click.UsageError(f"--no-amp (an old name of --precision fp32) contradicts "
                               f"--precision {precision}")
    cfg = recipe_config(recipe, epochs=epochs, lr=lr, schedule=schedule,
                        milestones=parse_milestones(milestones) if milestones is not None else None,
                        dataset=dataset, batch_size=batch_size, momentum=momentum,
                        weight_decay=weight_decay, warmup=warmup, seed=seed,
                        precision="fp32" if no_amp else precision, compile=compile_,
                        calibrate=not no_calibrate, new_lr_scale=new_lr_scale,
                        new_warmup=new_warmup, new_weight_decay=new_weight_decay,
                        schedule_start=schedule_start, schedule_epochs=schedule_epochs)
    dev = resolve_device(device) if device else default_device()
    metrics = metrics or f"{out}.metrics.jsonl"
    net = load(ckpt)
    pending = uncalibrated_layers(net) if cfg.calibrate else []
    dist = init_distributed(dev)
    shas: list[str] = []
    with TrainProgress(_console(), quiet=quiet or not dist.main) as progress:
        trained, history = train(net, cfg, out, data_dir=data_dir, device=dev, resume=resume,
                                 metrics=metrics, hooks=progress.hooks(), source=ckpt,
                                 force=force, from_state=from_state,
                                 finish=lambda t: shas.append(_save_trained(t, out, ckpt,
                                                                            force)))
    if dist.main:
        _train_summary(trained, history, calibrated=len(pending))
        _wrote(out, shas[0], trained.description["arch"])


def _save_trained(trained: Any, out: str, ckpt: str, force: bool) -> str:
    from ..io.checkpoint import save
    from ..training.train import state_path

    try:
        return save(trained, out, force=force, protect=[ckpt])
    except NetmorphError as exc:
        raise type(exc)(f"{exc}; the trained network is in its state "
                        f"{state_path(out)}: --resume writes it") from None


def _train_summary(trained: Any, history: list[Any], *, calibrated: int) -> None:
    if calibrated:
        from ..network.history import MorphRecord, parse_history

        cal = next(h.calibration for h in reversed(parse_history(trained.history))
                   if isinstance(h, MorphRecord) and h.calibration)
        click.echo(f"calibrated {calibrated} new BN layers on {cal.images} "
                   f"{cal.dataset} training images before the first step")
    last = history[-1]
    click.echo(f"trained {len(history)} epochs: test error {100 * last.test_error:.2f}%, "
               f"train loss {last.train_loss:.4f}, {last.images_per_s:,.0f} images/s")


@cli.command(name="plot")
@click.argument("runs", nargs=-1, required=True, metavar="RUN...")
@click.option("-o", "--output", "out", required=True, metavar="OUT",
              help="Figure to write; its suffix names the format (.png, .pdf, .svg).")
@click.option("--train", "with_train", is_flag=True, help="Also draw the training error.")
@click.option("--title", default=None, help="Figure title.")
@_FORCE
def plot_cmd(runs: tuple[str, ...], out: str, with_train: bool, title: str | None,
             force: bool) -> None:
    """Plot test error against epoch for several runs, morph points marked (Fig. 5).

    A RUN is a trained checkpoint (its history carries every phase's metrics) or a
    OUT.metrics.jsonl file. Needs matplotlib (pip install 'netmorph[plot]').

    \b
    Example:
      netmorph plot parent.safetensors child.safetensors -o fig5.png
    """
    from ..io.outputs import check_outputs
    from ..training.results import load_run, plot

    check_outputs([out], inputs=runs, force=force)
    path = plot([load_run(r) for r in runs], out, train=with_train, title=title, force=force,
                inputs=runs)
    click.echo(f"wrote {path}")


@cli.command(name="report")
@click.argument("runs", nargs=-1, required=True, metavar="RUN...")
@click.option("--baseline", default=None, metavar="RUN",
              help="Run the improvements are measured against [default: the first RUN].")
@_JSON
@click.option("--markdown", "as_markdown", is_flag=True, help="Print a Markdown table.")
def report_cmd(runs: tuple[str, ...], baseline: str | None, as_json: bool,
               as_markdown: bool) -> None:
    """One row per run in the paper's columns (Tables 1–3).

    Net arch, intermediate phases, final test error, absolute and relative improvement over
    the baseline, FLOPs and relative FLOPs (the same counter as `netmorph info`).

    \b
    Example:
      netmorph report resnet20.safetensors morph20_1c1.safetensors --markdown
    """
    from ..training.results import load_run, markdown, table

    loaded = [load_run(r) for r in runs]
    base = load_run(baseline) if baseline else None
    rows = table(loaded, base)
    if as_json:
        _emit_json(rows)
    elif as_markdown:
        click.echo(markdown(rows))
    else:
        from .report import results_table

        _console().print(results_table(rows))


