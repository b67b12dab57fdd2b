"""Hostile inputs (issue 13): every case users reproduced as a traceback ends in exactly one
``Error:`` line and exit 2, leaves its input files bit-identical and writes no output.

Specs that ask for huge widths, kernels, presets or nesting, a spec read from /dev/zero or a
FIFO; checkpoints whose description, history or metadata was tampered with (rewritten with the
safetensors library from a valid file); NaN weights on load and on import.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from cli_helpers import assert_one_error_line, run_main
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from netmorph_cli.io import checkpoint
from netmorph_cli.network import zoo
from netmorph_cli.network.description import FORMAT, GraphNet, Network, node, state_of

pytestmark = pytest.mark.usefixtures("one_thread")

NETMORPH = Path(sys.executable).with_name("netmorph")
TWO_EDGES = [{"from": "s", "to": "a", "kernel": 3}, {"from": "a", "to": "t", "kernel": 3}]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def refused(capsys, args: list[str], *needles: str, out: Path | None = None) -> str:
    """Run the CLI on ``args``: one ``Error:`` line holding ``needles``, exit 2, every
    input file (a regular file among ``args``) unchanged, nothing written next to ``out``."""
    inputs = [Path(a) for a in args if Path(a).is_file()]
    before = {p: sha(p) for p in inputs}
    listing = sorted(os.listdir(out.parent)) if out is not None else None
    code, stdout, err = run_main(capsys, *args)
    line = assert_one_error_line(code, stdout, err, *needles)
    assert {p: sha(p) for p in inputs} == before
    if out is not None:
        assert not out.exists()
        assert sorted(os.listdir(out.parent)) == listing  # no temp file left behind
    return line


def every_op() -> dict:
    """A small description with one node of each op (maxpool, option-A shortcut, pad, …)."""
    return {"format": FORMAT, "arch": "every-op", "input": [3, 8, 8], "num_classes": 2,
            "output": "fc", "nodes": [
                node("conv", "conv", ["input"], **{"in": 3, "out": 4}, kernel=[3, 3],
                     padding=[1, 1]),
                node("bn", "bn", ["conv"], channels=4),
                node("relu", "relu", ["bn"]),
                node("pool", "maxpool", ["relu"], kernel=3, stride=1, padding=1),
                node("sc", "shortcut_a", ["pool"], **{"in": 4, "out": 8}, stride=2),
                node("pad", "pad", ["sc"], pad=[1, 1]),
                node("conv2", "conv", ["pad"], **{"in": 8, "out": 8}, kernel=[3, 3]),
                node("add", "add", ["conv2", "sc"], coeffs=[0.5, 1.0], shortcut=1),
                node("gap", "gap", ["add"]),
                node("fc", "linear", ["gap"], **{"in": 8, "out": 2}),
            ]}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Valid inputs: a resnet20 checkpoint, the every-op network, specs."""
    d = tmp_path_factory.mktemp("hostile")
    paths = {"r20": d / "r20.safetensors", "ops": d / "ops.safetensors"}
    checkpoint.save(zoo.create("resnet20", seed=0), paths["r20"])
    desc = every_op()
    checkpoint.save(Network(desc, state_of(GraphNet(desc))), paths["ops"])
    specs = {"wide": {"channels": {"a": 1_000_000_000}, "edges": TWO_EDGES},
             "kernel": {"edges": [{"from": "s", "to": "a", "kernel": 1_000_001},
                                  TWO_EDGES[1]]}}
    for name, spec in specs.items():
        paths[name] = d / f"{name}.json"
        paths[name].write_text(json.dumps(spec))
    paths["deep"] = d / "deep.json"
    paths["deep"].write_text("[" * 100_000 + "]" * 100_000)
    return paths


def tampered(src: Path, dst: Path, *, desc: Callable[[dict], None] | None = None,
             fields: dict[str, str] | None = None,
             tensors: Callable[[dict[str, torch.Tensor]], None] | None = None) -> Path:
    """``src`` rewritten with the safetensors library: its description edited by ``desc``,
    metadata fields replaced by ``fields``, tensors edited by ``tensors``."""
    with safe_open(str(src), "pt") as f:
        meta = dict(f.metadata())
    t = load_file(str(src))
    if desc is not None:
        d = json.loads(meta["description"])
        desc(d)
        meta["description"] = json.dumps(d)
    meta.update(fields or {})
    if tensors is not None:
        tensors(t)
    save_file(t, str(dst), metadata=meta)
    return dst


