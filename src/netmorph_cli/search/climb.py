"""Hill climbing over exact morphs (issue 21), as NASH (Elsken et al. 2017) climbs over network
morphisms: each step draws children of the current best from the search space, morphs each
exactly (calibrated on training images, verified in eval and training mode: a child that fails
is recorded and dropped, never trained), trains every candidate — the current best too, with
its own recipe — the same epochs on the same batches, and keeps the one with the lowest error
on the held-out validation split. The test set is read once, at the end, for the final best.

Every draw is seeded by (seed, step, child), so a resumed search draws what the killed one
drew; the files of ``rundir.py`` record each phase as it ends, and every network is read back
from its file before it is used, so an uninterrupted run and a resumed one compute on the same
bits. Within a step the moves are drawn without replacement; a move whose morph is refused, or
whose child is above a cap (FLOPs, parameters), is recorded and another is drawn. A time
budget (the recorded seconds of the draws and trainings, over all sessions) is checked before
each step: a step that would run past it (by the last step's time) is not started, and a
started step always finishes (its selection does not depend on timing).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import NetmorphError, UsageError, VerificationError
from ..io import checkpoint as ck
from ..io.outputs import exclusive
from ..morph.morphs import morph_network
from ..morph.verify import verify, verify_train_mode
from ..network.description import Network
from ..network.flops import count_flops, count_params
from ..training.data import Dataset, load_dataset, to_tensor
from ..training.evaluation import normalization, top1_error, training_batches
from ..training.recipes import recipe_config
from ..training.train import TrainHooks, state_path, train
from .rundir import RunDir, SearchConfig, check_new, create
from .space import Move, SearchSpace, applies, load_space
from .validation import Split, validation_split

Event = Callable[[str, dict[str, Any]], None]


@dataclass
class SearchHooks:
    """Progress callbacks (all optional): ``on_event(kind, record)`` for "start", "step",
    "draw", "train", "epoch", "trained", "selected", "done"; ``on_train_step(step, index,
    epoch, batch, batches)`` every training step (for an ETA)."""

    on_event: Event | None = None
    on_train_step: Callable[[int, int, int, int, int], None] | None = None

    def emit(self, kind: str, record: dict[str, Any]) -> None:
        if self.on_event is not None:
            self.on_event(kind, record)


@dataclass(frozen=True)
class SearchResult:
    run_dir: Path
    best: Path  # the final best's checkpoint
    lineage: list[str]  # the moves that made it, in order ("parent" for a kept best)
    val_error: float
    test_error: float
    steps: int  # steps completed
    stopped: str  # "steps" (all done) or "budget"


def draw_seed(seed: int, step: int, index: int, purpose: str) -> int:
    """An independent 31-bit seed for one draw of one candidate of one step."""
    h = hashlib.sha256(f"{seed}:{step}:{index}:{purpose}".encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


@dataclass
class _Context:
    rd: RunDir
    cfg: SearchConfig
    space: SearchSpace
    data: Dataset  # the whole data set (its test split is read once, at the end)
    split: Split
    device: torch.device
    hooks: SearchHooks


# -- starting and resuming -------------------------------------------------------------------
def start(parent_file: str | Path | Network, space_file: str | Path, run_dir: str | Path,
          cfg: SearchConfig, *, data_dir: str | Path | None = None,
          data: Dataset | None = None, device: torch.device | str = "cpu",
          hooks: SearchHooks | None = None) -> SearchResult:
    """A new search from the checkpoint ``parent_file`` (or a ``Network``) over
    ``space_file`` into ``run_dir`` (which must not hold anything yet). The space, the data
    and the caps are checked before anything is written."""
    from .. import __version__

    check_new(run_dir)  # before the data are read
    file = None if isinstance(parent_file, Network) else Path(parent_file)
    parent = ck.load(file) if file is not None else parent_file
    assert isinstance(parent, Network)
    load_space(space_file, parent)  # every move checked against the parent
    _check_caps(cfg, parent)
    data = data or load_dataset(cfg.dataset, data_dir)
    split = validation_split(data, cfg.val_fraction, cfg.seed)
    device = torch.device(device)
    if cfg.precision == "auto":  # fixed for the whole run: a resume on another device
        cfg = dataclasses.replace(cfg, precision="bf16" if device.type == "cuda" else "fp32")
    record = {"parent": {"file": None if file is None else str(file),
                         "sha256": None if file is None else ck.file_sha256(file),
                         "arch": parent.description.get("arch")},
              "validation": split.record(),
              "data": {"name": data.name, "source": data.source, "sha256": data_digest(data)},
              "start_val_error": _val_error(parent, split, device),
              "start_flops": count_flops(parent.description),
              "start_params": count_params(parent.description), "netmorph": __version__}
    rd = create(run_dir, cfg, space_file, record, lambda path: ck.save(parent, path))
    return resume(rd.root, data=data, device=device, hooks=hooks)


def data_digest(data: Dataset) -> str:
    """sha256 of a data set's training images and labels (what a resume must see again)."""
    h = hashlib.sha256()
    for a in (data.x_train, data.y_train):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def resume(run_dir: str | Path, *, data_dir: str | Path | None = None,
           data: Dataset | None = None, device: torch.device | str = "cpu",
           hooks: SearchHooks | None = None) -> SearchResult:
    """Continue the search in ``run_dir`` from its files (a finished one returns its result).
    The validation split is drawn again and must match the recorded one."""
    with _opened(run_dir, data_dir, data, device, hooks) as ctx:
        return _run(ctx)


