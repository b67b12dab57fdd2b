"""`netmorph init/import/morph/verify/info`: outputs, the --json contracts, exit codes and the
error contract (one ``Error:`` line, no traceback, exit 2 for bad input, 1 for a failed check).

Tolerances are the CLI's defaults (1e-5 relative in float32, 1e-10 in float64).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli_helpers import assert_one_error_line, run_main

from netmorph_cli.io import checkpoint
from netmorph_cli.io.checkpoint import file_sha256
from netmorph_cli.network import zoo
from netmorph_cli.network.description import Network

REPO = Path(__file__).resolve().parents[2]
MODULES = REPO / "examples" / "modules"


pytestmark = pytest.mark.usefixtures("one_thread")


def ok(capsys, *args: str) -> str:
    code, out, err = run_main(capsys, *args)
    assert code == 0, err
    assert "Traceback" not in err
    return out


def flat(text: str) -> str:
    """Rich wraps long lines at the console width; compare with whitespace collapsed."""
    return " ".join(text.split())


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A resnet20 parent and its 1c1 children in float32 and float64 (made once)."""
    d = tmp_path_factory.mktemp("cli")
    paths = {"parent": d / "resnet20.safetensors", "child": d / "child.safetensors",
             "child64": d / "child64.safetensors"}
    net = zoo.create("resnet20", seed=7)
    checkpoint.save(net, paths["parent"])
    from netmorph_cli.morph.morphs import morph_network
    from netmorph_cli.network.presets import Preset

    checkpoint.save(morph_network(net, Preset.parse("1c1"))[0], paths["child"])
    checkpoint.save(morph_network(net, Preset.parse("1c1"), dtype=torch.float64)[0],
                    paths["child64"])
    return paths


# --------------------------------------------------------------------------------------------
# init and import


@pytest.mark.parametrize("arch,flops,classes", [("resnet20", "40.8M", 10),
                                                ("resnet18", "1.814G", 1000)])
def test_init(capsys, tmp_path, arch, flops, classes):
    out_path = tmp_path / f"{arch}.safetensors"
    out = ok(capsys, "init", arch, "-o", str(out_path))
    assert out.startswith(f"wrote {out_path} ({arch}, {flops} FLOPs; sha256 ")
    assert file_sha256(out_path)[:16] in out
    net = checkpoint.load(out_path)
    assert net.description["arch"] == arch and net.description["num_classes"] == classes
    assert net.meta["created"]["seed"] == 0


def test_init_options(capsys, tmp_path):
    a = tmp_path / "a.safetensors"
    ok(capsys, "init", "resnet32", "-o", str(a), "--num-classes", "100", "--seed", "3",
       "--shortcut", "A")
    net = checkpoint.load(a)
    assert net.description["num_classes"] == 100
    assert net.nodes["layer2.0.shortcut"]["op"] == "shortcut_a"
    ref = zoo.create("resnet32", 100, seed=3, shortcut="A")
    assert all(torch.equal(net.tensors[k], v) for k, v in ref.tensors.items())


@pytest.mark.parametrize("args,needles", [
    (["init", "resnet50"], ("unknown architecture 'resnet50'",)),
    (["init", "resnet20", "--shortcut", "C"], ("--shortcut",)),
    (["init", "resnet20", "--num-classes", "0"], ("--num-classes",)),
])
def test_init_bad_input(capsys, tmp_path, args, needles):
    out_path = tmp_path / "x.safetensors"
    assert_one_error_line(*run_main(capsys, *args, "-o", str(out_path)), *needles)
    assert not out_path.exists()


