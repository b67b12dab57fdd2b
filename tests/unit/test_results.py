"""Runs as the paper reports them (results.py): the error curve of a multi-phase run read
from its final checkpoint, the Table 1 columns, the Markdown table and the Fig. 5 figure.

Histories here are written by hand (a ``train`` entry is what ``netmorph train`` appends:
``{"op": "train", "metrics": [EpochStats…]}``) so that every expected number is known; the
morphs between them are real (``morph_network``). The CLI tests train for real.
"""

from __future__ import annotations

import dataclasses
import sys

import pytest

from netmorph_cli.errors import DataError
from netmorph_cli.io import checkpoint as ck
from netmorph_cli.morph.morphs import morph_network
from netmorph_cli.network import zoo
from netmorph_cli.network.presets import Preset
from netmorph_cli.training import results

pytestmark = pytest.mark.usefixtures("one_thread")


def trained(net, test_errors, train_errors=None):
    """``net`` with one training phase of len(test_errors) epochs appended to its history."""
    train_errors = train_errors or [e + 0.05 for e in test_errors]
    out = net.to(net.dtype)
    out.history.append({"op": "train", "dataset": "cifar10", "metrics": [
        {"epoch": i + 1, "train_loss": 1.0, "train_error": tr, "test_error": te, "lr": 0.1,
         "seconds": 1.0, "images_per_s": 1.0}
        for i, (te, tr) in enumerate(zip(test_errors, train_errors, strict=True))]})
    return out


@pytest.fixture(scope="module")
def lineage(tmp_path_factory):
    """resnet20 trained 3 epochs → 1c1 → 2 epochs → 3c1 → 1 epoch, each stage saved."""
    d = tmp_path_factory.mktemp("runs")
    parent = trained(zoo.create("resnet20", seed=0), [0.5, 0.4, 0.3])
    child = trained(morph_network(parent, Preset.parse("1c1"), seed=0)[0], [0.25, 0.2])
    grand = trained(morph_network(child, Preset.parse("3c1"), seed=0)[0], [0.15])
    paths = {}
    for name, net in (("parent", parent), ("child", child), ("grand", grand)):
        paths[name] = d / f"{name}.safetensors"
        ck.save(net, paths[name])
    return paths


def test_parent_run_is_its_own_curve(lineage):
    run = results.load_run(lineage["parent"])
    assert run.name == "resnet20"
    assert run.epochs == (1, 2, 3)
    assert run.test_error == (0.5, 0.4, 0.3)
    assert run.train_error == (0.55, 0.45, 0.35)
    assert run.morph_epochs == () and run.phases == ()
    assert run.final_error == 0.3
    assert round(run.flops / 1e6, 1) == 40.8  # Table 1: resnet20, 40.8 million


def test_child_curve_continues_the_parents_and_marks_the_morph(lineage):
    run = results.load_run(lineage["child"])
    assert run.name == "morph20_1c1"
    assert run.epochs == (1, 2, 3, 4, 5)
    assert run.test_error == (0.5, 0.4, 0.3, 0.25, 0.2)
    assert run.morph_epochs == ((3, "1c1"),)  # after epoch 3 of the whole curve
    assert run.phases == ()  # a single morph: no intermediate phase
    assert round(run.flops / 1e6, 1) == 44.0  # Table 1: morph20_1c1
    assert round(run.root_flops / 1e6, 1) == 40.8


def test_two_phase_run_lists_its_intermediate_phase(lineage):
    run = results.load_run(lineage["grand"])
    assert run.name == "morph20_3c1"
    assert run.epochs == tuple(range(1, 7))
    assert run.morph_epochs == ((3, "1c1"), (5, "3c1"))
    assert run.phases == ("1c1",)  # Table 1: morph20_3c1 with intermediate phase 1c1
    assert round(run.flops / 1e6, 1) == 56.5  # Table 1: morph20_3c1


def test_morph_before_any_training_is_a_phase_but_not_a_point(tmp_path):
    net = trained(morph_network(zoo.create("resnet20", seed=0), Preset.parse("1c1_half"))[0],
                  [0.3, 0.2])
    ck.save(net, tmp_path / "m.safetensors")
    run = results.load_run(tmp_path / "m.safetensors")
    assert run.name == "morph20_1c1_half"
    assert run.morph_epochs == ()  # nothing to mark on the curve
    assert run.epochs == (1, 2)