def search_step(run_dir: str | Path, *, data_dir: str | Path | None = None,
                data: Dataset | None = None, device: torch.device | str = "cpu",
                hooks: SearchHooks | None = None) -> dict[str, Any] | None:
    """Run the next step of the search in ``run_dir`` (or finish the one a kill
    interrupted) and return its selection; None when every step is done. The final test
    error is left to ``resume``, which measures it once every step is done."""
    with _opened(run_dir, data_dir, data, device, hooks) as ctx:
        done = ctx.rd.steps_done()
        step = len(done) + 1
        if ctx.rd.result_file.is_file() or step > ctx.cfg.steps or (
                not ctx.rd.step(step).exists() and _over_budget(ctx.rd, ctx.cfg)):
            return None  # finished, or stopped by its budget
        return _step(ctx, step)


@contextlib.contextmanager
def _opened(run_dir: str | Path, data_dir: str | Path | None, data: Dataset | None,
            device: torch.device | str, hooks: SearchHooks | None) -> Iterator[_Context]:
    """The run's context, its lock held (a second search of the same run fails at once)."""
    rd = RunDir(Path(run_dir))
    cfg, record = rd.config()
    hooks = hooks or SearchHooks()
    with exclusive(rd.config_file):
        start_net = ck.load(rd.start)
        space = load_space(rd.space_file, start_net)
        data = data or load_dataset(cfg.dataset, data_dir)
        split = validation_split(data, cfg.val_fraction, cfg.seed)
        if split.record() != record["validation"] or \
                data_digest(data) != record["data"].get("sha256"):
            raise UsageError(f"the training images of {cfg.dataset} here are not the ones "
                             f"{rd.root} was searched on (validation split {split.record()}, "
                             f"recorded {record['validation']}): another data set?")
        hooks.emit("start", {"config": cfg, "record": record, "done": rd.steps_done()})
        yield _Context(rd, cfg, space, data, split, torch.device(device), hooks)


def _run(ctx: _Context) -> SearchResult:
    rd, cfg = ctx.rd, ctx.cfg
    stopped = "steps"
    for step in range(1, cfg.steps + 1):
        if rd.selection(step).is_file():
            continue
        if not rd.step(step).exists() and _over_budget(rd, cfg):
            stopped = "budget"
            break
        _step(ctx, step)
    return _finish(ctx, stopped)


