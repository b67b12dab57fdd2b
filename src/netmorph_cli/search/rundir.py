"""A search's run directory (issue 21): every file a search writes, where it lies, and the
records that let ``--resume`` continue exactly where a killed run stopped.

::

    RUN_DIR/search.json            the run: configuration, parent (sha256), validation split
    RUN_DIR/space.json, modules/   the search space, its spec files copied in (self-contained)
    RUN_DIR/start.safetensors      the network the search starts from
    RUN_DIR/step-01/draw-1.json    child 1's draw: the move, its tries, verify figures
    RUN_DIR/step-01/cand-1.child.safetensors   child 1 morphed, calibrated, verified
    RUN_DIR/step-01/cand-0.safetensors         candidate 0 (the current best) trained on
    RUN_DIR/step-01/cand-1.safetensors (+ .state.pt while it trains)   child 1 trained
    RUN_DIR/step-01/cand-1.json    child 1's result: validation error per epoch, compute
    RUN_DIR/step-01/selection.json the step's best
    RUN_DIR/result.json            the final best and its test error (measured once)

Each record is written atomically after the file it names, so a record's presence proves its
phase finished; a run killed at any point loses at most the candidate in flight (and a
training candidate only its unfinished epoch: its state file resumes it).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from ..base.limits import parse_json
from ..errors import UsageError
from ..io.outputs import write_text

FORMAT = 1


@dataclass(frozen=True)
class SearchConfig:
    """What a search does; stored in ``search.json`` and read back by ``--resume``."""

    steps: int = 3
    children: int = 3  # drawn per step; the current best competes as one more candidate
    epochs: int = 1  # of training per candidate per step
    recipe: str = "grow"  # the children's training recipe (training/recipes.py)
    parent_recipe: str = "continue"  # the current best's, trained on beside its children
    dataset: str = "cifar10"
    seed: int = 0  # draws, morph filters, batch order, the validation split
    val_fraction: float = 0.1  # of the training images, held out to select on
    max_flops: int | None = None  # a child above either cap is not drawn
    max_params: int | None = None
    budget_s: float | None = None  # wall-clock seconds for the whole search, all sessions
    batch_size: int = 128
    precision: str = "auto"
    calibrate_batches: int = 32  # of 128 training images, set a child's new BN layers
    verify_batches: int = 4  # of 128 training images, train-mode verification

    def __post_init__(self) -> None:
        for name in ("steps", "children", "epochs", "calibrate_batches", "verify_batches",
                     "batch_size"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise UsageError(f"search {name} must be a whole number ≥ 1, not {value!r}")
        from ..training.recipes import GROWING, RECIPES

        for name in ("recipe", "parent_recipe"):
            if getattr(self, name) not in RECIPES:
                raise UsageError(f"unknown {name.replace('_', ' ')} {getattr(self, name)!r} "
                                 f"(choose from {', '.join(RECIPES)})")
        if self.parent_recipe in GROWING:
            raise UsageError(f"the current best has no new parameters (it was trained): its "
                             f"recipe cannot be {self.parent_recipe!r}; use continue")
        if not 0 < self.val_fraction < 1:
            raise UsageError(f"the validation fraction must be in (0, 1), not "
                             f"{self.val_fraction}")
        if type(self.seed) is not int or self.seed < 0:
            raise UsageError(f"the search seed must be a whole number ≥ 0, not {self.seed!r}")
        for name in ("max_flops", "max_params", "budget_s"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise UsageError(f"search {name} must be > 0, not {value!r}")

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SearchConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def config_file(self) -> Path:
        return self.root / "search.json"

    @property
    def space_file(self) -> Path:
        return self.root / "space.json"

    @property
    def start(self) -> Path:
        return self.root / "start.safetensors"

    @property
    def result_file(self) -> Path:
        return self.root / "result.json"

    def step(self, step: int) -> Path:
        return self.root / f"step-{step:02d}"

    def draw(self, step: int, i: int) -> Path:
        return self.step(step) / f"draw-{i}.json"

    def child(self, step: int, i: int) -> Path:
        return self.step(step) / f"cand-{i}.child.safetensors"

    def trained(self, step: int, i: int) -> Path:
        return self.step(step) / f"cand-{i}.safetensors"

    def result(self, step: int, i: int) -> Path:
        return self.step(step) / f"cand-{i}.json"

    def selection(self, step: int) -> Path:
        return self.step(step) / "selection.json"

    def steps_done(self) -> list[int]:
        """The steps whose selection is written, in order."""
        done = []
        k = 1
        while self.selection(k).is_file():
            done.append(k)
            k += 1
        return done

    # -- records --------------------------------------------------------------------------
    def read(self, path: Path) -> Any:
        try:
            return parse_json(path.read_text())
        except (OSError, ValueError) as exc:
            raise UsageError(f"{path} (a record of the search in {self.root}) cannot be read: "
                             f"{exc}; the run directory is damaged") from None

    def write(self, path: Path, record: Any) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, json.dumps(record, indent=1) + "\n", force=True)

    def config(self) -> tuple[SearchConfig, dict[str, Any]]:
        """The run's configuration and the whole ``search.json``."""
        if not self.config_file.is_file():
            raise UsageError(f"{self.root} is not a search run directory (no search.json): "
                             "start one with netmorph search PARENT … -o RUN_DIR")
        data = self.read(self.config_file)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise UsageError(f"{self.config_file} is not a netmorph search record (format "
                             f"{FORMAT})")
        return SearchConfig.from_json(data["config"]), data


