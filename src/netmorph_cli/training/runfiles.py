"""A training run's files: OUT, its state file OUT.state.pt (weights, optimizer, options,
the input's sha256, history) and its metrics, under the write policy (``outputs.py``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..errors import OutputError, UsageError, WriteError
from ..io.outputs import check_outputs, probe_directory, sha256, write_file
from ..network.description import Network, state_of
from .recipes import EpochStats, TrainConfig, config_json


def state_path(out: str | Path) -> Path:
    return Path(f"{out}.state.pt")


def check_run_files(out: str | Path, cfg: TrainConfig, *, source: str | Path | None = None,
                    metrics: str | Path | None = None, resume: bool = False,
                    force: bool = False, source_sha256: str | None = None) -> None:
    """Refuse, before any work, what this run's files would refuse (``outputs.py``'s policy):
    OUT, OUT.state.pt and the metrics file must not be the input ``source`` or each other;
    without ``resume`` an existing state is refused ("pass --resume … or --force …"), with
    it the state must exist and come from the same input and options; an existing OUT or
    metrics file needs ``force`` (a resumed run rewrites its own metrics).
    ``source_sha256``: the input's digest when the caller has it (else hashed here)."""
    spath = state_path(out)
    files = [out, spath] + ([metrics] if metrics else [])
    check_outputs(files, inputs=[source], force=True)  # inputs, duplicates, directories
    if resume:
        if not spath.is_file():
            raise UsageError(f"--resume: no state file {spath} (was the run started with "
                             "this -o?)")
        check_same_run(read_state(spath), cfg, source, source_sha256)
    if Path(out).exists() and not force:
        raise OutputError(f"'{out}' exists; pass --force to overwrite"
                          + (" (the run it resumes had finished)" if resume else ""))
    if not resume and spath.exists() and not force:
        raise OutputError(f"a training state '{spath}' exists from an earlier run: pass "
                          f"--resume to continue or --force to start again")
    if not resume and metrics and Path(metrics).exists() and not force:
        raise OutputError(f"'{metrics}' exists; pass --force to overwrite")

def probe_run(net: Network, out: str | Path, metrics: str | Path | None) -> None:
    """A read-only directory, a missing permission or a full disk fails now, not after an
    epoch: the state holds the weights, BN statistics and momentum (2× the tensors, in
    float32) and is written beside the old one; the checkpoint holds the tensors once."""
    size = sum(t.numel() for t in net.tensors.values()) * 4
    probe_directory(Path(out).parent, need_bytes=5 * size)
    if metrics and Path(metrics).parent.resolve() != Path(out).parent.resolve():
        probe_directory(Path(metrics).parent)

def save_state(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer,
                cfg: TrainConfig, source_sha256: str | None, carried: dict[str, Any] | None,
                epoch: int, step: int, history: list[EpochStats]) -> None:
    """Atomic and durable (``outputs.write_file``); a failed write keeps the last state.
    ``param_names`` name the optimizer's parameters in its order, so that a child can
    carry this state's momentum (``growth.carry_momentum``); ``carried``: where this run's
    own momentum came from, if it was carried."""
    by_id = {id(p): k for k, p in model.named_parameters()}
    state = {"netmorph_train_state": 1, "epoch": epoch, "step": step,
             "model": state_of(model), "optimizer": opt.state_dict(),
             "param_names": [by_id[id(p)] for g in opt.param_groups for p in g["params"]],
             "carried": json.dumps(carried),
             "config": json.dumps(config_json(cfg)), "input_sha256": source_sha256 or "",
             "history": json.dumps([h.to_json() for h in history]),
             "torch_rng": torch.get_rng_state()}
    try:
        write_file(path, lambda f: torch.save(state, f), force=True)
    except WriteError as exc:
        kept = (f"the state of an earlier epoch in {path} is kept: make room and continue "
                f"with --resume" if path.exists() else "no state was kept")
        raise WriteError(f"{exc}; {kept}") from None


def _load(path: Path) -> Any:
    """A state file's contents, by the one reader of them (tensors and plain data only)."""
    with open(path, "rb") as fh:
        return torch.load(fh, map_location="cpu", weights_only=True)


def read_state(path: Path) -> dict[str, Any]:
    """The state of the run that writes OUT (``--resume``)."""
    try:
        state = _load(path)
        state["config"] = json.loads(state["config"])
        return state
    except Exception as exc:  # noqa: BLE001 - any failure here is a bad state file
        raise UsageError(f"--resume: cannot read {path}: {first_line(exc)}") from None


def read_parent_state(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A parent's training state (``OUT.state.pt``) to carry (``--from-state``), and what
    the history records of it; ``UsageError`` if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--from-state: no file {path}")
    try:
        state = _load(path)
    except Exception:  # noqa: BLE001 - any failure here is a bad state file
        raise UsageError(f"--from-state: {path} is not a training state (OUT.state.pt of "
                         f"`netmorph train`): torch.load(weights_only=True) cannot read "
                         f"it") from None
    if not isinstance(state, dict) or state.get("netmorph_train_state") != 1:
        raise UsageError(f"--from-state: {path} is not a netmorph training state "
                         f"(OUT.state.pt of `netmorph train`)")
    opt = state.get("optimizer")
    if not isinstance(opt, dict) or not isinstance(opt.get("state"), dict):
        raise UsageError(f"--from-state: {path} holds no optimizer state")
    names = state.get("param_names")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise UsageError(f"--from-state: {path} does not name its parameters (written by an "
                         f"older netmorph): train the parent again with this version to carry "
                         f"its optimizer state")
    return state, {"file": path.name, "sha256": sha256(path)}


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def check_same_run(state: dict[str, Any], cfg: TrainConfig, source: str | Path | None,
                   source_sha256: str | None = None) -> None:
    """``--resume`` continues the run that wrote the state: same input, same options."""
    saved, mine = state["config"], config_json(cfg)
    defaults = config_json(TrainConfig())  # states written before a field existed
    diff = [k for k in mine if k not in ("compile", "precision", "channels_last", "calibrate")
            and saved.get(k, defaults[k]) != mine[k]]
    if diff:
        raise UsageError(f"--resume: options differ from the interrupted run "
                         f"({', '.join(f'{k}: {saved.get(k)} → {mine[k]}' for k in diff)})")
    was = state.get("input_sha256")
    if source is None or not was:
        return
    now = source_sha256 or sha256(source)
    if was != now:
        raise UsageError(f"--resume: the state was written by a run on another input "
                         f"(sha256 {was[:12]}…), not '{source}' (sha256 {now[:12]}…); "
                         f"resume with that input, or start again with --force")


def load_state(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer
                ) -> tuple[int, int, list[EpochStats], dict[str, Any] | None]:
    """Restore ``model`` and ``opt``; returns (epoch, step, history, carried)."""
    state = read_state(path)
    try:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        history = [EpochStats(**h) for h in json.loads(state["history"])]
        carried = json.loads(state.get("carried", "null"))
    except Exception as exc:  # noqa: BLE001 - any failure here is a bad state file
        raise UsageError(f"--resume: cannot read {path}: {first_line(exc)}") from None
    torch.set_rng_state(state["torch_rng"])
    return int(state["epoch"]), int(state["step"]), history, carried