def _finish(ctx: _Context, stopped: str) -> SearchResult:
    rd = ctx.rd
    done = rd.steps_done()
    if rd.result_file.is_file():
        res = rd.read(rd.result_file)
    else:
        best = _current_file(rd, len(done) + 1)
        net = ck.load(best)
        sel = rd.read(rd.selection(done[-1])) if done else None
        test = _error(net, ctx.data, ctx.device)
        res = {"best": str(best.relative_to(rd.root)), "lineage": lineage(rd),
               "val_error": sel["val_error"] if sel else rd.read(rd.config_file)[
                   "start_val_error"], "test_error": test, "test_images": len(ctx.data.y_test),
               "steps": len(done), "stopped": stopped, "seconds": used_seconds(rd),
               "compute": sum(c["compute"] for c in candidates(rd)),
               "flops": count_flops(net.description), "params": count_params(net.description)}
        rd.write(rd.result_file, res)
    ctx.hooks.emit("done", res)
    return SearchResult(rd.root, rd.root / res["best"], res["lineage"], res["val_error"],
                        res["test_error"], res["steps"], res["stopped"])


# -- one step ----------------------------------------------------------------------------
def _step(ctx: _Context, step: int) -> dict[str, Any]:
    """Step ``step``: draw and morph the children of the current best, train every
    candidate, select; each phase skipped where its record exists. Returns the selection."""
    rd, cfg = ctx.rd, ctx.cfg
    rd.step(step).mkdir(parents=True, exist_ok=True)
    current_file = _current_file(rd, step)
    ctx.hooks.emit("step", {"step": step, "current": str(current_file.relative_to(rd.root))})
    taken: set[str] = set()
    draws = []
    for i in range(1, cfg.children + 1):
        if rd.draw(step, i).is_file():
            d = rd.read(rd.draw(step, i))
        else:
            d = _draw_child(ctx, ck.load(current_file), step, i, taken)
            rd.write(rd.draw(step, i), d)
        taken |= {t["move"] for t in d["tries"]}
        draws.append(d)
        ctx.hooks.emit("draw", {"step": step, **d})
    results = [_train_candidate(ctx, step, 0, current_file, cfg.parent_recipe, "parent")]
    for d in draws:
        if d["status"] == "ok":
            results.append(_train_candidate(ctx, step, d["index"], rd.child(step, d["index"]),
                                            cfg.recipe, d["move"]))
    best = min(results, key=lambda r: (r["val_error"], r["index"]))
    sel = {"step": step, "best": best["index"], "move": best["move"],
           "val_error": best["val_error"], "file": best["file"],
           "candidates": [{k: r[k] for k in ("index", "move", "val_error", "flops")}
                          for r in results]}
    rd.write(rd.selection(step), sel)
    ctx.hooks.emit("selected", sel)
    return sel


