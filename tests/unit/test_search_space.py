"""Issue 21: a search space file, checked whole against the network before any training:
good spaces become moves with their shares, every bad one is one clear UsageError."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from netmorph_cli.errors import UsageError
from netmorph_cli.network import zoo
from netmorph_cli.network.presets import Preset
from netmorph_cli.search.space import load_space

MODULES = Path(__file__).resolve().parents[2] / "examples" / "modules"


@pytest.fixture(scope="module")
def net():
    return zoo.create("resnet20", seed=0)


def write(tmp_path, data) -> Path:
    p = tmp_path / "space.json"
    p.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return p


def test_a_space_becomes_one_move_per_site_with_its_share(tmp_path, net):
    (tmp_path / "D.json").write_text((MODULES / "D.json").read_text())  # beside the space
    space = load_space(write(tmp_path, {"moves": [
        {"module": "1c1", "weight": 2},
        {"module": "D.json", "at": ["layer1.1.conv1", "layer2.1.shortcut"]},
        {"module": str(MODULES / "morph_1c1.json"), "after": ["layer3.0.relu2"],
         "weight": 0},
    ]}), net)
    assert [m.label for m in space.moves] == [
        "1c1", "D.json@layer1.1.conv1", "D.json@layer2.1.shortcut",
        f"{MODULES / 'morph_1c1.json'}@after:layer3.0.relu2"]
    assert isinstance(space.moves[0].graph, Preset) and space.moves[1].graph.name == "D"
    assert space.weights() == pytest.approx([0.5, 0.25, 0.25, 0.0])


@pytest.mark.parametrize("data,match", [
    ({"moves": []}, "the search space is empty"),
    ([1, 2], r"an object with a list \"moves\""),
    ("{not json", "is not a search space"),
    ({"moves": [{"module": "9c9x"}]}, r"move 1: unknown module '9c9x'"),
    ({"moves": [{"module": "nope.json", "at": ["layer1.1.conv1"]}]},
     "move 1: no module spec file 'nope.json'"),
    ({"moves": [{"module": "1c1"}, {"module": str(MODULES / "C.json"),
                                    "at": ["layer9.9.conv1"]}]},
     r"move 2: at 'layer9.9.conv1': no layer 'layer9.9.conv1'"),
    ({"moves": [{"module": str(MODULES / "C.json"), "at": ["layer2.0.conv1"]}]},
     r"move 1: at 'layer2.0.conv1': .*strided conv"),
    ({"moves": [{"module": str(MODULES / "C.json")}]}, "needs the sites it may go to"),
    ({"moves": [{"module": "1c1", "at": ["layer1.1.conv1"]}]}, "places itself"),
    ({"moves": [{"module": "1c1", "weight": -1}]}, r"weight must be a finite number ≥ 0"),
    ({"moves": [{"module": "1c1", "weight": "2"}]}, r"weight must be a finite number ≥ 0"),
    ({"moves": [{"module": "1c1"}, {"module": "1c1"}]}, r"the move '1c1' names two moves"),
    ({"moves": [{"module": "1c1", "name": "parent"}]}, r"'parent' is the name of the current"),
    ({"moves": [{"module": "1c1", "weight": 0}]}, "every move has weight 0"),
    ({"moves": [{"module": "1c1", "wieght": 1}]}, "unknown field 'wieght'"),
    ({"moves": [{"module": str(MODULES / "C.json"), "at": []}]}, "non-empty list"),
])
def test_a_bad_space_is_one_clear_error(tmp_path, net, data, match):
    with pytest.raises(UsageError, match=match):
        load_space(write(tmp_path, data), net)


def test_a_missing_space_file_is_an_error(tmp_path, net):
    with pytest.raises(UsageError, match="cannot read the search space"):
        load_space(tmp_path / "none.json", net)
