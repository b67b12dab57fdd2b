"""Fixtures shared by the training CLI tests: a tiny data set and a fresh ResNet-20 file."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_helpers import write_mini

from netmorph_cli.io import checkpoint as ck
from netmorph_cli.network import zoo


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """A tiny ``cifar10-mini.npz`` (128 training, 64 test images) in a --data-dir."""
    return write_mini(tmp_path_factory.mktemp("data"), 128, 64)


@pytest.fixture
def parent(tmp_path) -> Path:
    """A fresh ResNet-20 checkpoint (seed 0) at ``tmp_path/r20.safetensors``."""
    path = tmp_path / "r20.safetensors"
    ck.save(zoo.create("resnet20", seed=0), path)
    return path
