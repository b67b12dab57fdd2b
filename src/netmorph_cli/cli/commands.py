"""The ``netmorph`` command line: click + rich, the only place that prints.

Each command parses its options, calls one library function and shows the result. Library
errors (``NetmorphError``) become one ``Error: …`` line on stderr with the error's exit code
(2 bad input, 1 failed check); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import gc
import inspect
import json
import math
import sys
from collections.abc import Callable, Iterable
from typing import Any

import click

from .. import __version__
from ..errors import NetmorphError
from ..limits import MAX_BATCH, MAX_INPUT_SIDE, MAX_KERNEL, MAX_WIDTH
from ..network.archs import ARCHS

_DEBUG = False


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="netmorph")
@click.option("--debug", is_flag=True, help="Show a traceback on errors.")
def cli(debug: bool) -> None:
    """Modular network morphism: grow a trained network into any module, exactly.

    \b
    Example:
      netmorph reduce examples/modules/D.json
    """
    global _DEBUG
    _DEBUG = debug


def _emit_json(obj: Any, *, pretty: bool = True) -> None:
    """One JSON object on stdout: indented, or compact (one line) for large outputs."""
    click.echo(json.dumps(obj, indent=2) if pretty
               else json.dumps(obj, ensure_ascii=False, separators=(",", ":")))


def _console():
    from rich.console import Console

    return Console(highlight=False)


_JSON = click.option("--json", "as_json", is_flag=True,
                     help="Print one JSON object on stdout instead of the report.")


def _solver_limits(scope: str) -> Any:
    """--max-seconds, --max-sweeps and --max-memory of a command that solves (``scope``
    prefixes their help, e.g. "--solve")."""
    opts = [
        click.option("--max-seconds", type=click.FloatRange(min=0, min_open=True), default=600.0,
                     show_default=True, help=f"{scope}: time limit of the solve, in seconds "
                     "(a long solve reports its progress on stderr every few seconds)."),
        click.option("--max-sweeps", type=click.IntRange(min=1), default=60, show_default=True,
                     help=f"{scope}: Algorithm 2 sweeps at most."),
        click.option("--max-memory", type=click.FloatRange(min=0, min_open=True), default=None,
                     metavar="GiB", help=f"{scope}: refuse a solve whose memory estimate is "
                     "larger [default: half the physical memory]."),
    ]

    def apply(f: Any) -> Any:
        for opt in reversed(opts):
            f = opt(f)
        return f
    return apply


def _solve_progress(p: Any) -> None:
    """The solver's heartbeat (a ``SolveProgress``), on stderr."""
    click.echo(f"solving: {p.line()}", err=True)


def _gib(value: float | None) -> int | None:
    return None if value is None else int(value * 2**30)


@cli.command()
@click.argument("spec", metavar="SPEC.json")
@_JSON
@click.option("--solve", is_flag=True,
              help="Also morph a random C→C K×K filter into the module and report the residual.")
@click.option("--channels", type=click.IntRange(min=1, max=MAX_WIDTH), default=16,
              show_default=True, help="--solve: width C of the morphed layer (s and t).")
@click.option("--kernel", type=click.IntRange(min=1, max=MAX_KERNEL), default=3,
              show_default=True, help="--solve: kernel K of the morphed layer (odd).")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float64",
              show_default=True, help="--solve: precision of the solve.")
@click.option("--device", default="cpu", show_default=True, help="--solve: cpu, cuda or cuda:N.")
@click.option("--seed", type=int, default=0, show_default=True, help="--solve: random seed.")
@click.option("--method", type=click.Choice(["auto", "algorithm2", "reduce"]), default="auto",
              show_default=True,
              help="--solve: auto (Algorithm 1's splits around Algorithm 2 on the irreducible "
                   "rest, Algorithm 2 on the whole module if a split cannot be exact), "
                   "algorithm2 (the whole module: every edge uses its full kernel) or "
                   "reduce (the splits, no fallback).")
