"""Issue 21: the hill-climbing search, end to end on tiny synthetic data (seconds): what it
writes, that it selects on the validation split only, that a run killed in any phase
resumes to the uninterrupted run's result bit for bit, caps, budget, dropped children."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from netmorph_cli.errors import UsageError
from netmorph_cli.io import checkpoint as ck
from netmorph_cli.network import zoo
from netmorph_cli.network.flops import count_flops
from netmorph_cli.search import climb
from netmorph_cli.search.climb import SearchHooks, resume, start
from netmorph_cli.search.report import lineage_tree, load_report, markdown, rows
from netmorph_cli.search.rundir import RunDir, SearchConfig
from netmorph_cli.search.validation import validation_split
from netmorph_cli.training import data as data_mod
from netmorph_cli.training.evaluation import normalization, top1_error

pytestmark = pytest.mark.usefixtures("one_thread")
MODULES = Path(__file__).resolve().parents[2] / "examples" / "modules"


class Killed(Exception):
    """A kill -9 stand-in: the search stops where it is, nothing after runs."""


@pytest.fixture(scope="module")
def data() -> data_mod.Dataset:
    return data_mod.synthetic(n_train=128, n_test=32)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("search")
    parent = d / "parent.safetensors"
    ck.save(zoo.create("resnet20", seed=0), parent)
    (d / "C.json").write_text((MODULES / "C.json").read_text())
    space = d / "space.json"
    space.write_text(json.dumps({"moves": [
        {"module": "1c1"}, {"module": "C.json", "at": ["layer3.1.conv1"], "weight": 2}]}))
    return parent, space


def config(**kw) -> SearchConfig:
    base = dict(steps=1, children=2, epochs=2, dataset="synthetic", batch_size=64,
                calibrate_batches=1, verify_batches=1)
    return SearchConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def reference(tmp_path_factory, files, data):
    """An uninterrupted 1-step × 2-children search, 2 epochs a candidate."""
    parent, space = files
    run = tmp_path_factory.mktemp("ref") / "run"
    return run, start(parent, space, run, config(), data=data)


def test_a_search_writes_every_candidate_and_selects_the_lowest_validation_error(
        reference, data):
    run, result = reference
    rd = RunDir(run)
    draws = [rd.read(rd.draw(1, i)) for i in (1, 2)]
    assert sorted(d["move"] for d in draws) == ["1c1", "C.json@layer3.1.conv1"]
    for d in draws:  # morphed exactly and verified before any training
        assert d["status"] == "ok"
        verified = d["tries"][-1]
        assert verified["verify"]["passed"] and verified["verify"]["max_rel_err"] <= 1e-5
        assert verified["verify_train"]["passed"]
        assert rd.child(1, d["index"]).is_file()
    cands = [rd.read(rd.result(1, i)) for i in (0, 1, 2)]
    assert [c["move"] for c in cands][0] == "parent"
    best = min(cands, key=lambda c: (c["val_error"], c["index"]))
    sel = rd.read(rd.selection(1))
    assert sel["best"] == best["index"] and result.val_error == best["val_error"]
    assert result.best == run / best["file"] and result.steps == 1
    assert result.stopped == "steps"
    # the test error is the final best's on the test set, measured independently here
    net = ck.load(result.best)
    mean, std = normalization(net)
    x = data_mod.to_tensor(data.x_test, mean, std, "cpu")
    y = torch.from_numpy(data.y_test)
    assert result.test_error == top1_error(net.module(torch.float32), x, y)
    for c in cands:  # compute = 3 × FLOPs × images seen; the children are bigger
        assert c["compute"] == 3 * c["flops"] * c["images"]
        assert len(c["val_errors"]) == 2
        assert not rd.root.joinpath(c["file"] + ".state.pt").exists()
    assert cands[1]["flops"] > cands[0]["flops"] and cands[2]["flops"] > cands[0]["flops"]
    assert net.history[-1]["op"] == "train"


def test_candidates_train_on_the_training_images_minus_the_validation_split(
        tmp_path, files, data, reference, monkeypatch):
    """Every candidate trains on the training images minus the validation split and is
    selected on that split: with the test set replaced by noise and wrong labels the
    search selects exactly as before (only the final test error changes)."""
    seen = []
    real = climb.train

    def spy(net, cfg, out, *, dataset, **kw):
        seen.append(dataset)
        return real(net, cfg, out, dataset=dataset, **kw)

    monkeypatch.setattr(climb, "train", spy)
    noisy = dataclasses.replace(data, x_test=np.zeros_like(data.x_test),
                                y_test=(data.y_test + 1) % 10)
    result = start(*files, tmp_path / "run", config(), data=noisy)
    split = validation_split(data, 0.1, 0)
    keep = np.setdiff1d(np.arange(len(data.y_train)), split.val_indices)
    assert len(seen) == 3
    for d in seen:  # train on the rest, evaluate (select) on the held-out part
        assert np.array_equal(d.x_train, data.x_train[keep])
        assert np.array_equal(d.x_test, data.x_train[split.val_indices])
    rd, rref = RunDir(result.run_dir), RunDir(reference[0])
    assert rd.read(rd.selection(1)) == rref.read(rref.selection(1))
    assert result.val_error == reference[1].val_error
    record = json.loads((tmp_path / "run" / "search.json").read_text())
    assert record["validation"] == split.record()


def _kill_at(phase: str):
    """Hooks that raise Killed at one point of the run."""
    def on_event(kind, r):
        if phase == "morph" and kind == "draw" and r["index"] == 1:
            raise Killed  # child 1 is drawn and written, child 2 not yet
        if phase == "select" and kind == "trained" and r["index"] == 2:
            raise Killed  # every candidate trained, no selection written

        if phase == "record" and kind == "train" and r["index"] == 2:
            raise Killed  # candidate 1 trained and recorded; 2 not started

    def on_train_step(step, index, epoch, batch, batches):
        if phase == "train" and index == 1 and epoch == 1 and batch == 1:
            raise Killed  # candidate 1 in its second epoch: its state holds epoch 1

    return SearchHooks(on_event=on_event, on_train_step=on_train_step)


# the train phase runs by default (it resumes a candidate's state file and then every later
# phase); a kill in the morph or select phase resumes through the same code: slow
@pytest.mark.parametrize("phase", [pytest.param("morph", marks=pytest.mark.slow), "train",
                                   pytest.param("select", marks=pytest.mark.slow),
                                   "checkpoint"])
def test_a_search_killed_in_any_phase_resumes_to_the_same_result(tmp_path, files, data,
                                                                 reference, phase,
                                                                 monkeypatch):
    ref_run, ref = reference
    run = tmp_path / "run"
    if phase == "checkpoint":  # killed after candidate 1's checkpoint, before its record
        real = RunDir.write

        def write(self, path, record):
            if path.name == "cand-1.json":
                raise Killed
            real(self, path, record)

        monkeypatch.setattr(RunDir, "write", write)
    with pytest.raises(Killed):
        start(*files, run, config(), data=data, hooks=_kill_at(phase))
    monkeypatch.undo()
    if phase == "checkpoint":
        assert (run / "step-01" / "cand-1.safetensors").is_file()
        assert not (run / "step-01" / "cand-1.json").exists()
    if phase == "train":
        assert (run / "step-01" / "cand-1.safetensors.state.pt").is_file()
    assert not (run / "step-01" / "selection.json").exists()
    events = []
    again = resume(run, data=data, hooks=SearchHooks(on_event=lambda k, r: events.append(
        (k, r))))
    if phase == "train":  # candidate 1 went on from its state, not from scratch
        assert ("train", True) in [(k, r["resumed"]) for k, r in events
                                   if k == "train" and r["index"] == 1]
    rd, rref = RunDir(run), RunDir(ref_run)
    assert rd.read(rd.selection(1)) == rref.read(rref.selection(1))
    for i in (0, 1, 2):
        a, b = rd.read(rd.result(1, i)), rref.read(rref.result(1, i))
        assert a["val_errors"] == b["val_errors"] and a["train_loss"] == b["train_loss"]
        ta, tb = ck.load(rd.trained(1, i)).tensors, ck.load(rref.trained(1, i)).tensors
        assert all(torch.equal(ta[k], tb[k]) for k in tb)
    assert (again.val_error, again.test_error) == (ref.val_error, ref.test_error)
    assert resume(run, data=data).test_error == ref.test_error  # finished: read back


def test_a_kill_while_the_run_directory_is_made_leaves_none(tmp_path, files, data,
                                                             monkeypatch):
    real = ck.save

    def save(net, path, **kw):
        if Path(path).name == "start.safetensors":
            raise Killed
        return real(net, path, **kw)

    monkeypatch.setattr(climb.ck, "save", save)
    with pytest.raises(Killed):
        start(*files, tmp_path / "run", config(), data=data)
    assert list(tmp_path.iterdir()) == []  # no run directory, no temporary one


def test_resume_refuses_another_data_set(reference, data):
    run, _ = reference
    other = data_mod.synthetic(n_train=136, n_test=32)
    with pytest.raises(UsageError, match="not the ones .* was searched on"):
        resume(run, data=other)
    same_size = dataclasses.replace(data, x_train=data.x_train[::-1].copy())
    with pytest.raises(UsageError, match="not the ones .* was searched on"):
        resume(run, data=same_size)  # the same split, other images


def test_moves_over_a_cap_are_not_drawn(tmp_path, files, data):
    parent = ck.load(files[0])
    base = count_flops(parent.description)
    one_c_one = count_flops(climb.morph_network(parent, climb.load_space(
        files[1], parent).moves[0].graph).network.description)
    cap = one_c_one  # 1c1 fits, C at layer3.1.conv1 (+10M FLOPs) does not
    assert base < cap
    result = start(*files, tmp_path / "run", config(epochs=1, max_flops=cap), data=data)
    rd = RunDir(result.run_dir)
    draws = [rd.read(rd.draw(1, i)) for i in (1, 2)]
    tries = [t for d in draws for t in d["tries"]]
    assert {t["move"] for t in tries if "over_cap" in t} == {"C.json@layer3.1.conv1"}
    assert sorted(d["status"] for d in draws) == ["none", "ok"]
    for c in climb.candidates(rd):
        assert c["flops"] <= cap
    assert len(climb.candidates(rd)) == 2  # the parent and the 1c1 child


def test_a_parent_over_the_cap_is_refused_before_anything_is_written(tmp_path, files, data):
    flops = count_flops(ck.load(files[0]).description)
    with pytest.raises(UsageError, match="above the cap"):
        start(*files, tmp_path / "run", config(max_flops=flops - 1), data=data)
    assert not (tmp_path / "run").exists()


def test_a_child_that_fails_verification_is_dropped_never_trained(tmp_path, files, data,
                                                                  monkeypatch):
    real = climb.verify

    def broken(parent, child, **kw):
        r = real(parent, child, **kw)
        return type(r)(**{**r.__dict__, "passed": False})

    monkeypatch.setattr(climb, "verify", broken)
    result = start(*files, tmp_path / "run", config(epochs=1), data=data)
    rd = RunDir(result.run_dir)
    assert {rd.read(rd.draw(1, i))["status"] for i in (1, 2)} == {"dropped"}
    assert [c["move"] for c in climb.candidates(rd)] == ["parent"]
    assert not rd.child(1, 1).exists() and result.lineage == ["parent"]


def test_the_budget_stops_before_a_step_that_would_run_past_it(tmp_path, files, data):
    result = start(*files, tmp_path / "run", config(steps=3, children=1, epochs=1,
                                                    budget_s=1e-3), data=data)
    assert result.stopped == "budget" and result.steps == 1
    assert not (tmp_path / "run" / "step-02").exists()


def test_a_run_directory_that_holds_files_is_not_overwritten(tmp_path, files, data):
    run = tmp_path / "run"
    run.mkdir()
    (run / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="not an empty folder.*--resume"):
        start(*files, run, config(), data=data)
    assert [p.name for p in run.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("kw,match", [
    ({"children": 0}, "children must be a whole number"),
    ({"val_fraction": 1.0}, "validation fraction"),
    ({"max_flops": -5}, "max_flops must be > 0"),
    ({"recipe": "nope"}, "unknown recipe 'nope'"),
    ({"parent_recipe": "grow"}, "its recipe cannot be 'grow'; use continue"),
    ({"seed": -1}, "seed must be a whole number ≥ 0"),
])
def test_bad_search_settings_are_one_usage_error(kw, match):
    with pytest.raises(UsageError, match=match):
        config(**kw)


def test_the_report_shows_the_lineage_the_candidates_and_the_curve(reference):
    run, result = reference
    rep = load_report(run)
    tree = lineage_tree(rep)
    best = [line for line in tree if "◀ best" in line]
    move = result.lineage[0]
    assert len(best) == 1
    assert (move if move != "parent" else "parent (the current best") in best[0]
    assert tree[-1].startswith("final best:") and f"{100 * result.test_error:.2f}%" in tree[-1]
    assert len(rows(rep)) == 3 and sum(r["best"] for r in rows(rep)) == 1
    (c0, e0), (c1, e1) = rep["curve"]
    assert c0 == 0 and e1 == result.val_error
    assert c1 == sum(r["compute"] for r in climb.candidates(RunDir(run)))
    assert "| 1 | 0 | parent |" in markdown(rep)


def test_the_api_searches_from_a_module_one_step_at_a_time(tmp_path, files, data,
                                                           monkeypatch):
    import netmorph

    monkeypatch.setattr(climb, "load_dataset", lambda name, root=None: data)
    run = tmp_path / "run"

    def stop_after_step_1(kind, r):
        if kind == "selected":
            raise Killed

    with pytest.raises(Killed):  # a search of 2 steps, stopped after its first
        start(ck.load(files[0]), files[1], run, config(steps=2, children=1, epochs=1,
                                                       budget_s=1e6),
              data=data, hooks=SearchHooks(on_event=stop_after_step_1))
    assert json.loads((run / "search.json").read_text())["parent"]["file"] is None
    assert netmorph.search_step(run)["step"] == 2
    assert netmorph.search_step(run) is None and not (run / "result.json").exists()
    model = netmorph.load(files[0])
    with pytest.raises(UsageError, match=r"other settings \(steps\)"):
        netmorph.search(model, files[1], run, dataset="synthetic", steps=5)
    done = netmorph.search(model, files[1], run, dataset="synthetic")  # resumes: finishes
    assert done.steps == 2 and done.stopped == "steps" and len(done.lineage) == 2
    fresh = netmorph.search(model, files[1], tmp_path / "new", dataset="synthetic", steps=1,
                            children=1, epochs=1, batch_size=64, calibrate_batches=1,
                            verify_batches=1)
    assert fresh.steps == 1 and fresh.best.is_file()
