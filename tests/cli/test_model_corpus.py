"""Issue 23, item 7: the test model corpus — one small model per family of a public CIFAR
zoo (``zoo_models.CORPUS``: VGG-11-BN, DenseNet-BC, MobileNetV2, SE-ResNet, ResNeXt,
ResNet-18, PreActResNet-18, ShuffleNetV2, RegNetX), each imported both ways (a
``torch.export`` program, saved with a static and with a dynamic batch, and the ``--model``
factory path), morphed at two stride-1 groups-1 convs picked from the imported description,
verified, exported and imported back.

Default run, per family (one test): a static-batch export (``torch.export.export(model,
(x,))``, what most users do) imports; its logits are the model's (float32 and float64);
spec A goes at two body convs, one after the other; ``verify`` passes in float32 (≤ 1e-5
relative). Slow (``make test-slow``): the dynamic-batch export, the
factory path through the CLI, and the child's export and import back.

Every reference is the original ``nn.Module`` run by PyTorch (or, for the child, the
netmorph network the file was exported from), never netmorph's own formulas.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from cli_helpers import run_main
from torch import nn

import zoo_models
from netmorph_cli.io import checkpoint as ck
from netmorph_cli.io import export, importers
from netmorph_cli.morph import verify
from netmorph_cli.morph.morphs import morph_network
from netmorph_cli.network.description import Network
from netmorph_cli.spec.parse import load_spec

pytestmark = pytest.mark.usefixtures("one_thread")

TESTS = Path(__file__).resolve().parents[1]
SPEC_A = TESTS.parent / "examples" / "modules" / "A.json"
F32, F64 = torch.float32, torch.float64
F32_TOL = 1e-5  # relative, ‖Δ‖∞ / ‖ref‖∞: the same ops, maybe summed in another order
EXACT = 1e-12  # the same float32 weights, both run in float64
FAMILIES = list(zoo_models.CORPUS)
BATCH = {"x": {0: torch.export.Dim("batch", min=1, max=1024)}}


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours - ref).abs().max() / ref.abs().max())


def fresh_inputs(n: int = 5, seed: int = 1234, dtype: torch.dtype = F32) -> torch.Tensor:
    """Random inputs at a batch size no export used and that no import check saw."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g, dtype=dtype)


# --------------------------------------------------------------------------------------------
# the corpus, built, exported and imported once per module (float32, eval mode)

_MODELS: dict[str, nn.Module] = {}
_IMPORTED: dict[tuple[str, bool], tuple[Network, float]] = {}
_CHILDREN: dict[str, tuple[Network, list[str]]] = {}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("corpus")


def model(name: str) -> nn.Module:
    if name not in _MODELS:
        _MODELS[name] = zoo_models.build(name)
    return _MODELS[name]


def imported(name: str, folder: Path, *, dynamic: bool) -> tuple[Network, float]:
    """``torch.export.save(torch.export.export(model, (x,)[, dynamic_shapes]), path)`` at
    batch 2, then ``import_program``: (network, the import check's error)."""
    key = (name, dynamic)
    if key not in _IMPORTED:
        path = folder / f"{name}.{'dynamic' if dynamic else 'static'}.pt2"
        ep = torch.export.export(model(name), (zoo_models.example_input(2),),
                                 dynamic_shapes=BATCH if dynamic else None)
        torch.export.save(ep, path)
        _IMPORTED[key] = importers.import_program(path)
    return _IMPORTED[key]


def assert_same_function(net: Network, m: nn.Module) -> None:
    """The network's logits are the model's at batches 1 and 5: float32 within F32_TOL, and
    (the same float32 numbers, both run in float64) within EXACT."""
    with torch.no_grad():
        for n in (1, 5):
            x = fresh_inputs(n)
            assert rel_err(net.module()(x), m(x)) <= F32_TOL
        x = fresh_inputs(5, dtype=F64)
        assert rel_err(net.module(F64)(x), copy.deepcopy(m).double()(x)) <= EXACT


