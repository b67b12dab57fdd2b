"""The reproduction recipe (examples/reproduce/run.py) end to end at a toy scale: every
step's output, the report's rows, the figures, and a second invocation that skips every
finished step and rewrites the same table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import write_mini

RUN = Path(__file__).resolve().parents[2] / "examples" / "reproduce" / "run.py"
PRESETS = ("1c1", "1c1_half", "3c1", "1c1_2branch")


def recipe(tmp_path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NETMORPH_DATA": ""}
    return subprocess.run(
        [sys.executable, str(RUN), "--scale", "quick", "--e1", "1", "--e2", "1",
         "--dataset", "cifar10-mini", "--out", str(tmp_path / "results"),
         "--work", str(tmp_path / "work"), "--device", "cpu", *extra],
        capture_output=True, text=True, env=env, timeout=900)


@pytest.mark.slow  # 75 s; each command it runs is tested in tests/cli (make test-all runs it)
@pytest.mark.filterwarnings("ignore")
def test_recipe_runs_every_step_and_skips_them_the_second_time(tmp_path):
    pytest.importorskip("matplotlib")
    data_dir = write_mini(tmp_path / "data", 64, 32)
    first = recipe(tmp_path, "--data-dir", str(data_dir))
    assert first.returncode == 0, first.stderr[-3000:]
    work, results = tmp_path / "work", tmp_path / "results"
    for name in ["resnet20", "resnet20_cont", *(f"morph20_{p}" for p in PRESETS),
                 *(f"scratch20_{p}" for p in PRESETS)]:
        assert (work / f"{name}.safetensors").is_file(), name
        assert (results / f"{name}.safetensors.metrics.jsonl").is_file(), name
    for fig in ("error.png", "error-scratch.png"):
        assert (results / fig).read_bytes()[:4] == b"\x89PNG"
    report = (results / "report.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith("| ")][1:]
    assert [r.split(" | ")[0] for r in rows] == [
        "| resnet20", *(f"| morph20_{p}" for p in PRESETS),
        *(f"| morph20_{p} (scratch)" for p in PRESETS)]
    assert rows[0].split(" | ")[3] == "-"  # the baseline has no improvement over itself
    info = json.loads((results / "run.json").read_text())
    assert (info["e1"], info["e2"], info["dataset"]) == (1, 1, "cifar10-mini")
    assert info["wall_seconds"] >= info["training_seconds"] > 0
    assert info["torch"] and info["python"]

    second = recipe(tmp_path, "--data-dir", str(data_dir))
    assert second.returncode == 0, second.stderr[-3000:]
    assert "+ netmorph train" not in second.stdout and "+ netmorph morph" not in second.stdout
    assert second.stdout.count("exists, skipped") == 10  # parent, control (a), 4 + 4
    assert (results / "report.md").read_text() == report


def test_recipe_needs_a_data_directory(tmp_path):
    proc = recipe(tmp_path)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        "Error: pass --data-dir (or set NETMORPH_DATA) to where cifar10-mini lives"]
    assert not (tmp_path / "work").exists()
