"""What every command shares: the ``netmorph`` click group, ``--json``, output and solver
options, registry-backed choices and help texts, option validators."""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Callable, Iterable
from typing import Any

import click

from .. import __version__
from ..base.limits import MAX_INPUT_SIDE, MAX_WIDTH
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


class _DatasetType(_RegistryChoice):
    """``--dataset``: a registry name, or a path to a user's ``.npz`` or image folder."""

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if not isinstance(value, str) or value in self.choices:
            return super().convert(value, param, ctx)
        from ..training.data import is_user_data  # at parse time: --help stays light

        if is_user_data(value):
            return value
        self.fail(f"{value!r} is neither a data set netmorph knows ({', '.join(self.choices)}) "
                  f"nor a path to your own FILE.npz or image FOLDER", param, ctx)

    def get_metavar(self, *args: Any, **kwargs: Any) -> str:
        return "[" + "|".join(self.choices) + "|FILE.npz|FOLDER]"


_DATASETS = _DatasetType(_dataset_names)
_FORCE = click.option("--force", is_flag=True, help="Overwrite OUT if it exists.")
_OUT = click.option("-o", "--output", "out", required=True, metavar="OUT",
                    help="Checkpoint to write (.safetensors, or .pt).")


def _wrote(path: str, sha: str, what: str) -> None:
    click.echo(f"wrote {path} ({what}; sha256 {sha[:16]}…)")



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
    from ..base.limits import JSONDepthError, parse_json

    try:
        out = parse_json(value)
    except (ValueError, JSONDepthError) as exc:
        raise click.BadParameter(f"not JSON ({exc})", param=param) from None
    if not isinstance(out, dict):
        raise click.BadParameter("must be a JSON object of keyword arguments, e.g. "
                                 '\'{"num_classes": 10}\'', param=param)
    return out



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



_DATA = [
    click.option("--dataset", required=True, type=_DATASETS,
                 help="Data set: a name (read from --data-dir; downloaded when missing and "
                      "online), or your own FILE.npz (x_train, y_train, x_test, y_test) or "
                      "image FOLDER (train/<class>/, test/<class>/)."),
    click.option("--data-dir", default=None, metavar="DIR",
                 help="Where data sets live [default: $NETMORPH_DATA, else ~/.cache/netmorph]."),
]


def _data_options(f: Any) -> Any:
    for opt in reversed(_DATA):
        f = opt(f)
    return f


