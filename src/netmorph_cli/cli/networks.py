"""Commands on networks: ``init``, ``import``, ``morph``, ``verify``, ``info``, ``export``."""

from __future__ import annotations

from typing import Any

import click

from ..base.limits import MAX_BATCH, MAX_WIDTH
from ..network.archs import ARCHS
from .common import (
    _DATASETS,
    _FORCE,
    _JSON,
    _OUT,
    _console,
    _emit_json,
    _floats,
    _gib,
    _input_size,
    _kwargs,
    _positive_finite,
    _RegistryCommand,
    _RegistryOption,
    _solve_progress,
    _solver_limits,
    _wrote,
    cli,
)


@cli.command(cls=_RegistryCommand)
@click.argument("arch", metavar="ARCH")
@_OUT
@click.option("--num-classes", type=click.IntRange(min=1, max=MAX_WIDTH), default=None,
              cls=_RegistryOption,
              help="Classes of the classifier [default: {default_classes}].")
@click.option("--seed", type=int, default=0, show_default=True, help="Initialization seed.")
@click.option("--shortcut", type=click.Choice(["A", "B"]), default="B", show_default=True,
              help="CIFAR downsampling shortcuts: A parameter-free, B 1×1 conv + BN.")
@_FORCE
def init(arch: str, out: str, num_classes: int | None, seed: int, shortcut: str,
         force: bool) -> None:
    """Create a randomly initialized network of a zoo architecture.

    ARCH: {archs}, or a checkpoint whose architecture is re-initialized (a from-scratch
    control for a morphed child).

    \b
    Examples:
      netmorph init resnet20 -o resnet20.safetensors
      netmorph init morph20_1c1.safetensors -o scratch_1c1.safetensors
    """
    from pathlib import Path

    from ..io.checkpoint import load, save
    from ..network.flops import count_flops, format_flops
    from ..network.zoo import create, reinitialize

    if Path(arch).is_file():
        net = reinitialize(load(arch), seed)
        arch = net.description["arch"]
    else:
        net = create(arch, num_classes, seed, shortcut)
    sha = save(net, out, force=force)
    _wrote(out, sha, f"{arch}, {format_flops(count_flops(net.description))} FLOPs")



@cli.command(name="import")
@click.argument("file", metavar="FILE")
@_OUT
@click.option("--model", "factory", default=None, metavar="PACKAGE.MODULE:FACTORY",
              help="Build the model with this factory, load FILE's state_dict into it and "
                   "trace it with torch.export (the current directory is importable).")
@click.option("--kwargs", "kwargs", default=None, metavar="JSON", callback=_kwargs,
              help="--model: keyword arguments of the factory, a JSON object.")
@click.option("--input-size", default=None, metavar="CxHxW", callback=_input_size,
              help="The input the model takes [--model: 3x32x32; a .pt2: its own, checked].")
@click.option("--mean", default=None, metavar="M1,M2,…", callback=_floats,
              help="Input normalization recorded in the checkpoint (used by eval and train) "
                   "[default: CIFAR-10's].")
@click.option("--std", default=None, metavar="S1,S2,…", callback=_floats,
              help="See --mean [default: CIFAR-10's].")
@click.option("--arch", default=None, help="State_dicts: the expected architecture, "
              f"checked against the file ({', '.join(ARCHS)}) [default: read from the file].")
