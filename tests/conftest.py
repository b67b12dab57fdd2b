"""Fixtures shared by every test directory (keep this file generic)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

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
