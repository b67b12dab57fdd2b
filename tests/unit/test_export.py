"""export.py: the written artifact against netmorph's module (the trusted reference), at the
stated tolerances; a dynamic batch that really is dynamic; a failed check leaves no file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import zoo_models
from netmorph_cli.errors import OutputError, UsageError, VerificationError
from netmorph_cli.io import export, importers, outputs
from netmorph_cli.morph import morphs as morph
from netmorph_cli.network import presets, zoo
from netmorph_cli.network.description import Network

pytestmark = pytest.mark.usefixtures("one_thread")


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """‖Δ‖∞ / ‖ref‖∞, the check's own measure."""
    return float((got.double() - ref.double()).abs().max() / ref.double().abs().max())


def inputs(net: Network, batch: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(123)
    return torch.randn(batch, *net.description["input"], generator=gen).to(dtype)


@pytest.fixture(scope="module")
def child(one_thread) -> Network:
    """ResNet-20 (option-A shortcuts) morphed with 1c1: conv, BN, PReLU, pad and add nodes."""
    net, _ = morph.morph_network(zoo.create("resnet20", 10, 0, "A"),
                                 presets.Preset.parse("1c1"), check=False)
    return net


@pytest.fixture(scope="module")
def pt2(child, tmp_path_factory) -> tuple[Path, export.ExportReport]:
    path = tmp_path_factory.mktemp("pt2") / "child.pt2"
    return path, export.export_network(child, path)


def test_pt2_report_and_file(pt2):
    path, report = pt2
    assert (report.format, report.dtype, report.samples) == ("pt2", "float32", 8)
    assert report.dynamic_batch and report.note == ""
    assert report.sha256 == outputs.sha256(path)
    assert report.max_rel_err <= export.TOLERANCE and report.max_abs_err >= 0
    assert report.to_json()["path"] == str(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["child.pt2"]  # no temp files


def test_an_exported_child_imports_back_to_the_same_network(pt2, child):
    """The issue's round trip: netmorph's safe importer (not torch.export.load) reads the
    file back to the child's description node for node (names, ops, attributes, the arch
    and the normalization from the archive's extra/netmorph.json) and its exact tensors."""
    back, err = importers.import_program(pt2[0])
    assert err == 0.0
    assert back.description == child.description
    # zoo networks record none: eval's default (CIFAR-10's) is what the import records
    assert back.meta["normalization"] == child.meta.get("normalization",
                                                        importers.default_normalization(3))
    assert back.tensors.keys() == child.tensors.keys()
    assert all(torch.equal(back.tensors[k], t) for k, t in child.tensors.items())


@pytest.fixture(scope="module")
def program(pt2) -> torch.nn.Module:
    return torch.export.load(pt2[0]).module()  # our own file: trusted


@pytest.mark.parametrize("batch", [1, 3, 17])
def test_pt2_program_matches_graphnet_at_any_batch(program, child, batch):
    """float32, rtol 1e-5 normwise (atol 0): batch sizes the tracer never saw (it used 2)."""
    x = inputs(child, batch)
    with torch.inference_mode():
        got, ref = program(x), child.module()(x)
    assert got.shape == ref.shape == (batch, 10)
    assert rel_err(got, ref) <= 1e-5


@pytest.mark.slow  # float64 exports run by default in tests/cli/test_import_traced.py
def test_float64_checkpoint_exports_float64(child, tmp_path):
    net = child.to(torch.float64)
    report = export.export_network(net, tmp_path / "c64.pt2")
    assert report.dtype == "float64" and report.dynamic_batch
    assert report.max_rel_err <= 1e-12  # same ops in float64
    program = torch.export.load(tmp_path / "c64.pt2").module()
    x = inputs(net, 5, torch.float64)
    with torch.inference_mode():
        assert rel_err(program(x), net.module()(x)) <= 1e-12


def test_static_batch_fallback_is_reported_and_checked(child, tmp_path, monkeypatch):
    """Where torch cannot keep the batch dynamic: a batch of 1, said so, checked one by one."""
    def refuse() -> None:
        raise RuntimeError("Constraints violated (batch)")

    monkeypatch.setattr(export, "_batch_dim", refuse)
    report = export.export_network(child, tmp_path / "static.pt2", samples=3)
    assert not report.dynamic_batch
    assert report.note == ("static batch of 1: torch.export cannot keep the batch dynamic "
                           "(Constraints violated (batch))")
    assert report.max_rel_err <= export.TOLERANCE and report.samples == 3
    program = torch.export.load(tmp_path / "static.pt2").module()
    with pytest.raises(Exception, match="shape|size|batch|Expected"):  # torch's own guard
        program(inputs(child, 3))


def test_sabotaged_program_fails_and_leaves_no_file(child, tmp_path, monkeypatch):
    """The loaded program returns wrong logits: exit code 1, the error figure, no file."""
    real = export._load

    def sabotaged(fmt: str, path: Path) -> export.Runner:
        run = real(fmt, path)
        return lambda x: run(x) * 1.01

    monkeypatch.setattr(export, "_load", sabotaged)
    with pytest.raises(VerificationError, match=r"max relative error 0\.01 > 1e-05") as info:
        export.export_network(child, tmp_path / "bad.pt2")
    assert info.value.exit_code == 1
    assert "removed" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_unreadable_artifact_fails_and_leaves_no_file(child, tmp_path, monkeypatch):
    monkeypatch.setattr(export, "_pt2", lambda module, example, extra: (
        lambda f: f.write(b"not a program"), True, ""))
    with pytest.raises(VerificationError, match="cannot be run back") as info:
        export.export_network(child, tmp_path / "bad.pt2")
    assert info.value.exit_code == 1
    assert list(tmp_path.iterdir()) == []


def test_refusals_before_any_work(child, tmp_path):
    with pytest.raises(UsageError, match="unknown export format 'tflite'"):
        export.export_network(child, tmp_path / "x", fmt="tflite")
    existing = tmp_path / "x.pt2"
    existing.write_bytes(b"old")
    with pytest.raises(OutputError, match="exists; pass --force"):
        export.export_network(child, existing)
    assert existing.read_bytes() == b"old"


def test_onnx_matches_graphnet(child, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    path = tmp_path / "child.onnx"
    report = export.export_network(child, path, fmt="onnx")
    assert (report.format, report.dtype, report.dynamic_batch) == ("onnx", "float32", True)
    assert report.max_rel_err <= export.TOLERANCE
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = inputs(child, 3)
    got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    with torch.inference_mode():
        assert rel_err(got, child.module()(x)) <= 1e-5  # float32, normwise, atol 0


def test_onnx_float64_is_refused(child, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    with pytest.raises(UsageError, match="no float64 convolution"):
        export.export_network(child, tmp_path / "c.onnx", fmt="onnx", dtype=torch.float64)
    assert list(tmp_path.iterdir()) == []


def test_the_arch_and_normalization_travel_in_the_archive(tmp_path):
    """A recorded normalization (not the default) and the arch name come back from the
    archive's extra/netmorph.json; --mean/--std given at import win over it."""
    model = zoo_models.build("se_resnet", width=4)
    net, _ = importers.import_factory(None, "zoo_models:se_resnet", kwargs={"width": 4})
    assert torch.equal(net.module()(inputs(net, 2)), model(inputs(net, 2)))
    net.meta["normalization"] = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    net.description["arch"] = "se_resnet+custom"
    export.export_network(net, tmp_path / "n.pt2")
    back, _ = importers.import_program(tmp_path / "n.pt2")
    assert back.description == net.description
    assert back.meta["normalization"] == net.meta["normalization"]
    mine, _ = importers.import_program(tmp_path / "n.pt2", mean=[0.5] * 3, std=[0.25] * 3)
    assert mine.meta["normalization"] == {"mean": [0.5] * 3, "std": [0.25] * 3}
