"""The registries (data sets, architectures, presets) are the one list of names: a new data
set or architecture is one entry, and the loader, ``describe`` and the CLI's choices and
help texts pick it up without further code."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
import torch

from netmorph_cli.cli.commands import main
from netmorph_cli.errors import DataError, MorphError, NetworkError
from netmorph_cli.io import checkpoint
from netmorph_cli.morph import morphs as morph
from netmorph_cli.network import archs, zoo
from netmorph_cli.training import data


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    out, err = capsys.readouterr()
    return (info.value.code or 0), out, err


def words(text: str) -> str:
    """Help text with click's line wrapping undone."""
    return " ".join(text.split())


# -- data sets --------------------------------------------------------------------------

TINY = data.DatasetSpec("tiny-npz", 3, (32, 32), data.CIFAR_MEAN, data.CIFAR_STD, "tiny.npz")


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """A 3-class set registered for the test only, with its file (labels 0..2)."""
    monkeypatch.setitem(data.DATASETS, TINY.name, TINY)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(12, 32, 32, 3), dtype=np.uint8)
    y = np.arange(12) % 3
    np.savez(tmp_path / "tiny.npz", x_train=x[:8], y_train=y[:8], x_test=x[8:], y_test=y[8:])
    return tmp_path


def test_a_registered_data_set_is_loaded_with_its_record(tiny):
    ds = data.load_dataset("tiny-npz", tiny, download=False)
    assert ds.name == "tiny-npz" and ds.num_classes == 3  # from the record, not the name
    assert ds.x_train.shape == (8, 32, 32, 3) and list(ds.y_test) == [2, 0, 1, 2]
    (tiny / "tiny.npz").unlink()
    with pytest.raises(DataError, match=f"put tiny.npz in {tiny}"):
        data.load_dataset("tiny-npz", tiny, download=False)


def test_labels_beyond_the_records_classes_are_refused(tiny):
    np.savez(tiny / "tiny.npz", x_train=np.zeros((2, 32, 32, 3), np.uint8),
             y_train=np.array([0, 3]), x_test=np.zeros((1, 32, 32, 3), np.uint8),
             y_test=np.array([0]))
    with pytest.raises(DataError, match=r"labels of train outside 0\.\.2"):
        data.load_dataset("tiny-npz", tiny, download=False)


def test_cli_offers_and_loads_a_registered_data_set(capsys, tiny):
    code, out, _ = run_main(capsys, "train", "--help")
    assert code == 0
    assert "[cifar10|cifar100|cifar10-mini|cifar100-mini|synthetic|tiny-npz|FILE.npz|FOLDER]" \
        in words(out)
    ckpt = tiny / "r.safetensors"
    assert run_main(capsys, "init", "resnet20", "--num-classes", "3", "-o", str(ckpt))[0] == 0
    code, out, err = run_main(capsys, "eval", str(ckpt), "--dataset", "tiny-npz",
                              "--data-dir", str(tiny), "--json")
    assert code == 0, err
    assert '"samples": 4' in out and "tiny.npz" in out


def test_cli_refuses_an_unregistered_data_set(capsys, tmp_path):
    code, out, err = run_main(capsys, "eval", str(tmp_path / "r.safetensors"), "--dataset",
                              "tiny-npz")
    assert code == 2 and out == ""
    assert "'tiny-npz' is neither a data set netmorph knows (cifar10, cifar100" in err
    with pytest.raises(DataError, match="unknown data set 'tiny-npz' .choose from cifar10, "):
        data.load_dataset("tiny-npz")


def test_data_set_records():
    assert list(data.DATASETS) == ["cifar10", "cifar100", "cifar10-mini", "cifar100-mini",
                                   "synthetic"]
    for name, spec in data.DATASETS.items():
        assert spec.name == name and spec.image_size == (32, 32)
        assert (spec.mean, spec.std) == (data.CIFAR_MEAN, data.CIFAR_STD)
        assert spec.npz in (f"{name}.npz", None)
    c10, c100 = data.DATASETS["cifar10"].official, data.DATASETS["cifar100"].official
    assert c10 is not None and c100 is not None
    assert c10.url == "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    assert (c100.folder, c100.train, c100.test, c100.label_key) == (
        "cifar-100-python", ("train",), "test", b"fine_labels")
    assert data.load_dataset("synthetic").num_classes == data.DATASETS["synthetic"].classes
    with pytest.raises(ValueError, match="needs an .npz file name or a maker"):
        data.DatasetSpec("nowhere", 2, (8, 8), data.CIFAR_MEAN, data.CIFAR_STD, None)


# -- architectures ----------------------------------------------------------------------

RESNET8 = dataclasses.replace(zoo.ARCHS["resnet20"], name="resnet8", blocks=(1, 1, 1))
RESNET10 = dataclasses.replace(zoo.ARCHS["resnet18"], name="resnet10", blocks=(1, 1, 1, 1))

ARCH_HELP = ("ARCH: resnet20, resnet32, resnet44, resnet56, resnet110 (CIFAR, 32×32) or "
             "resnet18, resnet34 (ImageNet, 224×224, torchvision layout), or a checkpoint")


def test_a_registered_architecture_is_described(monkeypatch):
    monkeypatch.setitem(zoo.ARCHS, RESNET8.name, RESNET8)
    desc = zoo.describe("resnet8", shortcut="A")
    assert desc["arch"] == "resnet8" and desc["input"] == [3, 32, 32]
    assert desc["num_classes"] == 10 and RESNET8.depth == 8
    convs = [n["name"] for n in desc["nodes"] if n["op"] == "conv"]
    assert convs == ["conv1", *(f"layer{s}.0.conv{c}" for s in (1, 2, 3) for c in (1, 2))]


