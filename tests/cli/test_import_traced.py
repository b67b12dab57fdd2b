"""``netmorph import`` of traced models (torch.export programs and ``--model`` factories) as
users meet it, on the zoo of ``tests/zoo_models.py``.

The pipeline of the issue, per zoo model, in float64: ``torch.export.save`` → ``import`` →
logits equal the original ``nn.Module``'s → ``morph --at`` (spec D) → ``verify`` → ``morph
--after`` (morph_1c1) → ``verify`` → ``export`` → ``import`` of the exported child. Every
comparison is against an independent computation: the original module's forward, run by
PyTorch, never netmorph's own formulas. Per-step wall time and error go to ``TIMINGS``; the
module's teardown prints them as a markdown table (``pytest -s`` shows it).

Then the factory path (``--model``), the options recorded in the checkpoint (``--input-size``,
``--mean``, ``--std``), ``info``, FLOPs against a hand count, and every bad input: one
``Error:`` line, exit code 2, no traceback and no output file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
import zipfile
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from cli_helpers import assert_one_error_line, run_main
from torch import nn

import zoo_models
from netmorph_cli.io import checkpoint as ck
from netmorph_cli.network.flops import count_flops
from netmorph_cli.training.data import DATASETS

pytestmark = pytest.mark.usefixtures("one_thread")

TESTS = Path(__file__).resolve().parents[1]
MODULES = TESTS.parent / "examples" / "modules"
NETMORPH = Path(sys.executable).with_name("netmorph")
F64 = torch.float64
EXACT = 1e-12  # relative, ‖Δ‖∞ / ‖ref‖∞: the same ops on the same float64 numbers
TOL = 1e-10  # the bound for float64 (and verify's default)
# float32: netmorph's module and the model run the same ops, maybe summed in another order
F32_TOL = 1e-5

# Models of the pipeline in the default run; the others are marked slow (make test-slow):
# each op they add is converted in tests/unit/test_conversion.py's default tests.
FAST = ("se_resnet",)
PIPELINE = [pytest.param(name, marks=() if name in FAST else pytest.mark.slow)
            for name in zoo_models.ZOO]

# model → step → (seconds, relative error or None)
TIMINGS: dict[str, dict[str, tuple[float, float | None]]] = defaultdict(dict)
STEPS = ("torch.export+save", "import", "logits vs model", "morph --at D", "verify d",
         "morph --after 1c1", "verify e", "export e.pt2", "import e.pt2", "back vs e")


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).abs().max() / ref.abs().max()).item()


def fresh_inputs(n: int = 5, side: int = 32, seed: int = 1234, dtype=F64) -> torch.Tensor:
    """Random inputs the importer's own check (seed 0) never saw."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, side, side, generator=g, dtype=dtype)