def set_node(name: str, **changes) -> Callable[[dict], None]:
    return lambda d: next(n for n in d["nodes"] if n["name"] == name).update(changes)


# --------------------------------------------------------------------------------------------
# specs


def test_huge_width_in_a_spec(capsys, files, tmp_path):
    refused(capsys, ["reduce", str(files["wide"]), "--solve"],
            "width 1000000000 for blob 'a'", "limit of 65536")
    out = tmp_path / "child.safetensors"
    refused(capsys, ["morph", str(files["r20"]), "--module", str(files["wide"]), "--at",
                     "layer1.1.conv1", "-o", str(out)], "width 1000000000 for blob 'a'", out=out)


def test_huge_kernel_in_a_spec(capsys, files, tmp_path):
    refused(capsys, ["reduce", str(files["kernel"]), "--solve"],
            "edge #1: kernel size 1000001", "limit of 63")
    out = tmp_path / "child.safetensors"
    refused(capsys, ["morph", str(files["r20"]), "--module", str(files["kernel"]), "--at",
                     "layer1.1.conv1", "-o", str(out)], "kernel size 1000001", out=out)


def test_huge_preset(capsys, files, tmp_path):
    out = tmp_path / "child.safetensors"
    refused(capsys, ["morph", str(files["r20"]), "--module", "99999c1", "-o", str(out)],
            "preset '99999c1'", "at most 63", out=out)


def test_solve_options_are_capped(capsys, files):
    d = str(files["deep"].with_name("ok.json"))
    Path(d).write_text(json.dumps({"edges": TWO_EDGES}))
    refused(capsys, ["reduce", d, "--solve", "--channels", "1000000000"], "--channels",
            "1<=x<=65536")
    refused(capsys, ["reduce", d, "--solve", "--kernel", "1000001"], "--kernel", "1<=x<=63")


def test_init_num_classes_is_capped(capsys, tmp_path):
    """The classifier was allocated (256 GB for 10⁹ classes) before anything was checked."""
    out = tmp_path / "big.safetensors"
    refused(capsys, ["init", "resnet20", "--num-classes", "1000000000", "-o", str(out)],
            "--num-classes", "1<=x<=65536", out=out)


def test_verify_samples_and_train_batch_are_capped(capsys, files, tmp_path):
    """10⁹ random inputs or a 10⁹-image batch would be allocated before any check."""
    r20 = str(files["r20"])
    refused(capsys, ["verify", r20, r20, "--samples", "1000000000"], "--samples",
            "1<=x<=65536")
    out = tmp_path / "t.safetensors"
    refused(capsys, ["train", r20, "--dataset", "synthetic", "--batch-size", "1000000000",
                     "-o", str(out)], "--batch-size", "1<=x<=65536", out=out)


def test_deeply_nested_spec(capsys, files, tmp_path):
    refused(capsys, ["reduce", str(files["deep"])], "nested more than 64 levels deep")
    out = tmp_path / "child.safetensors"
    refused(capsys, ["morph", str(files["r20"]), "--module", str(files["deep"]), "--at",
                     "layer1.1.conv1", "-o", str(out)], "nested more than 64 levels", out=out)


def test_spec_from_dev_zero(capsys):
    refused(capsys, ["reduce", "/dev/zero"], "'/dev/zero' is larger than 64 MiB")


