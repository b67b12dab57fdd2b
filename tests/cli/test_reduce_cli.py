"""`netmorph reduce`: report text, the --json contract and the error contract."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import assert_one_error_line, run_main
from click.testing import CliRunner

from netmorph_cli.cli.commands import cli

REPO = Path(__file__).resolve().parents[2]
MODULES = REPO / "examples" / "modules"
NETMORPH = Path(sys.executable).with_name("netmorph")


# -- --json ---------------------------------------------------------------------------------
def test_reduce_d_json():
    result = CliRunner().invoke(cli, ["reduce", str(MODULES / "D.json"), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)  # exactly one JSON object, nothing else on stdout
    assert isinstance(data, dict)
    assert data["classification"] == "complex"
    assert len(data["irreducible"]["edges"]) == 7
    assert data["paths"] == 4
    assert data["effective_kernel"] == [7, 7]
    assert data["steps"] == []
    edge = data["irreducible"]["edges"][0]
    assert edge == {"name": "F1", "from": "s", "to": "a", "kernel": [3, 3]}


def test_reduce_simple_json_steps_in_morph_order():
    result = CliRunner().invoke(cli, ["reduce", str(MODULES / "C.json"), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["classification"] == "simple"
    assert data["irreducible"] is None
    assert data["paths"] == 4
    assert data["effective_kernel"] == [7, 7]
    steps = data["steps"]
    assert len(steps) == 6  # 7 edges grown from the one edge of M0
    assert steps[0]["edge"] == "G"
    assert (steps[0]["from"], steps[0]["to"]) == ("s", "t")
    assert all(s["type"] in ("I", "II") and len(s["into"]) == 2 for s in steps)
    # morph order: every step splits M0's edge or an edge an earlier step created
    alive = {"G"}
    for s in steps:
        assert s["edge"] in alive
        alive.remove(s["edge"])
        alive.update(s["into"])
    assert alive == {f"F{i}" for i in range(1, 8)}


def test_json_with_main_prints_only_json(capsys):
    code, out, err = run_main(capsys, "reduce", str(MODULES / "resnet.json"), "--json")
    assert code == 0
    assert err == ""
    data = json.loads(out)
    assert data["classification"] == "simple"
    assert [s["type"] for s in data["steps"]] == ["II", "I"]


def test_json_is_one_compact_line_unless_pretty(capsys):
    code, out, _ = run_main(capsys, "reduce", str(MODULES / "D.json"), "--json")
    assert code == 0 and out.count("\n") == 1 and ", " not in out and ": " not in out
    code, pretty, _ = run_main(capsys, "reduce", str(MODULES / "D.json"), "--json", "--pretty")
    assert code == 0 and pretty.count("\n") > 20 and pretty.startswith("{\n  ")
    assert json.loads(out) == json.loads(pretty)


# -- human report ---------------------------------------------------------------------------
@pytest.mark.parametrize("spec,present,absent", [
    ("D", ["complex", "G = F5 ⊛ F1 + F6 ⊛ (F3 ⊛ F1 + F4 ⊛ F2) + F7 ⊛ F2", "paths s→t: 4",
           "effective kernel: 7×7", "irreducible remainder"], []),
    ("C", ["simple morphable", "G = F7 + (F6 ⊛ F5 + F4 ⊛ (F2 + F3)) ⊛ F1",
           "morphing sequence"], ["irreducible remainder"]),
])
def test_report_of_a_complex_and_a_simple_module(spec, present, absent):
    result = CliRunner().invoke(cli, ["reduce", str(MODULES / f"{spec}.json")])
    assert result.exit_code == 0, result.output
    assert all(text in result.output for text in present), result.output
    assert not any(text in result.output for text in absent), result.output


# -- error contract -------------------------------------------------------------------------
BAD_SPECS = {
    "cycle": ({"edges": [{"from": "s", "to": "a", "kernel": 3},
                         {"from": "a", "to": "b", "kernel": 3},
                         {"from": "b", "to": "a", "kernel": 3},
                         {"from": "b", "to": "t", "kernel": 3}],
               "source": "s", "sink": "t"}, "a → b → a"),
    "several sinks": ({"edges": [{"from": "s", "to": "t", "kernel": 3},
                                 {"from": "s", "to": "u", "kernel": 3}]}, "several sinks"),
    "bad kernel": ({"edges": [{"name": "F1", "from": "s", "to": "t", "kernel": 4}]},
                   "bad kernel size 4"),
    "duplicate name": ({"edges": [{"name": "F", "from": "s", "to": "t", "kernel": 3},
                                  {"name": "F", "from": "s", "to": "t", "kernel": 3}]},
                       "duplicate edge name 'F'"),
    "empty": ({"edges": []}, "module is empty"),
    "missing key": ({"edges": [{"from": "s", "kernel": 3}]}, "missing the key 'to'"),
    "unknown key": ({"edges": [{"from": "s", "to": "t", "kernel": 3}], "sorce": "s"},
                    "unknown key 'sorce'"),
    "off path": ({"source": "s", "sink": "t",
                  "edges": [{"from": "s", "to": "t", "kernel": 3},
                            {"from": "s", "to": "d", "kernel": 3}]}, "blob 'd'"),
    "bad width": ({"channels": {"a": 0}, "edges": [{"from": "s", "to": "a", "kernel": 3},
                                                   {"from": "a", "to": "t", "kernel": 3}]},
                  "bad width 0"),
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
@pytest.mark.parametrize("as_json", [False, True], ids=["report", "json"])
def test_bad_spec_gives_one_error_line(capsys, write_spec, case, as_json):
    spec, needle = BAD_SPECS[case]
    args = ["reduce", str(write_spec(spec))] + (["--json"] if as_json else [])
    assert_one_error_line(*run_main(capsys, *args), needle)


def test_malformed_json_gives_line_and_column(capsys, write_spec):
    path = write_spec('{"edges": [\n  {"from": "s", "to": "t", "kernel": 3,}\n]}')
    assert_one_error_line(*run_main(capsys, "reduce", str(path)), str(path), "line 2, column 40")


def test_missing_file(capsys, tmp_path):
    missing = tmp_path / "nope.json"
    assert_one_error_line(*run_main(capsys, "reduce", str(missing), "--json"),
                          "does not exist", str(missing))


def test_unknown_option(capsys):
    line = assert_one_error_line(*run_main(capsys, "reduce", str(MODULES / "D.json"),
                                           "--bogus"))
    assert "--bogus" in line


def test_missing_argument(capsys):
    line = assert_one_error_line(*run_main(capsys, "reduce"))
    assert "SPEC.json" in line


def test_unknown_command(capsys):
    assert_one_error_line(*run_main(capsys, "redcue", str(MODULES / "D.json")), "redcue")


def test_reduce_help_shows_an_example(capsys):
    code, out, err = run_main(capsys, "reduce", "--help")
    assert code == 0
    assert err == ""
    assert "Examples:" in out
    assert "netmorph reduce examples/modules/D.json" in out


def test_installed_script_error_contract(tmp_path):
    """The real console script: one stderr line, exit 2, no traceback, empty stdout."""
    if not NETMORPH.exists():
        pytest.skip(f"console script not installed next to {sys.executable}")
    bad = tmp_path / "bad.json"
    bad.write_text('{"edges": [{"from": "s", "to": "t", "kernel": [3, 3, 3]}]}')
    for args in (["reduce", str(bad)], ["reduce", str(tmp_path / "missing.json"), "--json"]):
        proc = subprocess.run([str(NETMORPH), *args], capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert proc.stdout == ""
        assert len(proc.stderr.splitlines()) == 1
        assert proc.stderr.startswith("Error: ")
        assert "Traceback" not in proc.stderr


def test_installed_script_json_is_one_object():
    if not NETMORPH.exists():
        pytest.skip(f"console script not installed next to {sys.executable}")
    proc = subprocess.run([str(NETMORPH), "reduce", str(MODULES / "D.json"), "--json"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["classification"] == "complex"