def _draw_child(ctx: _Context, current: Network, step: int, i: int, taken: set[str]
                ) -> dict[str, Any]:
    """Draw child ``i``'s move (weights of the moves not yet taken this step), morph it
    exactly, and keep it if it is under the caps and passes verification."""
    cfg = ctx.cfg
    rng = np.random.default_rng(draw_seed(cfg.seed, step, i, "move"))
    seed = draw_seed(cfg.seed, step, i, "morph")
    tries: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    out = {"index": i, "seed": seed, "tries": tries}
    while True:
        pool = [m for m in ctx.space.moves if m.weight > 0 and m.label not in taken
                and m.label not in {t["move"] for t in tries} and applies(m, current)]
        if not pool:
            return {**out, "status": "none", "move": None,
                    "seconds": time.perf_counter() - t0}
        w = np.array([m.weight for m in pool])
        move = pool[int(rng.choice(len(pool), p=w / w.sum()))]
        tried: dict[str, Any] = {"move": move.label}
        tries.append(tried)
        try:
            child = _morph(ctx, current, move, seed)
        except VerificationError as exc:
            return {**out, "status": "dropped", "move": move.label, "reason": str(exc),
                    "seconds": time.perf_counter() - t0}
        except NetmorphError as exc:  # this move cannot be made here: draw another
            tried["refused"] = str(exc)
            continue
        flops, params = count_flops(child.description), count_params(child.description)
        tried.update(flops=flops, params=params)
        over = [f"{what} {v:,} > {cap:,}" for what, v, cap in
                (("FLOPs", flops, cfg.max_flops), ("parameters", params, cfg.max_params))
                if cap is not None and v > cap]
        if over:
            tried["over_cap"] = ", ".join(over)
            continue
        report, train_mode = _verify(ctx, current, child, seed)
        tried.update(verify=report.to_json(), verify_train=train_mode.to_json())
        if not (report.passed and train_mode.passed):
            return {**out, "status": "dropped", "move": move.label,
                    "reason": "verification failed", "seconds": time.perf_counter() - t0}
        ck.save(child, ctx.rd.child(step, i), force=True)
        return {**out, "status": "ok", "move": move.label, "flops": flops, "params": params,
                "seconds": time.perf_counter() - t0}


def _morph(ctx: _Context, current: Network, move: Move, seed: int) -> Network:
    images = _batches(ctx, current, ctx.cfg.calibrate_batches, seed, "calibrate")
    res = morph_network(current, move.graph, at=move.at, after=move.after, seed=seed,
                        calibrate=(ctx.split.train.name, [x for x, _ in images]))
    return res.network


def _verify(ctx: _Context, parent: Network, child: Network, seed: int) -> tuple[Any, Any]:
    """The child against its parent: 32 random inputs in the child's dtype (eval mode), and
    ``verify_batches`` batches of training images in training mode."""
    report = verify(parent, child, dtype=child.dtype, samples=32, seed=seed)
    batches = _batches(ctx, parent, ctx.cfg.verify_batches, seed, "verify")
    return report, verify_train_mode(parent, child, batches, dtype=child.dtype)


