"""``program.read_pt2``: a torch.export archive is read without running anything in it.

Hostile archives are built by rewriting a real ``torch.export.save`` file member by member
(``zipfile``): a pickled weight that would run ``os.system``, Python in ``guards_code``,
strides reaching past a tensor's bytes, JSON nested past the cap, two programs, no
``archive_format``. Each is refused with a ``CheckpointError`` (or read without executing
it), and a marker file that the payload would create never appears. ``torch.export.load``,
which can run such code, is never called. ``run`` (the program's own ATen calls) is checked
against the original modules of the zoo.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shlex
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

import zoo_models
from netmorph_cli.base.limits import MAX_JSON_DEPTH
from netmorph_cli.errors import CheckpointError
from netmorph_cli.io import importers, program

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64
EXACT = 1e-12  # relative: the same ATen calls on the same float64 numbers
CONFIG = "data/weights/model_weights_config.json"
MODEL = "models/model.json"


class Tiny(nn.Module):
    """conv(bias) - BN - ReLU - global mean - linear: a small real program."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def tiny() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        m = Tiny()
        with torch.no_grad():
            m.bn.running_mean.uniform_(-0.5, 0.5)
            m.bn.running_var.uniform_(0.5, 2.0)
    return m.eval()


@pytest.fixture(scope="module")
def real(tmp_path_factory, one_thread) -> Path:
    """A real ``torch.export.save`` archive of ``Tiny`` (float32)."""
    path = tmp_path_factory.mktemp("real") / "tiny.pt2"
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.export.save(torch.export.export(tiny(), (x,)), path)
    return path


def root_of(path: Path) -> str:
    with zipfile.ZipFile(path) as z:
        fmt = next(n for n in z.namelist() if n.endswith("archive_format"))
    return fmt[: -len("archive_format")]


def rewrite(src: Path, dst: Path, *, replace: dict[str, bytes] | None = None,
            drop: tuple[str, ...] = (), add: dict[str, bytes] | None = None) -> Path:
    """Copy every member of ``src`` to ``dst`` (names relative to the archive's root folder),
    replacing, dropping or adding some."""
    root = root_of(src)
    replace = replace or {}
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            rel = info.filename[len(root):]
            if rel in drop:
                continue
            zout.writestr(info, replace.get(rel, zin.read(info)))
        for rel, data in (add or {}).items():
            zout.writestr(root + rel, data)
    return dst


def member(path: Path, rel: str) -> bytes:
    with zipfile.ZipFile(path) as z:
        return z.read(root_of(path) + rel)


def config(path: Path) -> dict:
    return json.loads(member(path, CONFIG))


def with_weight(path: Path, fqn: str, edit) -> tuple[dict, str]:
    """The weights config with ``edit(meta)`` applied to ``fqn``'s entry, and its member."""
    cfg = config(path)
    meta = cfg["config"][fqn]
    edit(meta)
    return cfg, f"data/weights/{meta['path_name']}"


@pytest.fixture
def no_export_load(monkeypatch):
    """``torch.export.load`` (and the archive loader under it) must never be called."""
    def refuse(*args, **kwargs):
        raise AssertionError("torch.export.load was called")

    monkeypatch.setattr(torch.export, "load", refuse)
    return refuse


# --------------------------------------------------------------------------------------------
# the baseline: a rewritten real archive reads, and computes the model