def test_import_an_akamaster_style_file(capsys, tmp_path):
    ref = zoo.create("resnet20", seed=5, shortcut="A")
    sd = {f"module.{k}": v for k, v in ref.tensors.items()
          if not k.endswith("num_batches_tracked")}
    src = tmp_path / "resnet20-12345678.th"
    torch.save({"state_dict": sd, "best_prec1": 91.7}, src)
    out_path = tmp_path / "imported.safetensors"
    out = ok(capsys, "import", str(src), "-o", str(out_path))
    assert out.startswith(f"wrote {out_path} (resnet20, 10 classes; sha256 ")
    net = checkpoint.load(out_path)
    assert all(torch.equal(net.tensors[k], v) for k, v in ref.tensors.items())
    assert net.meta["imported"]["layout"] == "cifar-resnet"
    assert net.meta["imported"]["extra"] == {"best_prec1": 91.7}
    # the imported network morphs and verifies like any other
    child = tmp_path / "child.safetensors"
    ok(capsys, "morph", str(out_path), "--module", "1c1", "-o", str(child), "--dtype",
       "float64")
    assert json.loads(ok(capsys, "verify", str(out_path), str(child), "--json",
                         "--samples", "4"))["passed"] is True
    # --arch is checked against the file
    line = assert_one_error_line(*run_main(capsys, "import", str(src), "-o",
                                           str(tmp_path / "y.safetensors"), "--arch",
                                           "resnet32"))
    assert "resnet20" in line and "not a resnet32" in line


# --------------------------------------------------------------------------------------------
# morph


def test_morph_preset(capsys, files, tmp_path):
    child = tmp_path / "c.safetensors"
    out = ok(capsys, "morph", str(files["parent"]), "--module", "1c1", "-o", str(child))
    lines = out.splitlines()
    assert lines[0].startswith("morphed resnet20 → resnet20+1c1 at 6 blocks: solver residual ")
    assert lines[0].endswith("FLOPs 40.8M → 44.0M (1.08×)")
    assert lines[1].startswith("check: 4 random inputs in float32, max relative error ")
    assert float(lines[1].rsplit(" ", 1)[1]) <= 1e-5
    assert lines[2].startswith(f"wrote {child} (resnet20+1c1; sha256 ")
    net = checkpoint.load(child)
    assert net.dtype == torch.float32
    assert net.meta["parent"]["sha256"] == file_sha256(files["parent"])
    assert [h["preset"] for h in net.history] == ["1c1"]


def test_morph_json(capsys, files, tmp_path):
    child = tmp_path / "c.safetensors"
    data = json.loads(ok(capsys, "morph", str(files["parent"]), "--module", "3c1_half", "-o",
                         str(child), "--seed", "4", "--json"))
    assert {"output", "sha256", "arch", "flops", "parent_flops", "morph", "check"} <= set(data)
    assert data["output"] == str(child) and data["sha256"] == file_sha256(child)
    assert data["arch"] == "resnet20+3c1_half" and data["parent_flops"] == 40_813_184
    assert data["morph"]["seed"] == 4 and data["morph"]["blocks"] == [
        "layer1.1", "layer2.1", "layer3.1"]
    assert data["check"]["passed"] is True and data["check"]["dtype"] == "float32"


def test_morph_spec_at_layer(capsys, files, tmp_path):
    child = tmp_path / "c.safetensors"
    out = ok(capsys, "morph", str(files["parent"]), "--module", str(MODULES / "C.json"),
             "--at", "layer1.1.conv1", "-o", str(child), "--dtype", "float64")
    assert "at layer1.1.conv1" in out.splitlines()[0]
    net = checkpoint.load(child)
    entry = net.history[-1]
    assert entry["module"] == "C" and entry["at"] == "layer1.1.conv1" and entry["bn"] is True
    assert "layer1.1.conv1.F7.weight" in net.tensors and net.dtype == torch.float64
    report = json.loads(ok(capsys, "verify", str(files["parent"]), str(child), "--json",
                           "--samples", "8"))
    assert report["passed"] and report["max_rel_err"] <= 1e-10
    assert [(m["parent"], m["child"]) for m in report["modules"]] == [
        ("layer1.1.conv1", entry["output"])]
    # --no-bn / --act none
    bare = tmp_path / "bare.safetensors"
    ok(capsys, "morph", str(files["parent"]), "--module", str(MODULES / "A.json"), "--at",
       "layer3.2.shortcut", "-o", str(bare), "--no-bn", "--act", "none")
    ops = {n["op"] for n in checkpoint.load(bare).description["nodes"]
           if n["name"].startswith("layer3.2.shortcut.")}
    assert ops == {"pad", "conv"}