def _batches(ctx: _Context, net: Network, n: int, seed: int, purpose: str
             ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` batches of (at most) 128 of the search's training images, never validation."""
    return training_batches(net, ctx.cfg.dataset, batches=n, seed=seed, purpose=purpose,
                            data=ctx.split.train,
                            batch_size=min(128, len(ctx.split.train.y_train)))


def _train_candidate(ctx: _Context, step: int, i: int, source: Path, recipe: str,
                     move: str) -> dict[str, Any]:
    """Train candidate ``i`` of ``step`` (resuming its state file if a run was killed in
    it); every candidate of a step trains on the same batches (seed (seed, step))."""
    rd, cfg = ctx.rd, ctx.cfg
    if rd.result(step, i).is_file():
        r = rd.read(rd.result(step, i))
        ctx.hooks.emit("trained", {"step": step, **r})
        return r
    out = rd.trained(step, i)
    tcfg = recipe_config(recipe, epochs=cfg.epochs, seed=draw_seed(cfg.seed, step, 0, "train"),
                         precision=cfg.precision, batch_size=cfg.batch_size,
                         dataset=cfg.dataset)
    again = state_path(out).is_file()
    ctx.hooks.emit("train", {"step": step, "index": i, "move": move, "epochs": cfg.epochs,
                             "resumed": again})
    t0 = time.perf_counter()

    def on_step(epoch: int, k: int, steps: int, *_: Any) -> None:
        if ctx.hooks.on_train_step is not None:
            ctx.hooks.on_train_step(step, i, epoch, k, steps)

    hooks = TrainHooks(on_step=on_step, on_epoch=lambda s: ctx.hooks.emit(
        "epoch", {"step": step, "index": i, "epoch": s.epoch, "val_error": s.test_error}))
    trained, history = train(ck.load(source), tcfg, out, dataset=ctx.split.train,
                             device=ctx.device, resume=again, force=True, hooks=hooks,
                             finish=lambda t: ck.save(t, out, force=True))
    flops = count_flops(trained.description)
    images = cfg.epochs * len(ctx.split.train.y_train)
    r = {"index": i, "move": move, "recipe": recipe, "file": str(out.relative_to(rd.root)),
         "val_errors": [h.test_error for h in history], "val_error": history[-1].test_error,
         "train_loss": history[-1].train_loss, "flops": flops,
         "params": count_params(trained.description), "images": images,
         "compute": 3 * flops * images, "seconds": time.perf_counter() - t0,
         "resumed": again}
    rd.write(rd.result(step, i), r)
    state_path(out).unlink(missing_ok=True)  # the checkpoint and the record are the result
    ctx.hooks.emit("trained", {"step": step, **r})
    return r


# -- reading a run -----------------------------------------------------------------------
def _current_file(rd: RunDir, step: int) -> Path:
    """The network step ``step`` starts from: the previous step's best."""
    if step == 1:
        return rd.start
    return rd.root / rd.read(rd.selection(step - 1))["file"]


def candidates(rd: RunDir) -> list[dict[str, Any]]:
    """Every trained candidate's record, by step and index."""
    out = []
    step = 1
    while rd.step(step).is_dir():
        out += [{"step": step, **c} for c in _records(rd, step, "cand")]
        step += 1
    return out


def _records(rd: RunDir, step: int, kind: str) -> list[dict[str, Any]]:
    """Step ``step``'s ``kind``-I.json records (cand, draw), by I."""
    return [rd.read(p) for p in sorted(rd.step(step).glob(f"{kind}-*.json"), key=_index)]


def _index(p: Path) -> int:
    """The number in a record's name: cand-12.json, draw-3.json → 12, 3."""
    return int(p.name.split("-")[1].split(".")[0])


def draws(rd: RunDir, step: int) -> list[dict[str, Any]]:
    """Step ``step``'s draw records, by child."""
    return _records(rd, step, "draw")


def step_seconds(rd: RunDir, step: int) -> float:
    """Seconds step ``step``'s recorded draws and trainings took."""
    return (sum(c["seconds"] for c in _records(rd, step, "cand"))
            + sum(d["seconds"] for d in draws(rd, step)))


def used_seconds(rd: RunDir) -> float:
    """Seconds the search's recorded draws and trainings took, over all sessions (not
    counted: data loading, the start's validation pass, work a kill lost)."""
    total, step = 0.0, 1
    while rd.step(step).is_dir():
        total += step_seconds(rd, step)
        step += 1
    return total


def lineage(rd: RunDir) -> list[str]:
    """The move each step's selection made ("parent": the best was kept, trained on)."""
    return [rd.read(rd.selection(s))["move"] for s in rd.steps_done()]


def _over_budget(rd: RunDir, cfg: SearchConfig) -> bool:
    if cfg.budget_s is None:
        return False
    done = rd.steps_done()
    last = step_seconds(rd, done[-1]) if done else 0.0
    return used_seconds(rd) + last > cfg.budget_s


def _check_caps(cfg: SearchConfig, parent: Network) -> None:
    for what, value, cap in (("FLOPs", count_flops(parent.description), cfg.max_flops),
                             ("parameters", count_params(parent.description),
                              cfg.max_params)):
        if cap is not None and value > cap:
            raise UsageError(f"the parent already has {value:,} {what}, above the cap of "
                             f"{cap:,}: no child of it could be drawn")


def _val_error(net: Network, split: Split, device: torch.device) -> float:
    return _error(net, split.train, device)  # its test split is the validation set


def _error(net: Network, data: Dataset, device: torch.device) -> float:
    """Top-1 error of ``net`` on ``data``'s test split."""
    mean, std = normalization(net)
    x = to_tensor(data.x_test, mean, std, device)
    y = torch.from_numpy(data.y_test).to(device)
    return top1_error(net.module(torch.float32, device), x, y)