@_JSON
@_FORCE
def import_(file: str, out: str, factory: str | None, kwargs: dict[str, Any],
            input_size: tuple[int, int, int] | None, mean: list[float] | None,
            std: list[float] | None, arch: str | None, as_json: bool, force: bool) -> None:
    """Import a PyTorch model: any traceable CNN, or a state_dict of a known ResNet layout.

    \b
    FILE is one of
      a torch.export program (torch.export.save): converted op by op, read without
      torch.export.load, which can run code stored in the file; netmorph never does;
      a state_dict with --model PACKAGE.MODULE:FACTORY: the factory's model, traced;
      a state_dict of the CIFAR ResNet layout or torchvision resnet18/34 (--arch).
    State_dicts are read with torch.load(weights_only=True) or as safetensors. Node names
    are the model's module paths (features.3, layer1.0.conv1), so `morph --at` takes them.
    The imported network's logits are checked against the program's (or the model's) on
    random inputs before anything is written.

    \b
    Examples:
      netmorph import vgg.pt2 -o vgg.safetensors
      netmorph import vgg_weights.pt --model mymodels:vgg11_bn \\
          --kwargs '{"num_classes": 10}' -o vgg.safetensors
      netmorph import resnet20-12fca82f.th -o resnet20.safetensors
    """
    from ..io.checkpoint import check_output, save
    from ..io.importers import import_factory, import_program, import_state_dict
    from ..io.program import is_pt2

    traced = factory is not None or is_pt2(file)
    if not traced and (kwargs or input_size or mean or std):
        raise click.UsageError("--kwargs, --input-size, --mean and --std apply to .pt2 "
                               "programs and --model")
    if kwargs and factory is None:
        raise click.UsageError("--kwargs applies to --model")
    if traced and arch is not None:
        raise click.UsageError("--arch applies to state_dicts of known ResNet layouts")
    check_output(out, force=force, protect=[file])
    if factory is not None:
        net, err = import_factory(file, factory, kwargs=kwargs,
                                  input_size=input_size or (3, 32, 32), mean=mean, std=std)
    elif traced:
        net, err = import_program(file, input_size=input_size, mean=mean, std=std)
    else:
        net, err = import_state_dict(file, arch), None
    sha = save(net, out, force=force, protect=[file])
    d = net.description
    if as_json:
        _emit_json({"path": out, "sha256": sha, "arch": d["arch"], "input": d["input"],
                    "num_classes": d["num_classes"], "nodes": len(d["nodes"]),
                    "dtype": str(net.dtype).removeprefix("torch."),
                    "imported": net.meta.get("imported"),
                    "check_max_rel_err": err if traced else None})
        return
    what = f"{d['arch']}, {d['num_classes']} classes"
    if traced:
        what += (f", {len(d['nodes'])} nodes, {str(net.dtype).removeprefix('torch.')}; "
                 f"logits match the {'model' if factory else 'program'} to {err:.1e}")
    _wrote(out, sha, what)


@cli.command()
@click.argument("parent", metavar="PARENT")
@click.option("--module", "module", required=True, cls=_RegistryOption,
              help="A preset ({presets}) or a SPEC.json.")
@click.option("--at", "at", default=None, metavar="LAYER",
              help="With a SPEC.json: the stride-1 conv or identity shortcut to replace "
                   "(e.g. layer2.1.conv1, layer2.1.shortcut).")
@click.option("--after", "after", default=None, metavar="NODE",
              help="With a SPEC.json, instead of --at: insert the module after NODE (any "
                   "node with a (C, H, W) output, or input), morphed from the identity; its "
                   "nodes are named NODE_after.* (e.g. layer1.0.relu1).")
@_OUT
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the new filters.")
@click.option("--prelu-all", is_flag=True, help="Also replace every ReLU by PReLU(a=0) (exact).")
@click.option("--no-bn", is_flag=True, help="SPEC.json: no BN at the module's inner blobs.")
@click.option("--act", type=click.Choice(["prelu", "none"]), default="prelu", show_default=True,
              help="SPEC.json: activation at the inner blobs (PReLU starts at a=1).")
@click.option("--paper-bn", is_flag=True,
              help="New BN with gamma=1, beta=0 as in the paper (approximate, not exact).")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default=None,
              help="Store the child in this dtype [default: the parent's].")
@click.option("--no-check", is_flag=True, help="Skip the quick verification before writing.")
@click.option("--calibrate", "calibrate_on", type=_DATASETS, default=None,
              metavar="DATASET",
              help="Set the new BN layers from this data set's training images, so the child "
                   "keeps the parent's function in training mode too (eval mode stays exact).")
@click.option("--data-dir", default=None, metavar="DIR",
              help="--calibrate: where data sets live [default: $NETMORPH_DATA, else "
                   "~/.cache/netmorph].")
@click.option("--calibrate-batches", type=click.IntRange(min=1, max=1000), default=32,
              show_default=True, help="--calibrate: batches of 128 training images.")
