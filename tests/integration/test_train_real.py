"""Evaluation and training on the real CIFAR-10 of ../shared (skipped when it is absent).

- The imported akamaster ResNet-20 scores 8.27% test error on the full CIFAR-10 test set
  with its own normalization (published: 91.73% accuracy), and its 1c1 child the same.
- Two epochs of the default recipe (batch 128, lr 0.1 ÷10 at 50% and 75%) on cifar10-mini
  lower a fresh ResNet-20's test error.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from netmorph_cli.io import importers
from netmorph_cli.morph import morphs as morph
from netmorph_cli.network import zoo
from netmorph_cli.training import train

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
DATA = SHARED / "data"
RESNET20 = SHARED / "weights" / "akamaster_resnet20-12fca82f.th"



pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not (DATA / "cifar10.npz").is_file() or not RESNET20.is_file(),
                                reason="../shared/data or ../shared/weights is absent")]


@pytest.fixture(scope="module")
def parent():
    return importers.import_state_dict(RESNET20)


@pytest.fixture(scope="module")
def parent_result(parent):
    return train.evaluate(parent, "cifar10", DATA)


@pytest.mark.slow  # 12 s on the full test set; tests/integration/test_import_real.py
# classifies 500 real images with the same import by default
def test_imported_resnet20_has_the_published_test_error(parent_result):
    assert parent_result.samples == 10000
    assert abs(parent_result.top1_error - 0.0827) < 0.0005, parent_result  # 827 of 10,000


@pytest.mark.slow  # 17 s on the full test set; the same child's logits equal the parent's by
# default in tests/integration/test_morph_real.py, and eval runs by default above
def test_its_1c1_child_has_the_same_test_error(parent, parent_result):
    child, _ = morph.morph_network(parent, morph.Preset.parse("1c1"))
    assert child.meta["normalization"] == parent.meta["normalization"]
    r = train.evaluate(child, "cifar10", DATA)
    assert r.samples == 10000
    # the same mistakes; float32 rounding may flip one image whose top two logits tie
    assert abs(round(r.top1_error * 10000) - round(parent_result.top1_error * 10000)) <= 1


@pytest.mark.slow  # 33 s; learning is tested on synthetic data in tests/unit/test_train.py
def test_two_epochs_on_cifar10_mini_lower_a_fresh_resnet20s_test_error(tmp_path):
    net = zoo.create("resnet20", seed=0)
    before = train.evaluate(net, "cifar10-mini", DATA)
    assert before.samples == 1000
    cfg = train.TrainConfig(dataset="cifar10-mini", epochs=2, batch_size=128, lr=0.1, seed=0)
    trained, history = train.train(net, cfg, tmp_path / "r20.safetensors", data_dir=DATA)
    after = train.evaluate(trained, "cifar10-mini", DATA)
    assert after.top1_error == history[-1].test_error
    # measured 0.934 → 0.672 (train loss 2.13 → 1.84); 0.1 leaves room for other platforms
    assert after.top1_error < before.top1_error - 0.1, (before, after)
    assert history[-1].train_loss < history[0].train_loss