@click.option("--pretty", is_flag=True,
              help="--json: indent the JSON (default: compact, one line; a 100,000-edge "
                   "module's plan is ~17 MB compact, ~37 MB indented).")
@_solver_limits("--solve")
def reduce(spec: str, as_json: bool, solve: bool, channels: int, kernel: int, dtype: str,
           device: str, seed: int, method: str, pretty: bool, max_seconds: float,
           max_sweeps: int, max_memory: float | None) -> None:
    """Classify a module and find its morphing sequence (Algorithm 1).

    Reduces SPEC.json by inverse TYPE-I/TYPE-II morphs, then prints the morphing sequence in
    morph order (from M0 outward), the irreducible remainder of a complex module, the number
    of source→sink paths, the effective kernel and the module equation. With --solve it also
    morphs a random filter into the module (Algorithm 2 for the irreducible part) and reports
    the relative residual ‖module(F) − G̃‖ / ‖G̃‖; a module too narrow to be exact fails with
    exit 1 and says which inner widths to raise.

    \b
    Examples:
      netmorph reduce examples/modules/D.json --json
      netmorph reduce examples/modules/D.json --solve --channels 16 --dtype float64
    """
    from ..spec.parse import load_spec
    from ..spec.reduce import reduce_module

    plan = reduce_module(load_spec(spec))
    result = None
    if solve:
        from ..runtime import resolve_device, resolve_dtype
        from ..solver.solve import solve_random

        if kernel % 2 == 0:
            raise click.BadParameter(f"kernel must be odd, got {kernel}", param_hint="--kernel")
        result = solve_random(plan.module, channels=channels, kernel=kernel,
                              dtype=resolve_dtype(dtype), device=resolve_device(device),
                              seed=seed, method=method, max_seconds=max_seconds,
                              max_sweeps=max_sweeps, max_memory=_gib(max_memory),
                              progress=_solve_progress)
    if as_json:
        solved = None if result is None else {
            "channels": channels, "kernel": kernel, "dtype": dtype, "device": device,
            "seed": seed, "method": method, **result.to_json()}
        _reduce_json(plan, solved, pretty)
        return
    from .report import reduction_report, solve_report

    console = _console()
    console.print(reduction_report(plan))
    if result is not None:
        console.print(solve_report(result, channels, kernel, dtype, device))


def _reduce_json(plan: Any, solved: dict[str, Any] | None, pretty: bool) -> None:
    gc.disable()  # ~10⁶ small objects: the collector's rescans cost more than the build
    try:
        out = plan.to_json()
        if solved is not None:
            out["solve"] = solved
        _emit_json(out, pretty=pretty)
    finally:
        gc.enable()


# -- choices and help texts from the library's registries ---------------------------------
# Read when shown or parsed, not at import: the CLI starts without importing torch, and an
# entry added to a registry (data.DATASETS, archs.ARCHS, presets.PRESETS) is offered at once.

class _RegistryChoice(click.Choice):  # not Choice[str]: click < 8.4 is not generic
    """The names of a registry as a ``click.Choice``."""

    def __init__(self, names: Callable[[], Iterable[str]]) -> None:
        self._names = names
        super().__init__(())

    @property
    def choices(self) -> tuple[str, ...]:
        return tuple(self._names())

    @choices.setter
    def choices(self, value: tuple[str, ...]) -> None:
        pass  # click.Choice.__init__ sets it; the registry is the only source


def _dataset_names() -> Iterable[str]:
    from ..training.data import DATASETS

    return DATASETS


def _arch_list() -> str:
    """"resnet20, …, resnet110 (CIFAR, 32×32) or resnet18, resnet34 (ImageNet, 224×224,
    torchvision layout)": the architectures grouped by family, in registry order."""
    from ..network.archs import ARCHS

    groups: dict[tuple[str, int, str], list[str]] = {}
    for a in ARCHS.values():
        groups.setdefault((a.family, a.input_size, a.layout), []).append(a.name)
    parts = []
    for (family, side, layout), names in groups.items():
        note = f", {layout} layout" if layout else ""
        parts.append(f"{', '.join(names)} ({family}, {side}×{side}{note})")
    *first, last = parts
    return f"{', '.join(first)} or {last}" if first else last