@_solver_limits("SPEC.json")
@_JSON
@_FORCE
def morph(parent: str, module: str, at: str | None, after: str | None, out: str, seed: int,
          prelu_all: bool, no_bn: bool, act: str, paper_bn: bool, dtype: str | None,
          no_check: bool,
          calibrate_on: str | None, data_dir: str | None, calibrate_batches: int,
          max_seconds: float, max_sweeps: int, max_memory: float | None,
          as_json: bool, force: bool) -> None:
    """Morph a checkpoint into a larger one that computes the same function.

    New BN layers start as the identity on (mean 0, var 1): exact in eval mode, but not in
    training mode, where BN divides by each batch's own statistics. A child that will be
    trained should be morphed with --calibrate DATASET: the new BN layers then take the
    statistics of their inputs over 32 batches of training images (eq. 9 with the data's
    mean and variance); eval mode stays exact and training mode keeps the parent's loss.

    A SPEC.json goes --at a layer it replaces (a stride-1 conv or an identity shortcut) or
    --after a node (the paper's deepening): the identity at NODE's output becomes the
    module, whose output then feeds NODE's consumers; `netmorph verify` also compares the
    module's output with NODE's.

    \b
    Examples:
      netmorph morph resnet20.safetensors --module 1c1 -o morph20_1c1.safetensors
      netmorph morph r20.safetensors --module 1c1 --calibrate cifar10 -o c.safetensors
      netmorph morph resnet20.safetensors --module examples/modules/D.json \\
          --at layer1.1.conv1 -o morph20_D.safetensors
      netmorph morph resnet20.safetensors --module examples/modules/morph_1c1.json \\
          --after layer1.0.relu1 -o deeper.safetensors
    """
    from ..base.runtime import resolve_dtype
    from ..io.checkpoint import check_output, file_sha256, load, save
    from ..morph.morphs import morph_network

    if calibrate_on and paper_bn:
        raise click.UsageError("--calibrate sets the new BN layers from data; --paper-bn "
                               "keeps the paper's gamma=1, beta=0: choose one")
    if data_dir is not None and not calibrate_on:
        raise click.UsageError("--data-dir applies to --calibrate")
    if at is not None and after is not None:
        raise click.UsageError("--at LAYER replaces a layer and --after NODE inserts the "
                               "module after a node: choose one")
    check_output(out, force=force, protect=[parent])
    net = load(parent)
    target = _module_arg(module)
    images = _calibration_images(net, calibrate_on, data_dir, calibrate_batches, seed)
    from ..solver.budget import SolveLimits
    from .report import calibration_progress

    result = morph_network(
        net, target, at=at, after=after, seed=seed, check=not no_check, prelu=prelu_all,
        bn=not no_bn, act=act, exact_bn=not paper_bn, dtype=resolve_dtype(dtype) if dtype else None,
        calibrate=images, parent_sha256=file_sha256(parent),
        limits=SolveLimits(max_seconds=max_seconds, max_sweeps=max_sweeps,
                           max_memory=_gib(max_memory)), progress=_solve_progress,
        calibrate_progress=calibration_progress(lambda line: click.echo(line, err=True)))
    sha = save(result.network, out, force=force, protect=[parent])
    _show_morph(out, sha, result, as_json)


def _module_arg(module: str) -> Any:
    """--module: a spec file (``*.json`` or an existing file), else a preset name."""
    from pathlib import Path

    if module.endswith(".json") or Path(module).is_file():
        from ..spec.parse import load_spec

        return load_spec(module)
    from ..network.presets import Preset

    return Preset.parse(module)


def _calibration_images(net: Any, dataset: str | None, data_dir: str | None, batches: int,
                        seed: int) -> tuple[str, list[Any]] | None:
    """--calibrate: the training images, read before the solve (a missing set fails first)."""
    if not dataset:
        return None
    from ..training.train import training_batches

    data = training_batches(net, dataset, data_dir, batches=batches, seed=seed,
                            purpose="calibrate")
    return dataset, [x for x, _ in data]


def _show_morph(out: str, sha: str, r: Any, as_json: bool) -> None:
    """What ``morph`` prints of a ``MorphResult``: one JSON object, or the morph,
    calibration and check lines."""
    from ..network.flops import format_flops

    child, entry, f0, f1 = r.network, r.record, r.flops_before, r.flops_after
    if as_json:
        _emit_json({"output": out, "sha256": sha, "arch": child.description["arch"],
                    "flops": f1, "parent_flops": f0, "morph": entry.to_json(),
                    "check": r.check.to_json() if r.check else None})
        return
    where = entry.where if entry.after is not None else f"at {entry.where}"
    click.echo(f"morphed {r.parent_arch} → {child.description['arch']} {where}: "
               f"solver residual {entry.residual:.2e}, FLOPs {format_flops(f0)} → "
               f"{format_flops(f1)} ({f1 / f0:.2f}×)")
    if entry.widths:  # a module's inner widths at this layer, and how they were chosen
        text = " ".join(f"{b}={w}" for b, w in entry.widths.items())
        click.echo(f"widths: {text}" + (f" ({entry.widths_how})" if entry.widths_how else ""))
    cal = entry.calibration
    if cal:
        click.echo(f"calibrated {len(cal.layers)} new BN layers on {cal.images} "
                   f"{cal.dataset} training images (train-mode batch statistics)")
    if r.check:
        click.echo(f"check: {r.check.samples} random inputs in {r.check.dtype}, max relative "
                   f"error {r.check.max_rel_err:.2e}")
    _wrote(out, sha, child.description["arch"])