def body_sites(net: Network) -> list[str]:
    """The stride-1, groups-1, undilated convs of the body, in graph order: not the stem
    (the conv reading the input), and only those whose output is spatial (> 1×1; an SE
    block's 1×1 convs are left out). Output shapes come from running the network."""
    convs = [n["name"] for n in net.description["nodes"]
             if n["op"] == "conv" and n["stride"] == [1, 1] and n["groups"] == 1
             and n["dilation"] == [1, 1] and n["inputs"] != ["input"]]
    x = torch.zeros(1, *net.description["input"], dtype=net.dtype)
    with torch.no_grad():
        _, shapes = net.module()(x, capture=convs)
    return [c for c in convs if shapes[c].shape[2] * shapes[c].shape[3] > 1]


def two_sites(net: Network) -> list[str]:
    """The first and the last body site: one near the input, one near the head."""
    sites = body_sites(net)
    assert len(sites) >= 2, sites
    return [sites[0], sites[-1]]


def check_verify(parent: Network, child: Network, sites: list[str]) -> None:
    """``verify`` in float32 (the networks' dtype: the module's filters are float32 numbers,
    so a float64 run would measure their rounding, ~1e-7, not the morph)."""
    r = verify.verify(parent, child, dtype=F32, samples=8)
    assert r.passed and r.tolerance == F32_TOL and r.max_rel_err <= F32_TOL, r.max_rel_err
    assert r.top1_agreement == 1.0
    assert [s.parent_node for s in r.sites] == sites
    # each module's own output too (the largest in the corpus is ~2e-6)
    assert all(s.max_rel_err <= F32_TOL for s in r.sites), r.sites


def morphed(name: str, folder: Path) -> tuple[Network, list[str]]:
    """Spec A at the first site of the static import, then at the second site of that
    child: (grandchild, sites)."""
    if name not in _CHILDREN:
        net, _ = imported(name, folder, dynamic=False)
        sites = two_sites(net)
        spec = load_spec(SPEC_A)
        child = net
        for at in sites:
            child, report = morph_network(child, spec, at=at)
            assert report is not None and report.passed
        _CHILDREN[name] = child, sites
    return _CHILDREN[name]


# --------------------------------------------------------------------------------------------
# default run: one test per family

def test_the_corpus_covers_the_issues_families():
    assert set(zoo_models.ZOO) <= set(zoo_models.CORPUS)
    assert {"vgg11_bn", "resnet18", "preact_resnet18", "mobilenetv2", "densenet", "se_resnet",
            "shufflenetv2", "regnetx", "resnext"} == set(FAMILIES)


@pytest.mark.parametrize("name", FAMILIES)
def test_static_export_imports_morphs_at_two_sites_and_verifies(folder, name):
    net, err = imported(name, folder, dynamic=False)
    assert err <= F32_TOL and net.dtype == F32
    assert net.description["num_classes"] == 10 and net.description["input"] == [3, 32, 32]
    assert_same_function(net, model(name))  # at batches 1 and 5, not the exported 2
    child, sites = morphed(name, folder)
    assert sites[0] != sites[1]
    assert len(child.tensors) > len(net.tensors)
    check_verify(net, child, sites)
    # and the grandchild computes the original model's function, independently of verify
    x = fresh_inputs(4, seed=99)
    with torch.no_grad():
        assert rel_err(child.module()(x), model(name)(x)) <= F32_TOL


def test_the_sites_avoid_the_stem_and_one_by_one_maps(folder):
    """The picker on a model whose stem, stride-2 convs and SE convs it must skip."""
    net, _ = imported("se_resnet", folder, dynamic=False)
    assert body_sites(net) == ["layer1.0.conv1", "layer1.0.conv2", "layer2.0.conv2",
                               "layer3.0.conv2"]