def test_scratch_control_is_named_as_such(tmp_path, lineage):
    """`netmorph init CHILD` (control (b)) records ``created.like``; the report says so."""
    net = ck.load(lineage["child"])
    fresh = trained(zoo.reinitialize(net, seed=1), [0.4])
    ck.save(fresh, tmp_path / "s.safetensors")
    assert results.load_run(tmp_path / "s.safetensors").name == "morph20_1c1 (scratch)"


def test_metrics_jsonl_is_a_run(tmp_path):
    p = tmp_path / "r.safetensors.metrics.jsonl"
    p.write_text('{"epoch": 1, "train_error": 0.6, "test_error": 0.5}\n\n'
                 '{"epoch": 2, "train_error": 0.4, "test_error": 0.3}\n')
    run = results.load_run(p)
    assert (run.name, run.epochs, run.test_error, run.train_error) == \
        ("r.safetensors", (1, 2), (0.5, 0.3), (0.6, 0.4))
    assert run.flops is None


@pytest.mark.parametrize("text, match", [
    ('{"epoch": 1, "train_error": 0.6, "test_error": 0.5}\nnot json\n', r"r.jsonl:2: not JSON"),
    ('{"epoch": 1, "train_error": 0.6}\n', r"r.jsonl:1: .*'test_error'"),
    ('[1, 2]\n', r"r.jsonl:1: .*not an epoch record"),
    ('{"epoch": "x", "train_error": 0.6, "test_error": 0.5}\n', r"r.jsonl:1: epoch must be"),
    ('{"epoch": 1.7, "train_error": 0.6, "test_error": 0.5}\n', r"r.jsonl:1: epoch must be"),
    ('{"epoch": true, "train_error": 0.6, "test_error": 0.5}\n', r"r.jsonl:1: epoch must be"),
    ('{"epoch": 1, "train_error": NaN, "test_error": 0.5}\n', r"r.jsonl:1: .*fractions"),
    ('{"epoch": 1, "train_error": 0.5, "test_error": 7}\n', r"r.jsonl:1: .*fractions"),
])
def test_bad_metrics_jsonl_is_refused_with_its_line(tmp_path, text, match):
    p = tmp_path / "r.jsonl"
    p.write_text(text)
    with pytest.raises(DataError, match=match):
        results.load_run(p)


def test_binary_metrics_file_is_refused(tmp_path):
    (tmp_path / "b.jsonl").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DataError, match=r"cannot read run .*b\.jsonl"):
        results.load_run(tmp_path / "b.jsonl")