@cli.command(name="verify")
@click.argument("parent", metavar="PARENT")
@click.argument("child", metavar="CHILD")
@_JSON
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default=None,
              help="Precision both networks run in [default: the child's dtype].")
@click.option("--samples", type=click.IntRange(min=1, max=MAX_BATCH), default=64, show_default=True,
              help="Number of inputs.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of random inputs.")
@click.option("--tol", type=float, default=None, callback=lambda ctx, p, v: _positive_finite(v, p),
              help="Max relative error of the logits [default: 1e-5 float32, 1e-10 float64].")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--mode", type=click.Choice(["eval", "train"]), default="eval",
              show_default=True,
              help="eval: random inputs, BN on running statistics; train: real training "
                   "images, BN on batch statistics (needs --dataset).")
@click.option("--dataset", type=_DATASETS, default=None,
              help="--mode train: the data set whose training images are used.")
@click.option("--data-dir", default=None, metavar="DIR",
              help="Where data sets live [default: $NETMORPH_DATA, else ~/.cache/netmorph].")
@click.option("--batches", type=click.IntRange(min=1, max=10000), default=8,
              show_default=True, help="--mode train: number of batches.")
@click.option("--batch-size", type=click.IntRange(min=2, max=65536), default=128,
              show_default=True, help="--mode train: images per batch.")
def verify_cmd(parent: str, child: str, as_json: bool, dtype: str | None, samples: int,
               seed: int, tol: float | None, device: str, mode: str, dataset: str | None,
               data_dir: str | None, batches: int, batch_size: int) -> None:
    """Check that CHILD computes PARENT's function.

    --mode eval (default): runs both on the same random inputs and compares the logits (max
    absolute error, max relative error ‖Δ‖∞/‖logits‖∞, top-1 agreement) and every morphed
    module's output. Exit 0 within tolerance, 1 outside it. A float32 child (new filters
    rounded to float32) is checked in float32 by default; morph with --dtype float64 to
    check exactness to 1e-10.

    --mode train: runs both in training mode (BN on the statistics of each batch, as
    `train` runs them; nothing is updated) on the same training images, no augmentation,
    and reports each network's loss and accuracy and the max relative logit difference.
    Passes when child loss ≤ 1.10 × parent loss + 0.01: a morph to be trained must keep
    the function there too (see morph --calibrate).

    \b
    Examples:
      netmorph verify resnet20.safetensors morph20_1c1.safetensors --dtype float64
      netmorph verify r20.safetensors c.safetensors --mode train --dataset cifar10
    """
    from ..base.runtime import resolve_device, resolve_dtype
    from ..io.checkpoint import load
    from ..morph.verify import verify

    if mode == "train":
        return _verify_train(parent, child, as_json, dtype, seed, tol, device, dataset,
                             data_dir, batches, batch_size)
    if dataset is not None or data_dir is not None:
        raise click.UsageError(f"{'--dataset' if dataset else '--data-dir'} applies to "
                               "--mode train")
    p, c = load(parent), load(child)
    report = verify(p, c, dtype=resolve_dtype(dtype) if dtype else c.dtype, samples=samples,
                    seed=seed, tol=tol, device=resolve_device(device))
    if as_json:
        _emit_json(report.to_json())
    else:
        from .report import verify_report

        _console().print(verify_report(report))
    if not report.passed:
        raise click.exceptions.Exit(1)