def _default_classes() -> str:
    from ..network.archs import ARCHS

    return ", ".join(dict.fromkeys(f"{a.num_classes} {a.family}" for a in ARCHS.values()))


def _preset_list() -> str:
    """"1c1, 3c1, 3c3, with _2branch and/or _half": the paper's plain presets, the suffixes."""
    from ..network.presets import PRESET_SUFFIXES, PRESETS

    plain = [n for n in PRESETS if not any(s in n for s in PRESET_SUFFIXES)]
    return f"{', '.join(plain)}, with {' and/or '.join(PRESET_SUFFIXES)}"


_REGISTRY_FIELDS = {"{archs}": _arch_list, "{default_classes}": _default_classes,
                    "{presets}": _preset_list}


def _fill(text: str) -> str:
    for field, make in _REGISTRY_FIELDS.items():
        if field in text:
            text = text.replace(field, make())
    return text


class _RegistryCommand(click.Command):
    """A command whose help text has registry fields (``{archs}``), filled when shown."""

    def format_help_text(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        text = inspect.cleandoc(self.help or "").partition("\f")[0]
        if text:
            formatter.write_paragraph()
            with formatter.indentation():
                formatter.write_text(_fill(text))


class _RegistryOption(click.Option):
    """An option whose help has registry fields (``{presets}``), filled when shown."""

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        record = super().get_help_record(ctx)
        return None if record is None else (record[0], _fill(record[1]))


_DATASETS = _RegistryChoice(_dataset_names)
_FORCE = click.option("--force", is_flag=True, help="Overwrite OUT if it exists.")
_OUT = click.option("-o", "--output", "out", required=True, metavar="OUT",
                    help="Checkpoint to write (.safetensors, or .pt).")


def _wrote(path: str, sha: str, what: str) -> None:
    click.echo(f"wrote {path} ({what}; sha256 {sha[:16]}…)")


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


def _floats(ctx: Any, param: Any, value: str | None) -> list[float] | None:
    if value is None:
        return None
    try:
        out = [float(v) for v in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of numbers",
                                 param=param) from None
    if not all(math.isfinite(v) for v in out) or (param.name == "std" and min(out) <= 0):
        raise click.BadParameter(f"{value!r}: every value must be finite"
                                 + (" and > 0" if param.name == "std" else ""), param=param)
    return out


def _input_size(ctx: Any, param: Any, value: str | None) -> tuple[int, int, int] | None:
    if value is None:
        return None
    parts = value.lower().replace(",", "x").split("x")
    if len(parts) != 3 or not all(p.strip().isdigit() and int(p) >= 1 for p in parts):
        raise click.BadParameter(f"{value!r} is not C×H×W (e.g. 3x32x32)", param=param)
    c, h, w = (int(p) for p in parts)
    if max(h, w) > MAX_INPUT_SIDE or c > MAX_WIDTH:
        raise click.BadParameter(f"{value!r} is larger than netmorph's limits "
                                 f"({MAX_INPUT_SIDE} pixels a side, {MAX_WIDTH} channels)",
                                 param=param)
    return c, h, w


def _kwargs(ctx: Any, param: Any, value: str | None) -> dict[str, Any]:
    if value is None:
        return {}
    from ..limits import JSONDepthError, parse_json

    try:
        out = parse_json(value)
    except (ValueError, JSONDepthError) as exc:
        raise click.BadParameter(f"not JSON ({exc})", param=param) from None
    if not isinstance(out, dict):
        raise click.BadParameter("must be a JSON object of keyword arguments, e.g. "
                                 '\'{"num_classes": 10}\'', param=param)
    return out


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
    from ..io.checkpoint import check_output, file_sha256, load, save
    from ..morph.morphs import morph_network
    from ..runtime import resolve_dtype

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
    from .report import calibration_progress

    child, report = morph_network(
        net, target, at=at, after=after, seed=seed, check=not no_check, prelu=prelu_all,
        bn=not no_bn, act=act, exact_bn=not paper_bn, dtype=resolve_dtype(dtype) if dtype else None,
        calibrate=images, parent_sha256=file_sha256(parent), max_seconds=max_seconds,
        max_sweeps=max_sweeps, max_memory=_gib(max_memory), progress=_solve_progress,
        calibrate_progress=calibration_progress(lambda line: click.echo(line, err=True)))
    sha = save(child, out, force=force, protect=[parent])
    _show_morph(out, sha, child, report, as_json)


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


def _show_morph(out: str, sha: str, child: Any, report: Any, as_json: bool) -> None:
    """What ``morph`` prints: one JSON object, or the morph, calibration and check lines."""
    from ..network.flops import count_flops, format_flops
    from ..network.history import MorphRecord

    entry, parent = MorphRecord.from_json(child.history[-1]), child.meta["parent"]
    f0, f1 = parent["flops"], count_flops(child.description)
    if as_json:
        _emit_json({"output": out, "sha256": sha, "arch": child.description["arch"],
                    "flops": f1, "parent_flops": f0, "morph": entry.to_json(),
                    "check": report.to_json() if report else None})
        return
    where = entry.where if entry.after is not None else f"at {entry.where}"
    click.echo(f"morphed {parent['arch']} → {child.description['arch']} {where}: "
               f"solver residual {entry.residual:.2e}, FLOPs {format_flops(f0)} → "
               f"{format_flops(f1)} ({f1 / f0:.2f}×)")
    if entry.widths:  # a module's inner widths at this layer, and how they were chosen
        text = " ".join(f"{b}={w}" for b, w in entry.widths.items())
        click.echo(f"widths: {text}" + (f" ({entry.widths_how})" if entry.widths_how else ""))
    cal = entry.calibration
    if cal:
        click.echo(f"calibrated {len(cal.layers)} new BN layers on {cal.images} "
                   f"{cal.dataset} training images (train-mode batch statistics)")
    if report:
        click.echo(f"check: {report.samples} random inputs in {report.dtype}, max relative "
                   f"error {report.max_rel_err:.2e}")
    _wrote(out, sha, child.description["arch"])


def _finite(ctx: Any, param: Any, value: float | None) -> float | None:
    """A number option that must be finite (click's ranges let NaN through)."""
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"must be a finite number, got {value}", param=param)
    return value


