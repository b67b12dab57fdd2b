"""``netmorph morph --module SPEC --after NODE``: the written child passes ``netmorph verify``
(logits and the node's output, float64 at 1e-10), and every bad use ends in exit code 2,
one ``Error:`` line and no output file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import assert_one_error_line, run_main

from netmorph_cli.io import checkpoint

MODULES = Path(__file__).resolve().parents[2] / "examples" / "modules"
SPEC = str(MODULES / "morph_1c1.json")

pytestmark = pytest.mark.usefixtures("one_thread")


def test_morph_after_then_verify(capsys, parent, tmp_path):
    child = tmp_path / "deeper.safetensors"
    code, out, err = run_main(capsys, "morph", str(parent), "--module", SPEC, "--after",
                              "layer1.0.relu1", "-o", str(child), "--dtype", "float64")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("morphed resnet20 → resnet20+morph_1c1@after:layer1.0.relu1 "
                               "after layer1.0.relu1: solver residual ")
    assert lines[-1].startswith(f"wrote {child} (resnet20+morph_1c1@after:layer1.0.relu1; ")
    entry = checkpoint.load(child).history[-1]
    assert entry["after"] == "layer1.0.relu1" and "at" not in entry
    assert entry["output"] == "layer1.0.relu1_after.output"
    code, out, err = run_main(capsys, "verify", str(parent), str(child), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["passed"] and report["dtype"] == "float64"
    assert report["max_rel_err"] <= 1e-10
    assert [(m["parent"], m["child"]) for m in report["modules"]] == [
        ("layer1.0.relu1", "layer1.0.relu1_after.output")]
    assert report["modules"][0]["max_rel_err"] <= 1e-10


def test_morph_after_json(capsys, parent, tmp_path):
    child = tmp_path / "c.safetensors"
    code, out, err = run_main(capsys, "morph", str(parent), "--module", SPEC, "--after",
                              "input", "-o", str(child), "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["arch"] == "resnet20+morph_1c1@after:input"
    assert data["morph"]["after"] == "input" and data["check"]["passed"] is True


@pytest.mark.parametrize("args,needles", [
    (["--module", SPEC, "--at", "layer1.0.conv1", "--after", "layer1.0.relu1"],
     ["--at LAYER replaces a layer and --after NODE inserts the module after a node: "
      "choose one", "(see 'netmorph morph --help')"]),
    (["--module", "1c1", "--after", "layer1.0.relu1"],
     ["--after applies to spec files; preset '1c1' places itself"]),
    (["--module", SPEC], ["needs --at LAYER", "or --after NODE"]),
    (["--module", SPEC, "--after", "layer9.relu"],
     ["no node 'layer9.relu' in the network (nodes with a (C, H, W) output: input, conv1"]),
    (["--module", SPEC, "--after", "pool"],
     ["node 'pool' outputs a vector of 64 features, not a (C, H, W) map",
      "(the last one is 'layer3.2.relu2')"]),
    (["--module", SPEC, "--at", "layer2.0.conv1"],
     ["'layer2.0.conv1' is a strided conv", "(--after layer2.0.conv1)"]),
    (["--module", SPEC, "--at", "layer1.0.relu1"],
     ["use --after layer1.0.relu1"]),
])
def test_morph_after_refusals(capsys, parent, tmp_path, args, needles):
    child = tmp_path / "c.safetensors"
    code, out, err = run_main(capsys, "morph", str(parent), *args, "-o", str(child))
    assert_one_error_line(code, out, err, *needles, exit_code=2)
    assert not child.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r20.safetensors"]


def test_morph_help_describes_after(capsys):
    code, out, _ = run_main(capsys, "morph", "--help")
    assert code == 0
    assert "--after NODE" in out and "--after layer1.0.relu1" in out
