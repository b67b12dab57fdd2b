"""Resource caps (``limits.py``) and the validation of everything a checkpoint can carry.

Each cap is tested at its boundary (the largest accepted value and the smallest refused one),
every description field with a value of the wrong type or range (the error names the node
and the field), every history and metadata field that readers use, and non-finite tensors on
load and import. Nothing here allocates more than a few MB.
"""

from __future__ import annotations

import copy
import json
import os
import random
import threading
import time

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from netmorph_cli.base import limits
from netmorph_cli.base.limits import (
    MAX_INPUT_ELEMENTS,
    MAX_INPUT_SIDE,
    MAX_JSON_DEPTH,
    MAX_KERNEL,
    MAX_MAP_SIDE,
    MAX_WIDTH,
    JSONDepthError,
    json_depth_exceeds,
    parse_json,
    read_capped,
)
from netmorph_cli.errors import CheckpointError, MorphError, NetworkError, SpecError
from netmorph_cli.io import checkpoint as ck
from netmorph_cli.io import importers
from netmorph_cli.morph.morphs import Preset
from netmorph_cli.network import zoo
from netmorph_cli.network.description import (
    FORMAT,
    GraphNet,
    Network,
    node,
    state_of,
    validate_description,
    validate_history,
    validate_meta,
)
from netmorph_cli.spec import parse as spec

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------------------------
# JSON nesting and capped reads


def _depth(o) -> int:
    if isinstance(o, list):
        return 1 + max(map(_depth, o), default=0)
    if isinstance(o, dict):
        return 1 + max(map(_depth, o.values()), default=0)
    return 0


def _random_json(rng: random.Random, depth: int):
    chars = '[]{}"\\:,a \n\u00e9\U0001f600'
    text = "".join(rng.choice(chars) for _ in range(rng.randint(0, 5)))
    if depth == 0 or rng.random() < 0.3:
        return rng.choice([text, 1, None, 2.5, True])
    if rng.random() < 0.5:
        return [_random_json(rng, depth - 1) for _ in range(rng.randint(0, 3))]
    return {f"{text}{i}": _random_json(rng, depth - 1) for i in range(rng.randint(0, 3))}


def test_depth_check_agrees_with_the_real_depth():
    """Strings full of brackets, quotes and escapes do not count; the check is exact."""
    rng = random.Random(0)
    for _ in range(500):
        obj = _random_json(rng, rng.randint(0, 7))
        text = json.dumps(obj, ensure_ascii=rng.random() < 0.5, indent=rng.choice([None, 1]))
        d = _depth(obj)
        assert not json_depth_exceeds(text, d), text
        assert d == 0 or json_depth_exceeds(text, d - 1), text


def test_parse_json_depth_boundary():
    ok = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    assert _depth(parse_json(ok)) == MAX_JSON_DEPTH
    with pytest.raises(JSONDepthError, match=f"more than {MAX_JSON_DEPTH} levels"):
        parse_json("[" + ok + "]")
    with pytest.raises(JSONDepthError):
        parse_json('{"a": ' * 100_000 + "1" + "}" * 100_000)
    # unbalanced: the decoder's own RecursionError is turned into the same error
    with pytest.raises(JSONDepthError):
        parse_json("[" * 100_000)
    assert parse_json('{"name": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["'
                      ', "k": [3, 3]}')["k"] == [3, 3]


def test_read_capped_stops_at_the_cap(tmp_path):
    assert len(read_capped("/dev/zero", 1000)) == 1001
    p = tmp_path / "small.json"
    p.write_bytes(b"x" * 10)
    assert read_capped(p, 1000) == b"x" * 10