def test_shufflenet_morphs_at_the_convs_that_read_a_split_and_a_shuffle(folder):
    """The issue's case: a module at a conv right next to the channel movements (the one
    reading a stride-1 unit's second ``chunk`` half, the one reading the last shuffle)."""
    net, _ = imported("shufflenetv2", folder, dynamic=False)
    nodes = {n["name"]: n for n in net.description["nodes"]}
    sites = [c for c in body_sites(net) if nodes[nodes[c]["inputs"][0]]["op"] == "channels"]
    # the second half of a chunk (S.1) or a stage's input, the previous shuffle (S.0)
    assert sites == ["stage2.1.branch2.0", "stage3.0.branch2.0", "stage3.1.branch2.0",
                     "stage4.0.branch2.0", "stage4.1.branch2.0", "conv5.0"]
    child = net
    for at in (sites[0], sites[-1]):
        child, _ = morph_network(child, load_spec(SPEC_A), at=at)
    check_verify(net, child, [sites[0], sites[-1]])


GROUPED = ["mobilenetv2", "resnext", "shufflenetv2", "regnetx"]


@pytest.mark.parametrize("name", GROUPED)
def test_grouped_and_depthwise_convs_morph_keeping_their_groups(folder, name):
    """Issue 22, item 5: module D at the first stride-1 grouped (or depthwise) conv of each
    family that has them; the child's module convs keep the groups and the child computes
    the original model's function (float32, ≤ 1e-5)."""
    net, _ = imported(name, folder, dynamic=False)
    site = next(n["name"] for n in net.description["nodes"]
                if n["op"] == "conv" and n["groups"] > 1 and n["stride"] == [1, 1])
    groups = net.nodes[site]["groups"]
    child, report = morph_network(net, load_spec(SPEC_A.parent / "D.json"), at=site)
    assert report is not None and report.passed
    convs = [n for k, n in child.nodes.items() if k.startswith(f"{site}.") and n["op"] == "conv"]
    assert len(convs) == 7 and all(n["groups"] == groups for n in convs)
    check_verify(net, child, [site])
    x = fresh_inputs(4, seed=98)
    with torch.no_grad():
        assert rel_err(child.module()(x), model(name)(x)) <= F32_TOL


# --------------------------------------------------------------------------------------------
# slow: the other export, the factory path, the child's export

@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_dynamic_export_imports_like_the_static_one(folder, name):
    net, err = imported(name, folder, dynamic=True)
    assert err <= F32_TOL
    assert_same_function(net, model(name))
    static, _ = imported(name, folder, dynamic=False)
    assert net.description["nodes"] == static.description["nodes"]


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_factory_import_through_the_cli(capsys, monkeypatch, folder, name):
    """``netmorph import WEIGHTS --model zoo_models:NAME`` (run from tests/, which the CLI
    puts on sys.path): the same function and the same graph as the .pt2 import."""
    weights = folder / f"{name}.weights.pt"
    torch.save(model(name).state_dict(), weights)
    out = folder / f"{name}.factory.safetensors"
    monkeypatch.chdir(TESTS)
    code, stdout, err = run_main(capsys, "import", str(weights), "--model",
                                 f"zoo_models:{name}", "-o", str(out))
    assert code == 0, err
    assert f"({name}, 10 classes" in stdout
    net = ck.load(out)
    assert net.meta["imported"]["factory"] == f"zoo_models:{name}"
    assert_same_function(net, model(name))
    static, _ = imported(name, folder, dynamic=False)
    assert [(n["name"], n["op"]) for n in net.description["nodes"]] == \
        [(n["name"], n["op"]) for n in static.description["nodes"]]


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_the_child_exports_and_imports_back(folder, name):
    child, _ = morphed(name, folder)
    path = folder / f"{name}.child.pt2"
    report = export.export_network(child, path)
    assert report.max_rel_err <= F32_TOL and report.dynamic_batch
    back, err = importers.import_program(path)
    assert err <= F32_TOL
    assert back.description["nodes"] == child.description["nodes"]
    x = fresh_inputs(3, seed=7)
    with torch.no_grad():
        assert rel_err(back.module()(x), child.module()(x)) <= F32_TOL
