"""Fixtures shared by every test directory (keep this file generic)."""

from __future__ import annotations

import os

# Before anything loads torch (and its OpenMP runtime): MKL threads that spin while they
# wait make LAPACK calls 3-200× slower whenever another process is busy on these shared
# 2-core machines (the solver tests took 117 s instead of 15 s under a load of 3).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json  # noqa: E402
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


@pytest.fixture
def write_spec(tmp_path: Path) -> Callable[..., Path]:
    """Write a spec to a file under ``tmp_path`` and return its path.

    A dict or list is dumped as JSON; a str is written as it is (for malformed JSON).
    """
    counter = iter(range(1_000_000))

    def write(spec: Any, name: str | None = None) -> Path:
        path = tmp_path / (name or f"spec{next(counter)}.json")
        path.write_text(spec if isinstance(spec, str) else json.dumps(spec, indent=2),
                        encoding="utf-8")
        return path

    return write


@pytest.fixture
def examples_dir() -> Path:
    """The repository's ``examples/`` folder."""
    return EXAMPLES


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module's tests (``pytestmark = usefixtures("one_thread")``):
    on a two-core machine that other jobs keep busy, two threads wait on each other at every
    tiny op (measured 8–70× slower); on an idle machine one thread costs under 2×. Results
    never depend on it: every comparison is between runs made with the same setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