def logits(path: Path, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return ck.load(path).module(x.dtype)(x)


def timed(steps: dict, step: str, fn, *args):
    t = time.perf_counter()
    result = fn(*args)
    steps[step] = (time.perf_counter() - t, None)
    return result


def record_err(steps: dict, step: str, err: float) -> None:
    seconds = steps.get(step, (0.0, None))[0]
    steps[step] = (seconds, err)


def nothing_written(out: Path, *inputs: Path) -> None:
    assert not out.exists()
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(p.name for p in inputs)


@pytest.fixture(scope="module", autouse=True)
def timing_table():
    """Print the pipeline's per-step time and error as a markdown table at teardown."""
    yield
    if not TIMINGS:
        return
    lines = ["", "| model | " + " | ".join(STEPS) + " | total s |",
             "|---" * (len(STEPS) + 2) + "|"]
    for name, steps in TIMINGS.items():
        cells = []
        for step in STEPS:
            if step not in steps:
                cells.append("–")
                continue
            seconds, err = steps[step]
            cells.append(f"{seconds:.2f} s" if err is None else
                         (f"{err:.1e}" if seconds == 0 else f"{seconds:.2f} s, {err:.1e}"))
        total = sum(s for s, _ in steps.values())
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {total:.1f} |")
    print("\n".join(lines))


# --------------------------------------------------------------------------------------------
# the zoo, exported once per module (float64, eval mode)

_MODELS: dict[str, nn.Module] = {}


def model64(name: str) -> nn.Module:
    if name not in _MODELS:
        _MODELS[name] = zoo_models.build(name).double().eval()
    return _MODELS[name]


@pytest.fixture(scope="module")
def pt2_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("pt2")


_PT2: dict[str, Path] = {}


def exported(name: str, folder: Path) -> Path:
    """``torch.export.save(torch.export.export(model, (x,)), path)`` of a float64 zoo model,
    in a folder of its own (the pipeline's files are written beside it)."""
    if name not in _PT2:
        path = folder / name / "model.pt2"
        path.parent.mkdir()
        x = zoo_models.example_input(2, dtype=F64)
        t = time.perf_counter()
        torch.export.save(torch.export.export(model64(name), (x,)), path)
        TIMINGS[name]["torch.export+save"] = (time.perf_counter() - t, None)
        _PT2[name] = path
    return _PT2[name]


# --------------------------------------------------------------------------------------------
# the pipeline

_PIPE: dict[str, dict[str, Path]] = {}


def pipeline(name: str, capsys, folder: Path) -> dict[str, Path]:
    """Run import → morph --at → verify → morph --after → verify → export once per model,
    asserting each step; returns the files."""
    if name in _PIPE:
        return _PIPE[name]
    steps = TIMINGS[name]
    src = exported(name, folder)
    d = src.parent
    files = {"pt2": src, "net": d / "net.safetensors", "d": d / "d.safetensors",
             "e": d / "e.safetensors", "e.pt2": d / "e.pt2"}
    site = zoo_models.SITES[name]

    code, out, err = timed(steps, "import", run_main, capsys, "import", str(src), "-o",
                           str(files["net"]))
    assert code == 0, err
    assert err == ""
    assert re.fullmatch(rf"wrote {re.escape(str(files['net']))} \(model, 10 classes, \d+ "
                        r"nodes, float64; logits match the program to \d\.\de[+-]\d\d; "
                        r"sha256 [0-9a-f]{16}…\)", out.strip()), out

    x = fresh_inputs()
    with torch.no_grad():
        ref = model64(name)(x)
    e = rel_err(logits(files["net"], x), ref)
    record_err(steps, "logits vs model", e)
    assert e <= EXACT, f"{name}: imported logits differ from the model by {e:.3g}"

    code, out, err = timed(steps, "morph --at D", run_main, capsys, "morph", str(files["net"]),
                           "--module", str(MODULES / "D.json"), "--at", site["at"],
                           "-o", str(files["d"]))
    assert code == 0, err
    verify_json(capsys, steps, "verify d", files["net"], files["d"], [site["at"]])

    code, out, err = timed(steps, "morph --after 1c1", run_main, capsys, "morph",
                           str(files["d"]), "--module", str(MODULES / "morph_1c1.json"),
                           "--after", site["after"], "-o", str(files["e"]))
    assert code == 0, err
    verify_json(capsys, steps, "verify e", files["net"], files["e"],
                [site["at"], site["after"]])

    code, out, err = timed(steps, "export e.pt2", run_main, capsys, "export",
                           str(files["e"]), "-o", str(files["e.pt2"]), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["format"] == "pt2" and report["dtype"] == "float64"
    assert report["max_rel_err"] <= 1e-5
    _PIPE[name] = files
    return files


def verify_json(capsys, steps: dict, step: str, parent: Path, child: Path,
                sites: list[str]) -> None:
    code, out, err = timed(steps, step, run_main, capsys, "verify", str(parent), str(child),
                           "--dtype", "float64", "--json")
    assert code == 0, err
    r = json.loads(out)
    record_err(steps, step, r["max_rel_err"])
    assert r["passed"] is True and r["dtype"] == "float64" and r["inputs"] == "random"
    assert r["tolerance"] == TOL and r["samples"] == 64
    assert r["max_rel_err"] <= TOL and r["top1_agreement"] == 1.0
    assert [m["parent"] for m in r["modules"]] == sites
    assert all(m["max_rel_err"] <= TOL for m in r["modules"])


@pytest.mark.parametrize("name", PIPELINE)
def test_pipeline_import_morph_verify_export(capsys, pt2_dir, name):
    files = pipeline(name, capsys, pt2_dir)
    # the children grew: more conv tensors than the imported parent, same classes
    net, e = ck.load(files["net"]), ck.load(files["e"])
    assert e.description["num_classes"] == net.description["num_classes"] == 10
    assert len(e.tensors) > len(net.tensors)
    # and the grandchild's logits are the original model's (independently of verify)
    x = fresh_inputs(seed=99)
    with torch.no_grad():
        assert rel_err(logits(files["e"], x), model64(name)(x)) <= TOL


@pytest.mark.parametrize("name", PIPELINE)
def test_exported_child_imports_back(capsys, pt2_dir, name):
    """The child's explicit zero padding (aten.pad) and its joins' centre crops
    (aten.slice) import back: the same function and the same layers."""
    files = pipeline(name, capsys, pt2_dir)
    steps = TIMINGS[name]
    back = files["e.pt2"].with_name("back.safetensors")
    code, out, err = timed(steps, "import e.pt2", run_main, capsys, "import",
                           str(files["e.pt2"]), "-o", str(back))
    assert code == 0, err
    x = fresh_inputs(seed=7)
    err_back = rel_err(logits(back, x), logits(files["e"], x))
    record_err(steps, "back vs e", err_back)
    assert err_back <= TOL
    e_net, b_net = ck.load(files["e"]), ck.load(back)

    def shapes(net):
        return sorted(tuple(t.shape) for t in net.tensors.values())

    def layers(net):
        return sorted(n["op"] for n in net.description["nodes"] if n["op"] in ("conv", "linear"))

    assert shapes(b_net) == shapes(e_net)
    assert layers(b_net) == layers(e_net)
    # node for node, under the same names (GraphNet puts every op at its node's name)
    assert {n["name"]: n["op"] for n in b_net.description["nodes"]} == \
        {n["name"]: n["op"] for n in e_net.description["nodes"]}


def test_exported_parent_imports_back(capsys, pt2_dir):
    """Without a morph (no padded modules), export → import reproduces the network."""
    files = pipeline("vgg11_bn", capsys, pt2_dir)
    out_pt2 = files["net"].with_name("net_again.pt2")
    again = files["net"].with_name("net_again.safetensors")
    assert run_main(capsys, "export", str(files["net"]), "-o", str(out_pt2))[0] == 0
    code, out, err = run_main(capsys, "import", str(out_pt2), "-o", str(again))
    assert code == 0, err
    x = fresh_inputs(seed=5)
    assert rel_err(logits(again, x), logits(files["net"], x)) <= EXACT
    a, b = ck.load(again), ck.load(files["net"])
    assert sorted(tuple(t.shape) for t in a.tensors.values()) == \
        sorted(tuple(t.shape) for t in b.tensors.values())
    # layers keep their names: GraphNet holds them at the description's dotted paths
    convs = {n["name"] for n in b.description["nodes"] if n["op"] in ("conv", "linear", "bn")}
    assert convs <= {n["name"] for n in a.description["nodes"]}


# --------------------------------------------------------------------------------------------
# what an import records; info; FLOPs

def test_import_records_normalization_input_and_source(capsys, pt2_dir, tmp_path):
    src = exported("vgg11_bn", pt2_dir)
    out = tmp_path / "n.safetensors"
    code, stdout, err = run_main(capsys, "import", str(src), "-o", str(out), "--input-size",
                                 "3x32x32", "--mean", "0.5,0.4,0.3", "--std", "0.2,0.25,0.3")
    assert code == 0, err
    net = ck.load(out)
    assert net.description["input"] == [3, 32, 32]
    assert net.meta["normalization"] == {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}
    imported = net.meta["imported"]
    assert imported["file"] == "model.pt2" and imported["layout"] == "torch.export"
    assert imported["sha256"] == ck.file_sha256(src)
    # without --mean/--std: CIFAR-10's, what eval and train assume
    default = tmp_path / "d.safetensors"
    assert run_main(capsys, "import", str(src), "-o", str(default))[0] == 0
    cifar = DATASETS["cifar10"]
    assert ck.load(default).meta["normalization"] == {"mean": list(cifar.mean),
                                                      "std": list(cifar.std)}


def hand_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Σ C_out·C_in/groups·kh·kw·H_out·W_out over convs + in·out over linears, for one image,
    from the shapes PyTorch itself produces (forward hooks on the original model)."""
    total = 0

    def hook(m, inputs, output):
        nonlocal total
        if isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            total += (m.out_channels * m.in_channels // m.groups * kh * kw
                      * output.shape[2] * output.shape[3])
        else:
            total += m.in_features * m.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
    return total


def test_info_and_flops_of_imported_vgg(capsys, pt2_dir, tmp_path):
    src = exported("vgg11_bn", pt2_dir)
    out = tmp_path / "vgg.safetensors"
    assert run_main(capsys, "import", str(src), "-o", str(out))[0] == 0
    want = hand_macs(model64("vgg11_bn"), fresh_inputs(1))
    assert count_flops(ck.load(out).description) == want
    code, stdout, err = run_main(capsys, "info", str(out), "--json")
    assert code == 0, err
    info = json.loads(stdout)
    assert info["flops"] == want and info["executed_macs"] == want
    assert info["arch"] == "model" and info["num_classes"] == 10
    assert info["input"] == [3, 32, 32] and info["dtype"] == "float64"
    assert info["layers"] == 9  # 8 convs, 1 linear
    assert info["params"] == sum(p.numel() for p in model64("vgg11_bn").parameters())
    assert info["imported"]["layout"] == "torch.export"
    code, stdout, err = run_main(capsys, "info", str(out))  # the rich table renders too
    assert code == 0 and err == "" and "model" in stdout
    assert "imported: model.pt2 (torch.export; sha256 " in " ".join(stdout.split())


# --------------------------------------------------------------------------------------------
# --model PACKAGE.MODULE:FACTORY

def test_factory_import_matches_the_model(capsys, tmp_path, monkeypatch):
    """The issue's command, run from tests/ (the CLI puts the cwd on sys.path)."""
    model = zoo_models.se_resnet(width=8)
    weights = tmp_path / "weights.pt"
    torch.save(model.state_dict(), weights)
    out = tmp_path / "n.safetensors"
    monkeypatch.chdir(TESTS)
    code, stdout, err = run_main(capsys, "import", str(weights), "--model",
                                 "zoo_models:se_resnet", "--kwargs", '{"width": 8}',
                                 "-o", str(out))
    assert code == 0, err
    assert re.fullmatch(rf"wrote {re.escape(str(out))} \(se_resnet, 10 classes, \d+ nodes, "
                        r"float32; logits match the model to \d\.\de[+-]\d\d; sha256 "
                        r"[0-9a-f]{16}…\)", stdout.strip()), stdout
    net = ck.load(out)
    assert net.meta["imported"]["factory"] == "zoo_models:se_resnet"
    assert net.meta["imported"]["kwargs"] == {"width": 8}
    assert net.meta["imported"]["sha256"] == ck.file_sha256(weights)
    x32 = fresh_inputs(dtype=torch.float32)
    with torch.no_grad():
        assert rel_err(logits(out, x32), model(x32)) <= F32_TOL
        # the same float32 weights, both run in float64: the same function exactly
        x = fresh_inputs()
        assert rel_err(logits(out, x), model.double()(x)) <= EXACT


def test_factory_from_the_working_directory(capsys, tmp_path, monkeypatch):
    """A factory module that is only importable because the cwd is put on sys.path."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    name = "nm_cwd_factory_ok"
    (tmp_path / f"{name}.py").write_text(
        "import zoo_models\n"
        "def make(width=8, input_size=32):\n"
        "    return zoo_models.vgg11_bn(width=width, input_size=input_size, seed=3)\n")
    model = zoo_models.vgg11_bn(width=8, input_size=64, seed=3)
    torch.save({"state_dict": model.state_dict()}, tmp_path / "w.pt")
    monkeypatch.chdir(tmp_path)
    code, stdout, err = run_main(capsys, "import", "w.pt", "--model", f"{name}:make",
                                 "--kwargs", '{"input_size": 64}', "--input-size", "3x64x64",
                                 "--mean", "0,0,0", "--std", "1,1,1", "-o", "n.safetensors")
    monkeypatch.delitem(sys.modules, name, raising=False)
    assert code == 0, err
    net = ck.load(tmp_path / "n.safetensors")
    assert net.description["input"] == [3, 64, 64]
    assert net.meta["normalization"] == {"mean": [0.0] * 3, "std": [1.0] * 3}
    x = fresh_inputs(3, side=64)
    with torch.no_grad():
        assert rel_err(net.module(F64)(x), model.double()(x)) <= EXACT


# --------------------------------------------------------------------------------------------
# bad models: refused via a .pt2 and via --model

BAD_PT2 = {  # model → what the one error line says
    "uses_layer_norm": ["node 'layer_norm'", "aten.layer_norm.default",
                        "netmorph cannot convert this op; it supports conv2d"],
    "uses_sort": ["node 'sort'", "aten.sort.default",
                  "netmorph cannot convert this op; it supports conv2d"],
    "two_outputs": ["returns 2 values", "one (N, classes) tensor"],
    "no_classifier": ["returns a 4×32×32 tensor per image", "(N, classes) logits"],
    "shared_conv": ["in module 'conv' (Conv2d)", "aten.conv2d.default",
                    "the layer 'conv' is applied twice (shared weights)"],
}
BAD_FACTORY = {**BAD_PT2, "data_dependent": [
    "tracing zoo_models:data_dependent with a 2×3×32×32 input failed",
    "data-dependent"]}
# uses_lstm exports slowly (~1 s) and warns; it is refused at the flatten(x, 2) that feeds
# the LSTM, before the LSTM itself
SLOW_BAD = {"uses_lstm": ["node 'flatten'", "aten.flatten.using_ints",
                          "not a flatten to a (N, features) vector"]}


def _bad_params(table: dict, slow: dict) -> list:
    return [*table, *(pytest.param(k, marks=pytest.mark.slow) for k in slow)]


@pytest.mark.parametrize("name", _bad_params(BAD_PT2, SLOW_BAD))
def test_bad_model_pt2_is_refused(capsys, tmp_path, name):
    model = zoo_models.build(name)
    src = tmp_path / f"{name}.pt2"
    torch.export.save(torch.export.export(model, (zoo_models.example_input(2),)), src)
    out = tmp_path / "o.safetensors"
    code, stdout, err = run_main(capsys, "import", str(src), "-o", str(out))
    needles = {**BAD_PT2, **SLOW_BAD}[name]
    line = assert_one_error_line(code, stdout, err, str(src), *needles)
    assert "Traceback" not in line
    nothing_written(out, src)


@pytest.mark.parametrize("name", _bad_params(BAD_FACTORY, SLOW_BAD))
def test_bad_model_factory_is_refused(capsys, tmp_path, monkeypatch, name):
    weights = tmp_path / "w.pt"
    torch.save(zoo_models.build(name).state_dict(), weights)
    out = tmp_path / "o.safetensors"
    monkeypatch.chdir(TESTS)
    code, stdout, err = run_main(capsys, "import", str(weights), "--model",
                                 f"zoo_models:{name}", "-o", str(out))
    assert_one_error_line(code, stdout, err, *{**BAD_FACTORY, **SLOW_BAD}[name])
    nothing_written(out, weights)


def test_trace_failure_prints_one_line_in_a_real_process(tmp_path):
    """The installed console script, in its own process: what a user's terminal shows.
    torch logs the failed shape check (an E-level record with a traceback) through a handler
    that in-process tests do not capture."""
    weights = tmp_path / "w.pt"
    torch.save(zoo_models.vgg11_bn(width=8).state_dict(), weights)
    out = tmp_path / "o.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([str(NETMORPH), "import", str(weights), "--model", "zoo_models:vgg11_bn",
                        "--input-size", "3x8x8", "-o", str(out)], cwd=TESTS,
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert "tracing " in r.stderr and "failed" in r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("Error: "), r.stderr
    nothing_written(out, weights)


# --------------------------------------------------------------------------------------------
# bad factories, options and files

FACTORY_MODULE = '''
import torch
def raises(**kw):
    raise RuntimeError("the factory broke")
def not_a_module(**kw):
    return {"conv": torch.zeros(1)}
'''


@pytest.fixture
def vgg_weights(tmp_path) -> Path:
    path = tmp_path / "w.pt"
    torch.save(zoo_models.vgg11_bn(width=8).state_dict(), path)
    return path


@pytest.mark.parametrize("factory,kwargs,needles", [
    ("zoo_models:nope", None, ["--model 'zoo_models:nope': module 'zoo_models' has no 'nope'"]),
    ("nm_no_such_module_xyz:make", None,
     ["cannot import 'nm_no_such_module_xyz'", "ModuleNotFoundError"]),
    ("zoo_models", None, ["expected package.module:factory"]),
    ("zoo_models:ZOO", None, ["'ZOO' is not callable"]),
    ("zoo_models:example_input", None, ["returned a Tensor, not an nn.Module"]),
    ("zoo_models:vgg11_bn", '{"input_size": 30}',
     ["calling it with {'input_size': 30} failed", "ValueError",
      "input_size 30 is not a multiple of 32"]),
    ("zoo_models:vgg11_bn", '{"depth": 3}', ["calling it with {'depth': 3} failed",
                                             "TypeError"]),
    ("zoo_models:vgg11_bn", '{"width": 16}',
     ["does not fit zoo_models:vgg11_bn", "size mismatch for features.0.weight"]),
    ("zoo_models:vgg11_bn", '{width: 16}', ["Invalid value for '--kwargs': not JSON"]),
    ("zoo_models:vgg11_bn", "[16]", ["Invalid value for '--kwargs': must be a JSON object"]),
    ("zoo_models:vgg11_bn", '"width"', ["must be a JSON object"]),
])
def test_bad_factory(capsys, monkeypatch, vgg_weights, factory, kwargs, needles):
    monkeypatch.chdir(TESTS)
    out = vgg_weights.with_name("o.safetensors")
    args = ["import", str(vgg_weights), "--model", factory, "-o", str(out)]
    code, stdout, err = run_main(capsys, *args, *(["--kwargs", kwargs] if kwargs else []))
    assert_one_error_line(code, stdout, err, *needles)
    nothing_written(out, vgg_weights)


@pytest.mark.parametrize("attr,needles", [
    ("raises", ["calling it with {} failed", "RuntimeError: the factory broke"]),
    ("not_a_module", ["returned a dict, not an nn.Module"]),
    (None, ["cannot import", "ZeroDivisionError"]),  # the module itself raises on import
])
def test_bad_factory_module_in_cwd(capsys, tmp_path, monkeypatch, vgg_weights, attr, needles):
    monkeypatch.setattr(sys, "path", list(sys.path))
    name = f"nm_cwd_factory_{attr or 'broken'}"
    body = FACTORY_MODULE if attr else "x = 1 / 0\n"
    (tmp_path / f"{name}.py").write_text(body)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "o.safetensors"
    code, stdout, err = run_main(capsys, "import", str(vgg_weights), "--model",
                                 f"{name}:{attr or 'make'}", "-o", str(out))
    monkeypatch.delitem(sys.modules, name, raising=False)
    assert_one_error_line(code, stdout, err, f"--model '{name}:{attr or 'make'}'", *needles)
    assert not out.exists()


def test_input_size_that_breaks_tracing(capsys, monkeypatch, vgg_weights):
    monkeypatch.chdir(TESTS)
    out = vgg_weights.with_name("o.safetensors")
    code, stdout, err = run_main(capsys, "import", str(vgg_weights), "--model",
                                 "zoo_models:vgg11_bn", "--input-size", "3x8x8", "-o", str(out))
    assert_one_error_line(code, stdout, err,
                          "tracing zoo_models:vgg11_bn with a 2×3×8×8 input failed",
                          "Output size is too small")
    nothing_written(out, vgg_weights)


@pytest.mark.parametrize("args,needles", [
    (["--input-size", "3x64x64"], ["was exported for 3×32×32 inputs, not 3×64×64 "
                                   "(--input-size); export the model again at that size"]),
    (["--input-size", "1x32x32"], ["was exported for 3×32×32 inputs, not 1×32×32"]),
    (["--input-size", "3x32"], ["Invalid value for '--input-size'", "is not C×H×W"]),
    (["--mean", "0.5,0.5"], ["--mean has 2 values; the model's input has 3 channels"]),
    (["--std", "1,1,1,1"], ["--std has 4 values; the model's input has 3 channels"]),
    (["--std", "1,0,1"], ["Invalid value for '--std'", "every value must be finite and > 0"]),
    (["--std", "1,-1,1"], ["every value must be finite and > 0"]),
    (["--mean", "0,nan,0"], ["Invalid value for '--mean'", "every value must be finite"]),
    (["--arch", "resnet20"], ["--arch applies to state_dicts of known ResNet layouts"]),
    (["--kwargs", '{"width": 8}'], ["--kwargs applies to --model"]),
])
def test_bad_options_with_a_pt2(capsys, pt2_dir, tmp_path, args, needles):
    src = exported("vgg11_bn", pt2_dir)
    before = ck.file_sha256(src)
    out = tmp_path / "o.safetensors"
    code, stdout, err = run_main(capsys, "import", str(src), "-o", str(out), *args)
    assert_one_error_line(code, stdout, err, *needles)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    assert ck.file_sha256(src) == before


def test_factory_mean_with_wrong_channels(capsys, monkeypatch, vgg_weights):
    monkeypatch.chdir(TESTS)
    out = vgg_weights.with_name("o.safetensors")
    code, stdout, err = run_main(capsys, "import", str(vgg_weights), "--model",
                                 "zoo_models:vgg11_bn", "--mean", "0.1,0.2", "-o", str(out))
    assert_one_error_line(code, stdout, err, "--mean has 2 values; the model's input has 3 "
                                             "channels")
    nothing_written(out, vgg_weights)


def test_a_zip_that_is_not_a_pt2(capsys, tmp_path):
    src = tmp_path / "notes.pt2"
    with zipfile.ZipFile(src, "w") as z:
        z.writestr("notes/readme.txt", "not a model")
    out = tmp_path / "o.safetensors"
    code, stdout, err = run_main(capsys, "import", str(src), "-o", str(out))
    assert_one_error_line(code, stdout, err, str(src))
    nothing_written(out, src)


def test_a_truncated_pt2(capsys, pt2_dir, tmp_path):
    raw = exported("vgg11_bn", pt2_dir).read_bytes()
    src = tmp_path / "cut.pt2"
    src.write_bytes(raw[: len(raw) // 2])
    out = tmp_path / "o.safetensors"
    code, stdout, err = run_main(capsys, "import", str(src), "-o", str(out))
    assert_one_error_line(code, stdout, err, str(src), "truncated")
    nothing_written(out, src)


def test_a_pt2_exported_in_training_mode(capsys, tmp_path):
    model = zoo_models.vgg11_bn(width=8).train()
    src = tmp_path / "train.pt2"
    torch.export.save(torch.export.export(model, (zoo_models.example_input(2),)), src)
    out = tmp_path / "o.safetensors"
    code, stdout, err = run_main(capsys, "import", str(src), "-o", str(out))
    assert_one_error_line(code, stdout, err, str(src), "features.1", "training mode",
                          "model.eval()")
    nothing_written(out, src)


def test_import_json_is_one_object_for_scripts(capsys, pt2_dir, tmp_path):
    src = exported("se_resnet", pt2_dir)
    out = tmp_path / "n.safetensors"
    code, stdout, err = run_main(capsys, "import", str(src), "-o", str(out), "--json")
    assert code == 0, err
    got = json.loads(stdout)  # the whole of stdout: one object, nothing else
    assert got["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert (got["path"], got["num_classes"], got["input"], got["dtype"]) == \
        (str(out), 10, [3, 32, 32], "float64")
    assert got["nodes"] == len(ck.load(out).description["nodes"])
    assert got["imported"]["layout"] == "torch.export" and got["check_max_rel_err"] == 0.0