def test_cli_inits_a_registered_architecture_and_lists_it(capsys, tmp_path, monkeypatch):
    for spec in (RESNET8, RESNET10):
        monkeypatch.setitem(zoo.ARCHS, spec.name, spec)
    code, out, _ = run_main(capsys, "init", "--help")
    assert code == 0
    assert ("resnet56, resnet110, resnet8 (CIFAR, 32×32) or resnet18, resnet34, resnet10 "
            "(ImageNet, 224×224, torchvision layout), or a checkpoint") in words(out)
    for spec in (RESNET8, RESNET10):
        out_file = tmp_path / f"{spec.name}.safetensors"
        code, out, err = run_main(capsys, "init", spec.name, "-o", str(out_file))
        assert code == 0, err
        net = checkpoint.load(out_file)
        assert net.description["arch"] == spec.name
        assert net.description["num_classes"] == spec.num_classes
        assert net.description["input"] == [3, spec.input_size, spec.input_size]


def test_init_help_lists_the_architectures_from_the_registry(capsys):
    code, out, _ = run_main(capsys, "init", "--help")
    assert code == 0 and ARCH_HELP in words(out)
    assert "Classes of the classifier [default: 10 CIFAR, 1000 ImageNet]." in words(out)
    code, out, err = run_main(capsys, "init", "resnet8", "-o", "x.safetensors")
    assert code == 2 and "unknown architecture 'resnet8' (choose from resnet20, " in err


def test_architecture_records():
    for name, spec in zoo.ARCHS.items():
        assert name == spec.name == f"resnet{spec.depth}"
        assert len(spec.blocks) == len(spec.widths)
        desc = zoo.describe(name)
        assert desc["input"] == [3, spec.input_size, spec.input_size]
        assert desc["num_classes"] == spec.num_classes
        adds = [n for n in desc["nodes"] if n["op"] == "add"]
        assert len(adds) == sum(spec.blocks)
    assert zoo.CIFAR_DEPTHS == (20, 32, 44, 56, 110)
    assert zoo.IMAGENET_DEPTHS == {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
    with pytest.raises(NetworkError, match="depth must be 6n"):
        archs._cifar(21)


# -- presets ----------------------------------------------------------------------------

def test_preset_records():
    assert list(morph.PRESETS) == ["1c1", "3c1", "3c3", "1c1_half", "1c1_2branch", "1c3"]
    for name, p in morph.PRESETS.items():
        assert p.name == name and morph.Preset.parse(name).name == name  # every one parses
        assert all(n.startswith("morph") and n.endswith(f"_{name}") for n in p.networks)
    assert morph.PRESET_RE.pattern == r"^(\d+)c(\d+)(_2branch)?(_half)?$"


def test_module_help_and_errors_list_the_presets(capsys, monkeypatch):
    code, out, _ = run_main(capsys, "morph", "--help")
    assert code == 0
    assert ("A preset (1c1, 3c1, 3c3, 1c3, with _2branch and/or _half) or a SPEC.json."
            in words(out))
    with pytest.raises(MorphError, match=r"use KcJ\[_2branch\]\[_half\] with odd K and J, "
                                         r"e\.g\. 1c1, 3c1, 3c3, 1c1_half, 1c1_2branch, 1c3$"):
        morph.Preset.parse("2c1")
    monkeypatch.setitem(morph.PRESETS, "5c5", morph.NamedPreset("5c5", "5×5 then 5×5"))
    _, out, _ = run_main(capsys, "morph", "--help")
    assert "A preset (1c1, 3c1, 3c3, 1c3, 5c5, with _2branch" in words(out)
    with pytest.raises(MorphError, match="1c1_2branch, 1c3, 5c5$"):
        morph.Preset.parse("2c1")


def test_a_new_preset_is_one_entry_and_morphs_exactly(capsys):
    """1c3 (a 1×1 conv, then a 3×3 conv on the branch) is one ``NamedPreset`` entry: it is
    offered by --module's help (above), and the engine places, solves and names it like
    any preset. Exact: float64 verify ≤ 1e-10, at the logits and at every morphed join."""
    from netmorph_cli.morph.verify import verify

    assert morph.Preset.parse("1c3") == morph.Preset(1, 3, 1, False)
    parent = zoo.create("resnet20", seed=3).to(torch.float64)
    child, check = morph.morph_network(parent, morph.Preset.parse("1c3"), seed=1)
    assert check is not None and check.passed and check.dtype == "float64"
    report = verify(parent, child, dtype=torch.float64, samples=16)
    assert report.passed and report.max_rel_err <= 1e-10
    assert [s.child_node for s in report.sites] == [
        f"layer{s}.{i}.add" for s in (1, 2, 3) for i in (1, 2)]
    assert all(s.max_rel_err <= 1e-10 for s in report.sites)
    nodes = child.nodes
    assert nodes["layer2.1.morph1.conv1"]["kernel"] == [1, 1]
    assert nodes["layer2.1.morph1.conv2"]["kernel"] == [3, 3]
    assert nodes["layer2.1.morph1.pad"]["pad"] == [1, 1]  # the 3×3 conv's margin, once
    assert child.description["arch"] == "resnet20+1c3"
    assert child.history[-1]["preset"] == "1c3" and child.history[-1]["residual"] <= 1e-12
    code, out, _ = run_main(capsys, "morph", "--help")
    assert code == 0 and "1c3" in words(out)


# -- the CLI starts without the library ---------------------------------------------------

def test_cli_help_imports_neither_torch_nor_the_registries():
    code = ("import sys\nfrom netmorph_cli.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'netmorph_cli.training.data', "
            "'netmorph_cli.network.zoo', 'netmorph_cli.morph.morphs') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.splitlines()[-1] == "[]"
