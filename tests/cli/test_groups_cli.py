"""`netmorph morph --at` a depthwise conv (issue 22, item 5), from the CLI: the widths line
says the widths are per group, verify passes in float32 (≤ 1e-5), the history records it,
and a spec too narrow for one group is one Error line with nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli_helpers import assert_one_error_line, run_main

import zoo_models

pytestmark = pytest.mark.usefixtures("one_thread")

MODULES = Path(__file__).resolve().parents[2] / "examples" / "modules"
SITE = "features.1.conv.0.0"  # MobileNetV2's first depthwise conv: 8 groups of 1→1


@pytest.fixture(scope="module")
def parent(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("groups")
    model = zoo_models.mobilenetv2()
    torch.export.save(torch.export.export(model, (torch.randn(2, 3, 32, 32),)), d / "m.pt2")
    from netmorph_cli.cli.commands import main

    with pytest.raises(SystemExit) as info:
        main(["import", str(d / "m.pt2"), "-o", str(d / "m.safetensors")])
    assert info.value.code in (0, None)
    return d / "m.safetensors"


def test_morph_at_a_depthwise_conv_keeps_its_groups(capsys, parent):
    child = parent.with_name("child.safetensors")
    code, out, err = run_main(capsys, "morph", str(parent), "--module",
                              str(MODULES / "D.json"), "--at", SITE, "-o", str(child))
    assert code == 0, err
    assert "widths: a=3 b=3 c=3 (3x of one group's 1 output channels; per group: 8 groups, " \
           "kept by every conv of the module)" in out
    code, out, err = run_main(capsys, "verify", str(parent), str(child), "--json")
    report = json.loads(out)
    assert code == 0 and report["passed"] and report["max_rel_err"] <= 1e-5
    assert [(m["parent"], m["within_tolerance"]) for m in report["modules"]] == [(SITE, True)]
    code, out, err = run_main(capsys, "info", str(child), "--json")
    info = json.loads(out)
    entry = info["history"][-1]
    assert entry["at"] == SITE and entry["widths"] == {"a": 3, "b": 3, "c": 3}
    assert "8 groups" in entry["widths_how"]


def test_a_spec_too_narrow_for_a_group_is_one_error_line(capsys, parent, tmp_path):
    spec = json.loads((MODULES / "D.json").read_text())
    spec["channels"] = {"a": 1, "b": 1, "c": 1}
    (tmp_path / "D1.json").write_text(json.dumps(spec))
    out_path = tmp_path / "no.safetensors"
    code, out, err = run_main(capsys, "morph", str(parent), "--module",
                              str(tmp_path / "D1.json"), "--at", SITE, "-o", str(out_path))
    assert_one_error_line(code, out, err, "group 1 of 8 of a grouped conv",
                          "a spec's widths are per group", "too narrow", exit_code=1)
    assert not out_path.exists() and list(tmp_path.iterdir()) == [tmp_path / "D1.json"]
