"""`netmorph reduce --solve`: the JSON contract, the report line and the error contract.

Tolerances: float64 solve of module D (inner widths "3x": 48 at 16 channels) ≤ 1e-10 relative
residual, float32 ≤ 1e-6 (the solver's defaults, as in the issue).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from cli_helpers import assert_one_error_line, run_main

REPO = Path(__file__).resolve().parents[2]
MODULES = REPO / "examples" / "modules"
D = str(MODULES / "D.json")


def test_solve_d_json(capsys):
    code, out, err = run_main(capsys, "reduce", D, "--solve", "--channels", "16",
                              "--dtype", "float64", "--json")
    assert code == 0, err
    assert err == ""
    data = json.loads(out)  # exactly one JSON object, nothing else on stdout
    assert isinstance(data, dict)
    assert data["classification"] == "complex"
    assert len(data["irreducible"]["edges"]) == 7
    solve = data["solve"]
    assert 0 <= solve["residual"] <= 1e-10
    assert isinstance(solve["seconds"], float) and solve["seconds"] >= 0
    assert isinstance(solve["sweeps"], int) and solve["sweeps"] >= 1
    assert (solve["channels"], solve["kernel"], solve["dtype"]) == (16, 3, "float64")
    assert set(solve["methods"]) == {f"F{i}" for i in range(1, 8)}


def test_solve_float32_and_seed(capsys):
    runs = []
    for _ in range(2):
        code, out, err = run_main(capsys, "reduce", D, "--solve", "--channels", "8",
                                  "--dtype", "float32", "--seed", "7", "--json")
        assert code == 0, err
        runs.append(json.loads(out)["solve"])
    assert runs[0]["residual"] <= 1e-6
    assert runs[0]["residual"] == runs[1]["residual"]  # same seed, same filters
    assert runs[0]["history"] == runs[1]["history"]


def test_solve_simple_module_json(capsys):
    code, out, err = run_main(capsys, "reduce", str(MODULES / "C.json"), "--solve",
                              "--channels", "8", "--kernel", "1", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["classification"] == "simple"
    assert data["solve"]["residual"] <= 1e-12
    assert data["solve"]["sweeps"] == 0


def test_solve_report_has_residual_line(capsys):
    code, out, err = run_main(capsys, "reduce", D, "--solve", "--channels", "8")
    assert code == 0, err
    assert err == ""
    assert "complex" in out  # the reduction report is still there
    line = next(x for x in out.splitlines() if "relative residual" in x)
    assert "8→8 3×3 filter, float64 on cpu" in line
    assert float(re.search(r"relative residual ([0-9.e+-]+)", line).group(1)) <= 1e-10
    for name in ("F1", "F7", "algorithm-2"):
        assert name in out


@pytest.mark.parametrize("as_json", [False, True], ids=["report", "json"])
def test_narrow_module_fails_with_widening_advice(capsys, as_json):
    # widths = C stall near 1e-2 (C = 2 keeps the test fast; the advice is the same kind)
    args = ["reduce", str(MODULES / "D_narrow.json"), "--solve", "--channels", "2"]
    line = assert_one_error_line(*run_main(capsys, *args + (["--json"] if as_json else [])),
                                 "Widen", "too narrow for Algorithm 2", exit_code=1)
    assert re.search(r'"channels": \{"[abc]": \d+', line), line


def test_device_cuda_without_cuda(capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert_one_error_line(*run_main(capsys, "reduce", D, "--solve", "--device", "cuda"),
                          "cuda", "no CUDA device")


@pytest.mark.parametrize("args,needle", [
    (["--kernel", "4"], "--kernel"),
    (["--kernel", "0"], "--kernel"),
    (["--dtype", "float16"], "float16"),
    (["--channels", "0"], "--channels"),
    (["--channels", "x"], "--channels"),
    (["--device", "tpu"], "tpu"),
    (["--seed", "1.5"], "--seed"),
    (["--method", "magic"], "'magic' is not one of 'auto', 'algorithm2', 'reduce'"),
])
def test_bad_solve_options_exit_2(capsys, args, needle):
    assert_one_error_line(*run_main(capsys, "reduce", D, "--solve", *args), needle)


def test_solve_help_documents_the_options(capsys):
    code, out, _ = run_main(capsys, "reduce", "--help")
    assert code == 0
    for opt in ("--solve", "--channels", "--kernel", "--dtype", "--device", "--seed",
                "--method"):
        assert opt in out


# module B with a 5×5 first edge: the reduction route leaves F1 a zero outer ring
B5 = {"name": "B5", "edges": [{"name": n, "from": a, "to": b, "kernel": k} for n, a, b, k in (
    ("F1", "s", "a", 5), ("F2", "a", "t", 3), ("F3", "s", "t", 3))]}


def test_solve_method_choice(capsys, tmp_path):
    path = tmp_path / "B5.json"
    path.write_text(json.dumps(B5))
    runs = {}
    for method in (None, "auto", "algorithm2", "reduce"):
        extra = ["--method", method] if method else []
        code, out, err = run_main(capsys, "reduce", str(path), "--solve", "--channels", "8",
                                  "--json", *extra)
        assert code == 0, err
        runs[method] = json.loads(out)["solve"]
        assert runs[method]["method"] == (method or "auto")
        assert runs[method]["residual"] <= 1e-10
    same = ("residual", "history", "methods", "conditioning")
    assert all(runs[None][k] == runs["auto"][k] == runs["reduce"][k] for k in same)
    assert set(runs["algorithm2"]["methods"].values()) == {"algorithm-2"}
    assert runs["algorithm2"]["sweeps"] >= 1 and runs["auto"]["sweeps"] == 0


# -- widths relative to the layer and open widths (issue 22) -------------------------------

def test_solve_reports_the_widths_it_resolved(capsys, write_spec):
    code, out, err = run_main(capsys, "reduce", D, "--solve", "--channels", "8", "--json")
    assert code == 0, err
    solve = json.loads(out)["solve"]
    assert solve["widths"] == {"a": 24, "b": 24, "c": 24}  # "3x" of 8
    assert solve["width_rules"] == {"a": "3x", "b": "3x", "c": "3x"}
    spec = json.loads((MODULES / "D.json").read_text())
    spec["channels"] = {"a": "auto", "b": "auto", "c": "auto"}
    code, out, err = run_main(capsys, "reduce", str(write_spec(spec)), "--solve",
                              "--channels", "16")
    assert code == 0, err
    text = " ".join(out.split())  # (the report wraps at the terminal's width)
    assert ("widths: a=33 b=31 c=33 (auto: feasibility bound of the sink cut (F5, F6, F7), "
            "a=30 b=28 c=30, + 10% margin)") in text, out


@pytest.mark.parametrize("width", ["x", "-1x", "0x", "abc", "1e9x"])
def test_a_bad_width_string_is_one_error_line_naming_the_blob(capsys, write_spec, width):
    spec = json.loads((MODULES / "D.json").read_text())
    spec["channels"]["b"] = width
    for extra in ([], ["--solve"]):
        assert_one_error_line(*run_main(capsys, "reduce", str(write_spec(spec)), *extra),
                              "for blob 'b'", '"2.5x"', '"auto"', exit_code=2)