def test_morph_prelu_all(capsys, files, tmp_path):
    child = tmp_path / "c.safetensors"
    ok(capsys, "morph", str(files["parent"]), "--module", "1c1", "--prelu-all", "-o",
       str(child))
    net = checkpoint.load(child)
    assert not any(n["op"] == "relu" for n in net.description["nodes"])
    assert [h["op"] for h in net.history] == ["prelu_all", "preset"]


def test_morph_dtype_float64_and_verify_json(capsys, files, tmp_path):
    child = tmp_path / "c.safetensors"
    ok(capsys, "morph", str(files["parent"]), "--module", "3c3", "--dtype", "float64", "-o",
       str(child))
    assert checkpoint.load(child).dtype == torch.float64
    code, out, err = run_main(capsys, "verify", str(files["parent"]), str(child), "--json",
                              "--samples", "8")
    assert code == 0 and err == ""
    data = json.loads(out)
    assert {"passed", "max_abs_err", "max_rel_err", "top1_agreement", "dtype"} <= set(data)
    assert data["passed"] is True and data["dtype"] == "float64"
    assert data["max_rel_err"] <= 1e-10 and data["top1_agreement"] == 1.0
    assert data["samples"] == 8 and data["tolerance"] == 1e-10
    assert len(data["modules"]) == 6


# --------------------------------------------------------------------------------------------
# verify


def test_verify_text_report(capsys, files):
    out = ok(capsys, "verify", str(files["parent"]), str(files["child64"]), "--samples", "4")
    text = flat(out)
    assert text.startswith("PASSED — 4 random inputs in float64: max abs error ")
    assert "(tolerance 1e-10), top-1 agreement 100.0%" in text
    assert "layer2.1.add" in text


def test_verify_float32_child_in_float32(capsys, files):
    data = json.loads(ok(capsys, "verify", str(files["parent"]), str(files["child"]),
                         "--dtype", "float32", "--json", "--samples", "8"))
    assert data["passed"] is True and data["dtype"] == "float32"
    assert data["tolerance"] == 1e-5 and data["max_rel_err"] <= 1e-5


def test_verify_fails_with_exit_1_on_a_perturbed_child(capsys, files, tmp_path):
    net = checkpoint.load(files["child"])
    tensors = dict(net.tensors)
    tensors["layer2.2.morph1.conv2.weight"] = tensors["layer2.2.morph1.conv2.weight"] * 1.01
    bad = tmp_path / "bad.safetensors"
    checkpoint.save(Network(net.description, tensors, net.history, net.meta), bad)
    code, out, err = run_main(capsys, "verify", str(files["parent"]), str(bad), "--dtype",
                              "float32", "--json", "--samples", "8")
    assert code == 1 and "Traceback" not in err
    data = json.loads(out)
    assert data["passed"] is False and data["max_rel_err"] > 1e-5
    worst = max(data["modules"], key=lambda m: m["max_rel_err"])
    assert worst["child"] in ("layer2.2.add", "layer3.1.add", "layer3.2.add")
    assert {m["child"]: m["max_rel_err"] for m in data["modules"]}["layer2.1.add"] <= 1e-5
    code, out, err = run_main(capsys, "verify", str(files["parent"]), str(bad), "--dtype",
                              "float32", "--samples", "8")
    assert code == 1 and flat(out).startswith("FAILED — 8 random inputs in float32")


def test_paper_bn_child_fails_verification_in_float64(capsys, files, tmp_path):
    child = tmp_path / "paper.safetensors"
    ok(capsys, "morph", str(files["parent"]), "--module", "1c1", "--paper-bn", "--dtype",
       "float64", "-o", str(child))
    code, out, _ = run_main(capsys, "verify", str(files["parent"]), str(child), "--json",
                            "--samples", "8")
    assert code == 1
    assert json.loads(out)["passed"] is False


