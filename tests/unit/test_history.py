"""The history records: every entry a real morph, calibration or training writes round-trips
through its record key for key and in order, an entry of an unknown op (or with keys no
record knows) is kept verbatim, and bad field types are refused with the load messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from netmorph_cli.errors import NetworkError
from netmorph_cli.io.checkpoint import load, save
from netmorph_cli.morph.calibrate import calibrate, uncalibrated_layers
from netmorph_cli.morph.morphs import morph_at, morph_preset, prelu_all
from netmorph_cli.network import zoo
from netmorph_cli.network.history import (
    Calibration,
    MorphRecord,
    TrainRecord,
    UnknownRecord,
    parse_entry,
    parse_history,
    records_json,
)
from netmorph_cli.network.presets import Preset
from netmorph_cli.spec.parse import load_spec
from netmorph_cli.training import data
from netmorph_cli.training.train import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[2]


def morph(net, preset: str, seed: int = 0):
    return morph_preset(net, Preset.parse(preset), seed=seed)


def _same(a: dict, b: dict) -> bool:
    """Equal and with the keys in the same order, at every level (what json.dumps writes)."""
    return json.dumps(a) == json.dumps(b)


@pytest.fixture(scope="module")
def parent():
    return zoo.create("resnet20", seed=0)


@pytest.fixture(scope="module")
def entries(parent, tmp_path_factory):
    """One entry of each kind a real run writes."""
    preset = morph(parent, "1c1", seed=0)
    module = morph_at(parent, load_spec(ROOT / "examples" / "modules" / "D.json"),
                      "layer1.1.conv1", seed=1)
    prelu = prelu_all(parent)
    images = torch.randn(16, 3, 32, 32)
    calibrated = calibrate(preset, [images[:8], images[8:]], dataset="synthetic", seed=3)
    out = tmp_path_factory.mktemp("hist") / "t.safetensors"
    cfg = TrainConfig(dataset="synthetic", epochs=1, batch_size=32, seed=0)
    trained, _ = train(preset, cfg, out, dataset=data.synthetic(n_train=64, n_test=32))
    return {"preset": preset.history[-1], "module": module.history[-1],
            "prelu_all": prelu.history[-1], "calibrated": calibrated.history[-1],
            "train": trained.history[-1], "calibrated_by_train": trained.history[0]}


@pytest.mark.parametrize("kind,cls", [("preset", MorphRecord), ("module", MorphRecord),
                                      ("prelu_all", MorphRecord), ("calibrated", MorphRecord),
                                      ("calibrated_by_train", MorphRecord),
                                      ("train", TrainRecord)])
def test_real_entries_round_trip(entries, kind, cls):
    entry = entries[kind]
    record = cls.from_json(entry)
    assert type(parse_entry(entry)) is cls
    assert _same(record.to_json(), entry)
    assert record.to_json() is not entry and parse_entry(entry) == record


def test_records_read_their_fields(entries, parent):
    preset = MorphRecord.from_json(entries["preset"])
    assert preset.op == "preset" and preset.name == "1c1" and preset.seed == 0
    assert preset.blocks and preset.compare[0] == (f"{preset.blocks[0]}.add",) * 2
    assert preset.calibration is None and preset.new_bn
    module = MorphRecord.from_json(entries["module"])
    assert (module.name, module.at, module.seed) == ("D", "layer1.1.conv1", 1)
    assert module.spec and module.spec["name"] == "D" and module.sweeps is not None
    cal = MorphRecord.from_json(entries["calibrated"]).calibration
    assert isinstance(cal, Calibration)
    assert (cal.dataset, cal.batches, cal.batch_size, cal.images, cal.seed) == (
        "synthetic", 2, 8, 16, 3)
    assert cal.layers == preset.new_bn
    assert _same(Calibration.from_json(cal.to_json()).to_json(), cal.to_json())
    run = TrainRecord.from_json(entries["train"])
    assert run.dataset == "synthetic" and run.epochs_run == len(run.metrics) == 1
    assert run.test_error == run.metrics[-1]["test_error"] and run.config


def test_writers_calibrate_through_records(entries, parent):
    preset = morph(parent, "1c1", seed=0)
    assert uncalibrated_layers(preset) == list(MorphRecord.from_json(
        preset.history[-1]).new_bn)
    done = calibrate(preset, [torch.randn(4, 3, 32, 32)],
                     dataset="d", seed=0)
    assert uncalibrated_layers(done) == []
    # the calibration is appended after the entry's other keys, as a dict assignment would
    assert list(done.history[-1])[-1] == "calibration"
    assert list(done.history[-1])[:-1] == list(preset.history[-1])


def test_with_keeps_the_order_and_appends_new_keys():
    rec = MorphRecord.of(op="preset", preset="1c1", seed=None, residual=0.0)
    assert list(rec.to_json()) == ["op", "preset", "seed", "residual"]
    assert rec.to_json()["seed"] is None  # present as null, not dropped
    rec2 = rec.with_(new_bn=("a",), seed=4)
    assert rec2.to_json() == {"op": "preset", "preset": "1c1", "seed": 4, "residual": 0.0,
                              "new_bn": ["a"]}
    assert list(rec2.to_json()) == ["op", "preset", "seed", "residual", "new_bn"]


UNKNOWN = {"op": "prune", "seed": 3, "ratio": 0.5, "layers": {"a": [1, 2]}, "note": None}
OLD = {"op": "preset", "preset": "1c1", "seed": 0, "residual": 1e-15, "blocks": ["b"],
       "compare": [["b.add", "b.add"]], "legacy": {"x": 1}}  # no new_bn, condition, exact_bn
OLD_TRAIN = {"op": "train", "dataset": "cifar10",
             "metrics": [{"test_error": 0.5, "train_error": 0.4, "lr": [0.1]}]}


@pytest.mark.parametrize("entry,cls", [(UNKNOWN, UnknownRecord), ({}, UnknownRecord),
                                       ({"note": "no op"}, UnknownRecord),
                                       (OLD, MorphRecord), (OLD_TRAIN, TrainRecord)])
def test_old_and_unknown_entries_are_kept_verbatim(entry, cls):
    record = parse_entry(entry)
    assert type(record) is cls
    assert _same(record.to_json(), entry)
    history = [entry, UNKNOWN]
    assert json.dumps(records_json(parse_history(history))) == json.dumps(history)


def test_old_entries_read_with_absent_fields():
    old = MorphRecord.from_json(OLD)
    assert old.new_bn == () and old.condition is None and old.extra == {"legacy": {"x": 1}}
    assert "condition" not in old.to_json()
    run = TrainRecord.from_json(OLD_TRAIN)
    assert run.world_size is None and run.metrics[0]["lr"] == [0.1]
    assert UnknownRecord.from_json(UNKNOWN).op == "prune"


def test_unknown_entry_loads_round_trips_and_shows_in_info(parent, tmp_path):
    from click.testing import CliRunner

    from netmorph_cli.cli.commands import cli

    net = morph(parent, "1c1", seed=0)
    net.history.append(dict(UNKNOWN))
    path = tmp_path / "u.safetensors"
    save(net, path)
    loaded = load(path)
    assert json.dumps(loaded.history) == json.dumps(net.history)
    assert type(parse_history(loaded.history)[-1]) is UnknownRecord
    again = tmp_path / "v.safetensors"
    save(loaded, again)
    assert again.read_bytes() == path.read_bytes()
    result = CliRunner().invoke(cli, ["info", str(path)])
    assert result.exit_code == 0, result.output
    assert "prune" in result.output
    result = CliRunner().invoke(cli, ["info", str(path), "--json"])
    assert json.loads(result.output)["history"][-1] == UNKNOWN


@pytest.mark.parametrize("history,needle", [
    ("x", "the history must be a list of entries, got a string"),
    ([1], "history entry #1 must be an object, got a number"),
    ([{}, "step"], "history entry #2 must be an object, got a string"),
    ([{"op": "preset", "blocks": 3}], "history entry #1: 'blocks' must be a list of strings"),
    ([{"op": "prune", "seed": "x"}], "history entry #1: 'seed' must be an integer or null"),
    ([{"op": "train", "metrics": [{"test_error": 0.5}]}], "history entry #1: 'metrics'"),
    ([{"calibration": {"dataset": "c", "images": 9}}], "history entry #1: 'calibration'"),
    ([{"op": "module", "compare": [["a"]]}], "'compare' must be a list of [parent node"),
    ([{"op": 3}], "history entry #1: 'op' must be a string, not 3"),
])
def test_bad_types_are_refused(history, needle):
    with pytest.raises(NetworkError) as info:
        parse_history(history)
    assert needle in str(info.value), str(info.value)


def test_from_json_refuses_bad_types_and_other_ops():
    with pytest.raises(NetworkError, match="'residual' must be a number or null"):
        MorphRecord.from_json({"op": "preset", "residual": "small"})
    with pytest.raises(NetworkError, match="not a morph"):
        MorphRecord.from_json({"op": "train"})
    with pytest.raises(NetworkError, match="not a training"):
        TrainRecord.from_json({"op": "preset"})
    with pytest.raises(NetworkError, match="must be an object"):
        UnknownRecord.from_json([1])
    with pytest.raises(NetworkError, match="'images' \\(an integer\\)"):
        Calibration.from_json({"dataset": "d", "images": "9", "layers": []})