def check_new(root: str | Path) -> RunDir:
    """``root`` as a new run directory: refused (``UsageError``) if it holds anything or its
    parent folder does not exist."""
    rd = RunDir(Path(root))
    if rd.root.exists() and (not rd.root.is_dir() or any(rd.root.iterdir())):
        raise UsageError(f"{rd.root} exists and is not an empty folder: continue that search "
                         f"with --resume {rd.root}, or choose another -o")
    if not rd.root.parent.is_dir():
        raise UsageError(f"output directory '{rd.root.parent}' does not exist")
    return rd


def create(root: str | Path, cfg: SearchConfig, space_path: str | Path, record: dict[str, Any],
           save_start: Callable[[Path], Any]) -> RunDir:
    """A new run directory: refuses one that holds anything (a search is continued with
    ``--resume``, never overwritten). The space file and its spec files are copied in, with
    the spec references rewritten to the copies, so a resumed search reads the same moves
    even if the originals changed; ``save_start(path)`` writes the start network. All of it
    is built in a temporary folder beside ``root`` and renamed into place whole, so a kill
    here leaves no run directory that ``--resume`` cannot read."""
    rd = check_new(root)
    space_path = Path(space_path)
    data = parse_json(space_path.read_text())
    tmp = Path(tempfile.mkdtemp(prefix=f".{rd.root.name}.", dir=rd.root.parent))
    try:
        part = RunDir(tmp)
        for k, move in enumerate(data["moves"]):
            name = move["module"]
            move.setdefault("name", name)  # reports name the move as the user did
            if name.endswith(".json"):
                src = next((p for p in (space_path.parent / name, Path(name)) if p.is_file()),
                           None)
                if src is None:
                    raise UsageError(f"{space_path}: the spec file {name!r} is gone")
                (tmp / "modules").mkdir(exist_ok=True)
                copy = tmp / "modules" / f"{k + 1}-{Path(name).name}"
                shutil.copyfile(src, copy)
                move["module"] = f"modules/{copy.name}"
        part.write(part.space_file, data)
        save_start(part.start)
        part.write(part.config_file, {"format": FORMAT, "config": asdict(cfg), **record})
        if rd.root.exists():
            rd.root.rmdir()  # empty (check_new): the rename takes its place
        tmp.rename(rd.root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return rd