def test_verify_not_a_pair_is_exit_2(capsys, files, tmp_path):
    other = tmp_path / "r20_100.safetensors"
    checkpoint.save(zoo.create("resnet20", 100), other)
    assert_one_error_line(*run_main(capsys, "verify", str(files["parent"]), str(other)),
                          "not a parent/child pair", "10 vs 100 classes")
    assert_one_error_line(*run_main(capsys, "verify", str(files["parent"]), str(other),
                                    "--json"), "not a parent/child pair")


# --------------------------------------------------------------------------------------------
# info


def test_info_json(capsys, files):
    data = json.loads(ok(capsys, "info", str(files["child"]), "--json"))
    assert {"arch", "params", "flops", "history"} <= set(data)
    assert data["arch"] == "resnet20+1c1" and data["flops"] == 43_958_912
    assert data["params"] == 295_098 and data["flops_text"] == "44.0M"
    assert round(data["flops_vs_parent"], 2) == 1.08
    assert data["executed_macs"] == 43_958_912 and data["executed_vs_flops"] == 1.0  # 1×1 convs
    assert [h["preset"] for h in data["history"]] == ["1c1"]
    parent = json.loads(ok(capsys, "info", str(files["parent"]), "--json"))
    assert parent["history"] == [] and parent["params"] == 272_474
    assert "flops_vs_parent" not in parent


def test_info_text(capsys, files, tmp_path):
    text = flat(ok(capsys, "info", str(files["child"])))
    assert text.startswith("arch: resnet20+1c1 (input 3×32×32, 10 classes, float32)")
    assert "params: 295,098" in text
    assert "FLOPs: 44.0M (43,958,912 MACs), 1.08× parent (resnet20)" in text
    assert "1c1" in text and "6 blocks" in text
    # a second phase: relative to the direct parent and to the root
    phase2 = tmp_path / "phase2.safetensors"
    ok(capsys, "morph", str(files["child"]), "--module", "3c1", "-o", str(phase2))
    text = flat(ok(capsys, "info", str(phase2)))
    assert "FLOPs: 56.5M" in text and "1.29× parent (resnet20+1c1)" in text
    assert "1.39× root (resnet20)" in text
    assert "not a morphed network" in flat(ok(capsys, "info", str(files["parent"])))
    assert "executed" not in text  # 1c1 and 3c1 branches run every conv at its logical size


def test_info_executed_macs_of_a_padded_module(capsys, files, tmp_path):
    """3c3 branches pad their input by 2 and run the first 3×3 conv on the larger map: the
    line keeps the paper's logical count and adds what the network really executes."""
    child = tmp_path / "c3.safetensors"
    ok(capsys, "morph", str(files["parent"]), "--module", "3c3", "-o", str(child))
    text = flat(ok(capsys, "info", str(child)))
    assert ("FLOPs: 69.1M (69,124,736 MACs), 1.69× parent (resnet20), 1.69× root (resnet20); "
            "executed 73.6M MACs (1.07× logical: padded module inputs)") in text
    data = json.loads(ok(capsys, "info", str(child), "--json"))
    assert data["flops"] == 69_124_736 and data["executed_macs"] == 73_640_576
    assert round(data["executed_vs_flops"], 4) == 1.0653


# --------------------------------------------------------------------------------------------
# safety and bad input


def test_morph_never_overwrites_its_input(capsys, files):
    before = file_sha256(files["parent"])
    for extra in ([], ["--force"]):
        assert_one_error_line(*run_main(capsys, "morph", str(files["parent"]), "--module",
                                        "1c1", "-o", str(files["parent"]), *extra),
                              "refusing to overwrite the input")
    assert file_sha256(files["parent"]) == before