def _verify_train(parent: str, child: str, as_json: bool, dtype: str | None, seed: int,
                  tol: float | None, device: str, dataset: str | None, data_dir: str | None,
                  batches: int, batch_size: int) -> None:
    from ..base.runtime import resolve_device, resolve_dtype
    from ..io.checkpoint import load
    from ..morph.verify import verify_train_mode
    from ..training.train import training_batches

    if dataset is None:
        raise click.UsageError("--mode train needs --dataset (the training images to run)")
    if tol is not None:
        raise click.UsageError("--tol applies to --mode eval (train mode passes on the loss: "
                               "child ≤ 1.10 × parent + 0.01)")
    p, c = load(parent), load(child)
    dev = resolve_device(device)
    data = training_batches(p, dataset, data_dir, batches=batches, batch_size=batch_size,
                            seed=seed, purpose="verify", device=dev)
    report = verify_train_mode(p, c, data, dtype=resolve_dtype(dtype) if dtype else c.dtype,
                               inputs_name=dataset, device=dev)
    if as_json:
        _emit_json(report.to_json())
    else:
        from .report import train_mode_report

        _console().print(train_mode_report(report))
    if not report.passed:
        raise click.exceptions.Exit(1)


@cli.command()
@click.argument("ckpt", metavar="CKPT")
@_JSON
def info(ckpt: str, as_json: bool) -> None:
    """Summarize a checkpoint: architecture, parameters, FLOPs, morph history.

    FLOPs are multiply-accumulates of conv and linear layers (the paper's convention: convs
    at their logical, "same"-padded sizes). Where a module realized with a padded input runs
    its convs on larger maps, the MACs it really executes follow (--json: executed_macs).

    \b
    Example:
      netmorph info morph20_1c1.safetensors
    """
    from ..io.checkpoint import load
    from ..network.flops import summary

    s = summary(load(ckpt))
    if as_json:
        _emit_json(s)
        return
    from .report import info_report

    _console().print(info_report(s))


@cli.command(name="export")
@click.argument("ckpt", metavar="CKPT")
@click.option("-o", "--output", "out", required=True, metavar="OUT",
              help="File to write (.pt2, or .onnx).")
@click.option("--format", "fmt", type=click.Choice(["pt2", "onnx"]), default=None,
              help="pt2: a torch.export program; onnx: an ONNX model (needs the onnx extra) "
                   "[default: onnx for a .onnx OUT, else pt2].")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default=None,
              help="Precision of the exported file [default: the checkpoint's for pt2, "
                   "float32 for onnx].")
@click.option("--samples", type=click.IntRange(min=1, max=MAX_BATCH), default=8,
              show_default=True, help="Random inputs of the check.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the inputs.")
@_JSON
@_FORCE
def export_cmd(ckpt: str, out: str, fmt: str | None, dtype: str | None, samples: int,
               seed: int, as_json: bool, force: bool) -> None:
    """Export a checkpoint for deployment, checked against netmorph's module.

    Writes the network in eval mode (BN on running statistics) with a dynamic batch
    dimension (a batch of 1 where torch cannot keep it dynamic, said so), then loads the
    written file, runs it and netmorph's module on the same seeded random inputs and
    reports the max relative error ‖Δ‖∞/‖logits‖∞; above 1e-5 (float64: 1e-10) the file
    is removed and the command exits 1. The exported network takes normalized inputs: the
    checkpoint's input normalization (mean, std) is not part of it.

    --format onnx uses torch.onnx.export (dynamo) and checks with ONNX Runtime; it needs
    pip install 'netmorph[onnx]'. Load a .pt2 with torch.export.load only if you trust it:
    it can run code from the file.

    \b
    Examples:
      netmorph export morph20_1c1.safetensors -o morph20_1c1.pt2
      netmorph export morph20_1c1.safetensors -o morph20_1c1.onnx --format onnx
    """
    from ..base.runtime import resolve_dtype
    from ..io.checkpoint import load
    from ..io.export import export_network
    from ..io.outputs import check_outputs

    fmt = fmt or ("onnx" if out.lower().endswith(".onnx") else "pt2")
    check_outputs([out], inputs=[ckpt], force=force)
    r = export_network(load(ckpt), out, fmt=fmt, dtype=resolve_dtype(dtype) if dtype else None,
                       force=force, protect=[ckpt], samples=samples, seed=seed)
    if as_json:
        _emit_json(r.to_json())
        return
    what = "torch.export program" if fmt == "pt2" else "ONNX model"
    batch = "dynamic batch" if r.dynamic_batch else r.note
    click.echo(f"checked on {r.samples} random inputs against netmorph's module: max "
               f"relative error {r.max_rel_err:.1e} (≤ {r.tolerance:g}), max absolute "
               f"error {r.max_abs_err:.1e}")
    _wrote(out, r.sha256, f"{what}, {r.dtype}, {batch}")


