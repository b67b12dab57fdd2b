"""`netmorph train` with the new-parameter options and a carried state: what it prints
at the start, the history it records, and its refusals (one Error line, nothing written)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_helpers import assert_one_error_line, run_main, train_args

from netmorph_cli.io import checkpoint as ck
from netmorph_cli.training import growth, train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def child(capsys, tmp_path, parent) -> Path:
    path = tmp_path / "c.safetensors"
    code, _, err = run_main(capsys, "morph", str(parent), "--module", "1c1", "-o", str(path))
    assert code == 0, err
    return path


def test_groups_are_printed_and_recorded(capsys, tmp_path, child, data_dir):
    out = tmp_path / "t.safetensors"
    code, stdout, err = run_main(capsys, *train_args(
        child, out, data_dir, "--recipe", "continue", "--epochs", "1", "--new-lr-scale", "0.1",
        "--new-warmup", "10", "--new-weight-decay", "0"))
    assert code == 0, err
    net = ck.load(child)
    model = net.module()
    new = growth.new_parameter_names(net, model)
    n_new = sum(p.numel() for k, p in model.named_parameters() if k in new)
    n_all = sum(p.numel() for p in model.parameters())
    line = stdout.splitlines()[0]
    assert line == (f"optimizer: {n_all - n_new:,} trained parameters at lr 0.02 (weight decay "
                    f"0.0001); {n_new:,} new in {len(new)} tensors at lr 0.002 (×0.1, ramped "
                    f"from 0 over 10 steps; weight decay 0)")
    config = ck.load(out).history[-1]["config"]
    assert (config["new_lr_scale"], config["new_warmup"], config["new_weight_decay"]) == (
        0.1, 10, 0.0)


def test_a_plain_run_says_it_has_one_group(capsys, tmp_path, parent, data_dir):
    code, stdout, err = run_main(capsys, *train_args(parent, tmp_path / "t.safetensors",
                                                      data_dir, "--epochs", "1"))
    assert code == 0, err
    assert stdout.splitlines()[0].startswith("optimizer: one group, 272,474 parameters at lr 0.1")


@pytest.mark.parametrize("option", [["--new-lr-scale", "0.1"], ["--new-warmup", "5"],
                                    ["--new-weight-decay", "0"]])
@pytest.mark.parametrize("quiet", [[], ["--quiet"]])
def test_new_options_on_a_network_with_nothing_new(capsys, tmp_path, parent, data_dir, option,
                                                   quiet):
    out = tmp_path / "t.safetensors"
    code, stdout, err = run_main(capsys, *train_args(parent, out, data_dir, *option, *quiet))
    assert_one_error_line(code, stdout, err, "this network has none")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r20.safetensors"]


@pytest.mark.parametrize("args, needle", [
    (["--new-lr-scale", "-1"], "--new-lr-scale"),
    (["--new-lr-scale", "nan"], "--new-lr-scale"),
    (["--new-warmup", "2.5"], "--new-warmup"),
    (["--new-weight-decay", "inf"], "--new-weight-decay"),
])
def test_bad_new_option_values(capsys, tmp_path, child, data_dir, args, needle):
    code, stdout, err = run_main(capsys, *train_args(child, tmp_path / "t.safetensors",
                                                      data_dir, *args))
    assert_one_error_line(code, stdout, err, needle)


def test_from_state_carries_the_parents_momentum(capsys, tmp_path, parent, data_dir):
    p_out = tmp_path / "p.safetensors"
    assert run_main(capsys, *train_args(parent, p_out, data_dir, "--epochs", "1"))[0] == 0
    c = tmp_path / "c.safetensors"
    assert run_main(capsys, "morph", str(p_out), "--module", "1c1", "-o", str(c))[0] == 0
    out = tmp_path / "t.safetensors"
    code, _, err = run_main(capsys, *train_args(c, out, data_dir, "--epochs", "1",
                                                "--from-state", str(train.state_path(p_out))))
    assert code == 0, err
    carried = ck.load(out).history[-1]["carried_state"]
    n_new = len(growth.new_parameter_names(ck.load(c)))
    n_all = len(list(ck.load(c).module().parameters()))
    assert carried["file"] == "p.safetensors.state.pt" and len(carried["sha256"]) == 64
    assert (carried["carried"], carried["padded"], carried["fresh"]) == (n_all - n_new, 0, n_new)


@pytest.mark.parametrize("content, needle", [
    (None, "no file"), (b"garbage", "is not a training state"),
])
def test_from_state_refusals(capsys, tmp_path, child, data_dir, content, needle):
    state = tmp_path / "s.pt"
    if content is not None:
        state.write_bytes(content)
    out = tmp_path / "t.safetensors"
    code, stdout, err = run_main(capsys, *train_args(child, out, data_dir, "--from-state",
                                                      str(state)))
    assert_one_error_line(code, stdout, err, needle)
    assert not out.exists() and not Path(f"{out}.metrics.jsonl").exists()


def test_a_child_goes_on_with_its_parents_schedule(capsys, tmp_path, child, data_dir):
    """--schedule-start/--schedule-epochs (E2's B): the child's epochs are epochs 3–4 of a
    4-epoch cosine from 0.1; the recorded lr of each epoch is that schedule's at its start."""
    import json
    import math

    out = tmp_path / "t.safetensors"
    code, _, err = run_main(capsys, *train_args(
        child, out, data_dir, "--schedule", "cosine", "--lr", "0.1", "--epochs", "2",
        "--schedule-start", "2", "--schedule-epochs", "4", "--quiet"))
    assert code == 0, err
    lrs = [json.loads(line)["lr"] for line in
           Path(f"{out}.metrics.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([0.05 * (1 + math.cos(math.pi * e / 4)) for e in (2, 3)],
                                rel=1e-12)
    config = ck.load(out).history[-1]["config"]
    assert (config["schedule_start"], config["schedule_epochs"]) == (2, 4)
    bad = tmp_path / "bad.safetensors"
    code, stdout, err = run_main(capsys, *train_args(
        child, bad, data_dir, "--epochs", "3", "--schedule-start", "2", "--schedule-epochs",
        "4"))
    assert_one_error_line(code, stdout, err, "--epochs 3 from --schedule-start 2 runs past "
                                             "the end of --schedule-epochs 4")
    assert not bad.exists() and not Path(f"{bad}.metrics.jsonl").exists()


def test_recipe_grow_trains_what_the_morph_added_at_a_tenth_of_the_lr(capsys, tmp_path,
                                                                        child, parent,
                                                                        data_dir):
    out = tmp_path / "t.safetensors"
    code, stdout, err = run_main(capsys, *train_args(child, out, data_dir, "--recipe", "grow",
                                                     "--epochs", "1"))
    assert code == 0, err
    line = stdout.splitlines()[0]
    assert " trained parameters at lr 0.02 (weight decay 0.0001); " in line
    assert " at lr 0.002 (×0.1, ramped from 0 over 200 steps; weight decay 0.0001)" in line
    config = ck.load(out).history[-1]["config"]
    assert (config["new_lr_scale"], config["new_warmup"], config["lr"],
            config["schedule"]) == (0.1, 200, 0.02, "cosine")
    code, stdout, err = run_main(capsys, *train_args(parent, tmp_path / "p.safetensors",
                                                     data_dir, "--recipe", "grow"))
    assert_one_error_line(code, stdout, err, "--recipe grow", "this network has none",
                          "train it with --recipe continue")
    assert not (tmp_path / "p.safetensors").exists()