def test_existing_output_needs_force(capsys, files, tmp_path):
    out_path = tmp_path / "c.safetensors"
    out_path.write_bytes(b"keep me")
    assert_one_error_line(*run_main(capsys, "morph", str(files["parent"]), "--module", "1c1",
                                    "-o", str(out_path)), "exists; pass --force")
    assert out_path.read_bytes() == b"keep me"
    assert_one_error_line(*run_main(capsys, "init", "resnet20", "-o", str(out_path)),
                          "exists; pass --force")
    ok(capsys, "morph", str(files["parent"]), "--module", "1c1", "-o", str(out_path),
       "--force")
    assert checkpoint.load(out_path).description["arch"] == "resnet20+1c1"


@pytest.mark.parametrize("content", [b"garbage\n", b"", b"\x80\x04garbage"])
def test_corrupt_files_are_one_error_line(capsys, files, tmp_path, content):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(content)
    out_path = tmp_path / "out.safetensors"
    for args in (["info", str(bad)], ["info", str(bad), "--json"],
                 ["morph", str(bad), "--module", "1c1", "-o", str(out_path)],
                 ["verify", str(files["parent"]), str(bad)],
                 ["verify", str(bad), str(files["parent"])],
                 ["import", str(bad), "-o", str(out_path)]):
        assert_one_error_line(*run_main(capsys, *args), "bad.safetensors")
    assert not out_path.exists()
    assert_one_error_line(*run_main(capsys, "info", str(tmp_path / "missing.safetensors")),
                          "does not exist")


@pytest.mark.parametrize("args,needles", [
    (["--module", str(MODULES / "A.json")], ("needs --at LAYER",)),
    (["--module", "1c1", "--at", "layer1.1.conv1"], ("--at applies to spec files",
                                                      "'1c1'")),
    (["--module", "2c2"], ("unknown preset '2c2'",)),
    (["--module", "bogus"], ("unknown preset 'bogus'",)),
    (["--module", str(MODULES / "A.json"), "--at", "layer2.0.conv1"], ("strided conv",)),
    (["--module", str(MODULES / "A.json"), "--at", "layer2.0.shortcut"],
     ("not an identity shortcut", "projection")),
    (["--module", str(MODULES / "A.json"), "--at", "nowhere"], ("no layer 'nowhere'",
                                                                "convs: conv1")),
    (["--module", "missing.json", "--at", "layer1.1.conv1"], ("missing.json",)),
    (["--module", "1c1", "--dtype", "float16"], ("--dtype",)),
    (["--module", "1c1", "--act", "relu"], ("--act",)),
])
def test_morph_bad_input_is_exit_2(capsys, files, tmp_path, args, needles):
    out_path = tmp_path / "c.safetensors"
    assert_one_error_line(*run_main(capsys, "morph", str(files["parent"]), *args, "-o",
                                    str(out_path)), *needles)
    assert not out_path.exists()


def test_morph_too_narrow_module_is_exit_1(capsys, tmp_path):
    # a 4-channel stride-1 conv: resnet20 has none, so use the network of a hand-made file
    from netmorph_cli.network.description import FORMAT, node

    desc = {"format": FORMAT, "arch": "tiny", "input": [4, 8, 8], "num_classes": 2,
            "output": "fc", "nodes": [
                node("c", "conv", ["input"], **{"in": 4, "out": 4}, kernel=[3, 3],
                     padding=[1, 1]),
                node("g", "gap", ["c"]), node("fc", "linear", ["g"], **{"in": 4, "out": 2})]}
    src = tmp_path / "tiny.safetensors"
    checkpoint.save(Network(desc, zoo.init_tensors(desc)), src)
    out_path = tmp_path / "c.safetensors"
    assert_one_error_line(*run_main(capsys, "morph", str(src), "--module",
                                    str(MODULES / "D_narrow.json"), "--at", "c", "-o",
                                    str(out_path), "--dtype", "float64"),
                          "Widen inner blob", '"channels"', exit_code=1)
    assert not out_path.exists()


@pytest.mark.parametrize("command", ["init", "import", "morph", "verify", "info"])
def test_help_shows_an_example(capsys, command):
    out = ok(capsys, command, "--help")
    assert "Example" in out
    assert f"netmorph {command} " in out