def test_a_rewritten_archive_reads_like_the_original(real, tmp_path, no_export_load):
    """The rewriting itself changes nothing (so each refusal below is the edit's doing)."""
    copy = rewrite(real, tmp_path / "copy.pt2")
    assert program.is_pt2(copy)
    a, b = program.read_pt2(real), program.read_pt2(copy)
    assert [c.target for c in a.calls] == [c.target for c in b.calls]
    assert a.tensors.keys() == b.tensors.keys()
    assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
    assert a.input_shape == (2, 3, 8, 8)
    model = tiny()
    assert torch.equal(b.tensors["conv.weight"], model.conv.weight.detach())
    assert torch.equal(b.tensors["bn.running_var"], model.bn.running_var)
    x = torch.randn(3, 3, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model.double()(x)
    out = program.run(b, x)
    assert ((out - ref).abs().max() / ref.abs().max()).item() <= EXACT


# --------------------------------------------------------------------------------------------
# pickles

class Evil:
    """Unpickling calls ``os.system`` to create a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def pickled_weight(real: Path, dst: Path, payload: bytes, fqn: str = "conv.weight") -> Path:
    def edit(meta):
        meta["use_pickle"] = True

    cfg, rel = with_weight(real, fqn, edit)
    return rewrite(real, dst, replace={rel: payload, CONFIG: json.dumps(cfg).encode()})


def torch_saved(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@pytest.mark.parametrize("how", ["pickle.dumps", "torch.save"])
def test_malicious_pickled_weight_is_refused_and_never_run(real, tmp_path, no_export_load,
                                                           how):
    def payload_for(marker: Path) -> bytes:
        return pickle.dumps(Evil(marker)) if how == "pickle.dumps" else \
            torch_saved({"w": Evil(marker)})

    # the control: such a payload really runs when unpickled the unsafe way
    live = tmp_path / "live"
    if how == "pickle.dumps":
        pickle.loads(payload_for(live))
    else:
        torch.load(io.BytesIO(payload_for(live)), weights_only=False)
    assert live.exists()
    marker = tmp_path / "pwned"
    payload = payload_for(marker)
    bad = pickled_weight(real, tmp_path / "evil.pt2", payload)
    with pytest.raises(CheckpointError) as info:
        program.read_pt2(bad)
    msg = str(info.value)
    assert str(bad) in msg and "'conv.weight'" in msg
    assert "torch.load(weights_only=True) refuses" in msg and "never does" in msg
    with pytest.raises(CheckpointError):  # the importer stops there too
        importers.import_program(bad)
    assert not marker.exists()


def test_pickled_plain_tensor_is_accepted(real, tmp_path, no_export_load):
    want = torch.arange(108, dtype=torch.float32).reshape(4, 3, 3, 3) / 100
    ok = pickled_weight(real, tmp_path / "pickled.pt2", torch_saved(want))
    prog = program.read_pt2(ok)
    assert torch.equal(prog.tensors["conv.weight"], want)
    assert type(prog.tensors["conv.weight"]) is torch.Tensor


def test_pickled_non_tensor_is_refused(real, tmp_path):
    bad = pickled_weight(real, tmp_path / "dict.pt2", torch_saved({"a": torch.zeros(1)}))
    with pytest.raises(CheckpointError, match="a pickled dict, not a plain tensor"):
        program.read_pt2(bad)


def test_sample_inputs_pickle_is_never_read(real, tmp_path, no_export_load):
    """The archive's pickled example inputs are not needed and never unpickled."""
    marker = tmp_path / "pwned"
    bad = rewrite(real, tmp_path / "samples.pt2",
                  replace={"data/sample_inputs/model.pt": pickle.dumps(Evil(marker))})
    assert program.read_pt2(bad).tensors
    assert not marker.exists()


def test_guards_code_is_never_executed(real, tmp_path, no_export_load):
    marker = tmp_path / "guarded"
    ep = json.loads(member(real, MODEL))
    assert "guards_code" in ep  # the field torch turns into Python functions
    code = f"open({str(marker)!r}, 'w').write('ran')"
    ep["guards_code"] = [code, f"__import__('os').system('touch {marker}')"]
    bad = rewrite(real, tmp_path / "guards.pt2", replace={MODEL: json.dumps(ep).encode()})
    try:
        program.read_pt2(bad)
    except CheckpointError:
        pass  # refusing is fine; running it is not
    assert not marker.exists()


# --------------------------------------------------------------------------------------------
# malformed structure

@pytest.mark.parametrize("edit,needle", [
    (lambda m: m["tensor_meta"].update(strides=[{"as_int": 100}, {"as_int": 9},
                                                {"as_int": 3}, {"as_int": 1}]),
     "reach beyond its 108 stored values"),
    (lambda m: m["tensor_meta"].update(storage_offset={"as_int": 1}), "reach beyond"),
    (lambda m: m["tensor_meta"].update(storage_offset={"as_int": -1}), "reach beyond"),
    (lambda m: m["tensor_meta"]["strides"].__setitem__(0, {"as_int": -27}), "reach beyond"),
    (lambda m: m["tensor_meta"]["sizes"].__setitem__(0, {"as_int": 5}), "reach beyond"),
    (lambda m: m["tensor_meta"].update(dtype=99), "a dtype netmorph does not read"),
])
def test_tensor_that_reaches_beyond_its_bytes_is_refused(real, tmp_path, edit, needle):
    cfg, _ = with_weight(real, "conv.weight", edit)
    bad = rewrite(real, tmp_path / "strides.pt2", replace={CONFIG: json.dumps(cfg).encode()})
    with pytest.raises(CheckpointError, match="tensor 'conv.weight'") as info:
        program.read_pt2(bad)
    assert needle in str(info.value)


def test_bytes_not_a_whole_number_of_values(real, tmp_path):
    cfg = config(real)
    rel = f"data/weights/{cfg['config']['conv.weight']['path_name']}"
    bad = rewrite(real, tmp_path / "odd.pt2", replace={rel: member(real, rel)[:-3]})
    with pytest.raises(CheckpointError, match="is not a whole number of"):
        program.read_pt2(bad)


def test_json_nested_deeper_than_the_cap_is_refused(real, tmp_path):
    depth = MAX_JSON_DEPTH + 10
    deep = ('{"graph_module": ' + "[" * depth + "]" * depth + "}").encode()
    bad = rewrite(real, tmp_path / "deep.pt2", replace={MODEL: deep})
    with pytest.raises(CheckpointError, match=f"nested more than {MAX_JSON_DEPTH} levels"):
        program.read_pt2(bad)
    # the weights config too
    bad = rewrite(real, tmp_path / "deep2.pt2",
                  replace={CONFIG: ("[" * depth + "]" * depth).encode()})
    with pytest.raises(CheckpointError, match="nested more than"):
        program.read_pt2(bad)


def test_two_programs_are_refused(real, tmp_path):
    bad = rewrite(real, tmp_path / "two.pt2", add={"models/other.json": member(real, MODEL)})
    with pytest.raises(CheckpointError, match=r"holds 2 programs \(model, other\); netmorph "
                                              "imports one"):
        program.read_pt2(bad)


def test_zip_without_archive_format_is_refused(real, tmp_path):
    bad = rewrite(real, tmp_path / "noformat.pt2", drop=("archive_format",))
    assert not program.is_pt2(bad)
    with pytest.raises(CheckpointError, match="not a torch.export archive"):
        program.read_pt2(bad)


def test_wrong_archive_format_is_refused(real, tmp_path):
    bad = rewrite(real, tmp_path / "fmt.pt2", replace={"archive_format": b"pt3"})
    with pytest.raises(CheckpointError, match="archive format 'pt3'"):
        program.read_pt2(bad)


def test_legacy_pickled_weights_are_refused(real, tmp_path):
    cfg = config(real)
    weights = {f"data/weights/{m['path_name']}" for m in cfg["config"].values()}
    bad = rewrite(real, tmp_path / "legacy.pt2", drop=(CONFIG, *weights),
                  add={"data/weights/model.pt": pickle.dumps(Evil(tmp_path / "pwned"))})
    with pytest.raises(CheckpointError, match="legacy pickled format"):
        program.read_pt2(bad)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("data", [b"", b"not a zip at all", b"PK\x03\x04garbage"])
def test_not_a_zip(tmp_path, data):
    path = tmp_path / "x.pt2"
    path.write_bytes(data)
    assert not program.is_pt2(path)
    with pytest.raises(CheckpointError, match="is not a torch.export program file"):
        program.read_pt2(path)


def test_missing_file(tmp_path):
    assert not program.is_pt2(tmp_path / "none.pt2")
    with pytest.raises(CheckpointError, match="cannot read"):
        program.read_pt2(tmp_path / "none.pt2")


def test_graph_in_an_unknown_form(real, tmp_path):
    ep = json.loads(member(real, MODEL))
    del ep["graph_module"]["signature"]
    bad = rewrite(real, tmp_path / "nosig.pt2", replace={MODEL: json.dumps(ep).encode()})
    with pytest.raises(CheckpointError, match="not in a form netmorph knows"):
        program.read_pt2(bad)


# --------------------------------------------------------------------------------------------
# run(program, x) against the original modules

@pytest.mark.parametrize("name", list(zoo_models.ZOO))
def test_run_equals_the_model(tmp_path, no_export_load, name):
    model = zoo_models.build(name).double().eval()
    x = zoo_models.example_input(2, dtype=F64)
    path = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(model, (x,)), path)
    prog = program.read_pt2(path)
    fresh = torch.randn(3, 3, 32, 32, dtype=F64, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        ref = model(fresh)
        out = program.run(prog, fresh)
    assert out.shape == (3, 10)
    assert ((out - ref).abs().max() / ref.abs().max()).item() <= EXACT
    # the traced program (from the module, no file) is the same
    traced = program.trace(model, x)
    assert [c.target for c in traced.calls] == [c.target for c in prog.calls]
    assert [c.module for c in traced.calls] == [c.module for c in prog.calls]
    assert traced.input_shape == prog.input_shape == (2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(program.run(traced, fresh), out)


def test_a_damaged_compressed_record_is_one_error(real, tmp_path):
    """A deflated archive whose model.json bytes are damaged: zlib's error becomes one
    CheckpointError naming the file (torch writes stored records; a crafted file need not)."""
    src = zipfile.ZipFile(real)
    dst = tmp_path / "damaged.pt2"
    with zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for info in src.infolist():
            z.writestr(info.filename, src.read(info.filename))
    data = bytearray(dst.read_bytes())
    at = data.find(b"models/model.json") + 200  # inside its compressed bytes
    data[at:at + 60] = bytes(b ^ 0x5A for b in data[at:at + 60])
    dst.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="damaged torch.export archive"):
        program.read_pt2(dst)
