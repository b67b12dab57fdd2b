"""Checkpoints: bit-exact round trips, atomic writes, refusals, bad files, importers."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from netmorph_cli import __version__
from netmorph_cli.errors import CheckpointError, NetworkError, OutputError, WriteError
from netmorph_cli.io import checkpoint as ck
from netmorph_cli.io import importers, outputs
from netmorph_cli.network import zoo
from netmorph_cli.network.description import FORMAT, Network, node

FORMATS = (".safetensors", ".pt")


# --------------------------------------------------------------------------------------------
# helpers

def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal dtype, shape and bytes (unlike torch.equal, NaN payloads and -0.0 count)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.contiguous().reshape(-1).view(torch.uint8),
                       b.contiguous().reshape(-1).view(torch.uint8))


def assert_same_network(a: Network, b: Network) -> None:
    assert a.description == b.description
    assert a.history == b.history
    assert list(a.tensors) == list(b.tensors)
    for k in a.tensors:
        assert same_bits(a.tensors[k], b.tensors[k]), k


def tiny(dtype: torch.dtype = torch.float32) -> Network:
    """A hand-made description: conv(bias) → BN → ReLU → GAP → linear, 2 classes."""
    desc = {"format": FORMAT, "arch": "tiny", "input": [2, 5, 5], "num_classes": 2,
            "output": "fc", "nodes": [
                node("conv", "conv", ["input"], **{"in": 2, "out": 3}, kernel=[3, 3],
                     padding=[1, 1], bias=True),
                node("bn", "bn", ["conv"], channels=3),
                node("act", "relu", ["bn"]),
                node("pool", "gap", ["act"]),
                node("fc", "linear", ["pool"], **{"in": 3, "out": 2})]}
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(3, 2, 3, 3, generator=gen, dtype=torch.float64).to(dtype)
    top = torch.finfo(dtype).max  # extremes that stay finite: non-finite weights are refused
    w.view(-1)[:4] = torch.tensor([-0.0, top, -top, 1e-40], dtype=torch.float64).to(dtype)
    tensors = {
        "conv.weight": w, "conv.bias": torch.randn(3, generator=gen).to(dtype),
        "bn.weight": torch.rand(3, generator=gen).to(dtype) + 0.5,
        "bn.bias": torch.randn(3, generator=gen).to(dtype),
        "bn.running_mean": torch.randn(3, generator=gen).to(dtype),
        "bn.running_var": torch.rand(3, generator=gen).to(dtype) + 0.5,
        "bn.num_batches_tracked": torch.tensor(123456789012, dtype=torch.long),  # 0-dim int64
        "fc.weight": torch.randn(2, 3, generator=gen).to(dtype),
        "fc.bias": torch.randn(2, generator=gen).to(dtype)}
    history = [{"morph": "1c1", "at": "layer2.1", "seed": 3, "residual": 1.25e-7}]
    meta = {"normalization": {"mean": [0.5, 0.5], "std": [0.25, 0.25]},
            "parent_sha256": "ab" * 32}
    return Network(desc, tensors, history, meta).check()


@pytest.fixture(scope="module")
def resnet20() -> Network:
    return zoo.create("resnet20", seed=4)


@pytest.fixture(scope="module")
def resnet20_a() -> Network:
    return zoo.create("resnet20", seed=5, shortcut="A")


@pytest.fixture(scope="module")
def resnet18() -> Network:
    return zoo.create("resnet18", num_classes=7, seed=6)


def evil_pickle(payload: str, marker: Path) -> object:
    """An object whose unpickling creates ``marker`` (a real code-execution payload)."""
    class Evil:
        def __reduce__(self):
            if payload == "open":
                return (open, (str(marker), "w"))
            return (exec, (f"open({str(marker)!r}, 'w').close()",))
    return Evil()


# --------------------------------------------------------------------------------------------
# round trips

@pytest.mark.parametrize("suffix", FORMATS)
def test_zoo_round_trip_is_bit_identical(tmp_path, resnet20, suffix):
    path = tmp_path / f"net{suffix}"
    digest = ck.save(resnet20, path)
    assert digest == ck.file_sha256(path) and len(digest) == 64
    back = ck.load(path)
    assert_same_network(resnet20, back)
    assert back.meta == resnet20.meta
    for k, t in back.tensors.items():
        assert torch.equal(t, resnet20.tensors[k]) and t.dtype == resnet20.tensors[k].dtype
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(resnet20.module()(x), back.module()(x))


@pytest.mark.parametrize("suffix", FORMATS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_tiny_round_trip_keeps_every_bit(tmp_path, suffix, dtype):
    net = tiny(dtype)
    path = tmp_path / f"tiny{suffix}"
    ck.save(net, path)
    back = ck.load(path)
    assert_same_network(net, back)
    assert back.meta == net.meta and back.history == net.history
    nbt = back.tensors["bn.num_batches_tracked"]
    assert nbt.dtype == torch.long and nbt.dim() == 0 and nbt.item() == 123456789012
    w = back.tensors["conv.weight"].view(-1)
    top = torch.finfo(dtype).max
    assert w[1] == top and w[2] == -top and torch.signbit(w[0])


def test_pt_file_is_a_plain_weights_only_dict(tmp_path):
    net = tiny()
    ck.save(net, tmp_path / "n.pt")
    obj = torch.load(tmp_path / "n.pt", map_location="cpu", weights_only=True)
    assert type(obj) is dict
    assert obj["netmorph"] == 1 and obj["version"] == __version__
    assert json.loads(obj["description"]) == net.description
    assert json.loads(obj["history"]) == net.history
    assert json.loads(obj["meta"]) == net.meta
    assert set(obj["state_dict"]) == set(net.tensors)


def test_safetensors_metadata_is_json_strings(tmp_path):
    net = tiny()
    ck.save(net, tmp_path / "n.safetensors")
    with safe_open(tmp_path / "n.safetensors", framework="pt") as f:
        md = f.metadata()
        assert set(f.keys()) == set(net.tensors)
    assert md["format"] == "netmorph" and md["version"] == __version__
    assert json.loads(md["description"]) == net.description
    assert json.loads(md["history"]) == net.history
    assert json.loads(md["meta"]) == net.meta


@pytest.mark.parametrize("suffix", FORMATS)
def test_views_and_shared_storage_are_saved_compactly(tmp_path, suffix):
    net = tiny(torch.float64)
    base = torch.randn(2, 3, 3, 3, dtype=torch.float64)
    net.tensors["conv.weight"] = base.transpose(0, 1)  # non-contiguous view
    big = torch.randn(1000, dtype=torch.float64)
    net.tensors["bn.weight"] = big[10:13]  # offset view of a large storage
    net.tensors["bn.bias"] = big[10:13]  # shares storage with bn.weight
    path = tmp_path / f"v{suffix}"
    ck.save(net, path)
    assert path.stat().st_size < 8000  # the 8 kB storage behind the view is not written
    back = ck.load(path)
    assert_same_network(net, back)


def test_format_is_detected_by_content_not_suffix(tmp_path):
    net = tiny()
    ck.save(net, tmp_path / "a.safetensors")
    ck.save(net, tmp_path / "b.pt")
    shutil.copy(tmp_path / "a.safetensors", tmp_path / "a.pt")
    shutil.copy(tmp_path / "b.pt", tmp_path / "b.safetensors")
    assert_same_network(net, ck.load(tmp_path / "a.pt"))
    assert_same_network(net, ck.load(str(tmp_path / "b.safetensors")))
    ck.save(net, tmp_path / "c.pth")
    ck.save(net, tmp_path / "d.ckpt")
    assert (tmp_path / "c.pth").read_bytes()[:4] == b"PK\x03\x04"  # torch zip
    assert (tmp_path / "d.ckpt").read_bytes()[8:9] == b"{"  # safetensors header
    assert_same_network(net, ck.load(tmp_path / "c.pth"))
    assert_same_network(net, ck.load(tmp_path / "d.ckpt"))


@pytest.mark.parametrize("low_byte", [0x80, 0x50])  # 0x80 opens a legacy pickle (the
# header is padded to 8 bytes, so the low byte is a multiple of 8)
def test_safetensors_header_length_may_start_with_any_byte(tmp_path, low_byte):
    """The first byte of a safetensors file is the low byte of its header length; a
    checkpoint whose header is 128 mod 256 bytes long once read as a legacy pickle."""
    net = tiny()
    for pad in range(300):
        net.meta["note"] = "x" * pad
        ck.save(net, tmp_path / "n.safetensors", force=True)
        if (tmp_path / "n.safetensors").read_bytes()[0] == low_byte:
            break
    else:
        pytest.fail(f"no padding gave a header length ending in byte {low_byte:#x}")
    assert_same_network(net, ck.load(tmp_path / "n.safetensors"))
    assert ck.load(tmp_path / "n.safetensors").meta["note"] == net.meta["note"]

def test_sha256_is_not_stored_inside(tmp_path):
    net = tiny()
    net.meta["sha256"] = "stale"
    ck.save(net, tmp_path / "n.safetensors")
    back = ck.load(tmp_path / "n.safetensors")
    assert "sha256" not in back.meta
    assert back.meta["parent_sha256"] == "ab" * 32


@pytest.mark.parametrize("suffix", FORMATS)
def test_same_network_same_bytes(tmp_path, resnet20, suffix):
    """sha256 identifies a network: saving it again gives the same file (the safetensors
    writer's header order is random from one call to the next until made canonical)."""
    net = resnet20.to(resnet20.dtype)  # a copy: the fixture is shared
    net.meta["note"] = {"b": 1, "a": [1, 2], "c": "x"}
    digests = {ck.save(net, tmp_path / f"{i}{suffix}") for i in range(4)}
    assert len(digests) == 1
    assert {ck.file_sha256(tmp_path / f"{i}{suffix}") for i in range(4)} == digests
    back = ck.load(tmp_path / f"0{suffix}")
    assert_same_network(net, back)
    if suffix == ".safetensors":  # still a valid file for the reference reader
        with safe_open(tmp_path / "0.safetensors", "pt") as f:
            assert sorted(f.keys()) == sorted(net.tensors)
            assert f.metadata()["format"] == "netmorph"
            for k in net.tensors:
                assert same_bits(f.get_tensor(k), net.tensors[k]), k
        head = (tmp_path / "0.safetensors").read_bytes()[:8]
        assert int.from_bytes(head, "little") % 8 == 0  # the header keeps its padding


def test_invalid_network_is_not_written(tmp_path):
    net = tiny()
    del net.tensors["fc.bias"]
    with pytest.raises(NetworkError, match="fc.bias"):
        ck.save(net, tmp_path / "n.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_unserializable_meta_is_refused(tmp_path):
    net = tiny()
    net.meta["bad"] = object()
    with pytest.raises(CheckpointError, match="meta cannot be stored"):
        ck.save(net, tmp_path / "n.safetensors")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# atomic writes, --force, protected inputs

@pytest.mark.parametrize("suffix", FORMATS)
def test_failed_replace_leaves_old_file_and_no_temp(tmp_path, monkeypatch, suffix):
    path = tmp_path / f"n{suffix}"
    ck.save(tiny(), path)
    old = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(WriteError, match="cannot write .*No space left"):
        ck.save(tiny(torch.float64), path, force=True)
    assert path.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


@pytest.mark.parametrize("exc", [RuntimeError("disk vanished"), KeyboardInterrupt()])
def test_failure_mid_write_leaves_old_file_and_no_temp(tmp_path, monkeypatch, exc):
    path = tmp_path / "n.pt"
    ck.save(tiny(), path)
    old = path.read_bytes()
    seen = []

    def half_write(obj, f):
        f.write(b"PK\x03\x04 half a file")
        seen.extend(p for p in tmp_path.iterdir() if p != path)
        raise exc

    monkeypatch.setattr(torch, "save", half_write)
    with pytest.raises((CheckpointError, KeyboardInterrupt)):
        ck.save(tiny(torch.float64), path, force=True)
    assert len(seen) == 1 and not seen[0].exists()  # the temp file was beside it, now gone
    assert path.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_safetensors_writer_failure_leaves_nothing(tmp_path, monkeypatch):
    def boom(tensors, metadata=None):
        raise ValueError("writer broke")

    monkeypatch.setattr(ck.st, "save", boom)
    with pytest.raises(CheckpointError, match="writer broke"):
        ck.save(tiny(), tmp_path / "n.safetensors")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", FORMATS)
def test_existing_output_needs_force(tmp_path, suffix):
    path = tmp_path / f"n{suffix}"
    ck.save(tiny(), path)
    old = path.read_bytes()
    with pytest.raises(OutputError, match=r"exists; pass --force to overwrite"):
        ck.save(tiny(torch.float64), path)
    assert path.read_bytes() == old
    ck.save(tiny(torch.float64), path, force=True)
    assert ck.load(path).tensors["fc.weight"].dtype == torch.float64


def test_written_file_has_the_usual_mode(tmp_path):
    ck.save(tiny(), tmp_path / "n.safetensors")
    mode = (tmp_path / "n.safetensors").stat().st_mode & 0o777
    assert mode == 0o666 & ~outputs._umask()


def test_input_is_never_overwritten(tmp_path, monkeypatch):
    src = tmp_path / "parent.safetensors"
    ck.save(tiny(), src)
    old = src.read_bytes()
    (tmp_path / "link.safetensors").symlink_to(src)
    os.link(src, tmp_path / "hard.safetensors")
    monkeypatch.chdir(tmp_path)
    for out in (src, "parent.safetensors", tmp_path / "." / "parent.safetensors",
                tmp_path / "link.safetensors", tmp_path / "hard.safetensors"):
        with pytest.raises(OutputError, match="refusing to overwrite the input"):
            ck.save(tiny(torch.float64), out, force=True, protect=[src])
    with pytest.raises(OutputError, match="refusing to overwrite the input"):
        ck.save(tiny(torch.float64), src, force=True, protect=["other.pt", str(src)])
    assert src.read_bytes() == old
    ck.save(tiny(), tmp_path / "child.safetensors", protect=[src])  # other outputs are fine


def test_missing_output_directory_and_directory_output(tmp_path):
    with pytest.raises(OutputError, match="output directory .*nope.* does not exist"):
        ck.save(tiny(), tmp_path / "nope" / "n.safetensors")
    (tmp_path / "d.safetensors").mkdir()
    with pytest.raises(OutputError, match="is a directory"):
        ck.save(tiny(), tmp_path / "d.safetensors", force=True)


# --------------------------------------------------------------------------------------------
# bad files

def test_missing_directory_and_empty_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        ck.load(tmp_path / "absent.safetensors")
    with pytest.raises(CheckpointError, match="is a directory"):
        ck.load(tmp_path)
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"is empty \(0 bytes\)"):
        ck.load(tmp_path / "empty.pt")


@pytest.mark.parametrize("cut", [3, 8, 20, -1, -40])
def test_truncated_safetensors(tmp_path, cut):
    ck.save(tiny(), tmp_path / "n.safetensors")
    data = (tmp_path / "n.safetensors").read_bytes()
    (tmp_path / "t.safetensors").write_bytes(data[:cut])
    with pytest.raises(CheckpointError, match="truncated|not a checkpoint") as err:
        ck.load(tmp_path / "t.safetensors")
    assert "t.safetensors" in str(err.value)


@pytest.mark.parametrize("cut", [100, -30])
def test_truncated_pt(tmp_path, cut):
    ck.save(tiny(), tmp_path / "n.pt")
    data = (tmp_path / "n.pt").read_bytes()
    (tmp_path / "t.pt").write_bytes(data[:cut])
    with pytest.raises(CheckpointError, match="corrupt or truncated PyTorch file"):
        ck.load(tmp_path / "t.pt")


def test_truncated_legacy_pt(tmp_path):
    torch.save({"a": torch.zeros(4)}, tmp_path / "l.pt", _use_new_zipfile_serialization=False)
    data = (tmp_path / "l.pt").read_bytes()
    (tmp_path / "t.pt").write_bytes(data[:-10])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        ck.load(tmp_path / "t.pt")


@pytest.mark.parametrize("data", [b"hello world, not weights", b"\x00" * 64,
                                  b"\xa7" * 3, b"PK\x03\x04" + b"zz" * 50])
def test_garbage_bytes(tmp_path, data):
    (tmp_path / "g.safetensors").write_bytes(data)
    with pytest.raises(CheckpointError, match="g.safetensors"):
        ck.load(tmp_path / "g.safetensors")


def test_garbage_safetensors_header(tmp_path):
    header = b"{not json at all"
    (tmp_path / "g.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    with pytest.raises(CheckpointError, match="corrupt or truncated safetensors"):
        ck.load(tmp_path / "g.safetensors")


@pytest.mark.parametrize("metadata", [None, {"format": "pt"}])
def test_foreign_safetensors_suggests_import(tmp_path, metadata):
    save_file({"conv1.weight": torch.zeros(2, 3)}, tmp_path / "f.safetensors", metadata)
    with pytest.raises(CheckpointError, match="not a netmorph checkpoint.*`netmorph import"):
        ck.load(tmp_path / "f.safetensors")


@pytest.mark.parametrize("wrap", [False, True])
def test_foreign_pt_state_dict_suggests_import(tmp_path, wrap, resnet20):
    sd = OrderedDict(resnet20.tensors)
    torch.save({"epoch": 3, "state_dict": sd} if wrap else sd, tmp_path / "sd.pt")
    with pytest.raises(CheckpointError,
                       match=r"plain PyTorch state_dict, not a netmorph.*`netmorph import"):
        ck.load(tmp_path / "sd.pt")


@pytest.mark.parametrize("obj", [[1, 2, 3], {"weights": [1.0]}])
def test_foreign_pt_object(tmp_path, obj):
    torch.save(obj, tmp_path / "o.pt")
    with pytest.raises(CheckpointError, match="not a netmorph checkpoint"):
        ck.load(tmp_path / "o.pt")


@pytest.mark.parametrize("container", ["torch-zip", "torch-legacy", "raw-pickle"])
@pytest.mark.parametrize("payload", ["open", "exec"])
@pytest.mark.parametrize("reader", ["load", "import"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, container, payload, reader):
    marker = tmp_path / "pwned"
    evil = evil_pickle(payload, marker)
    path = tmp_path / "evil.pt"
    obj = {"conv1.weight": torch.zeros(1), "x": evil}
    if container == "torch-zip":
        torch.save(obj, path)
    elif container == "torch-legacy":
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(obj, protocol=2))
    read = ck.load if reader == "load" else importers.import_state_dict
    with pytest.raises(CheckpointError) as err:
        read(path)
    assert not marker.exists()
    msg = str(err.value)
    assert msg.startswith("refusing to load '") and "evil.pt" in msg
    assert "pickled objects other than tensors" in msg and "netmorph only reads weights" in msg
    assert ("open" if payload == "open" else "exec") in msg  # names the culprit
    # the payload is live: an unsafe reader does run it
    if container == "raw-pickle":
        pickle.loads(path.read_bytes())
    else:
        torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("suffix", FORMATS)
def test_newer_checkpoint_format_is_refused(tmp_path, suffix):
    net = tiny()
    path = tmp_path / f"future{suffix}"
    fields = {"description": json.dumps(net.description), "history": "[]", "meta": "{}"}
    if suffix == ".pt":
        torch.save({"netmorph": 2, "version": "9.0.0", **fields, "state_dict": net.tensors},
                   path)
    else:
        save_file(net.tensors, path, {"format": "netmorph", "netmorph": "2",
                                      "version": "9.0.0", **fields})
    with pytest.raises(CheckpointError, match=r"newer netmorph \(9\.0\.0.*format 2.*upgrade"):
        ck.load(path)


def test_newer_description_format_is_refused(tmp_path):
    net = tiny()
    desc = dict(net.description, format=FORMAT + 1)
    save_file(net.tensors, tmp_path / "f.safetensors",
              {"format": "netmorph", "netmorph": "1", "version": "9.0.0",
               "description": json.dumps(desc), "history": "[]", "meta": "{}"})
    with pytest.raises(CheckpointError, match="description of format 2.*upgrade netmorph"):
        ck.load(tmp_path / "f.safetensors")


def write_raw(path: Path, tensors, description, history="[]", meta="{}") -> None:
    if path.suffix == ".pt":
        torch.save({"netmorph": 1, "version": __version__, "description": description,
                    "history": history, "meta": meta, "state_dict": tensors}, path)
    else:
        save_file(tensors, path, {"format": "netmorph", "netmorph": "1", "version": __version__,
                                  "description": description, "history": history,
                                  "meta": meta})


@pytest.mark.parametrize("suffix", FORMATS)
def test_tensors_that_do_not_match_the_description(tmp_path, suffix):
    net = tiny()
    desc = json.dumps(net.description)
    missing = {k: v for k, v in net.tensors.items() if k != "bn.running_var"}
    write_raw(tmp_path / f"m{suffix}", missing, desc)
    with pytest.raises(CheckpointError, match="does not hold a valid network.*bn.running_var"):
        ck.load(tmp_path / f"m{suffix}")
    wrong = dict(net.tensors, **{"fc.weight": torch.zeros(2, 4)})
    write_raw(tmp_path / f"w{suffix}", wrong, desc)
    with pytest.raises(CheckpointError, match=r"'fc.weight' has shape \(2, 4\)"):
        ck.load(tmp_path / f"w{suffix}")


@pytest.mark.parametrize("suffix", FORMATS)
@pytest.mark.parametrize("field", ["description", "history", "meta"])
def test_damaged_metadata(tmp_path, suffix, field):
    net = tiny()
    fields = {"description": json.dumps(net.description), "history": "[]", "meta": "{}"}
    fields[field] = "{broken" if field != "history" else '{"not": "a list"}'
    write_raw(tmp_path / f"d{suffix}", net.tensors, **fields)
    with pytest.raises(CheckpointError, match=f"damaged netmorph checkpoint: its {field}"):
        ck.load(tmp_path / f"d{suffix}")


# --------------------------------------------------------------------------------------------
# importing plain state_dicts

def cifar_state_dict(net: Network, prefix: str = "") -> OrderedDict:
    """What the common CIFAR ResNet code saves: no num_batches_tracked buffers."""
    return OrderedDict((prefix + k, v.clone()) for k, v in net.tensors.items()
                       if not k.endswith("num_batches_tracked"))


def assert_imported(net: Network, source: Network) -> None:
    assert net.description == source.description
    for k, t in source.tensors.items():
        if k.endswith("num_batches_tracked"):
            assert net.tensors[k].dtype == torch.long and net.tensors[k].dim() == 0
        else:
            assert same_bits(net.tensors[k], t), k
    c, h, w = source.description["input"]
    shape = [2, c, min(h, 64), min(w, 64)]  # any size works after global pooling; keep it quick
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(net.module(torch.float64)(x), source.module(torch.float64)(x),
                               rtol=0, atol=0)


def test_import_cifar_option_a_with_prefix_and_wrapper(tmp_path, resnet20_a):
    path = tmp_path / "akamaster_like.th"
    torch.save({"best_prec1": 91.5, "state_dict": cifar_state_dict(resnet20_a, "module.")},
               path, _use_new_zipfile_serialization=False)
    net = importers.import_state_dict(path)
    assert_imported(net, resnet20_a)
    assert net.description["arch"] == "resnet20" and net.description["num_classes"] == 10
    assert any(n["op"] == "shortcut_a" for n in net.description["nodes"])
    assert not any("shortcut" in k for k in net.tensors)
    assert all(net.tensors[k].item() == 0 for k in net.tensors if "num_batches" in k)
    assert net.meta["normalization"] == {"mean": [0.485, 0.456, 0.406],
                                         "std": [0.229, 0.224, 0.225]}
    assert net.meta["imported"] == {"file": path.name, "layout": "cifar-resnet",
                                    "sha256": ck.file_sha256(path),
                                    "extra": {"best_prec1": 91.5}}
    assert net.history == []
    assert importers.import_state_dict(path, arch="resnet20").description == net.description
    out = tmp_path / "imported.safetensors"
    ck.save(net, out, protect=[path])
    assert_same_network(net, ck.load(out))


def test_import_cifar_option_b_plain(tmp_path):
    source = zoo.create("resnet32", num_classes=100, seed=8)
    path = tmp_path / "b.pt"
    torch.save(cifar_state_dict(source), path)
    net = importers.import_state_dict(path)
    assert_imported(net, source)
    assert net.description["arch"] == "resnet32" and net.description["num_classes"] == 100
    assert "layer2.0.shortcut.0.weight" in net.tensors


def test_import_keeps_num_batches_tracked_and_casts_half(tmp_path, resnet20):
    sd = {k: (v.half() if v.is_floating_point() else v + 5) for k, v in resnet20.tensors.items()}
    torch.save({"model": sd}, tmp_path / "h.pt")
    net = importers.import_state_dict(tmp_path / "h.pt")
    for k, t in net.tensors.items():
        if k.endswith("num_batches_tracked"):
            assert t.dtype == torch.long and t.item() == 5
        else:
            assert t.dtype == torch.float32 and torch.equal(t, sd[k].float()), k


def test_import_torchvision_resnet18(tmp_path, resnet18):
    path = tmp_path / "tv.pth"
    torch.save({"model": OrderedDict(resnet18.tensors), "epoch": 90}, path)
    net = importers.import_state_dict(path)
    assert net.description["arch"] == "resnet18" and net.description["num_classes"] == 7
    assert net.meta["imported"]["layout"] == "torchvision-resnet"
    assert "layer2.0.downsample.0.weight" in net.tensors
    assert_imported(net, resnet18)


def test_import_torchvision_from_safetensors(tmp_path, resnet18):
    save_file(dict(resnet18.tensors), tmp_path / "tv.safetensors")
    net = importers.import_state_dict(tmp_path / "tv.safetensors")
    assert net.description["arch"] == "resnet18"
    assert net.meta["imported"]["layout"] == "torchvision-resnet"


def test_import_arch_asserts_detection(tmp_path, resnet20_a):
    torch.save(cifar_state_dict(resnet20_a), tmp_path / "r20.pt")
    with pytest.raises(CheckpointError, match=r"holds a resnet20 \(3 blocks.*not a resnet32"):
        importers.import_state_dict(tmp_path / "r20.pt", arch="resnet32")
    with pytest.raises(CheckpointError, match="cifar-resnet layout; resnet18 is a torchvision"):
        importers.import_state_dict(tmp_path / "r20.pt", arch="resnet18")
    with pytest.raises(CheckpointError, match="unknown architecture 'vgg16'"):
        importers.import_state_dict(tmp_path / "r20.pt", arch="vgg16")


def test_import_lists_unknown_and_missing_keys(tmp_path, resnet20_a):
    sd = cifar_state_dict(resnet20_a, "module.")
    sd["module.layer1.0.conv1.weight_renamed"] = sd.pop("module.layer1.0.conv1.weight")
    sd["module.extra_head.weight"] = torch.zeros(3)
    torch.save(sd, tmp_path / "k.pt")
    with pytest.raises(CheckpointError) as err:
        importers.import_state_dict(tmp_path / "k.pt")
    msg = str(err.value)
    assert "does not match resnet20 (cifar-resnet, option-A shortcuts)" in msg
    assert "unknown keys 'layer1.0.conv1.weight_renamed', 'extra_head.weight'" in msg
    assert "missing keys 'layer1.0.conv1.weight'" in msg


def test_import_many_missing_keys_are_counted(tmp_path, resnet20_a):
    sd = cifar_state_dict(resnet20_a)
    for k in [k for k in sd if k.startswith("layer3.")]:
        del sd[k]
    torch.save(sd, tmp_path / "k.pt")
    with pytest.raises(CheckpointError) as err:
        importers.import_state_dict(tmp_path / "k.pt", arch="resnet20")
    n = sum(1 for k in resnet20_a.tensors
            if k.startswith("layer3.") and "num_batches" not in k)
    assert f"… and {n - 8} more ({n} in all)" in str(err.value)
    assert "'layer3.0.conv1.weight'" in str(err.value)


def test_import_without_arch_reports_uneven_stages(tmp_path, resnet20_a):
    sd = cifar_state_dict(resnet20_a)
    for k in [k for k in sd if k.startswith("layer3.2.")]:
        del sd[k]
    torch.save(sd, tmp_path / "k.pt")
    with pytest.raises(CheckpointError, match=r"blocks per stage \(3, 3, 2\)"):
        importers.import_state_dict(tmp_path / "k.pt")


def test_import_wrong_shape_names_key_and_shapes(tmp_path, resnet20_a):
    sd = cifar_state_dict(resnet20_a)
    sd["linear.weight"] = torch.zeros(10, 32)
    torch.save(sd, tmp_path / "s.pt")
    with pytest.raises(CheckpointError,
                       match=r"'linear.weight' is \(10, 32\) in the file, resnet20 needs "
                             r"\(10, 64\)"):
        importers.import_state_dict(tmp_path / "s.pt")


@pytest.mark.parametrize("sd, match", [
    ({"features.0.weight": torch.zeros(3), "classifier.weight": torch.zeros(2, 2)},
     "not a ResNet state_dict of a known layout.*'features.0.weight'"),
    ({"conv1.weight": torch.zeros(64, 3, 7, 7), "layer1.0.conv3.weight": torch.zeros(1),
      "fc.weight": torch.zeros(10, 2048)}, "bottleneck ResNet"),
    ({"conv1.weight": torch.zeros(16, 3, 3, 3), "layer1.0.conv1.weight": torch.zeros(1),
      "layer2.0.conv1.weight": torch.zeros(1), "layer3.0.conv1.weight": torch.zeros(1),
      "linear.weight": torch.zeros(10, 64)}, r"CIFAR ResNet-8 .*not in netmorph's zoo"),
])
def test_import_unknown_layouts(tmp_path, sd, match):
    torch.save(sd, tmp_path / "u.pt")
    with pytest.raises(CheckpointError, match=match):
        importers.import_state_dict(tmp_path / "u.pt")


@pytest.mark.parametrize("suffix", FORMATS)
def test_import_refuses_netmorph_checkpoints(tmp_path, suffix):
    ck.save(tiny(), tmp_path / f"n{suffix}")
    with pytest.raises(CheckpointError, match="already a netmorph checkpoint"):
        importers.import_state_dict(tmp_path / f"n{suffix}")


def test_import_refuses_non_state_dicts(tmp_path):
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}}, tmp_path / "o.pt")
    with pytest.raises(CheckpointError, match="not a state_dict of tensors"):
        importers.import_state_dict(tmp_path / "o.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        importers.import_state_dict(tmp_path / "absent.pt")