def test_missing_run_is_refused(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        results.load_run(tmp_path / "none.jsonl")


def test_untrained_run_has_no_final_error(tmp_path):
    ck.save(zoo.create("resnet20"), tmp_path / "u.safetensors")
    run = results.load_run(tmp_path / "u.safetensors")
    with pytest.raises(DataError, match="no recorded epochs"):
        run.final_error  # noqa: B018


def make_run(name, errors, flops=None, root=None):
    return results.Run(name, f"/runs/{name}", tuple(range(1, len(errors) + 1)),
                       tuple(errors), tuple(errors), (), (), flops, root)


def test_table_improvements_and_relative_flops():
    base = make_run("resnet20", [0.2, 0.10], flops=40_000_000)
    child = make_run("morph20_1c1", [0.2, 0.08], flops=44_000_000)
    worse = make_run("morph20_3c1", [0.2, 0.125], flops=56_000_000)
    rows = results.table([base, child, worse])
    assert [r["net"] for r in rows] == ["resnet20", "morph20_1c1", "morph20_3c1"]
    assert "abs_improvement" not in rows[0] and rows[0]["rel_flops"] == 1.0
    assert rows[1]["abs_improvement"] == pytest.approx(0.02, abs=1e-15)
    assert rows[1]["rel_improvement"] == pytest.approx(0.2, abs=1e-15)
    assert rows[1]["rel_flops"] == pytest.approx(1.1, abs=1e-15)
    assert rows[2]["abs_improvement"] == pytest.approx(-0.025, abs=1e-15)  # worse: negative
    assert rows[2]["rel_improvement"] == pytest.approx(-0.25, abs=1e-15)
    assert rows[1]["epochs"] == 2 and rows[1]["run"] == "/runs/morph20_1c1"


def test_table_with_a_separate_baseline_and_flops_from_the_root():
    base = make_run("resnet20", [0.1])  # a metrics file: no FLOPs
    same = make_run("resnet20", [0.1])  # the baseline listed again is not "improved" on
    child = make_run("morph20_1c1", [0.05], flops=44_000_000, root=40_000_000)
    rows = results.table([same, child], base)
    assert "abs_improvement" not in rows[0]
    assert rows[1]["abs_improvement"] == pytest.approx(0.05, abs=1e-15)
    assert rows[1]["rel_flops"] == pytest.approx(1.1, abs=1e-15)  # over its root's FLOPs
    assert rows[0]["rel_flops"] is None


def test_baseline_is_recognized_under_another_spelling_of_its_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = results.Run("resnet20", "cont.st", (1,), (0.1,), (0.1,), (), (), None, None)
    b = results.Run("resnet20", f"./{tmp_path.name}/../{tmp_path.name}/cont.st", (1,),
                    (0.1,), (0.1,), (), (), None, None)
    b = dataclasses.replace(b, path=str(tmp_path / "cont.st"))
    assert "abs_improvement" not in results.table([a], b)[0]


def test_runs_on_different_data_sets_are_not_compared():
    a = dataclasses.replace(make_run("resnet20", [0.1]), dataset="cifar10")
    b = dataclasses.replace(make_run("morph20_1c1", [0.3]), dataset="cifar100")
    c = make_run("other", [0.2])  # a metrics file: data set unknown, not held against it
    assert len(results.table([a, c])) == 2
    with pytest.raises(DataError, match=r"different data sets \(cifar10: resnet20; "
                                        r"cifar100: morph20_1c1\); report them separately"):
        results.table([a, b])
    with pytest.raises(DataError, match="different data sets"):
        results.table([b], a)  # the baseline counts too


def test_run_records_its_data_set(lineage):
    assert results.load_run(lineage["child"]).dataset == "cifar10"


def test_markdown_has_the_papers_columns_and_format():
    rows = results.table([make_run("resnet20", [0.0875], flops=40_800_000),
                          make_run("morph20_1c1", [0.0735], flops=44_000_000)])
    rows[1]["phases"] = ["1c1_half"]
    lines = results.markdown(rows).splitlines()
    assert lines[0] == ("| Net Arch. | Intermediate Phases | Error | Abs. Perf. Improv. | "
                        "Rel. Perf. Improv. | FLOP (million) | Rel. FLOP |")
    assert lines[2] == "| resnet20 | - | 8.75% | - | - | 40.8 | 1.00x |"
    assert lines[3] == "| morph20_1c1 | 1c1_half | 7.35% | 1.40% | 16.0% | 44.0 | 1.08x |"


def test_figure_draws_every_run_and_marks_the_morphs(lineage):
    pytest.importorskip("matplotlib")
    runs = [results.load_run(lineage["parent"]), results.load_run(lineage["grand"])]
    fig = results.figure(runs, train=True, title="t")
    ax = fig.axes[0]
    curves = [ln for ln in ax.lines if ln.get_linestyle() in ("-", "--")]
    assert [ln.get_label() for ln in curves] == [
        "resnet20 (test)", "resnet20 (train)", "morph20_3c1 (test)", "morph20_3c1 (train)"]
    assert list(curves[2].get_xdata()) == [1, 2, 3, 4, 5, 6]
    assert list(curves[2].get_ydata()) == pytest.approx([50, 40, 30, 25, 20, 15])
    assert list(curves[3].get_ydata()) == pytest.approx([55, 45, 35, 30, 25, 20])
    marks = [ln.get_xdata()[0] for ln in ax.lines if ln.get_linestyle() == ":"]
    assert marks == [3.5, 5.5]  # between the last epoch before and the first after a morph
    assert curves[2].get_color() == ax.lines[-1].get_color()  # marks take the run's colour
    assert [t.get_text() for t in ax.texts] == ["morph 1c1", "morph 3c1"]
    assert ax.get_title() == "t" and ax.get_ylabel() == "error (%)"


def test_a_one_epoch_run_is_drawn_as_a_visible_point(lineage):
    """A line through one point draws nothing; the run gets a marker."""
    pytest.importorskip("matplotlib")
    one = dataclasses.replace(results.load_run(lineage["parent"]), epochs=(1,),
                              test_error=(0.3,), train_error=(0.4,), morph_epochs=())
    (curve,) = [ln for ln in results.figure([one]).axes[0].lines
                if ln.get_linestyle() == "-"]
    assert list(curve.get_xdata()) == [1] and curve.get_marker() == "o"


def test_runs_morphed_at_the_same_epoch_share_one_mark(lineage):
    pytest.importorskip("matplotlib")
    child = results.load_run(lineage["child"])
    other = dataclasses.replace(child, name="morph20_3c1", morph_epochs=((3, "3c1"),))
    twin = dataclasses.replace(child, name="again")  # the same morph again
    ax = results.figure([child, other, twin]).axes[0]
    marks = [ln for ln in ax.lines if ln.get_linestyle() == ":"]
    assert [m.get_xdata()[0] for m in marks] == [3.5]
    assert [t.get_text() for t in ax.texts] == ["morph 1c1, 3c1"]
    assert all(t == int(t) for t in ax.get_xticks())  # epochs are whole numbers


def test_plot_writes_the_format_its_suffix_names(tmp_path, lineage):
    pytest.importorskip("matplotlib")
    runs = [results.load_run(lineage["child"])]
    png = results.plot(runs, tmp_path / "f.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = results.plot(runs, tmp_path / "f.svg")
    assert b"<svg" in svg.read_bytes()[:1000]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.png", "f.svg"]  # no temp left


def test_plot_unknown_format_is_refused_and_writes_nothing(tmp_path, lineage):
    pytest.importorskip("matplotlib")
    with pytest.raises(DataError, match=r"cannot write .*f\.xyz"):
        results.plot([results.load_run(lineage["child"])], tmp_path / "f.xyz")
    assert list(tmp_path.iterdir()) == []


def test_plot_without_matplotlib_says_how_to_install(monkeypatch, tmp_path, lineage):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib → ImportError
    with pytest.raises(DataError, match=r"pip install 'netmorph\[plot\]'"):
        results.plot([results.load_run(lineage["child"])], tmp_path / "f.png")
    assert list(tmp_path.iterdir()) == []


def test_train_progress_prints_lines_when_stdout_is_not_a_terminal(monkeypatch):
    """No bar in a pipe or a file: a progress line every PLAIN_PROGRESS_EVERY seconds, none
    with NETMORPH_PROGRESS=off or --quiet."""
    import io

    from rich.console import Console

    from netmorph_cli.cli import report

    def run(quiet: bool = False) -> str:
        buf = io.StringIO()
        progress = report.TrainProgress(Console(file=buf, width=100), quiet=quiet,
                                        header="optimizer: one group")
        with progress:
            hooks = progress.hooks()
            hooks.on_start(0, 1, 30)
            for step in (1, 11, 21, 30):
                hooks.on_step(0, step, 30, 0.5, 0.1, 100.0)
        return buf.getvalue()

    monkeypatch.setattr(report, "PLAIN_PROGRESS_EVERY", 0.0)
    monkeypatch.delenv("NETMORPH_PROGRESS", raising=False)
    out = run()
    assert out.splitlines()[0] == "optimizer: one group"
    assert "epoch 1/1: step 11/30, loss 0.5000, lr 0.1, 100 img/s" in out
    assert "step 30/30" not in out  # the epoch's own line follows instead
    assert run(quiet=True) == ""
    monkeypatch.setenv("NETMORPH_PROGRESS", "off")
    assert "step" not in run()


def test_heartbeat_throttles_and_times_each_loop_from_its_start(monkeypatch):
    """calibration, eval and train's test pass: a line at most every PLAIN_PROGRESS_EVERY
    seconds of a fake clock, the seconds counted from the loop's first call, a new loop
    (done going down: the next epoch's test pass) timed afresh."""
    from netmorph_cli.cli import report

    clock = [100.0]
    monkeypatch.setattr(report.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(report, "PLAIN_PROGRESS_EVERY", 5.0)
    monkeypatch.delenv("NETMORPH_PROGRESS", raising=False)
    lines: list[str] = []
    beat = report.heartbeat(lines.append, "testing", "test images")
    clock[0] = 500.0  # long after the hook was made: the loop starts here
    for done in range(100, 1100, 100):  # one call every 2 s
        beat(done, 1000)
        clock[0] += 2.0
    assert lines == ["testing: 400 of 1000 test images, 6 s",
                     "testing: 700 of 1000 test images, 12 s",
                     "testing: 1000 of 1000 test images, 18 s"]
    lines.clear()
    clock[0] += 60.0
    beat(100, 1000)  # the next loop: no line at once, its seconds counted from here
    clock[0] += 5.0
    beat(200, 1000)
    assert lines == ["testing: 200 of 1000 test images, 5 s"]
    monkeypatch.setenv("NETMORPH_PROGRESS", "off")
    clock[0] += 50.0
    beat(300, 0)
    assert lines == ["testing: 200 of 1000 test images, 5 s"]
