"""`netmorph report` and `netmorph plot` on runs made by the real commands (train → morph →
train on a tiny data set), their output formats, and the error contract.

The expected errors come from the runs' own metrics files (written epoch by epoch by
`netmorph train`), not from the code under test.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from cli_helpers import assert_one_error_line, run_main, write_mini

from netmorph_cli.io import checkpoint as ck
from netmorph_cli.network import zoo

pytestmark = pytest.mark.usefixtures("one_thread")


def ok(capsys, *args: str) -> str:
    code, out, err = run_main(capsys, *args)
    assert code == 0, err
    return out


def metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(f"{path}.metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """parent: 2 epochs; child: parent → 1c1 → 1 epoch; control: parent + 1 epoch."""
    d = tmp_path_factory.mktemp("runs")
    data_dir = write_mini(d / "data", 128, 64)
    ck.save(zoo.create("resnet20", seed=0), d / "init.safetensors")
    def cli(*args: str) -> None:
        from netmorph_cli.cli.commands import main

        with pytest.raises(SystemExit) as info:
            main(list(args))
        assert info.value.code in (0, None)

    def train(src: str, out: str, epochs: int) -> None:
        cli("train", str(d / src), "--dataset", "cifar10-mini", "--data-dir", str(data_dir),
            "-o", str(d / out), "--epochs", str(epochs), "--batch-size", "64",
            "--device", "cpu", "--quiet")

    train("init.safetensors", "parent.safetensors", 2)
    cli("morph", str(d / "parent.safetensors"), "--module", "1c1", "-o",
        str(d / "child_init.safetensors"))
    train("child_init.safetensors", "child.safetensors", 1)
    train("parent.safetensors", "cont.safetensors", 1)
    return d


def test_report_json_rows_come_from_the_runs_histories(capsys, runs):
    rows = json.loads(ok(capsys, "report", str(runs / "cont.safetensors"),
                         str(runs / "child.safetensors"), "--json"))
    parent, child, cont = (metrics(runs / f"{n}.safetensors") for n in
                           ("parent", "child", "cont"))
    assert [r["net"] for r in rows] == ["resnet20", "morph20_1c1"]
    assert rows[0]["error"] == cont[-1]["test_error"]
    assert rows[1]["error"] == child[-1]["test_error"]
    assert rows[0]["epochs"] == rows[1]["epochs"] == len(parent) + 1 == 3
    assert "abs_improvement" not in rows[0]
    assert rows[1]["abs_improvement"] == pytest.approx(
        cont[-1]["test_error"] - child[-1]["test_error"], abs=1e-15)
    assert round(rows[0]["flops"] / 1e6, 1) == 40.8 and round(rows[1]["flops"] / 1e6, 1) == 44.0
    assert rows[1]["rel_flops"] == pytest.approx(rows[1]["flops"] / rows[0]["flops"])
    assert rows[1]["phases"] == []


def test_report_baseline_and_markdown(capsys, runs):
    out = ok(capsys, "report", str(runs / "child.safetensors"), "--baseline",
             str(runs / "cont.safetensors"), "--markdown")
    lines = out.splitlines()
    assert lines[0].startswith("| Net Arch. | Intermediate Phases | Error |")
    child, cont = metrics(runs / "child.safetensors"), metrics(runs / "cont.safetensors")
    diff = 100 * (cont[-1]["test_error"] - child[-1]["test_error"])
    assert lines[2].startswith(f"| morph20_1c1 | - | {100 * child[-1]['test_error']:.2f}% | "
                               f"{diff:.2f}% |")
    assert lines[2].endswith("| 44.0 | 1.08x |")  # Table 1's morph20_1c1 FLOPs
    assert len(lines) == 3


def test_report_table_for_people(capsys, runs):
    out = ok(capsys, "report", str(runs / "parent.safetensors"),
             str(runs / "child.safetensors.metrics.jsonl"))
    assert "net arch" in out and "resnet20" in out and "child.safetensors" in out
    assert "40.8M" in out


def test_plot_writes_a_png_of_all_runs(capsys, runs, tmp_path):
    pytest.importorskip("matplotlib")
    out = ok(capsys, "plot", str(runs / "cont.safetensors"), str(runs / "child.safetensors"),
             "-o", str(tmp_path / "fig.png"), "--train", "--title", "tiny")
    assert out.strip() == f"wrote {tmp_path / 'fig.png'}"
    assert (tmp_path / "fig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_help_texts_have_examples(capsys):
    for cmd in ("report", "plot"):
        assert f"netmorph {cmd} " in ok(capsys, cmd, "--help")


# --------------------------------------------------------------------------------------------
# the error contract

def test_report_missing_run(capsys, tmp_path):
    assert_one_error_line(*run_main(capsys, "report", str(tmp_path / "nope.safetensors")),
                          "does not exist")


def test_report_untrained_checkpoint(capsys, runs):
    assert_one_error_line(*run_main(capsys, "report", str(runs / "init.safetensors")),
                          "no recorded epochs")


def test_report_garbage_file(capsys, tmp_path):
    (tmp_path / "g.safetensors").write_bytes(b"hello world, not a checkpoint")
    assert_one_error_line(*run_main(capsys, "report", str(tmp_path / "g.safetensors")),
                          "not a checkpoint")


def test_report_bad_metrics_line(capsys, tmp_path):
    (tmp_path / "m.jsonl").write_text('{"epoch": 1, "train_error": 0.5, "test_error": 0.4}\n{')
    assert_one_error_line(*run_main(capsys, "report", str(tmp_path / "m.jsonl")),
                          "m.jsonl:2: not JSON")


def test_report_missing_baseline(capsys, runs, tmp_path):
    assert_one_error_line(*run_main(capsys, "report", str(runs / "child.safetensors"),
                                    "--baseline", str(tmp_path / "b.safetensors")),
                          "does not exist")


def test_report_needs_a_run(capsys):
    code, out, err = run_main(capsys, "report")
    assert code == 2 and out == "" and "Error:" in err and "RUN" in err


def test_plot_refuses_an_existing_output(capsys, runs, tmp_path):
    fig = tmp_path / "fig.png"
    fig.write_bytes(b"keep me")
    assert_one_error_line(*run_main(capsys, "plot", str(runs / "child.safetensors"), "-o",
                                    str(fig)), "exists; pass --force")
    assert fig.read_bytes() == b"keep me"


def test_plot_refuses_to_overwrite_a_run(capsys, runs):
    run = runs / "child.safetensors.metrics.jsonl"
    before = run.read_bytes()
    assert_one_error_line(*run_main(capsys, "plot", str(run), "-o", str(run), "--force"),
                          "refusing to overwrite the input")
    assert run.read_bytes() == before


def test_plot_bad_run_writes_nothing(capsys, runs, tmp_path):
    assert_one_error_line(*run_main(capsys, "plot", str(runs / "child.safetensors"),
                                    str(runs / "init.safetensors"), "-o",
                                    str(tmp_path / "f.png")), "no recorded epochs")
    assert list(tmp_path.iterdir()) == []


def test_plot_unknown_format(capsys, runs, tmp_path):
    pytest.importorskip("matplotlib")
    assert_one_error_line(*run_main(capsys, "plot", str(runs / "child.safetensors"), "-o",
                                    str(tmp_path / "f.xyz")), "cannot write", "f.xyz")
    assert list(tmp_path.iterdir()) == []


def test_plot_without_matplotlib(capsys, runs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert_one_error_line(*run_main(capsys, "plot", str(runs / "child.safetensors"), "-o",
                                    str(tmp_path / "f.png")), "pip install 'netmorph[plot]'")
    assert list(tmp_path.iterdir()) == []