def _positive_finite(value: float | None, param: Any) -> float | None:
    """A tolerance must be a positive finite number (NaN or a negative one would make
    every comparison fail or pass regardless of the networks)."""
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise click.BadParameter(f"must be a positive finite number, got {value}",
                                 param=param)
    return value


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
    from ..io.checkpoint import load
    from ..morph.verify import verify
    from ..runtime import resolve_device, resolve_dtype

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
    from ..io.checkpoint import load
    from ..morph.verify import verify_train_mode
    from ..runtime import resolve_device, resolve_dtype
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
    from ..io.checkpoint import load
    from ..io.export import export_network
    from ..io.outputs import check_outputs
    from ..runtime import resolve_dtype

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


_DATA = [
    click.option("--dataset", required=True, type=_DATASETS,
                 help="Data set (read from --data-dir; downloaded when missing and online)."),
    click.option("--data-dir", default=None, metavar="DIR",
                 help="Where data sets live [default: $NETMORPH_DATA, else ~/.cache/netmorph]."),
]


def _data_options(f: Any) -> Any:
    for opt in reversed(_DATA):
        f = opt(f)
    return f


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
    from ..io.checkpoint import load
    from ..runtime import resolve_device
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
@click.option("--recipe", type=click.Choice(["paper", "continue"]), default="paper",
              show_default=True,
              help="paper: from scratch, 164 epochs, lr 0.1 ÷10 at 50%/75%; continue: a "
                   "trained or morphed network, 10 epochs, cosine from lr 0.02 to 0. "
                   "Options below override the recipe's values.")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Epochs [recipe: 164 paper, 10 continue].")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Peak learning rate per global batch [recipe: 0.1 paper, 0.02 continue].")
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
    trained parent or a morphed child: 10 epochs of cosine annealing from lr 0.02 to 0
    (restarting at 0.1 throws away much of what the network knew). A child morphed without
    --calibrate has its new BN layers set from 32 batches of training images first (as
    morph --calibrate does), so it starts training from its parent's function; --no-calibrate
    trains it as it is. Writes OUT at the end,
    OUT.state.pt every epoch (for --resume) and OUT.metrics.jsonl. Runs under
    torchrun --nproc-per-node N as DistributedDataParallel.

    \b
    Examples:
      netmorph train morph20_1c1.safetensors --dataset cifar10 --recipe continue \\
          -o trained.safetensors
      torchrun --nproc-per-node 2 -m netmorph_cli train r20.safetensors \\
          --dataset cifar10 -o r20_trained.safetensors
    """
    from ..io.checkpoint import load
    from ..morph.calibrate import uncalibrated_layers
    from ..runtime import default_device, parse_milestones, resolve_device
    from ..training.runfiles import read_parent_state
    from ..training.train import check_run_files, init_distributed, recipe_config, train
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
    check_run_files(out, cfg, source=ckpt, metrics=metrics, resume=resume, force=force)
    net = load(ckpt)
    pending = uncalibrated_layers(net) if cfg.calibrate else []
    if from_state and not resume:
        read_parent_state(from_state)  # refused before anything is printed
    dist = init_distributed(dev)
    header = _groups_line(net, cfg)  # a network with nothing new is refused here
    with TrainProgress(_console(), quiet=quiet or not dist.main, header=header) as progress:
        trained, history = train(net, cfg, out, data_dir=data_dir, device=dev, resume=resume,
                                 metrics=metrics, hooks=progress.hooks(), source=ckpt,
                                 force=force, from_state=from_state)
    if dist.main:
        sha = _save_trained(trained, out, ckpt, force)
        _train_summary(trained, history, calibrated=len(pending))
        _wrote(out, sha, trained.description["arch"])


def _groups_line(net: Any, cfg: Any) -> str:
    """What the optimizer groups will be, said before training starts."""
    from ..training.growth import new_parameter_names
    from ..training.train import new_groups

    model = net.module()
    total = sum(p.numel() for p in model.parameters())
    if not cfg.grows:
        return f"optimizer: one group, {total:,} parameters at lr {cfg.lr:g}"
    new = set(new_groups(net, cfg))
    assert new == set(new_parameter_names(net, model))
    n_new = sum(p.numel() for k, p in model.named_parameters() if k in new)
    wd = cfg.weight_decay if cfg.new_weight_decay is None else cfg.new_weight_decay
    ramp = f", ramped from 0 over {cfg.new_warmup} steps" if cfg.new_warmup else ""
    return (f"optimizer: {total - n_new:,} trained parameters at lr {cfg.lr:g} (weight decay "
            f"{cfg.weight_decay:g}); {n_new:,} new in {len(new)} tensors at lr "
            f"{cfg.lr * cfg.new_lr_scale:g} (×{cfg.new_lr_scale:g}{ramp}; weight decay "
            f"{wd:g})")


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


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: maps every failure to one ``Error:`` line."""
    try:
        rc = cli.main(args=argv, prog_name="netmorph", standalone_mode=False)
    except NetmorphError as exc:
        if _DEBUG:
            raise
        click.echo(f"Error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("Error: aborted", err=True)
        sys.exit(1)
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx else "netmorph"
        click.echo(f"Error: {exc.format_message()} (see '{where} --help')", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"Error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("Error: interrupted", err=True)
        sys.exit(130)
    sys.exit(rc if isinstance(rc, int) else 0)