def test_fifos_do_not_hang(tmp_path):
    """A FIFO without a writer: the spec reads as empty, the checkpoint is refused unread."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for args, needle in ((["reduce", str(fifo)], "is empty"),
                         (["info", str(fifo)], "not a regular file")):
        proc = subprocess.run([str(NETMORPH), *args], capture_output=True, text=True,
                              timeout=60)
        assert_one_error_line(proc.returncode, proc.stdout, proc.stderr, needle)


# --------------------------------------------------------------------------------------------
# tampered checkpoint descriptions


@pytest.mark.parametrize("base,name,changes,needles", [
    ("r20", "conv1", {"groups": 0}, ("node 'conv1' (conv)", "groups")),
    ("r20", "conv1", {"stride": [0, 0]}, ("node 'conv1' (conv)", "stride")),
    ("ops", "sc", {"stride": 0}, ("node 'sc' (shortcut_a)", "stride")),
    ("ops", "pool", {"stride": 0}, ("node 'pool' (maxpool)", "stride")),
    ("r20", "conv1", {"out": 16.0}, ("node 'conv1' (conv)", "out", "16.0")),
    ("r20", "bn1", {"channels": 16.0}, ("node 'bn1' (bn)", "channels")),
    ("ops", "pool", {"kernel": -3}, ("node 'pool' (maxpool)", "kernel", "-3")),
    ("r20", "layer1.0.add", {"coeffs": [float("nan"), 1.0]},
     ("node 'layer1.0.add' (add)", "coeffs", "nan")),
], ids=["groups-0", "conv-stride-0", "shortcut-stride-0", "pool-stride-0", "float-width",
        "float-bn-width", "negative-pool-kernel", "nan-coefficient"])
def test_tampered_description_info(capsys, files, tmp_path, base, name, changes, needles):
    bad = tampered(files[base], tmp_path / "bad.safetensors", desc=set_node(name, **changes))
    refused(capsys, ["info", str(bad)], "does not hold a valid network", *needles)


def test_tampered_description_eval(capsys, files, tmp_path):
    """Float widths crashed eval in torch; NaN coefficients let it report 90% error."""
    for name, changes, field in (("conv1", {"out": 16.0}, "out"),
                                 ("layer1.0.add", {"coeffs": [float("nan"), 1.0]}, "coeffs")):
        bad = tampered(files["r20"], tmp_path / "bad.safetensors",
                       desc=set_node(name, **changes))
        refused(capsys, ["eval", str(bad), "--dataset", "synthetic"], f"node {name!r}", field)


def test_huge_input(capsys, files, tmp_path):
    """A 10⁶×10⁶ input made torch/MKL abort with an internal assertion."""
    bad = tampered(files["r20"], tmp_path / "big.safetensors",
                   desc=lambda d: d.update(input=[3, 1_000_000, 1_000_000]))
    refused(capsys, ["info", str(bad)], "'input' is 1000000×1000000", "limit of 8192")
    out = tmp_path / "child.safetensors"
    refused(capsys, ["morph", str(bad), "--module", "1c1", "-o", str(out)],
            "1000000×1000000", out=out)
    refused(capsys, ["verify", str(files["r20"]), str(bad)], "1000000×1000000")


# --------------------------------------------------------------------------------------------
# history and metadata of the wrong type


@pytest.mark.parametrize("fields,needles", [
    ({"history": "[1]"}, ("history entry #1 must be an object",)),
    ({"history": '[{"op": "preset", "blocks": 3}]'}, ("history entry #1", "'blocks'")),
    ({"meta": '{"normalization": "abc"}'}, ("'normalization' must be an object",)),
    ({"meta": '{"normalization": {"mean": 0.5}}'}, ("normalization 'mean'",)),
    ({"meta": '{"parent": {"arch": "resnet20", "flops": "many"}}'}, ("'parent'", "'flops'")),
], ids=["history-entry", "history-blocks", "normalization", "normalization-mean",
        "parent-flops"])
def test_wrong_metadata_types(capsys, files, tmp_path, fields, needles):
    bad = tampered(files["r20"], tmp_path / "bad.safetensors", fields=fields)
    refused(capsys, ["info", str(bad)], "damaged netmorph checkpoint", *needles)
    refused(capsys, ["eval", str(bad), "--dataset", "synthetic"], *needles)


# --------------------------------------------------------------------------------------------
# non-finite tensors


def _nan_conv1(t: dict[str, torch.Tensor]) -> None:
    t["conv1.weight"].view(-1)[0] = float("nan")


def test_nan_weight_on_load(capsys, files, tmp_path):
    """eval used to exit 0 reporting 90.00% error."""
    bad = tampered(files["r20"], tmp_path / "nan.safetensors", tensors=_nan_conv1)
    needles = ("tensor 'conv1.weight' holds non-finite values (1 NaN of 432)",)
    refused(capsys, ["eval", str(bad), "--dataset", "synthetic"], *needles)
    refused(capsys, ["info", str(bad)], *needles)
    out = tmp_path / "child.safetensors"
    refused(capsys, ["morph", str(bad), "--module", "1c1", "-o", str(out)], *needles, out=out)


def test_nan_weight_on_import(capsys, files, tmp_path):
    sd = {k: v.clone() for k, v in checkpoint.load(files["r20"]).tensors.items()}
    _nan_conv1(sd)
    torch.save(sd, tmp_path / "plain.pt")
    out = tmp_path / "imported.safetensors"
    refused(capsys, ["import", str(tmp_path / "plain.pt"), "-o", str(out)],
            "tensor 'conv1.weight' holds non-finite values", out=out)
