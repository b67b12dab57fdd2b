"""`netmorph search` and `search-report` (issue 21): a tiny search end to end, and every bad
input as one Error line before any training starts, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import assert_one_error_line, run_main

pytestmark = pytest.mark.usefixtures("one_thread")
MODULES = Path(__file__).resolve().parents[2] / "examples" / "modules"


def search_args(parent: Path, space: Path, run: Path, data_dir: Path, *extra: str) -> list[str]:
    return ["search", str(parent), "--space", str(space), "--dataset", "cifar10-mini",
            "--data-dir", str(data_dir), "-o", str(run), "--batch-size", "64",
            "--device", "cpu", *extra]


def write_space(tmp_path: Path, moves) -> Path:
    p = tmp_path / "space.json"
    p.write_text(json.dumps({"moves": moves}))
    return p


def test_a_search_and_its_report(capsys, tmp_path, parent, data_dir):
    space = write_space(tmp_path, [{"module": "1c1"}])
    run = tmp_path / "run"
    code, out, err = run_main(capsys, *search_args(parent, space, run, data_dir, "--steps",
                                                   "1", "--children", "1", "--quiet"))
    assert code == 0, err
    result = json.loads((run / "result.json").read_text())
    summary = out.splitlines()[-1]
    assert summary.startswith("search finished after 1 step(s): best ")
    assert f"test error {100 * result['test_error']:.2f}%" in summary
    code, again, err = run_main(capsys, "search", "--resume", str(run), "--quiet",
                                "--data-dir", str(data_dir))
    assert code == 0, err
    assert again.splitlines()[-1] == summary  # a finished search reads back its result
    md, png = tmp_path / "r.md", tmp_path / "r.png"
    code, out, err = run_main(capsys, "search-report", str(run), "--markdown", str(md),
                              "--plot", str(png))
    assert code == 0, err
    assert "◀ best" in out and out.splitlines()[0].startswith("resnet20 (start: ")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![best validation error against training compute](r.png)" in md.read_text()
    code, out, _ = run_main(capsys, "search-report", str(run), "--json")
    assert json.loads(out)["result"]["test_error"] == result["test_error"]


@pytest.mark.parametrize("moves,needle", [
    ([], "the search space is empty"),
    ([{"module": "9c9x"}], "unknown module '9c9x'"),
    ([{"module": str(MODULES / "C.json"), "at": ["layer9.9.conv1"]}],
     "at 'layer9.9.conv1': no layer"),
    ([{"module": "1c1", "weight": -1}], "weight must be a finite number ≥ 0"),
])
def test_a_bad_space_is_one_error_before_anything_is_written(capsys, tmp_path, parent,
                                                             data_dir, moves, needle):
    run = tmp_path / "run"
    code, out, err = run_main(capsys, *search_args(parent, write_space(tmp_path, moves), run,
                                                   data_dir))
    assert_one_error_line(code, out, err, needle)
    assert not run.exists()


@pytest.mark.parametrize("extra,needle", [
    (["--budget", "3x"], "must be a positive duration"),
    (["--max-flops", "-1"], "must be a positive count"),
    (["--max-params", "lots"], "must be a positive count"),
    (["--recipe", "nope"], "'nope' is not one of"),
    (["--parent-recipe", "grow"], "'grow' is not one of"),
    (["--seed", "-1"], "-1 is not in the range x>=0"),
])
def test_bad_options_are_one_error(capsys, tmp_path, parent, data_dir, extra, needle):
    space = write_space(tmp_path, [{"module": "1c1"}])
    code, out, err = run_main(capsys, *search_args(parent, space, tmp_path / "run", data_dir,
                                                   *extra))
    assert_one_error_line(code, out, err, needle)
    assert not (tmp_path / "run").exists()


def test_resume_takes_no_search_options_and_needs_a_run(capsys, tmp_path):
    code, out, err = run_main(capsys, "search", "--resume", str(tmp_path), "--steps", "4")
    assert_one_error_line(code, out, err, "--steps cannot be given with it")
    code, out, err = run_main(capsys, "search", "--resume", str(tmp_path))
    assert_one_error_line(code, out, err, "is not a search run directory")
    code, out, err = run_main(capsys, "search", "--dataset", "cifar10")
    assert_one_error_line(code, out, err, "a new search needs PARENT, --space, -o/--output")


def test_a_run_directory_with_files_is_refused(capsys, tmp_path, parent, data_dir):
    run = tmp_path / "run"
    run.mkdir()
    (run / "x").write_text("")
    space = write_space(tmp_path, [{"module": "1c1"}])
    # refused before the data are read (this data folder does not exist)
    code, out, err = run_main(capsys, *search_args(parent, space, run, tmp_path / "none"))
    assert_one_error_line(code, out, err, "not an empty folder")
    assert [p.name for p in run.iterdir()] == ["x"]


def test_on_a_terminal_the_progress_is_a_live_table_of_the_candidates():
    import io

    from rich.console import Console

    from netmorph_cli.cli.searching import SearchProgress
    from netmorph_cli.search.rundir import SearchConfig

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=120)
    with SearchProgress(console) as progress:
        hooks = progress.hooks()
        hooks.emit("start", {"config": SearchConfig(steps=2, children=1), "done": [],
                             "record": {"validation": {"size": 10, "seed": 0}}})
        hooks.emit("step", {"step": 1, "current": "start.safetensors"})
        hooks.emit("draw", {"index": 1, "move": "1c1", "status": "ok", "flops": 44_000_000,
                            "tries": [{"move": "1c1"}]})
        hooks.emit("train", {"step": 1, "index": 1, "move": "1c1", "epochs": 2,
                             "resumed": False})
        hooks.on_train_step(1, 1, 0, 3, 6)
        row = progress.rows[1]
        assert row["state"] == "epoch 1, step 3/6" and row["eta"].endswith(" s")
        hooks.emit("epoch", {"step": 1, "index": 1, "epoch": 1, "val_error": 0.25})
        hooks.emit("trained", {"step": 1, "index": 1, "move": "1c1", "val_error": 0.2,
                               "val_errors": [0.25, 0.2], "flops": 44_000_000,
                               "seconds": 3.0})
        hooks.emit("selected", {"step": 1, "best": 1, "move": "1c1", "val_error": 0.2})
    text = buf.getvalue()
    for needle in ("step 1/2", "cand", "FLOPs", "val error", "1c1", "44.0M", "25.00% 20.00%",
                   "best ◀"):
        assert needle in text, needle


@pytest.mark.parametrize("parse,text,value", [
    ("_count", "120M", 120_000_000), ("_count", "1.5g", 1_500_000_000),
    ("_count", "300000", 300_000), ("_duration", "3h", 10_800), ("_duration", "90m", 5_400),
    ("_duration", "5400s", 5_400), ("_duration", "2.5", 2.5)])
def test_caps_and_budgets_take_unit_suffixes(parse, text, value):
    from netmorph_cli.cli import searching

    assert getattr(searching, parse)(None, None, text) == value


@pytest.mark.slow
def test_kill_9_while_a_candidate_trains_then_resume_gives_the_uninterrupted_result(
        tmp_path, parent, data_dir):
    """A real SIGKILL of the command (no handler runs, locks die with it) in the middle of a
    candidate's second epoch; --resume ends where an uninterrupted search ends."""
    import os
    import signal
    import subprocess
    import sys
    import time

    space = write_space(tmp_path, [{"module": "1c1"}])

    def command(run: Path) -> list[str]:
        return [sys.executable, "-m", "netmorph_cli", *search_args(
            parent, space, run, data_dir, "--steps", "1", "--children", "1", "--epochs", "2",
            "--quiet")]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = tmp_path / "ref"
    subprocess.run(command(ref), check=True, env=env, capture_output=True)
    run = tmp_path / "run"
    proc = subprocess.Popen(command(run), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    state = run / "step-01" / "cand-1.safetensors.state.pt"
    deadline = time.monotonic() + 120
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert state.exists(), "the run ended before candidate 1's first epoch was saved"
    assert not (run / "result.json").exists()
    subprocess.run([sys.executable, "-m", "netmorph_cli", "search", "--resume", str(run),
                    "--data-dir", str(data_dir), "--quiet"], check=True, env=env,
                   capture_output=True)
    a = json.loads((run / "result.json").read_text())
    b = json.loads((ref / "result.json").read_text())
    for k in ("best", "lineage", "val_error", "test_error", "compute"):
        assert a[k] == b[k], k
    for i in (0, 1):
        ra = json.loads((run / "step-01" / f"cand-{i}.json").read_text())
        rb = json.loads((ref / "step-01" / f"cand-{i}.json").read_text())
        assert ra["val_errors"] == rb["val_errors"] and ra["train_loss"] == rb["train_loss"]
