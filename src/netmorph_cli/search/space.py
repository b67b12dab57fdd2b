"""A search space (issue 21): which morphs a hill-climbing search may draw, checked whole
against the network before any training starts.

A space file is JSON::

    {"moves": [
      {"module": "1c1", "weight": 2},                                  # a preset: it places itself
      {"module": "examples/modules/D.json", "at": ["layer1.1.conv1", "layer2.1.conv1"]},
      {"module": "examples/modules/morph_1c1.json", "after": ["layer3.0.relu2"],
       "weight": 0.5}
    ]}

Each move names a preset or a module spec file (relative paths are read from the space
file's folder first), and for a spec the sites it may go to: ``at`` (convs or identity
shortcuts it replaces) or ``after`` (nodes it is inserted after). ``weight`` (default 1) is
the move's share of the draws; ``name`` (default: the module as given) names it in reports.
``load_space`` refuses, with one message naming the move, an empty space, an unknown module,
a site the network does not have (or one a module cannot go to), and weights that are
negative, not finite or all zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..base.limits import parse_json
from ..errors import MorphError, SpecError, UsageError
from ..morph.insertion import site_after, site_at
from ..network.description import Network
from ..network.presets import Preset
from ..spec.graph import ModuleGraph
from ..spec.parse import load_spec


@dataclass(frozen=True)
class Move:
    """One kind of morph the search may draw: a preset, or a module at one site."""

    module: str  # the preset's name or the spec file, as the space file gave it
    graph: Preset | ModuleGraph
    at: str | None = None
    after: str | None = None
    weight: float = 1.0
    name: str | None = None  # in reports (None: the module as given)

    @property
    def label(self) -> str:
        where = f"@{self.at}" if self.at else f"@after:{self.after}" if self.after else ""
        return f"{self.name or self.module}{where}"


@dataclass(frozen=True)
class SearchSpace:
    moves: tuple[Move, ...]
    source: str

    def weights(self) -> list[float]:
        """Each move's share of a first draw (later draws of a step renormalize over the
        moves not yet taken)."""
        total = sum(m.weight for m in self.moves)
        return [m.weight / total for m in self.moves]


def applies(move: Move, net: Network) -> bool:
    """Whether ``move``'s site is still in ``net`` (a later step's network: a module that
    replaced a conv took that site away); a preset decides when it is morphed."""
    try:
        if move.at is not None:
            site_at(net, move.at)
        elif move.after is not None:
            site_after(net, move.after)
    except MorphError:
        return False
    return True


def load_space(path: str | Path, net: Network) -> SearchSpace:
    """The space in ``path``, every move checked against ``net`` (``UsageError``)."""
    path = Path(path)
    try:
        data = parse_json(path.read_text())
    except OSError as exc:
        raise UsageError(f"cannot read the search space {path}: {exc.strerror}") from None
    except ValueError as exc:  # malformed JSON, too deep, a lone surrogate
        raise UsageError(f"{path} is not a search space (JSON): {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("moves"), list):
        raise UsageError(f"{path}: a search space is an object with a list \"moves\"")
    if not data["moves"]:
        raise UsageError(f"{path}: the search space is empty (no moves)")
    moves: list[Move] = []
    for i, entry in enumerate(data["moves"]):
        moves += _moves(entry, i, path, net)
    labels = [m.label for m in moves]
    for label in labels:
        if labels.count(label) > 1 or label == "parent":
            why = "is the name of the current best in a search's records" if label == \
                "parent" else "names two moves (give one a \"name\")"
            raise UsageError(f"{path}: the move {label!r} {why}")
    if not any(m.weight > 0 for m in moves):
        raise UsageError(f"{path}: every move has weight 0, so none can be drawn")
    return SearchSpace(tuple(moves), str(path))


def _moves(entry: Any, i: int, path: Path, net: Network) -> list[Move]:
    where = f"{path}: move {i + 1}"
    if not isinstance(entry, dict) or not isinstance(entry.get("module"), str):
        raise UsageError(f"{where} must be an object with a \"module\" (a preset or a spec file)")
    unknown = set(entry) - {"module", "at", "after", "weight", "name"}
    if unknown:
        raise UsageError(f"{where}: unknown field {sorted(unknown)[0]!r} (module, at, after, "
                         "weight, name)")
    label = entry.get("name")
    if label is not None and (not isinstance(label, str) or not label.strip()):
        raise UsageError(f"{where}: name must be a non-empty string, not {label!r}")
    weight = entry.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, int | float) \
            or not math.isfinite(weight) or weight < 0:
        raise UsageError(f"{where}: weight must be a finite number ≥ 0, not {weight!r}")
    name = entry["module"]
    graph = _module(name, where, path)
    if isinstance(graph, Preset):
        if "at" in entry or "after" in entry:
            raise UsageError(f"{where}: preset {name!r} places itself; 'at'/'after' apply to "
                             "spec files")
        return [Move(name, graph, weight=float(weight), name=label)]
    sites = [(k, s) for k in ("at", "after") for s in _site_list(entry.get(k), k, where)]
    if not sites:
        raise UsageError(f"{where}: module {name!r} needs the sites it may go to ('at' or "
                         "'after', a list of node names)")
    out = []
    for kind, site in sites:
        try:
            (site_at if kind == "at" else site_after)(net, site)
        except MorphError as exc:
            raise UsageError(f"{where}: {kind} {site!r}: {exc}") from None
        out.append(Move(name, graph, **{kind: site}, weight=float(weight), name=label))
    return out


def _module(name: str, where: str, path: Path) -> Preset | ModuleGraph:
    if not name.endswith(".json"):
        try:
            return Preset.parse(name)
        except (SpecError, MorphError, ValueError) as exc:
            raise UsageError(f"{where}: unknown module {name!r} ({exc})") from None
    for candidate in (path.parent / name, Path(name)):
        if candidate.is_file():
            try:
                return load_spec(candidate)
            except SpecError as exc:
                raise UsageError(f"{where}: {exc}") from None
    raise UsageError(f"{where}: no module spec file {name!r} (looked beside {path} and here)")


def _site_list(value: Any, key: str, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value) or not value:
        raise UsageError(f"{where}: {key!r} must be a non-empty list of node names")
    return value