def test_read_capped_fifo_without_writer_does_not_hang(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    result: list[bytes] = []
    t = threading.Thread(target=lambda: result.append(read_capped(fifo, 100)), daemon=True)
    t.start()
    t.join(10)
    if t.is_alive():  # pragma: no cover - unblock the reader before failing
        with open(fifo, "wb"):
            pass
        pytest.fail("reading a FIFO without a writer blocked")
    assert result == [b""]


# --------------------------------------------------------------------------------------------
# specs


def _spec(width: int = 8, kernel: int = 3) -> dict:
    return {"channels": {"a": width},
            "edges": [{"from": "s", "to": "a", "kernel": kernel},
                      {"from": "a", "to": "t", "kernel": [1, kernel]}]}


def test_spec_width_and_kernel_caps():
    g = spec.spec_from_dict(_spec(MAX_WIDTH, MAX_KERNEL))
    assert g.channels["a"] == MAX_WIDTH and g.edges[0].kernel == (MAX_KERNEL, MAX_KERNEL)
    with pytest.raises(SpecError, match=rf"width 65537 for blob 'a' .*limit of {MAX_WIDTH}"):
        spec.spec_from_dict(_spec(MAX_WIDTH + 1))
    with pytest.raises(SpecError, match=r"width 1000000000 for blob 'a'"):
        spec.spec_from_dict(_spec(10**9))
    with pytest.raises(SpecError, match=rf"edge #1: kernel size 65 .*limit of {MAX_KERNEL}"):
        spec.spec_from_dict(_spec(kernel=MAX_KERNEL + 2))
    with pytest.raises(SpecError, match=r"edge #1: kernel size 1000001"):
        spec.spec_from_dict(_spec(kernel=1_000_001))


def test_spec_file_size_cap(tmp_path, monkeypatch):
    text = json.dumps(_spec())
    monkeypatch.setattr(spec, "MAX_SPEC_BYTES", len(text))
    p = tmp_path / "s.json"
    p.write_text(text)
    assert spec.load_spec(p).channels == {"a": 8}
    p.write_text(text + " ")
    with pytest.raises(SpecError, match="larger than"):
        spec.load_spec(p)


def test_spec_nesting_huge_integers_and_empty_files(tmp_path):
    p = tmp_path / "deep.json"
    p.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(SpecError, match="nested more than 64 levels deep"):
        spec.load_spec(p)
    p.write_text('{"edges": [{"from": "s", "to": "t", "kernel": 1' + "0" * 5000 + "}]}")
    with pytest.raises(SpecError, match="malformed JSON: Exceeds the limit"):
        spec.load_spec(p)
    p.write_bytes(b"\xff\xfe{}")
    with pytest.raises(SpecError, match="not UTF-8"):
        spec.load_spec(p)
    with pytest.raises(SpecError, match="is empty"):
        spec.load_spec("/dev/null")
    with pytest.raises(SpecError, match="larger than 64 MiB"):
        spec.load_spec("/dev/zero")


def test_preset_kernel_cap():
    assert Preset.parse(f"{MAX_KERNEL}c{MAX_KERNEL}").k1 == MAX_KERNEL
    for name in (f"{MAX_KERNEL + 2}c1", "99999c1", "1c1000001", "1" * 5000 + "c1"):
        with pytest.raises(MorphError, match=f"kernel sizes are at most {MAX_KERNEL}"):
            Preset.parse(name)
    with pytest.raises(MorphError, match="unknown preset"):
        Preset.parse("2c1")


# --------------------------------------------------------------------------------------------
# descriptions: every field, typed and bounded


def every_op() -> dict:
    """input (3, 8, 8) → conv(bias) → BN → ReLU → maxpool → option-A shortcut ─┬─ pad →
    conv → PReLU ─ add(0.5, 1) ┴─ → GAP → linear: one node of each op."""
    return {"format": FORMAT, "arch": "every-op", "input": [3, 8, 8], "num_classes": 2,
            "output": "fc", "nodes": [
                node("conv", "conv", ["input"], **{"in": 3, "out": 4}, kernel=[3, 3],
                     padding=[1, 1], bias=True),
                node("bn", "bn", ["conv"], channels=4),
                node("relu", "relu", ["bn"]),
                node("pool", "maxpool", ["relu"], kernel=3, stride=1, padding=1),
                node("sc", "shortcut_a", ["pool"], **{"in": 4, "out": 8}, stride=2),
                node("pad", "pad", ["sc"], pad=[1, 1]),
                node("conv2", "conv", ["pad"], **{"in": 8, "out": 8}, kernel=[3, 3]),
                node("act", "prelu", ["conv2"], channels=8),
                node("add", "add", ["act", "sc"], coeffs=[0.5, 1.0], shortcut=1),
                node("gap", "gap", ["add"]),
                node("fc", "linear", ["gap"], **{"in": 8, "out": 2}),
            ]}


def _set(desc: dict, name: str, **changes) -> dict:
    d = copy.deepcopy(desc)
    next(n for n in d["nodes"] if n["name"] == name).update(changes)
    return d


NAN, INF = float("nan"), float("inf")
BAD_NODE_FIELDS = [
    ("conv", {"groups": 0}, "groups"), ("conv", {"groups": 2}, "groups"),
    ("conv", {"groups": 1.0}, "groups"), ("conv", {"stride": [0, 0]}, "stride"),
    ("conv", {"out": 4.0}, "out"), ("conv", {"in": True}, "in"),
    ("conv", {"out": MAX_WIDTH + 1}, "out"), ("conv", {"kernel": [MAX_KERNEL + 2, 3]}, "kernel"),
    ("conv", {"kernel": [3, -3]}, "kernel"), ("conv", {"padding": [10**9, 1]}, "padding"),
    ("conv", {"dilation": [10**9, 1]}, "dilation"), ("conv", {"bias": "yes"}, "bias"),
    ("conv", {"stride": [2**40, 1]}, "stride"),
    ("bn", {"channels": 4.5}, "channels"), ("bn", {"eps": NAN}, "eps"),
    ("bn", {"eps": -1e-5}, "eps"), ("bn", {"momentum": INF}, "momentum"),
    ("bn", {"momentum": "fast"}, "momentum"),
    ("pool", {"kernel": -3}, "kernel"), ("pool", {"kernel": 0}, "kernel"),
    ("pool", {"kernel": 3.0}, "kernel"), ("pool", {"kernel": MAX_KERNEL + 2}, "kernel"),
    ("pool", {"stride": 0}, "stride"), ("pool", {"padding": 2}, "padding"),
    ("pool", {"padding": -1}, "padding"), ("pool", {"kernel": 63, "padding": 0}, "empty"),
    ("sc", {"stride": 0}, "stride"), ("sc", {"out": 8.0}, "out"),
    ("sc", {"out": 10**9}, "out"),
    ("pad", {"pad": [-1, 0]}, "pad"), ("pad", {"pad": [10**6, 0]}, "pad"),
    ("act", {"channels": 0}, "channels"),
    ("add", {"coeffs": [NAN, 1.0]}, "coeffs"), ("add", {"coeffs": [0.5, INF]}, "coeffs"),
    ("add", {"coeffs": ["1", 1.0]}, "coeffs"), ("add", {"coeffs": [True, 1.0]}, "coeffs"),
    ("add", {"coeffs": "1,1"}, "coeffs"), ("add", {"shortcut": 2}, "shortcut"),
    ("add", {"shortcut": "sc"}, "shortcut"),
    ("fc", {"in": 8.0}, "in"), ("fc", {"bias": 1}, "bias"),
]


def test_every_op_description_is_valid_and_runs():
    desc = every_op()
    net = Network(desc, state_of(GraphNet(desc))).check()
    assert net.module()(torch.randn(2, 3, 8, 8)).shape == (2, 2)


@pytest.mark.parametrize("name,changes,field", BAD_NODE_FIELDS,
                         ids=[f"{n}-{'-'.join(map(str, c.items()))}"[:60]
                              for n, c, _ in BAD_NODE_FIELDS])
def test_bad_node_fields_name_the_node_and_field(name, changes, field):
    with pytest.raises(NetworkError) as info:
        validate_description(_set(every_op(), name, **changes))
    msg = str(info.value)
    assert f"node {name!r}" in msg and field in msg, msg


BAD_TOP_FIELDS = [
    ({"input": [3, 10**6, 10**6]}, f"limit of {MAX_INPUT_SIDE}"),
    ({"input": [3, MAX_INPUT_SIDE + 1, 8]}, f"limit of {MAX_INPUT_SIDE}"),
    ({"input": [MAX_WIDTH + 1, 8, 8]}, f"limit of {MAX_WIDTH}"),
    ({"input": [4096, 8192, 8192]}, "values per image"),
    ({"input": [3, 8.0, 8]}, "'input' must be [C, H, W]"),
    ({"input": [3, 8]}, "'input' must be [C, H, W]"),
    ({"input": "3x8x8"}, "'input' must be [C, H, W]"),
    ({"num_classes": 2.0}, "num_classes"), ({"num_classes": 0}, "num_classes"),
    ({"arch": 7}, "'arch'"), ({"nodes": {}}, "'nodes'"), ({"nodes": []}, "'nodes'"),
    ({"nodes": [1]}, "node #1 must be an object"), ({"output": ["fc"]}, "output"),
    ({"output": "input"}, "output"),
]


@pytest.mark.parametrize("changes,needle", BAD_TOP_FIELDS,
                         ids=[str(c)[:40] for c, _ in BAD_TOP_FIELDS])
def test_bad_top_level_fields(changes, needle):
    with pytest.raises(NetworkError, match=None) as info:
        validate_description({**every_op(), **changes})
    assert needle in str(info.value), str(info.value)


def test_description_size_boundaries():
    big = {**every_op(), "input": [3, MAX_INPUT_SIDE, MAX_INPUT_SIDE]}
    assert MAX_INPUT_ELEMENTS >= 3 * MAX_INPUT_SIDE**2
    validate_description(big)  # the largest input is accepted (nothing is allocated)
    validate_description(_set(every_op(), "pool", kernel=5, padding=2))
    wide = _set(_set(every_op(), "conv", out=MAX_WIDTH), "bn", channels=MAX_WIDTH)
    wide = _set(wide, "sc", **{"in": MAX_WIDTH, "out": MAX_WIDTH})
    wide = _set(wide, "conv2", **{"in": MAX_WIDTH, "out": 8})
    wide["nodes"][8]["inputs"] = ["act", "act"]  # the shortcut is now wider than act
    validate_description(wide)
    tall = _set(every_op(), "pad", pad=[MAX_MAP_SIDE, 0])
    with pytest.raises(NetworkError, match=f"node 'pad'.*limit of {MAX_MAP_SIDE}"):
        validate_description(tall)
    for arch in ("resnet18", "resnet110"):
        validate_description(zoo.describe(arch, None, "B"))


# --------------------------------------------------------------------------------------------
# history and metadata


BAD_HISTORY = [
    ("x", "must be a list"), ([1], "history entry #1 must be an object"),
    ([{}, "step"], "history entry #2 must be an object"),
    ([{"op": 3}], "'op' must be a string"), ([{"blocks": 3}], "'blocks' must be a list"),
    ([{"new_bn": [1]}], "'new_bn'"), ([{"compare": [["a"]]}], "'compare'"),
    ([{"compare": [[["a"], "b"]]}], "'compare'"), ([{"residual": "small"}], "'residual'"),
    ([{"test_error": "0.1"}], "'test_error'"), ([{"config": []}], "'config'"),
    ([{"metrics": [{"test_error": 0.1}]}], "'metrics'"), ([{"seed": 1.5}], "'seed'"),
    ([{"calibration": {"dataset": "cifar10", "images": 9}}], "'calibration'"),
    ([{"epochs_run": "10"}], "'epochs_run'"), ([{"exact_bn": 1}], "'exact_bn'"),
]


@pytest.mark.parametrize("history,needle", BAD_HISTORY, ids=[n for _, n in BAD_HISTORY])
def test_bad_history(history, needle):
    with pytest.raises(NetworkError) as info:
        validate_history(history)
    assert needle in str(info.value), str(info.value)


BAD_META = [
    ([], "metadata must be an object"),
    ({"normalization": "abc"}, "'normalization' must be an object"),
    ({"normalization": {"mean": [0.5, 0.5]}}, "'mean' must be a list of 3"),
    ({"normalization": {"std": [0.2, 0.0, 0.2]}}, "'std'"),
    ({"normalization": {"std": [0.2, NAN, 0.2]}}, "'std'"),
    ({"normalization": {"mean": "0.5"}}, "'mean'"),
    ({"parent": "resnet20"}, "'parent' must be an object"),
    ({"root": {"flops": "40M"}}, "'flops'"), ({"parent": {"arch": 20}}, "'arch'"),
    ({"created": 1}, "'created'"), ({"imported": "yes"}, "'imported'"),
]


@pytest.mark.parametrize("meta,needle", BAD_META, ids=[n for _, n in BAD_META])
def test_bad_meta(meta, needle):
    with pytest.raises(NetworkError) as info:
        validate_meta(meta, 3)
    assert needle in str(info.value), str(info.value)


def test_real_history_and_meta_pass():
    validate_history([{"op": "preset", "preset": "1c1", "seed": 0, "residual": 0.0,
                       "condition": 1.5, "blocks": ["layer1.1"], "compare": [["a", "a"]],
                       "new_bn": ["x"], "exact_bn": True,
                       "calibration": {"dataset": "c", "images": 4, "layers": ["x"]}},
                      {"op": "train", "dataset": "cifar10", "config": {"seed": 0},
                       "epochs_run": 1, "test_error": None,
                       "metrics": [{"test_error": 0.5, "train_error": 0.4}]},
                      {"op": "future", "unknown": {"kept": True}}])
    validate_meta({"normalization": {"mean": [0.5] * 3, "std": [0.25] * 3},
                   "parent": {"arch": "r", "flops": 1, "sha256": None},
                   "root": {"arch": "r", "flops": 2.5e7}, "anything": [1]}, 3)


# --------------------------------------------------------------------------------------------
# checkpoints: tampered descriptions and non-finite tensors are refused on load and import


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    d = tmp_path_factory.mktemp("limits")
    desc = every_op()
    net = Network(desc, state_of(GraphNet(desc)), [], {"created": {"arch": "every-op"}})
    ck.save(net, d / "ok.safetensors")
    return d / "ok.safetensors"


def _rewrite(src, dst, *, edit_desc=None, fields=None, tensors=None):
    with safe_open(str(src), "pt") as f:
        meta = dict(f.metadata())
    t = load_file(str(src))
    if edit_desc:
        desc = json.loads(meta["description"])
        edit_desc(desc)
        meta["description"] = json.dumps(desc)
    meta.update(fields or {})
    if tensors:
        tensors(t)
    save_file(t, str(dst), metadata=meta)
    return dst


def test_tampered_descriptions_are_refused_on_load(saved, tmp_path):
    assert ck.load(saved).description == every_op()
    for i, (name, changes, field) in enumerate(BAD_NODE_FIELDS):
        bad = _rewrite(saved, tmp_path / f"{i}.safetensors", edit_desc=lambda d, name=name,
                       changes=changes: next(n for n in d["nodes"]
                                             if n["name"] == name).update(changes))
        with pytest.raises(CheckpointError) as info:
            ck.load(bad)
        msg = str(info.value)
        assert "does not hold a valid network" in msg and f"node {name!r}" in msg \
            and field in msg, msg


def test_tampered_history_meta_and_deep_json_are_refused_on_load(saved, tmp_path):
    cases = [({"history": "[1]"}, "damaged netmorph checkpoint: history entry #1"),
             ({"meta": '{"normalization": "abc"}'}, "damaged netmorph checkpoint: metadata"),
             ({"history": "[" * 100_000 + "]" * 100_000}, "its history is JSON nested"),
             ({"description": "[" * 5000}, "its description is JSON nested")]
    for i, (fields, needle) in enumerate(cases):
        with pytest.raises(CheckpointError, match=needle):
            ck.load(_rewrite(saved, tmp_path / f"{i}.safetensors", fields=fields))


@pytest.mark.parametrize("value,what", [(NAN, "1 NaN"), (INF, "1 infinite"),
                                        (-INF, "1 infinite")])
def test_non_finite_tensors_are_refused_on_load(saved, tmp_path, value, what):
    def poison(t):
        t["conv2.weight"].view(-1)[5] = value

    bad = _rewrite(saved, tmp_path / "nan.safetensors", tensors=poison)
    with pytest.raises(CheckpointError, match=rf"tensor 'conv2.weight' holds non-finite "
                                              rf"values \({what} of 576\)"):
        ck.load(bad)


def test_negative_running_variance_is_refused(saved, tmp_path):
    def poison(t):
        t["bn.running_var"][1] = -1.0

    with pytest.raises(CheckpointError, match=r"'bn.running_var' holds 1 negative"):
        ck.load(_rewrite(saved, tmp_path / "var.safetensors", tensors=poison))


def test_non_finite_tensors_are_refused_on_import(tmp_path):
    sd = zoo.create("resnet20", seed=0).tensors
    sd = {k: v.clone() for k, v in sd.items()}
    sd["conv1.weight"][0, 0, 0, 0] = NAN
    torch.save(sd, tmp_path / "sd.pt")
    with pytest.raises(CheckpointError, match=r"tensor 'conv1.weight' holds non-finite"):
        importers.import_state_dict(tmp_path / "sd.pt")


def test_a_fifo_is_not_read_as_a_checkpoint(tmp_path):
    fifo = tmp_path / "ckpt"
    os.mkfifo(fifo)
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match="not a regular file"):
        ck.load(fifo)
    assert time.perf_counter() - t0 < 5
    assert limits.MAX_SAFETENSORS_HEADER == ck._MAX_HEADER
